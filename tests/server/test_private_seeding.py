"""Private seeding (:mod:`server.private_seeding`): a codebook round through the real
aggregation, reduced to leaves that find the data's clusters, with the sums carried over
exactly; and the round step that applies it once."""

from __future__ import annotations

import numpy as np
import pytest

from client.local_clustering import assign_public
from common.config import ClusteringConfig
from common.errors import ConfigError
from common.projection import normalize_rows
from server.aggregation import AggregationConfig, aggregate_round, initial_state
from server.private_seeding import public_codebook, reduce_codebook


def test_codebook_is_public_and_checked() -> None:
    a, b = public_codebook(128, 256, 7), public_codebook(128, 256, 7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert not np.array_equal(a, public_codebook(128, 256, 8))
    with pytest.raises(ConfigError, match="a codebook needs dim >= 1 and size >= 2"):
        public_codebook(128, 1, 7)


def _codebook_round(
    centres: np.ndarray, per_centre: int, std: float, rng: np.random.Generator
) -> tuple[object, np.ndarray]:
    """One codebook round: ``per_centre`` unit events around each centre, assigned to the
    nearest codebook cell, summed, plus Gaussian noise of ``std`` per coordinate."""
    d = centres.shape[1]
    codebook = public_codebook(d, 256, 3)
    events = normalize_rows(
        np.repeat(centres, per_centre, axis=0)
        + 0.35 * rng.normal(size=(len(centres) * per_centre, d)) / np.sqrt(d)
    )
    cells = assign_public(events, codebook)
    total = np.zeros((len(codebook) + 1, d))
    np.add.at(total, cells, events)
    total += rng.normal(scale=std, size=total.shape)
    state, _ = aggregate_round(
        initial_state(codebook),
        total,
        noise_var=std**2,
        config=AggregationConfig.from_clustering(ClusteringConfig()),
        rng=rng,
    )
    return state, events


def test_reduction_finds_the_clusters_and_keeps_the_sums() -> None:
    rng = np.random.default_rng(0)
    d, k = 128, 12
    centres = normalize_rows(rng.normal(size=(k, d)))
    state, _ = _codebook_round(centres, 60, 0.5, rng)
    leaves = reduce_codebook(state, k, null_rate=0.05, seed=1)
    assert 2 <= leaves.num_leaves <= k
    # nearly every true cluster has a leaf close to it (one codebook level cannot split two
    # clusters whose events share cells; the following rounds' Lloyd steps refine)
    best = (centres @ leaves.centroids.T).max(axis=1)
    assert (best > 0.9).sum() >= k - 2, best
    # the leaves' sums are their cells' sums: nothing invented, the noise accounted
    assert len(set(leaves.ids)) == leaves.num_leaves
    assert set(leaves.ids) <= set(state.ids)
    assert np.all(leaves.acc_var >= state.acc_var.min())
    assert leaves.seed.all() and (leaves.weight_norm == 1).all()
    with pytest.raises(ConfigError, match="`k` must be an int >= 2"):
        reduce_codebook(state, 1, null_rate=0.05, seed=1)


def test_reduction_on_pure_noise_keeps_few_cells() -> None:
    """No data: Holm lists (almost surely) no cell, so the reduction keeps the 4 most
    significant ones (the minimum) rather than inventing structure from 256 noise cells;
    splitting towards ``k`` adds empty children, never sums."""
    rng = np.random.default_rng(2)
    d = 64
    codebook = public_codebook(d, 256, 3)
    noise = rng.normal(scale=1.0, size=(257, d))
    state, _ = aggregate_round(
        initial_state(codebook),
        noise,
        noise_var=1.0,
        config=AggregationConfig.from_clustering(ClusteringConfig()),
        rng=rng,
    )
    leaves = reduce_codebook(state, 40, null_rate=0.05, seed=1)
    carried = np.abs(leaves.acc).sum(axis=1) > 0
    assert carried.sum() <= 4
    # each kept cell is split once towards the 40 wanted; the children start empty
    assert leaves.num_leaves == 2 * carried.sum()
    assert not leaves.acc[~carried].any() and not leaves.acc_var[~carried].any()
    assert len(set(leaves.ids)) == leaves.num_leaves and leaves.next_id > state.next_id
    kept = reduce_codebook(state, 40, null_rate=0.05, seed=1, split=False)
    assert kept.num_leaves == carried.sum()


def test_round_step_reduces_the_codebook_round_once() -> None:
    """Through the real round step: the first request carries the public codebook, its
    tree has at most ``seed_leaves`` leaves, and the next rounds do not reduce again; a
    catalogue's seeds beside a private seeding are refused."""
    from server.round import initial_server_state, release_request
    from server.round_state import ServerConfig
    from tests.server.test_round import DIM, SEED, run_rounds, server_config

    clustering = ClusteringConfig(
        projection_dim=DIM, projection_seed=SEED, seeding="private", codebook_size=48, seed_leaves=6
    )
    config = server_config(clustering=clustering)
    assert config.private_k == 6
    state = initial_server_state(config)
    np.testing.assert_allclose(state.leaves.centroids, public_codebook(DIM, 48, SEED), atol=1e-6)
    first = release_request(state, config, 1, list(range(101, 113)))
    assert first.shape == (49, DIM)
    assert first.config.residual_threshold == -1.0  # every event to its nearest cell
    one, _ = run_rounds(config, 1)
    assert one.leaves.num_leaves <= 6 and one.hierarchy is not None
    second = release_request(one, config, 2, list(range(101, 113)))
    assert second.config.residual_threshold == clustering.residual_threshold
    two, _ = run_rounds(config, 1, one)
    assert two.leaves.num_leaves >= one.leaves.num_leaves - 1
    assert two.hierarchy is not None and two.hierarchy.version == 2
    with pytest.raises(ConfigError, match="draws its own codebook"):
        ServerConfig.build(config.run, config.labels, seeds=np.eye(4, DIM))
