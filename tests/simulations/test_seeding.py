"""``--seeding catalogue``: the first round's leaves from k-means on the public catalogue (a
real Flower simulation, batched engine, kept small)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import ClusteringConfig, PrivacyConfig, RunConfig
from common.errors import ConfigError
from common.hierarchy import Hierarchy
from simulations.options import Engine
from simulations.seeding import SEEDS_FILE
from simulations.simulate import SimulateOptions, simulate

pytestmark = pytest.mark.slow


def _small_run(
    tmp_path: Path, cache: Path, clustering: ClusteringConfig
) -> tuple[RunConfig, Path, dict[str, Any]]:
    """Two rounds of 300 synthetic devices on the batched engine with ``clustering``."""
    run = RunConfig(rounds=2, seed=4, privacy=PrivacyConfig(epsilon=4.0), clustering=clustering)
    out = tmp_path / "run"
    options = SimulateOptions(
        dataset="synthetic",
        clients=300,
        out=out,
        run=run,
        events_per_user=25,
        cache=cache,
        engine=Engine.BATCHED,
    )
    return run, out, simulate(options)


def test_catalogue_seeding_run(tmp_path: Path, cache: Path) -> None:
    """The run writes its seeds (k unit rows in the projected space), starts from them, states
    its seeding in metrics.json and compares against baselines started from the same seeds."""
    run, out, m = _small_run(tmp_path, cache, ClusteringConfig(seeding="catalogue", seed_leaves=24))
    seeds = np.load(out / SEEDS_FILE)
    assert seeds.shape == (24, 128)
    np.testing.assert_allclose(np.linalg.norm(seeds, axis=1), 1.0, atol=1e-5)
    assert m["seeding"] == "catalogue" and m["rounds_completed"] == 2
    h = Hierarchy.load(out / "hierarchy.json")
    assert 2 <= len(h.leaves) <= 24 + run.clustering.max_leaves
    assert set(m["centralized"]) == set(m["federated"])


def test_private_seeding_run(tmp_path: Path, cache: Path) -> None:
    """``--seeding private``: round 1 releases over the public codebook (as many leaves as
    cells in its request), round 2 over at most ``seed_leaves`` leaves reduced from it; no
    seeds file, the seeding stated in metrics.json, the baselines computed."""
    clustering = ClusteringConfig(seeding="private", seed_leaves=24, codebook_size=64)
    _, out, m = _small_run(tmp_path, cache, clustering)
    assert not (out / SEEDS_FILE).exists()
    assert m["seeding"] == "private" and m["rounds_completed"] == 2
    assert m["seeding_detail"]["codebook_size"] == 64
    versions = [Hierarchy.from_json(b) for b in _versions(out)]
    assert len(versions) == 2 and len(versions[0].leaves) <= 24
    assert set(m["centralized"]) == set(m["federated"])


def _versions(out: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(out / "server.db") as con:
        return [b for (b,) in con.execute("SELECT body FROM versions ORDER BY version")]


def test_catalogue_seeding_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="`seeding` must be one of auto, vocabulary, catalogue"):
        ClusteringConfig(seeding="lsh")
    with pytest.raises(ConfigError, match="`codebook_size` must be an int in"):
        ClusteringConfig(seeding="private", codebook_size=300)
    with pytest.raises(ConfigError, match="`seed_leaves` must be an int in"):
        ClusteringConfig(seeding="catalogue", seed_leaves=1)
    assert replace(ClusteringConfig(), seeding="catalogue").seed_leaves is None
