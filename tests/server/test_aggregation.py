"""DP-Lloyd aggregation on hand-made toys with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import InvalidReleaseError
from server.aggregation import AggregationConfig, aggregate_round, initial_state, leaf_statistics

D = 8


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(D)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def test_noiseless_lloyd_step_moves_to_the_sum() -> None:
    """Without noise, a live leaf's centroid becomes the direction of its sum (prior 0)."""
    st = initial_state(np.stack([unit(1, 0), unit(0, 1), unit(0, 0, 1)]))
    sums = np.zeros((4, D))
    sums[0] = 10 * unit(1, 1)
    sums[1] = 5 * unit(0, 1, 0.2)
    st2, diag = aggregate_round(
        st, sums, noise_var=0.0, config=AggregationConfig(prior_strength=0.0, memory=0.0)
    )
    assert np.allclose(st2.centroids[0], unit(1, 1), atol=1e-6)
    assert np.allclose(st2.centroids[1], unit(0, 1, 0.2), atol=1e-6)
    assert np.allclose(st2.centroids[2], unit(0, 0, 1))  # no data: stays put (dormant)
    mass, _z = leaf_statistics(st2)
    assert mass[:2] == pytest.approx([10.0, 5.0]) and mass[2] == 0.0
    assert diag.live == 2 and diag.dormant == 1 and st2.server_round == 1


def test_mass_estimate_is_bias_corrected_under_noise() -> None:
    """|A|^2 - d V recovers the signal energy on average; empty leaves stay insignificant."""
    rng = np.random.default_rng(0)
    d, k, var = 64, 40, 4.0
    seeds = rng.normal(size=(k, d))
    st = initial_state(seeds)
    sums = np.zeros((k + 1, d))
    sums[:20] = 30.0 * st.centroids[:20]
    sums += rng.normal(0, math.sqrt(var), sums.shape)
    st2, _ = aggregate_round(st, sums, noise_var=var, config=AggregationConfig(memory=0.0))
    mass, z = leaf_statistics(st2)
    assert np.mean(mass[:20]) == pytest.approx(30.0, rel=0.1)
    assert (z[:20] > 5).all() and np.mean(z[20:] < 2.0) > 0.9


def test_memory_accumulates_and_averages_noise() -> None:
    """With memory, repeated noisy sums of the same signal raise significance."""
    rng = np.random.default_rng(1)
    st = initial_state(np.eye(D)[:3])
    cfg = AggregationConfig(memory=1.0, live_z=1e9)  # never move: isolate accumulation
    zs = []
    for _ in range(4):
        sums = np.zeros((4, D))
        sums[0] = 3.0 * np.eye(D)[0]
        sums += rng.normal(0, 1.0, sums.shape)
        st, _ = aggregate_round(st, sums, noise_var=1.0, config=cfg)
        zs.append(leaf_statistics(st)[1][0])
    assert zs[-1] > zs[0]


def test_close_live_leaves_merge_into_the_heavier() -> None:
    """Two leaves converging to one direction merge; the heavier id survives."""
    st = initial_state(np.stack([unit(1, 0), unit(1, 0.1), unit(0, 1)]))
    sums = np.zeros((4, D))
    sums[0] = 10 * unit(1, 0.05)
    sums[1] = 4 * unit(1, 0.06)
    sums[2] = 6 * unit(0, 1)
    st2, diag = aggregate_round(
        st, sums, noise_var=0.0, config=AggregationConfig(memory=0.0, prior_strength=0.0)
    )
    assert diag.merged == {"leaf-0001": "leaf-0000"}
    assert st2.ids == ("leaf-0000", "leaf-0002")
    assert leaf_statistics(st2)[0][0] == pytest.approx(14.0, rel=1e-4)


def test_unassigned_row_seeds_a_new_leaf() -> None:
    """A significant unassigned sum far from every leaf becomes a new leaf with a new id."""
    st = initial_state(np.stack([unit(1, 0), unit(0, 1)]))
    sums = np.zeros((3, D))
    sums[2] = 50 * unit(0, 0, 0, 1)
    st2, diag = aggregate_round(st, sums, noise_var=1.0, config=AggregationConfig(memory=0.0))
    assert diag.new_leaves == ("leaf-0002",)
    assert np.allclose(st2.centroids[-1], unit(0, 0, 0, 1))
    assert st2.num_leaves == 3 and st2.next_id == 3


def test_split_then_prune_when_nothing_comes() -> None:
    """A heavy leaf gets a split sibling; a sibling that never attracts mass is pruned."""
    st = initial_state(np.stack([unit(1, 0), unit(0, 1)]))
    cfg = AggregationConfig(memory=0.0, split_mass=5.0, prior_strength=0.0, prune_after=1)
    sums = np.zeros((3, D))
    sums[0] = 20 * unit(1, 0)
    st2, diag = aggregate_round(st, sums, noise_var=0.0, config=cfg, rng=np.random.default_rng(0))
    assert diag.split == ("leaf-0000",) and st2.num_leaves == 3
    sums2 = np.zeros((4, D))
    sums2[0] = 20 * unit(1, 0)
    _st3, diag3 = aggregate_round(
        st2, sums2, noise_var=0.0, config=cfg, rng=np.random.default_rng(0)
    )
    assert "leaf-0002" in diag3.pruned


def test_bad_sums_are_rejected() -> None:
    """Wrong shape or NaN in the cohort sum is an InvalidReleaseError."""
    st = initial_state(np.eye(D)[:2])
    with pytest.raises(InvalidReleaseError, match="shape"):
        aggregate_round(st, np.zeros((2, D)), noise_var=1.0)
    bad = np.zeros((3, D))
    bad[0, 0] = np.nan
    with pytest.raises(InvalidReleaseError, match="NaN"):
        aggregate_round(st, bad, noise_var=1.0)


def test_state_checkpoint_round_trip() -> None:
    """to_arrays/from_arrays restore the state exactly."""
    from server.aggregation import LeafState

    st = initial_state(np.eye(D)[:3])
    st2, _ = aggregate_round(st, np.ones((4, D)), noise_var=0.5)
    back = LeafState.from_arrays(st2.to_arrays())
    assert back.ids == st2.ids and np.array_equal(back.acc, st2.acc) and back.next_id == st2.next_id
