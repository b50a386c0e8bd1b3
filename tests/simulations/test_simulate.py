"""Real Flower simulations (Ray backend) of the whole pipeline, kept small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS as SECAGG_PROTOCOL_RECORD,
)

from client.store import EventStore
from common.config import PrivacyConfig, RunConfig
from common.hierarchy import Hierarchy
from common.records import (
    COUNTS,
    REPLY_ARRAYS,
    REPLY_META,
    SUMS,
    ReleaseMode,
    ReplyKeys,
    ReplyStatus,
)
from simulations.evaluation import METRIC_KEYS
from simulations.options import Engine
from simulations.simulate import SimulateOptions, simulate

pytestmark = pytest.mark.slow


def _options(out: Path, cache: Path, mode: ReleaseMode, **over: Any) -> SimulateOptions:
    run = RunConfig(rounds=2, seed=3, privacy=PrivacyConfig(epsilon=2.0, mode=mode))
    base: dict[str, Any] = dict(
        dataset="synthetic", clients=6, out=out, run=run, events_per_user=25, cache=cache
    )
    base.update(over)
    return SimulateOptions(**{"engine": Engine.DEVICES, **base})


def _record_keys(msg: Any) -> dict[str, Any]:
    c = msg.content
    return {
        "arrays": {
            k: {a: (v.dtype, tuple(v.shape)) for a, v in rec.items()}
            for k, rec in c.array_records.items()
        },
        "configs": {k: dict(rec) for k, rec in c.config_records.items()},
        "metrics": {k: dict(rec) for k, rec in c.metric_records.items()},
    }


def test_secagg_simulation_end_to_end(tmp_path: Path, cache: Path) -> None:
    """6 clients x 2 rounds under SecAgg+: files written, metrics vs baselines, ledgers filled,
    and every reply the server receives is SecAgg+ protocol material or allow-listed metadata."""
    replies: list[Any] = []
    out = tmp_path / "run"
    metrics = simulate(_options(out, cache, ReleaseMode.SECAGG), on_reply=replies.append)
    for name in ("hierarchy.json", "metrics.json", "rounds.jsonl", "config.json"):
        assert (out / name).is_file(), name
    h = Hierarchy.load(out / "hierarchy.json")
    assert h.version == 2 and h.level(1) and h.leaves
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["server_round"] for r in rounds] == [1, 2] and all(
        r["status"] == "ok" for r in rounds
    )
    # user level by default, integer noise under SecAgg+ (calibrated and composed with RDP)
    assert rounds[-1]["epsilon_user_level"] == pytest.approx(2.0, rel=0.01)
    for key in ("federated", "centralized", "catalogue", "seed_method"):
        assert set(metrics[key]) == set(METRIC_KEYS)
    assert set(metrics["ratio"]) == set(METRIC_KEYS) == set(metrics["seed_method_ratio"])
    assert (
        metrics["mode"] == "secagg" and metrics["rounds_completed"] == 2 and metrics["clients"] == 6
    )
    assert 0 < metrics["bytes_up_per_client_per_round"] < 512 * 1024
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["federated"] == pytest.approx(metrics["federated"])
    stores = sorted((out / "clients").glob("*.db"))
    assert len(stores) == 6
    for p in stores:
        with EventStore(p, create=False) as s:
            # leaf sums in rounds 1 and 2, plus the DP item counts of the last round
            got = [(e.server_round, e.mechanism.value, e.details["task"]) for e in s.ledger()]
            assert got == [
                (1, "discrete_gaussian", "leaf-sums"),
                (2, "discrete_gaussian", "leaf-sums"),
                (2, "discrete_gaussian", "item-counts"),
            ]
            assert all(e.scope.value == "user" for e in s.ledger())
    # egress: SecAgg+ replies carry protocol records and the allow-listed metadata only
    assert replies
    for r in replies:
        if r.has_error():
            continue
        k = _record_keys(r)
        assert set(k["configs"]) <= {SECAGG_PROTOCOL_RECORD, "fitres.metrics", "fitres.status"}, k[
            "configs"
        ].keys()
        if "fitres.metrics" in k["configs"]:
            meta = k["configs"]["fitres.metrics"]
            assert set(meta) == {
                ReplyKeys.STATUS,
                ReplyKeys.SERVER_ROUND,
                ReplyKeys.HIERARCHY_VERSION,
            }
            assert meta[ReplyKeys.STATUS] == ReplyStatus.OK.value
            assert k["metrics"] == {"fitres.num_examples": {"num_examples": 1}}
            assert all(not arrays for arrays in k["arrays"].values()), (
                "plaintext release left in the reply"
            )
        else:
            assert not k["arrays"] and not k["metrics"]


def test_local_mode_replies_are_exactly_the_allow_list(tmp_path: Path, cache: Path) -> None:
    """In local mode every reply is one float32 (k+1, d) array plus status/round/version."""
    replies: list[Any] = []
    metrics = simulate(
        _options(tmp_path / "run", cache, ReleaseMode.LOCAL), on_reply=replies.append
    )
    # 6 clients x 2 rounds of leaf sums, then one item-count release each after the last round
    assert metrics["mode"] == "local" and len(replies) == 18
    kinds = []
    for r in replies:
        k = _record_keys(r)
        assert set(k["arrays"]) == {REPLY_ARRAYS}
        (name,) = set(k["arrays"][REPLY_ARRAYS])
        kinds.append(name)
        dtype, shape = k["arrays"][REPLY_ARRAYS][name]
        assert dtype == "float32"
        if name == SUMS:
            assert len(shape) == 2 and shape[1] == 128
        else:
            assert name == COUNTS and len(shape) == 1 and shape[0] > 0
        assert set(k["configs"]) == {REPLY_META} and not k["metrics"]
        meta = k["configs"][REPLY_META]
        assert set(meta) == {ReplyKeys.STATUS, ReplyKeys.SERVER_ROUND, ReplyKeys.HIERARCHY_VERSION}
        assert all(isinstance(v, (int, str)) for v in meta.values())
    assert kinds.count(SUMS) == 12 and kinds.count(COUNTS) == 6


def test_events_file_without_categories_omits_metrics(tmp_path: Path, cache: Path) -> None:
    """`events:FILE` works on any JSONL of events; without categories metrics are omitted."""
    from simulations.datasets.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=5, seed=3, events_per_user=25))
    path = tmp_path / "events.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for e in ds.events:
            d = e.to_dict()
            d.pop("category", None)
            f.write(json.dumps(d) + "\n")
    metrics = simulate(
        _options(tmp_path / "run", cache, ReleaseMode.SECAGG, dataset=f"events:{path}")
    )
    assert "federated" not in metrics and "ratio" not in metrics
    assert metrics["rounds_completed"] == 2 and metrics["dataset"] == "events:events.jsonl"


def test_secagg_sum_equals_the_sum_of_noisy_releases(tmp_path: Path) -> None:
    """Under SecAgg+ the server's cohort sum equals the sum of what the devices released
    (within the quantisation step), and no reply it receives contains any device's release."""
    from flwr.app import Context, Message
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from common.secagg_wire import read_fitins, to_fitres
    from server.collectors import MeteredGrid
    from server.secagg import secagg_sum

    n, shape = 5, (4, 6)
    sent_dir = tmp_path / "sent"
    sent_dir.mkdir()
    client = ClientApp()

    @client.train(mods=[secaggplus_mod])
    def train(msg: Message, ctx: Context) -> Message:
        _, _cfg = read_fitins(msg.content)
        pid = int(ctx.node_config["partition-id"])
        release = np.random.default_rng(pid).normal(0, 3.0, size=shape)
        np.save(sent_dir / f"{pid}.npy", release)
        return Message(
            to_fitres(release, {"status": "ok", "server-round": 1, "hierarchy-version": 0}),
            reply_to=msg,
        )

    received: list[np.ndarray] = []
    result: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        import time

        while len(list(grid.get_node_ids())) < n:
            time.sleep(0.1)

        def keep(msg: Message) -> None:
            if not msg.has_error():
                for rec in msg.content.array_records.values():
                    received.extend(a.numpy() for a in rec.values())
                for rec in msg.content.config_records.values():
                    for v in rec.values():
                        if isinstance(v, list):
                            received.extend(
                                np.frombuffer(b, dtype=np.uint8) for b in v if isinstance(b, bytes)
                            )

        outcome = secagg_sum(
            MeteredGrid(grid, keep),
            context,
            list(grid.get_node_ids()),
            arrays=[np.zeros((3, 6), dtype=np.float32)],
            config={"server-round": 1},
            server_round=1,
            clipping_range=20.0,
            min_survivors=n,
        )
        result["total"], result["survivors"] = outcome.total, outcome.survivors

    run_simulation(
        server,
        client,
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    releases = [np.load(sent_dir / f"{i}.npy") for i in range(n)]
    assert result["survivors"] == n
    step = 2 * 20.0 / (1 << 22)  # quantisation step of each coordinate
    assert np.allclose(result["total"], np.sum(releases, axis=0), atol=n * step * 2)
    flat = [r.astype(np.float64).tobytes() for r in releases]
    for arr in received:
        assert arr.tobytes() not in flat
        for f in flat:
            assert f not in arr.tobytes()


def test_adapter_round_trip_in_simulation(tmp_path: Path, cache: Path) -> None:
    """With the adapter on: devices record DP-SGD in their ledgers, the server averages the
    updates with server-side DP noise and records it at user level, adapter replies stay
    within their allow-list, and the run's epsilon still meets the budget."""
    from common.config import AdapterConfig
    from common.privacy import Mechanism, Scope
    from common.records import ADAPTER_ARRAYS, ADAPTER_METRICS
    from server.storage import ServerStorage

    replies: list[Any] = []
    out = tmp_path / "run"
    opts = _options(out, cache, ReleaseMode.LOCAL)
    opts = SimulateOptions(
        **{
            **opts.__dict__,
            "run": RunConfig(
                rounds=2,
                seed=3,
                privacy=PrivacyConfig(
                    epsilon=3.0, mode=ReleaseMode.LOCAL, unit=Scope.EVENT, delta=1e-5
                ),
                adapter=AdapterConfig(enabled=True, steps=3),
            ),
        },
    )
    metrics = simulate(opts, on_reply=replies.append)
    assert metrics["rounds_completed"] == 2 and metrics["epsilon_event_level_total"] <= 3.0 + 1e-6
    assert "next_event_recall10" in metrics["adapter"]
    for p in sorted((out / "clients").glob("*.db")):
        with EventStore(p, create=False) as s:
            kinds = sorted(e.mechanism.value for e in s.ledger())
        assert kinds == ["dpsgd", "dpsgd", "gaussian_count", "gaussian_sum", "gaussian_sum"]
    with ServerStorage(out / "server.db") as st:
        user = [e for e in st.ledger() if e.scope is Scope.USER]
    assert sum(e.mechanism is Mechanism.SERVER_GAUSSIAN for e in user) == 2
    adapter_replies = [r for r in replies if ADAPTER_ARRAYS in r.content.array_records]
    assert len(adapter_replies) == 12
    for r in adapter_replies:
        k = _record_keys(r)
        assert set(k["arrays"][ADAPTER_ARRAYS]) == {"a", "b"}
        assert k["metrics"] == {ADAPTER_METRICS: {"num-examples": 1}}
        assert set(k["configs"]) == {REPLY_META}
    assert (out / "adapter.npz").is_file()
