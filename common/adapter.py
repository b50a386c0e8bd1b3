"""The adapter's public weights and their application (numpy only).

``adapter(x) = x + B (A x)``: a low-rank residual map over the encoder's embeddings, trained on
the devices with DP-SGD (:mod:`client.adapter`) and averaged by the server. Both sides apply it
before the public projection; the server also applies it to the public label vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = ["DPSGD_GROUP_SIZE", "AdapterWeights", "event_level_dpsgd"]

#: Training examples one event can change: the adapter trains on pairs of consecutive events,
#: and inserting an event removes the pair it splits and adds two.
DPSGD_GROUP_SIZE = 3


def event_level_dpsgd(noise_multiplier: float, sample_rate: float) -> tuple[float, float]:
    """Per-example DP-SGD parameters -> event-level ones by group privacy (conservative): a
    group of ``k`` examples is sampled with probability ``1 - (1 - q)^k`` and moves the noisy
    gradient sum by at most ``k C``, i.e. multiplier ``z / k``."""
    k = DPSGD_GROUP_SIZE
    return noise_multiplier / k, 1.0 - (1.0 - sample_rate) ** k


@dataclass(frozen=True)
class AdapterWeights:
    """The adapter's parameters (public: broadcast by the server).

    Attributes:
        a: shape ``(rank, dim)``.
        b: shape ``(dim, rank)``.
    """

    a: npt.NDArray[np.float32]
    b: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2 or self.a.shape[::-1] != self.b.shape:
            raise ConfigError(
                f"adapter shapes must be A (r, d) and B (d, r). Found {self.a.shape} and {self.b.shape}."
            )
        if not (np.isfinite(self.a).all() and np.isfinite(self.b).all()):
            raise ConfigError("adapter weights must be finite.")

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def dim(self) -> int:
        return int(self.a.shape[1])

    @classmethod
    def initial(cls, dim: int = 384, rank: int = 8, seed: int = 0) -> AdapterWeights:
        """``A ~ N(0, 1/dim)`` from a public seed, ``B = 0``: the identity map."""
        rng = np.random.default_rng(seed)
        a = (rng.normal(size=(rank, dim)) / math.sqrt(dim)).astype(np.float32)
        return cls(a, np.zeros((dim, rank), dtype=np.float32))

    def apply(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """``x + B (A x)`` row-wise; shape ``(n, dim)`` -> ``(n, dim)`` (not re-normalised)."""
        v = np.asarray(x, dtype=np.float32)
        out: npt.NDArray[np.float32] = (v + (v @ self.a.T) @ self.b.T).astype(np.float32)
        return out

    def __call__(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        return self.apply(x)

    def is_identity(self) -> bool:
        return not np.any(self.b)

    def to_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        return {"a": self.a, "b": self.b}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> AdapterWeights:
        try:
            return cls(
                np.asarray(arrays["a"], dtype=np.float32), np.asarray(arrays["b"], dtype=np.float32)
            )
        except KeyError as err:
            raise ConfigError(f"adapter arrays need 'a' and 'b'. Missing {err}.") from None

    def minus(self, other: AdapterWeights) -> float:
        """L2 norm of the difference (the update's size)."""
        return float(
            math.sqrt(float(((self.a - other.a) ** 2).sum() + ((self.b - other.b) ** 2).sum()))
        )

    def clip_update(self, base: AdapterWeights, bound: float) -> AdapterWeights:
        """``base + clip(self - base, bound)``."""
        n = self.minus(base)
        if n <= bound or n == 0:
            return self
        s = bound / n
        return AdapterWeights(
            (base.a + s * (self.a - base.a)).astype(np.float32),
            (base.b + s * (self.b - base.b)).astype(np.float32),
        )
