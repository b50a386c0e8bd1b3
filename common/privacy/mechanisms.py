"""DP mechanisms: clipping, Gaussian noise, and its calibration.

Gaussian mechanism (Dwork and Roth 2014, Sec. 3.5.3; analysed here with privacy loss
distributions, Koskela et al. 2020, via the dp-accounting library): releasing ``f(D) + N(0,
(z * Delta)^2 I)`` where ``Delta`` bounds the L2 change of ``f`` between neighbouring datasets.
``z`` is the *noise multiplier*.

The leaf-sum release of :mod:`client.release` has, for the **event-level add/remove** relation
(one event present or absent), ``Delta = clipping_norm * max_weight``: each event's vector is
clipped to ``clipping_norm``, weighted by at most ``max_weight`` and added to exactly one row.

Under secure aggregation each of at least ``min_cohort`` devices adds ``N(0, (z Delta)^2 /
min_cohort)``; the sum carries at least the full variance ``(z Delta)^2`` (distributed Gaussian,
e.g. Kairouz et al. 2021, "The distributed discrete Gaussian mechanism", Sec. 4). Dropouts
below ``min_cohort`` would leave less noise; the server aborts such a round before unmasking.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = [
    "calibrate_release_multiplier",
    "clip_rows",
    "clip_total",
    "gaussian_noise",
    "noise_multiplier_for_rounds",
    "secagg_share_std",
]


def clip_rows(x: npt.NDArray[np.floating], clipping_norm: float) -> npt.NDArray[np.float32]:
    """Scales each row to L2 norm at most ``clipping_norm``.

    Args:
        x: shape ``(n, d)``.

    Returns:
        float32, shape ``(n, d)``; every row norm <= ``clipping_norm``.
    """
    _positive(clipping_norm, "clipping_norm")
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    # float32 rounding can leave a norm a hair above the bound: scale slightly under it
    scale = np.minimum(1.0, (clipping_norm * (1 - 1e-6)) / np.maximum(norms, 1e-30))
    out: npt.NDArray[np.float32] = (a * scale).astype(np.float32)
    return out


def clip_total(x: npt.NDArray[np.floating], bound: float) -> npt.NDArray[np.float32]:
    """Scales the whole array to Frobenius norm at most ``bound`` (a projection onto a ball,
    hence 1-Lipschitz: it never increases any neighbour's distance, so event-level sensitivity
    survives it, and it bounds one device's total contribution: user-level sensitivity)."""
    _positive(bound, "bound")
    a = np.asarray(x, dtype=np.float32)
    n = float(np.linalg.norm(a))
    if n <= bound:
        return a
    return (a * (bound * (1 - 1e-6) / n)).astype(np.float32)


def gaussian_noise(
    shape: tuple[int, ...], std: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """``N(0, std^2)`` noise of the given shape from ``rng``.

    Outside tests ``rng`` must be seeded from the OS (``np.random.default_rng()`` with no seed
    draws from ``os.urandom``-backed entropy).
    """
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"`std` must be a finite number >= 0. Found {std!r}.")
    return rng.normal(0.0, std, size=shape).astype(np.float32)


def secagg_share_std(*, noise_multiplier: float, sensitivity: float, min_cohort: int) -> float:
    """Per-device noise std under secure aggregation: ``z * Delta / sqrt(min_cohort)``, so that
    a sum over at least ``min_cohort`` devices carries std ``z * Delta``; ``min_cohort = 1`` is
    local noise (each device adds the full ``z * Delta``). ``z = 0`` (a run without DP) gives 0.

    The one definition of the noise share: :attr:`common.round_config.RoundConfig.required_noise_std`
    (server and device) calls it."""
    if not (
        isinstance(noise_multiplier, (int, float))
        and math.isfinite(noise_multiplier)
        and noise_multiplier >= 0
    ):
        raise ConfigError(f"`noise_multiplier` must be >= 0. Found {noise_multiplier!r}.")
    _positive(sensitivity, "sensitivity")
    if not (isinstance(min_cohort, int) and min_cohort >= 1):
        raise ConfigError(f"`min_cohort` must be an int >= 1. Found {min_cohort!r}.")
    return noise_multiplier * sensitivity / math.sqrt(min_cohort)


def noise_multiplier_for_rounds(*, epsilon: float, delta: float, rounds: float) -> float:
    """The Gaussian noise multiplier ``z`` such that ``rounds`` releases compose (PLD) to
    ``(epsilon, delta)``. ``rounds`` may be fractional: releases at ``f z`` count
    ``1 / f^2`` each (exact for Gaussians).

    Composing Gaussian mechanisms with multipliers ``z_i`` is exactly a Gaussian mechanism with
    ``z = (sum z_i^-2)^-1/2`` (Dong, Roth and Su 2022, Gaussian DP, Cor. 3.3), so this solves
    one Gaussian with ``z / sqrt(rounds)`` by bisection on its PLD epsilon.
    """
    _positive(epsilon, "epsilon")
    if not 0 < delta < 1:
        raise ConfigError(f"`delta` must be in (0, 1). Found {delta!r}.")
    if isinstance(rounds, bool) or not (
        isinstance(rounds, (int, float)) and math.isfinite(rounds) and rounds > 0
    ):
        raise ConfigError(f"`rounds` must be a number > 0. Found {rounds!r}.")
    return _single_gaussian_multiplier(round(epsilon, 12), delta) * math.sqrt(rounds)


def calibrate_release_multiplier(
    *,
    epsilon: float,
    delta: float,
    rounds: float,
    other: tuple[tuple[float, float, int], ...] = (),
    accountant: str = "pld",
) -> float:
    """The Gaussian multiplier ``z`` of ``rounds`` (equivalent, possibly fractional) Gaussian
    releases such that, composed with the other event-level mechanisms of the run, the total
    is at most ``epsilon``.

    Args:
        other: the other mechanisms as ``(noise_multiplier, sample_rate, steps)`` triples
            (e.g. the adapter's DP-SGD per round, already in event-level terms).

    Raises:
        ConfigError: when the other mechanisms alone already spend ``epsilon``.
    """
    _positive(epsilon, "epsilon")
    if accountant == "rdp" and not other:
        return _rdp_multiplier(round(epsilon, 12), delta) * math.sqrt(rounds)
    if not other:
        return noise_multiplier_for_rounds(epsilon=epsilon, delta=delta, rounds=rounds)
    return _calibrate_with_others(round(epsilon, 12), delta, rounds, tuple(other), accountant)


@lru_cache(maxsize=64)
def _calibrate_with_others(
    epsilon: float,
    delta: float,
    rounds: float,
    other: tuple[tuple[float, float, int], ...],
    accountant: str,
) -> float:
    from common.privacy.accounting import epsilon_of_entries
    from common.privacy.ledger import LedgerEntry, Mechanism

    base = [LedgerEntry(Mechanism.DPSGD, z, 1.0, sample_rate=q, steps=s) for z, q, s in other]
    alone = epsilon_of_entries(base, delta=delta, accountant=accountant)
    if alone >= epsilon:
        raise ConfigError(
            f"the adapter's DP-SGD alone spends epsilon {alone:.3f} >= the run's {epsilon:.3f}; "
            "raise the adapter noise, lower its steps or sample rate, or disable it."
        )

    def total(z: float) -> float:
        return epsilon_of_entries(
            [*base, LedgerEntry(Mechanism.GAUSSIAN_SUM, z / math.sqrt(rounds), 1.0)],
            delta=delta,
            accountant=accountant,
        )

    lo = noise_multiplier_for_rounds(
        epsilon=epsilon, delta=delta, rounds=rounds
    )  # too little noise
    hi = lo * 2
    while total(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(
                f"no release noise reaches epsilon={epsilon} with the other mechanisms."
            )
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        if total(mid) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


@lru_cache(maxsize=256)
def _rdp_multiplier(epsilon: float, delta: float) -> float:
    """The smallest ``z`` (to 0.1%) whose Gaussian meets ``epsilon`` under dp-accounting's RDP
    accountant (what a ledger with integer noise is composed with)."""
    from common.privacy.accounting import gaussian_epsilon

    z = noise_multiplier_for_rounds(epsilon=epsilon, delta=delta, rounds=1)
    for _ in range(5000):
        if gaussian_epsilon(z, delta, "rdp") <= epsilon:
            return z
        z *= 1.001
    raise ConfigError(f"no noise multiplier reaches epsilon={epsilon} at delta={delta} (RDP).")


@lru_cache(maxsize=256)
def _single_gaussian_multiplier(epsilon: float, delta: float) -> float:
    from dp_accounting.gaussian_mechanism import get_sigma_gaussian

    from common.privacy.accounting import gaussian_epsilon

    # The analytic Gaussian (Balle and Wang 2018) is exact; the PLD accountant that audits
    # the ledger is slightly pessimistic, so raise z until PLD agrees the target holds.
    z = float(get_sigma_gaussian(epsilon, delta))
    for _ in range(2000):
        if gaussian_epsilon(z, delta) <= epsilon:
            return z
        z *= 1.001
    raise ConfigError(f"no noise multiplier reaches epsilon={epsilon} at delta={delta}.")


def _positive(v: float, name: str) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ConfigError(f"`{name}` must be > 0. Found {v!r}.")
