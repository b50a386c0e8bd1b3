"""The listing threshold on null rounds: leaves that no device's data reaches are listed at
about the configured rate (issue 18: at most ~5% of empty leaves), measured through the real
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


def test_null_rounds_list_about_five_percent_of_empty_leaves() -> None:
    """5 rounds over 256 leaves of which 128 get the data of 5,120 devices (40 each, unit
    contributions) and 128 nothing but the release's noise (std 5 per coordinate, about a
    user-level epsilon-2 run's): the default threshold lists ~5% of the empty ones (measured
    over 10 runs: 1,280 empty leaves) and nearly all the fed ones."""
    d, k, per_leaf, std = 128, 256, 40, 5.0
    cfg = AggregationConfig.from_clustering(ClusteringConfig())
    threshold = null_listing_z(d, ClusteringConfig().tree_null_rate)
    listed_empty, listed_fed, empty_total = 0, 0, 0
    for run in range(10):
        rng = np.random.default_rng(run)
        seeds = normalize_rows(rng.normal(size=(k, d)))
        state = initial_state(seeds)
        fed = np.arange(k // 2)
        for _ in range(5):
            total = np.zeros((k + 1, d))
            # each fed leaf: its devices' unit contributions near its centroid
            total[fed] = per_leaf * state.centroids[fed]
            total += rng.normal(scale=std, size=total.shape)
            state, _ = aggregate_round(state, total, noise_var=std**2, config=cfg, rng=rng)
        _, z = leaf_statistics(state)
        origin = {lid: i for i, lid in enumerate(f"leaf-{i:04d}" for i in range(k))}
        for lid, zi in zip(state.ids, z, strict=True):
            i = origin.get(lid)
            if i is None:
                continue
            if i in set(fed.tolist()):
                listed_fed += zi >= threshold
            else:
                empty_total += 1
                listed_empty += zi >= threshold
    rate = listed_empty / empty_total
    print(f"empty leaves listed: {listed_empty}/{empty_total} = {rate:.3f}; fed {listed_fed}")
    assert empty_total >= 1000
    assert rate <= 0.08, rate
    assert listed_fed >= 0.9 * 10 * len(fed)
