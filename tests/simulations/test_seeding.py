"""``--seeding catalogue``: the first round's leaves from k-means on the public catalogue (a
real Flower simulation, batched engine, kept small)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.config import ClusteringConfig, PrivacyConfig, RunConfig
from common.errors import ConfigError
from common.hierarchy import Hierarchy
from simulations.options import Engine
from simulations.seeding import SEEDS_FILE
from simulations.simulate import SimulateOptions, simulate

pytestmark = pytest.mark.slow


def test_catalogue_seeding_run(tmp_path: Path, cache: Path) -> None:
    """The run writes its seeds (k unit rows in the projected space), starts from them, states
    its seeding in metrics.json and compares against baselines started from the same seeds."""
    run = RunConfig(
        rounds=2,
        seed=4,
        privacy=PrivacyConfig(epsilon=4.0),
        clustering=ClusteringConfig(seeding="catalogue", seed_leaves=24),
    )
    out = tmp_path / "run"
    m = simulate(
        SimulateOptions(
            dataset="synthetic",
            clients=300,
            out=out,
            run=run,
            events_per_user=25,
            cache=cache,
            engine=Engine.BATCHED,
        )
    )
    seeds = np.load(out / SEEDS_FILE)
    assert seeds.shape == (24, 128)
    np.testing.assert_allclose(np.linalg.norm(seeds, axis=1), 1.0, atol=1e-5)
    assert m["seeding"] == "catalogue" and m["rounds_completed"] == 2
    h = Hierarchy.load(out / "hierarchy.json")
    assert 2 <= len(h.leaves) <= 24 + run.clustering.max_leaves
    assert set(m["centralized"]) == set(m["federated"])


def test_catalogue_seeding_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="`seeding` must be auto, vocabulary or catalogue"):
        ClusteringConfig(seeding="lsh")
    with pytest.raises(ConfigError, match="`seed_leaves` must be an int in"):
        ClusteringConfig(seeding="catalogue", seed_leaves=1)
    assert replace(ClusteringConfig(), seeding="catalogue").seed_leaves is None
