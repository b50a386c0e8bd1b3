"""The on-device SDK: the only place that touches raw events.

Heavy dependencies (torch, transformers, opacus) load lazily on first use.
"""

from client.encoder import EncoderConfig, MiniLMEncoder, TextEncoder, encode_cached
from client.store import EmbeddingCache, EventStore

__all__ = [
    "EmbeddingCache",
    "EncoderConfig",
    "EventStore",
    "MiniLMEncoder",
    "TextEncoder",
    "encode_cached",
]
