"""The two simulation engines against each other, end to end on Flower's simulation engine
with the real encoder: one node per device versus shards of devices.

- noise off (local mode, so that the devices' sum is an exact float sum and not SecAgg+'s
  quantised one): the same trees, version by version;
- noise on: every device's ledger holds the same entries in both engines (the tree releases
  and the histogram over each new version).

The noise of the two engines is compared coordinate by coordinate in
tests/client/test_shard.py (the shard's one draw against the sum of device shares).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.shard_store import ShardStore
from client.store import EventStore
from common.config import AnalyticsConfig, PrivacyConfig, RunConfig
from common.hierarchy import Hierarchy
from common.records import ReleaseMode
from simulations.options import Engine, SimulateOptions
from simulations.simulate import simulate

USERS = 12


def _run(tmp: Path, engine: Engine, *, no_dp: bool, cache: Path) -> Path:
    out = tmp / f"{engine.value}-{'nodp' if no_dp else 'dp'}"
    run = RunConfig(
        rounds=2,
        privacy=PrivacyConfig(mode=ReleaseMode.LOCAL, no_dp=no_dp),
        analytics=AnalyticsConfig(histogram=True, popularity=False),
    )
    simulate(
        SimulateOptions(
            clients=USERS,
            out=out,
            run=run,
            engine=engine,
            workers=2,
            cache=cache,
            events_per_user=25,
        )
    )
    return out


def test_without_noise_both_engines_build_the_same_trees(tmp_path: Path, cache: Path) -> None:
    a = _run(tmp_path, Engine.DEVICES, no_dp=True, cache=cache)
    b = _run(tmp_path, Engine.BATCHED, no_dp=True, cache=cache)
    ha, hb = Hierarchy.load(a / "hierarchy.json"), Hierarchy.load(b / "hierarchy.json")
    assert ha.version == hb.version == 2
    ids_a, ca = ha.centroids(2)
    ids_b, cb = hb.centroids(2)
    assert ids_a == ids_b
    np.testing.assert_allclose(ca, cb, atol=1e-4)
    # the same groups of leaves (children listed by weight: near-ties may swap places)
    assert [(n.node_id, set(n.children)) for n in ha.level(1)] == [
        (n.node_id, set(n.children)) for n in hb.level(1)
    ]
    assert [n.weight for n in ha.level(2)] == pytest.approx(
        [n.weight for n in hb.level(2)], rel=1e-4
    )
    ra = [json.loads(x) for x in (a / "rounds.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "rounds.jsonl").read_text().splitlines()]
    assert [r["usable"] for r in ra] == [r["usable"] for r in rb] == [USERS, USERS]
    m = json.loads((b / "metrics.json").read_text())
    assert m["engine"]["name"] == "batched" and len(m["engine"]["workers"]) == 2
    assert sum(w["users"] for w in m["engine"]["workers"]) == USERS


def test_with_noise_every_ledger_holds_the_same_entries(tmp_path: Path, cache: Path) -> None:
    a = _run(tmp_path, Engine.DEVICES, no_dp=False, cache=cache)
    b = _run(tmp_path, Engine.BATCHED, no_dp=False, cache=cache)

    def key(e):  # type: ignore[no-untyped-def]
        return (e.mechanism, round(e.noise_multiplier, 9), e.sensitivity, e.server_round, e.scope)

    devices = []
    for i in range(USERS):
        with EventStore(a / "clients" / f"client-{i:05d}.db", create=False) as s:
            devices.append([key(e) for e in s.ledger()])
    shards = {}
    for path in sorted((b / "clients").glob("shard-*.db")):
        with ShardStore(path, read_only=True) as st:
            for u in st.read().users.tolist():
                shards[u] = [key(e) for e in st.user_ledger(u)]
    assert sorted(shards) == list(range(USERS))
    # 2 tree releases and 2 histograms each
    assert all(len(d) == 4 for d in devices)
    assert [shards[i] for i in range(USERS)] == devices
