"""The public random projection, shared by the server and every device.

A seeded random orthonormal map from the encoder dimension to ``d`` (default 128); each
projected vector is re-normalised to unit length. The matrix comes from a portable generator
(PCG64 raw bits + Box-Muller, then QR with a fixed sign convention), so every party rebuilds
the same matrix from ``(seed, input_dim, output_dim)``; its :attr:`fingerprint` travels with
each round so a device with a different matrix fails closed instead of releasing in the wrong
space.

Measured on real held-out data: d = 128 keeps ~0.95x of the 384-d clustering quality;
d = 64 and 32 cost 0.83x and 0.65x at level 1 even with no noise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = ["DEFAULT_OUTPUT_DIM", "DEFAULT_SEED", "PublicProjection", "normalize_rows"]

DEFAULT_OUTPUT_DIM = 128
DEFAULT_SEED = 20240611


def normalize_rows(x: npt.NDArray[np.floating], eps: float = 1e-12) -> npt.NDArray[np.float32]:
    """Rows scaled to unit L2 norm (zero rows stay zero). Shape ``(n, d)`` -> ``(n, d)``."""
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    out: npt.NDArray[np.float32] = (a / np.maximum(norms, eps)).astype(np.float32)
    return out


def _portable_normals(seed: int, n: int) -> npt.NDArray[np.float64]:
    # Raw PCG64 bits are stable across NumPy versions (distribution samplers are not).
    bits = np.random.PCG64(seed).random_raw(2 * ((n + 1) // 2))
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]


@lru_cache(maxsize=8)
def _matrix(seed: int, input_dim: int, output_dim: int) -> npt.NDArray[np.float32]:
    g = _portable_normals(seed, input_dim * output_dim).reshape(input_dim, output_dim)
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]  # fixed sign convention: diag(R) > 0
    out = q.astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class PublicProjection:
    """``x -> normalize(x @ W)`` with ``W`` of shape ``(input_dim, output_dim)``, orthonormal
    columns. ``output_dim == input_dim`` keeps the full space (still re-normalised).

    Attributes:
        input_dim: the encoder dimension (384 for MiniLM).
        output_dim: the released dimension ``d``.
        seed: public seed; part of the run configuration.
        encoder_id: the encoder whose vectors it projects (``TextEncoder.model_id``: name,
            version and a digest of the weights). It enters :attr:`fingerprint`, so a device
            with another encoder (even one of the same dimension) fails the fingerprint check
            and refuses; ``""`` leaves it out (vectors of unknown origin, tests).
    """

    input_dim: int = 384
    output_dim: int = DEFAULT_OUTPUT_DIM
    seed: int = DEFAULT_SEED
    encoder_id: str = ""
    _w: npt.NDArray[np.float32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.input_dim, int) and self.input_dim >= 2):
            raise ConfigError(f"`input_dim` must be an int >= 2. Found {self.input_dim!r}.")
        if not (isinstance(self.output_dim, int) and 2 <= self.output_dim <= self.input_dim):
            raise ConfigError(
                f"`output_dim` must be an int in [2, input_dim={self.input_dim}]. Found {self.output_dim!r}."
            )
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ConfigError(f"`seed` must be an int in [0, 2**63). Found {self.seed!r}.")
        if not isinstance(self.encoder_id, str):
            raise ConfigError(f"`encoder_id` must be a string. Found {self.encoder_id!r}.")
        object.__setattr__(self, "_w", _matrix(self.seed, self.input_dim, self.output_dim))

    @property
    def matrix(self) -> npt.NDArray[np.float32]:
        """The read-only ``(input_dim, output_dim)`` matrix."""
        return self._w

    @property
    def fingerprint(self) -> str:
        """A short hash of the matrix (rounded to 1e-4, robust to BLAS rounding) and of
        :attr:`encoder_id` when set."""
        q = np.round(self._w.astype(np.float64) * 1e4).astype(np.int64)
        h = hashlib.sha256(q.tobytes())
        if self.encoder_id:
            h.update(b"\0encoder:" + self.encoder_id.encode("utf-8"))
        return h.hexdigest()[:16]

    def __call__(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Projects and re-normalises.

        Args:
            x: shape ``(n, input_dim)`` (or ``(input_dim,)``).

        Returns:
            float32, shape ``(n, output_dim)`` (or ``(output_dim,)``), unit rows.
        """
        a = np.asarray(x, dtype=np.float32)
        if a.shape[-1] != self.input_dim:
            raise ConfigError(
                f"projection input must have {self.input_dim} columns. Found shape {a.shape}."
            )
        return normalize_rows(a @ self._w)
