"""Integer noise (the distributed discrete Gaussian, common/privacy/discrete.py): the sampler
against the exact probability mass, the Renyi bound against an independent numeric
computation of the Renyi divergence of the summed shares, the Gaussian limit, the rounding,
and a device's integer share against the mechanism its ledger entry accounts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from client.release_math import integer_share
from common.privacy import epsilon_of_entries, gaussian_epsilon
from common.privacy.discrete import (
    conditional_round,
    ddg_multiplier,
    ddg_rdp,
    ddg_tau,
    discrete_gaussian_pmf,
    rounded_norm_bound,
    sample_discrete_gaussian,
)
from common.privacy.ledger import Mechanism, Scope
from common.records import NoiseKind, ReleaseMode
from common.round_config import RoundConfig


@pytest.mark.parametrize("sigma", [0.7, 3.3, 40.0])
def test_sampler_matches_the_discrete_gaussian(sigma: float) -> None:
    """Chi-square of 200,000 draws against N_Z(0, sigma^2)'s exact mass (bins with an
    expected count >= 20; the tails pooled)."""
    rng = np.random.default_rng(7)
    x = sample_discrete_gaussian(sigma, (200_000,), rng)
    half = int(6 * sigma) + 2
    support = np.arange(-half, half + 1)
    expected = discrete_gaussian_pmf(sigma, support) * x.size
    observed = np.array([(x == k).sum() for k in support], dtype=np.float64)
    keep = expected >= 20
    obs = np.r_[observed[keep], x.size - observed[keep].sum()]
    exp = np.r_[expected[keep], x.size - expected[keep].sum()]
    _, p = stats.chisquare(obs, exp)
    assert p > 1e-4, p
    assert abs(float(x.mean())) < 5 * sigma / math.sqrt(x.size)


def _sum_pmf(sigma: float, n: int, half: int) -> np.ndarray:
    """The mass of the sum of n independent N_Z(0, sigma^2), by repeated convolution."""
    k = np.arange(-half, half + 1)
    one = discrete_gaussian_pmf(sigma, k)
    out = one
    for _ in range(n - 1):
        out = np.convolve(out, one)
    return out


def _renyi(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    """D_alpha(p || q), in log space (the terms of the far tails are below 1e-200)."""
    mask = (p > 1e-200) & (q > 1e-200)
    terms = alpha * np.log(p[mask]) + (1 - alpha) * np.log(q[mask])
    top = float(terms.max())
    return (top + math.log(float(np.sum(np.exp(terms - top))))) / (alpha - 1)


@pytest.mark.parametrize(("sigma", "n"), [(0.5, 2), (0.6, 4), (1.0, 3), (5.0, 5)])
def test_renyi_bound_holds_against_the_numeric_divergence(sigma: float, n: int) -> None:
    """In one dimension, the Renyi divergence between the summed shares and the summed shares
    shifted by the sensitivity 1 (computed numerically from the exact masses) stays below the
    closed form (KLS21 Prop. 14); where tau is not negligible the bound is visibly looser
    than the continuous Gaussian's."""
    half = int(30 * sigma) + 30
    p = _sum_pmf(sigma, n, half)
    shifted = np.r_[0.0, p[:-1]]
    for alpha in (1.5, 2.0, 4.0, 8.0):
        numeric = _renyi(shifted, p, alpha)
        bound = ddg_rdp(alpha, sensitivity=1.0, sigma=sigma, n=n, dim=1)
        assert numeric <= bound * (1 + 1e-9) + 1e-12, (alpha, numeric, bound)
    assert ddg_tau(0.5, 4) > 1e-3 and ddg_tau(5.0, 5) < 1e-100


def test_gaussian_limit() -> None:
    """For large sigma the bound is the continuous Gaussian's (tau 0, multiplier sqrt(n)
    sigma / Delta_2), and the rounding's inflation of the sensitivity vanishes as the clip
    grows relative to sqrt(d)."""
    z = ddg_multiplier(sensitivity=2048.0, sigma=1000.0, n=70, dim=16_512)
    assert z == pytest.approx(math.sqrt(70) * 1000.0 / 2048.0, rel=1e-12)
    for alpha in (2.0, 10.0):
        assert ddg_rdp(alpha, sensitivity=3.0, sigma=50.0, n=4, dim=100) == pytest.approx(
            alpha * (3.0 / (2 * 50.0)) ** 2 / 2, rel=1e-12
        )
    inflation = [rounded_norm_bound(c, 16_512) / c - 1 for c in (256.0, 2048.0, 65_536.0)]
    assert inflation == sorted(inflation, reverse=True) and inflation[-1] < 1e-3
    assert inflation[1] < 0.01


def test_conditional_rounding_is_unbiased_and_bounded() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=400) * 3.0
    bound = rounded_norm_bound(float(np.linalg.norm(x)), 400)
    draws = np.stack([conditional_round(x, bound, rng) for _ in range(2000)])
    assert (np.linalg.norm(draws, axis=1) <= bound).all()
    assert np.abs(draws.mean(0) - x).max() < 0.08  # 2000 draws of a Bernoulli each


def _config(unit: Scope, dim: int, mode: ReleaseMode = ReleaseMode.LOCAL) -> RoundConfig:
    return RoundConfig.for_release(
        server_round=1,
        hierarchy_version=0,
        mode=mode,
        noise_multiplier=3.0,
        sampled=100,
        min_cohort_fraction=0.7,
        clipping_norm=1.0,
        max_weight=1.0,
        user_clipping_norm=1.0,
        residual_threshold=0.2,
        projection_seed=1,
        projection_dim=8,
        projection_fingerprint="fp",
        delta=1e-6,
        unit=unit,
        noise=NoiseKind.DISCRETE,
        release_dim=dim,
    )


@pytest.mark.parametrize("mode", [ReleaseMode.LOCAL, ReleaseMode.SECAGG])
def test_a_devices_integer_share_is_the_accounted_mechanism(mode: ReleaseMode) -> None:
    """The share minus the device's own rounded release is N_Z(0, sigma^2) with the sigma the
    config states (Kolmogorov-Smirnov against the exact CDF); the ledger entry is a
    discrete_gaussian whose multiplier is the noise multiplier the run calibrated, composed
    with RDP; the round trip through the config record keeps it; too little noise is refused."""
    cfg = _config(Scope.USER, 6_000, mode)
    assert RoundConfig.from_record(cfg.to_record()) == cfg
    release = np.zeros((60, 100))
    release[3, :] = 1.0 / 10  # norm 1
    share = integer_share(cfg, release, np.random.default_rng(5))
    assert share.dtype == np.float32 and np.array_equal(share, np.round(share))
    signal = release / cfg.granularity
    noise = (share.astype(np.float64) - signal).ravel()
    # the rounding moves each coordinate by less than 1: test the noise against N(0, sigma^2)
    # convolved with that (sigma is in the hundreds, so the continuous CDF is the discrete
    # one to ~1/sigma^2)
    sigma = cfg.integer_sigma
    assert sigma > 100
    _, p = stats.kstest(noise, stats.norm(scale=sigma).cdf)
    assert p > 1e-4, p
    assert float(np.std(noise)) == pytest.approx(sigma, rel=0.05)
    entry = cfg.ledger_entry(Scope.USER)
    assert entry.mechanism is Mechanism.DISCRETE_GAUSSIAN
    assert entry.noise_multiplier == pytest.approx(3.0, rel=1e-9)
    assert epsilon_of_entries([entry], delta=1e-6, scope=Scope.USER) == pytest.approx(
        gaussian_epsilon(entry.noise_multiplier, 1e-6, "rdp")
    )
    from common.errors import ReleaseRefusedError

    with pytest.raises(ReleaseRefusedError, match="below"):
        RoundConfig.from_record({**cfg.to_record(), "noise-std": cfg.noise_std * 0.99})
    with pytest.raises(ReleaseRefusedError, match="coordinates"):
        integer_share(cfg, np.zeros((7, 7)), np.random.default_rng(1))


def test_event_level_integer_noise_rounds_without_conditioning() -> None:
    """At event level the sensitivity is clip_units + sqrt(d) (coupled roundings), and the
    share's noise is the stated sigma."""
    cfg = _config(Scope.EVENT, 400)
    assert cfg.integer_sensitivity_at(Scope.EVENT) == pytest.approx(cfg.clip_units + 20.0)
    share = integer_share(cfg, np.full(400, 0.01), np.random.default_rng(2))
    noise = share.astype(np.float64) - 0.01 / cfg.granularity
    assert float(np.std(noise)) == pytest.approx(cfg.integer_sigma, rel=0.15)
