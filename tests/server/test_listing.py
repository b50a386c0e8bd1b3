"""The listing threshold on null rounds: leaves that no device's data reaches are listed far
below the configured rate (issue 18: at most ~5% of empty leaves; Holm's family-wise
control bounds the chance of listing any), measured through the real
aggregation (:func:`server.aggregation.aggregate_round`) and significance
(:func:`server.aggregation.leaf_statistics`), and the threshold checked against an
independent Monte Carlo of the chi-square law."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import ClusteringConfig
from common.errors import ConfigError
from common.projection import normalize_rows
from server.aggregation import (
    AggregationConfig,
    aggregate_round,
    initial_state,
    leaf_statistics,
    listed_leaves,
    null_listing_z,
)


def test_threshold_matches_a_monte_carlo_of_the_null() -> None:
    """``null_listing_z(d, r)`` is the 1 - r quantile of (chi2_d - d) / sqrt(2 d), drawn here
    from Gaussian vectors rather than SciPy."""
    rng = np.random.default_rng(0)
    for d, rate in ((8, 0.05), (128, 0.05), (128, 0.01)):
        x = rng.normal(size=(200_000, d))
        z = ((x**2).sum(1) - d) / np.sqrt(2 * d)
        assert null_listing_z(d, rate) == pytest.approx(np.quantile(z, 1 - rate), abs=0.03)
    assert null_listing_z(128, 0.05) > 1.6  # above the normal approximation's 1.645 - eps
    with pytest.raises(ConfigError, match="need dim >= 1 and rate in"):
        null_listing_z(128, 1.5)


def _null_runs(fed_leaves: int, runs: int = 10) -> tuple[int, int, int, int]:
    """``runs`` runs of 5 rounds over 256 leaves, ``fed_leaves`` of them fed by 40 devices each
    (unit contributions), the rest nothing but the release's noise (std 5 per coordinate,
    about a user-level epsilon-2 run's): (empty listed, empty total, fed listed, fed total)
    under the server's listing rule."""
    d, k, per_leaf, std = 128, 256, 40, 5.0
    cfg = AggregationConfig.from_clustering(ClusteringConfig())
    rate = ClusteringConfig().tree_null_rate
    out = [0, 0, 0, 0]
    for run in range(runs):
        rng = np.random.default_rng(run)
        state = initial_state(normalize_rows(rng.normal(size=(k, d))))
        fed = np.arange(fed_leaves)
        for _ in range(5):
            total = np.zeros((k + 1, d))
            total[fed] = per_leaf * state.centroids[fed]
            total += rng.normal(scale=std, size=total.shape)
            state, _ = aggregate_round(state, total, noise_var=std**2, config=cfg, rng=rng)
        _, z = leaf_statistics(state)
        listed = set(listed_leaves(z, d, rate).tolist())
        origin = {f"leaf-{i:04d}": i for i in range(k)}
        for j, lid in enumerate(state.ids):
            i = origin.get(lid)
            if i is None:
                continue
            is_fed = i < fed_leaves
            out[2 if is_fed else 0] += j in listed
            out[3 if is_fed else 1] += 1
    return out[0], out[1], out[2], out[3]


@pytest.mark.parametrize("fed_leaves", [128, 16])
def test_null_rounds_list_few_empty_leaves(fed_leaves: int) -> None:
    """The default listing (Holm at family-wise rate 1% over chi-square p-values) lists far
    fewer than 5% of the leaves no device's data reaches, while listing every fed leaf.
    Measured: half the leaves fed: 0 / 1,280 empty listed; 16 of 256 fed: 0 / 2,400; all
    fed leaves listed (Holm at 5%: 1 and 1; Benjamini-Hochberg at 5%: 34 and 7)."""
    empty_listed, empty, fed_listed, fed = _null_runs(fed_leaves)
    print(f"fed {fed_leaves}: empty listed {empty_listed}/{empty}, fed listed {fed_listed}/{fed}")
    assert empty >= 1000
    assert empty_listed / empty <= 0.01
    assert fed_listed >= 0.95 * fed


def _holm_by_adjusted_p(p: np.ndarray, rate: float) -> set[int]:
    """Holm's rejections computed another way: adjusted p-values
    ``max_{j <= i} min(1, (m - j) p_(j))`` (0-based ranks) at most ``rate``."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out, running = set(), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        if running <= rate:
            out.add(i)
    return out


def test_listing_is_holm_and_bounds_the_family_wise_rate() -> None:
    """The listing equals Holm's procedure computed from adjusted p-values, and on rounds
    where no leaf has data the chance that *any* leaf is listed stays under the rate (400
    null runs of 256 leaves through the real aggregation: the bound is Holm 1979's)."""
    from scipy.stats import chi2

    d, k, std = 128, 256, 5.0
    cfg = AggregationConfig.from_clustering(ClusteringConfig())
    rng = np.random.default_rng(1)
    for _ in range(20):
        z = rng.normal(size=64) * 3 + rng.choice([0.0, 6.0], size=64)
        p = chi2.sf(d + z * np.sqrt(2 * d), d)
        assert set(listed_leaves(z, d, 0.05).tolist()) == _holm_by_adjusted_p(p, 0.05)
    any_listed = 0
    for run in range(400):
        r = np.random.default_rng(1000 + run)
        state = initial_state(normalize_rows(r.normal(size=(k, d))))
        noise = r.normal(scale=std, size=(k + 1, d))
        state, _ = aggregate_round(state, noise, noise_var=std**2, config=cfg, rng=r)
        _, z = leaf_statistics(state)
        any_listed += len(listed_leaves(z, d, 0.05)) > 0
    print(f"null runs with any leaf listed: {any_listed}/400")
    assert any_listed / 400 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)
    assert len(listed_leaves(np.zeros(0), d, 0.05)) == 0
