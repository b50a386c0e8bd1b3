"""Old name of :mod:`common.secagg_wire` (the SecAgg+ wire format), kept as an alias for
modules and tests that still import it; new code imports :mod:`common.secagg_wire`."""

from common.secagg_wire import (
    compact_masked_vectors,
    fitins_for_devices,
    read_fitins,
    read_fitres_metadata,
    to_fitres,
    widen_masked_vectors,
)

__all__ = [
    "compact_masked_vectors",
    "fitins_for_devices",
    "read_fitins",
    "read_fitres_metadata",
    "to_fitres",
    "widen_masked_vectors",
]
