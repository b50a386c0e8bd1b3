"""Old import path of the round loop, kept only as aliases for modules that still import it
(``simulations/`` commands being restructured, and their tests). It was never a Flower
``Strategy``. New code imports from:

- :mod:`server.round` (the pure round step, :class:`~server.round.RoundSummary`),
- :mod:`server.round_loop` (the Flower-driving loop),
- :mod:`server.collectors` (:class:`~server.collectors.MeteredGrid`, the collectors),
- :mod:`server.replies` (reply validation),
- :mod:`common.jsonio` (``json_safe``).
"""

from common.jsonio import json_safe
from server.collectors import MeteredGrid
from server.replies import MAX_REPLY_BYTES, validate_local_reply
from server.round import RoundSummary
from server.round import noise_norm_bound as _noise_norm_bound

__all__ = [
    "MAX_REPLY_BYTES",
    "MeteredGrid",
    "RoundSummary",
    "_noise_norm_bound",
    "json_safe",
    "validate_local_reply",
]
