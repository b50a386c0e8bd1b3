"""Loopback deployment: a real SuperLink and real SuperNodes on 127.0.0.1 with TLS and node
authentication, the fedinterest app over SecAgg+, a node stopped mid-round, an unregistered
node refused, and every process stopped by pid at the end. The run uses the multilingual
encoder; one node (sn2) runs from a fresh ``fedinterest[edge]`` virtualenv (no torch), whose
own ``fedinterest encode`` embeds its events before the node starts.

One scenario (module fixture) runs everything and records what happened; the tests check the
record. Set ``FEDINTEREST_DEPLOY_REPORT=/path.json`` to keep the measured timings and memory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.node import NodeSpec, generate_node_key, supernode_command
from common.deployment import flower_env
from server.deploy import (
    generate_certificates,
    parse_run_id,
    register_command,
    run_command,
    run_overrides,
    run_status,
    superlink_command,
    write_connection,
)
from tests.deployment._procs import ProcessBook, Started

pytestmark = [pytest.mark.slow, pytest.mark.deployment]

#: The whole scenario must finish within this (measured 2.5-5 min on 2 busy cores).
BUDGET_S = float(os.environ.get("FEDINTEREST_DEPLOY_BUDGET_S", "330"))
NODES = 3
CONNECTION = "loopback"
#: the node that runs from the torch-free ``edge`` install
EDGE_NODE = 2
ENCODER = "use-multilingual"
#: FEDINTEREST_DEPLOY_DROPOUT=crash SIGKILLs the node (no deactivation: the SuperLink notices
#: after two missed heartbeats, up to ~60 s more); default: the node is stopped (SIGTERM).
CRASH = os.environ.get("FEDINTEREST_DEPLOY_DROPOUT", "stop") == "crash"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _text(p: Path) -> str:
    try:
        return _ANSI.sub("", p.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


def _wait(
    what: str, cond: Callable[[], bool], deadline: float, proc: Started | None = None
) -> None:
    while not cond():
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                + _text(proc.log)[-3000:]
            )
        if time.monotonic() > deadline:
            tail = _text(proc.log)[-3000:] if proc is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def _logged(proc: Started, text: str) -> Callable[[], bool]:
    return lambda: text in _text(proc.log)


def _round_messages(log: Path, server_round: int) -> int:
    """Messages a SuperNode received for one round (its log names the round above each)."""
    count, current = 0, None
    for line in _text(log).splitlines():
        m = re.search(r"\[RUN \d+, ROUND (\d+)\]", line)
        if m:
            current = int(m.group(1))
        elif "Receiving:" in line and current == server_round:
            count += 1
    return count


def _prepare_devices(tmp: Path, encoder: Any) -> tuple[list[Path], Path, Path]:
    """One store per device (one synthetic user each), filled and embedded as `fedinterest
    ingest` + `fedinterest encode` do (the edge node's store is not embedded here: the edge
    install's own CLI does it); the first device keeps its latest events back for an ingest
    while its node runs. Plus the server's label file, as `fedinterest labels` writes it (one
    encoder for all, to save the test a few model loads)."""
    from client.encoder import encode_cached
    from client.store import EmbeddingCache, EventStore
    from common.events import read_jsonl
    from common.projection import DEFAULT_SEED, PublicProjection
    from common.vocabulary import default_vocabulary
    from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl
    from simulations.simulate import embed_labels

    ds = generate(SyntheticConfig(users=NODES, seed=5, events_per_user=40))
    by_user: dict[str, list[Any]] = {}
    for e in ds.events:
        by_user.setdefault(e.user_id, []).append(e)
    stores, late = [], tmp / "data" / "late.jsonl"
    for i, user in enumerate(sorted(by_user), start=1):
        events = sorted(by_user[user], key=lambda e: e.timestamp)
        keep = len(events) - max(3, len(events) // 5) if i == 1 else len(events)
        src = tmp / "data" / f"device{i}.jsonl"
        write_jsonl(events[:keep], src)
        if i == 1:
            write_jsonl(events[keep:], late)
        store = tmp / "devices" / f"sn{i}" / "device.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        with EventStore(store) as st, open(src, "rb") as f:
            assert st.ingest(read_jsonl(f)).accepted == keep
            if i != EDGE_NODE:
                todo = st.texts_without_embedding(encoder.model_id)
                encode_cached(encoder, st.embeddings, [t for _, t in todo])
        stores.append(store)
    labels = tmp / "server" / "labels.npz"
    labels.parent.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache.open(tmp / "labels-cache.db")
    try:
        projection = PublicProjection(encoder.dim, 128, DEFAULT_SEED, encoder.model_id)
        embed_labels(default_vocabulary(), encoder, cache, projection).save(labels)
    finally:
        cache.close()
    return stores, late, labels


def _from_edge(cmd: list[str], env: dict[str, str], edge_bin: Path) -> list[str]:
    """The same command from the edge virtualenv: its executable of that name, and its ``bin``
    first on PATH (a SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` from PATH),
    without the test's virtualenv."""
    env["PATH"] = os.pathsep.join([str(edge_bin), env.get("PATH", "")])
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return [str(edge_bin / Path(cmd[0]).name), *cmd[1:]]


def _scenario(
    tmp: Path, book: ProcessBook, rec: dict[str, Any], encoder: Any, edge_bin: Path
) -> None:
    t0 = time.monotonic()
    deadline = t0 + BUDGET_S
    times: dict[str, float] = rec["seconds"]

    def mark(key: str) -> None:
        times[key] = round(time.monotonic() - t0, 1)

    certs = generate_certificates(tmp / "certs")
    keys = [generate_node_key(tmp / "keys" / f"node{i}") for i in range(1, NODES + 2)]
    mark("certs_and_keys")
    port_link, *node_ports = _free_ports(NODES + 2)
    link = book.start(
        "superlink",
        superlink_command(
            certs, database=tmp / "server" / "state.db", host="127.0.0.1", port=port_link
        ),
        env=flower_env(tmp / "homes" / "superlink"),
        log=tmp / "logs" / "superlink.log",
        cwd=tmp,
    )
    address = f"127.0.0.1:{port_link}"
    stores, late, labels = _prepare_devices(tmp, encoder)  # while the SuperLink starts
    edge_env = dict(os.environ, FEDINTEREST_MODEL_CACHE=str(tmp / "model-cache" / "edge"))
    cmd = _from_edge(["fedinterest", "encode"], edge_env, edge_bin)
    done = subprocess.run(
        [*cmd, "--store", str(stores[EDGE_NODE - 1]), "--encoder", ENCODER, "--json"],
        env=edge_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rec["edge_encoded"] = json.loads(done.stdout)["encoded"]
    mark("stores_and_labels")
    _wait("the SuperLink", _logged(link, f"running on https://{address}"), deadline, link)
    mark("superlink_up")

    cli_env = flower_env(tmp / "homes" / "cli")
    write_connection(tmp / "homes" / "cli", address, certs.ca_cert, name=CONNECTION)
    regs = [
        book.start(
            f"register{i}",
            register_command(k.public, connection=CONNECTION, name=f"sn{i}"),
            env=cli_env,
            log=tmp / "logs" / f"register{i}.log",
            cwd=tmp,
        )
        for i, k in enumerate(keys[:NODES], start=1)
    ]
    for r in regs:
        rc = r.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert rc == 0, _text(r.log)
    mark("keys_registered")

    nodes = []
    for i in range(1, NODES + 2):  # the last one's key was never registered
        spec = NodeSpec(
            superlink=address,
            store=stores[i - 1] if i <= NODES else tmp / "devices" / "intruder.db",
            root_certificates=certs.ca_cert,
            private_key=keys[i - 1].private,
            port=node_ports[i - 1],
            # three devices: each accepts a secure sum of 2 (the default floor is 50)
            min_cohort=2,
            encoder=ENCODER,
        )
        name = f"sn{i}" if i <= NODES else "unregistered"
        env = flower_env(tmp / "homes" / name)
        env["FEDINTEREST_MODEL_CACHE"] = str(tmp / "model-cache" / name)
        cmd = supernode_command(spec)
        if i == EDGE_NODE:
            cmd = _from_edge(cmd, env, edge_bin)
        nodes.append(book.start(name, cmd, env=env, log=tmp / "logs" / f"{name}.log", cwd=tmp))

    overrides = run_overrides(
        run_dir=tmp / "server" / "run",
        labels_file=labels,
        expected_nodes=NODES,
        extra={
            "rounds": 2,
            "round-attempts": 1,  # round 2 must survive its dropout in one attempt
            "round-timeout": 120.0,
            "seed": 3,
            # noise shares sized for 2 of the 3 devices: the round completes without one
            "privacy-min-cohort-fraction": 0.6,
        },
    )
    run = book.start(
        "flwr-run",
        run_command(overrides, connection=CONNECTION),
        env=cli_env,
        log=tmp / "logs" / "flwr-run.log",
        cwd=tmp,
    )
    # the ServerApp starts while the nodes connect; it waits for all three
    for n in nodes[:NODES]:
        _wait(f"{n.name} to connect", _logged(n, "SuperNode ID:"), deadline, n)
    mark("supernodes_up")
    # the device keeps logging events while its node is up
    before = _count(stores[0])
    ingest = book.start(
        "ingest",
        [sys.executable, "-m", "simulations.cli", "ingest", "--store", str(stores[0]), str(late)],
        env=dict(os.environ),
        log=tmp / "logs" / "ingest.log",
        cwd=tmp,
    )
    rec["ingest_rc"] = ingest.popen.wait(timeout=120)
    rec["ingest_added"] = _count(stores[0]) - before
    rec["ingest_log"] = _text(ingest.log)[-500:]

    stopped = False
    victim = nodes[NODES - 1]
    while run.popen.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError("the run did not finish in time:\n" + _text(run.log)[-4000:])
        # stop the last node once it holds round 2's "collect masked vectors" message: it has
        # shared its keys, so SecAgg+ must reconstruct its masks from the survivors' shares
        if not stopped and _round_messages(victim.log, 2) >= 3:
            mark("node_stopped")
            book.stop(victim, kill_children_first=True, crash=CRASH)
            stopped = True
        time.sleep(0.2)
    mark("run_finished")
    rec["node_stopped"] = stopped
    rec["victim_round2_messages"] = _round_messages(victim.log, 2)
    out = _text(run.log)
    rec["run_log_tail"] = out[-3000:]
    run_id = parse_run_id(out)
    assert run_id is not None, out[-3000:]
    rec["run_status"] = run_status(run_id, connection=CONNECTION, env=cli_env)

    intruder = nodes[NODES]
    try:
        rec["unregistered_rc"] = intruder.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        rec["unregistered_rc"] = None
    rec["unregistered_log"] = _text(intruder.log)
    rec["superlink_log"] = _text(link.log)
    rec["run_dir"] = tmp / "server" / "run"
    rounds_file = rec["run_dir"] / "rounds.jsonl"
    if rounds_file.is_file():
        rec["round_seconds"] = [
            round(json.loads(x)["seconds"], 1) for x in rounds_file.read_text().splitlines() if x
        ]
    rec["stores"] = stores
    book.sample()
    rec["clientapp_processes"] = book.count("flwr-clientapp")
    rec["clientapp_peak_rss_mb"] = round(book.peak_kb("flwr-clientapp", "sn") / 1024, 1)
    rec["clientapp_peak_rss_mb_per_node"] = {
        f"sn{i}": round(book.peak_kb("flwr-clientapp", f"sn{i}") / 1024, 1)
        for i in range(1, NODES + 1)
    }
    rec["supernode_peak_rss_mb"] = {
        k: round(v / 1024, 1) for k, v in book.root_peak_kb.items() if k.startswith("sn")
    }
    rec["superexec_peak_rss_mb"] = round(book.peak_kb("flower-superexec", "sn") / 1024, 1)
    edge = f"sn{EDGE_NODE}"
    rec["edge_clientapp_cmds"] = sorted(
        {
            s.cmd.split()[0]
            for s in book.seen.values()
            if s.name == edge and "flwr-clientapp" in s.cmd
        }
    )
    rec["edge_clientapp_peak_rss_mb"] = round(book.peak_kb("flwr-clientapp", edge) / 1024, 1)
    rec["node_tree_peak_rss_mb"] = {
        k: round(v / 1024, 1) for k, v in book.tree_rss_peak_kb.items() if k.startswith("sn")
    }


def _count(store: Path) -> int:
    from client.store import EventStore

    with EventStore(store, create=False) as s:
        return s.count()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory, edge_venv: Path) -> Iterator[dict[str, Any]]:
    """Runs the scenario; whatever happens, stops every process it started (by pid)."""
    from client.encoder_registry import make_encoder

    encoder = make_encoder(ENCODER)
    tmp = tmp_path_factory.mktemp("loopback")
    book = ProcessBook()
    book.watch()
    rec: dict[str, Any] = {"seconds": {}, "tmp": tmp}
    t0 = time.monotonic()
    try:
        _scenario(tmp, book, rec, encoder, edge_venv)
    finally:
        t_stop = time.monotonic()
        rec["left_behind"] = book.stop_all()
        rec["seconds"]["stop"] = round(time.monotonic() - t_stop, 1)
        rec["seconds"]["total"] = round(time.monotonic() - t0, 1)
        report = os.environ.get("FEDINTEREST_DEPLOY_REPORT")
        if report:
            keep = {
                k: v
                for k, v in rec.items()
                if k in ("seconds", "round_seconds", "clientapp_peak_rss_mb",
                         "clientapp_peak_rss_mb_per_node", "node_tree_peak_rss_mb",
                         "edge_clientapp_peak_rss_mb", "edge_clientapp_cmds", "edge_encoded",
                         "supernode_peak_rss_mb", "superexec_peak_rss_mb",
                         "clientapp_processes", "run_status", "left_behind")
            }  # fmt: skip
            Path(report).write_text(json.dumps(keep, indent=1, default=str) + "\n")
        print("\nloopback deployment:", json.dumps(rec["seconds"]), flush=True)
    yield rec


def _rounds(rec: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(rec["run_dir"]) / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_run_completes_with_a_hierarchy(loopback: dict[str, Any]) -> None:
    """Two SecAgg+ rounds over real SuperNodes each produce a hierarchy version."""
    assert loopback["run_status"] == "finished:completed", loopback["run_log_tail"]
    rounds = _rounds(loopback)
    assert [r["server_round"] for r in rounds] == [1, 2]
    assert [r["status"] for r in rounds] == ["ok", "ok"], rounds
    assert [r["hierarchy_version"] for r in rounds] == [1, 2]
    run_dir = Path(loopback["run_dir"])
    from common.hierarchy import Hierarchy
    from server.storage import ServerStorage

    h = Hierarchy.load(run_dir / "hierarchy.json")
    assert h.version == 2 and len(h.level(1)) >= 1 and len(h.level(2)) >= 1
    with ServerStorage(run_dir / "server.db") as st:
        assert st.latest_version() is not None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rounds_completed"] == 2 and metrics["mode"] == "secagg"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["rounds"] == 2 and config["dataset"] == "deployment"


def test_secagg_round_completes_with_survivors(loopback: dict[str, Any]) -> None:
    """Round 1 sums all three releases; round 2 loses a node mid-protocol and completes
    with the two survivors, whose noise shares were sized for two."""
    assert loopback["node_stopped"], "the node was never stopped mid-round"
    r1, r2 = _rounds(loopback)
    assert r1["sampled"] == 3 and r1["usable"] == 3
    assert r2["sampled"] == 3 and r2["usable"] == 2, r2
    assert sum(r2["failures"].values()) >= 1, r2
    assert r2["min_cohort"] == 2
    # the survivors' shares carry the full noise: 2 x share variance = one device's full noise
    # (integer noise, the secagg default: times the rounding's inflation of the sensitivity)
    assert r2["noise_std"] >= r2["noise_multiplier"] / 2**0.5
    assert r2["noise_std"] == pytest.approx(r2["noise_multiplier"] / 2**0.5, rel=0.01)


def test_device_ledgers_have_entries(loopback: dict[str, Any]) -> None:
    """Every device recorded its releases; the stopped one has round 1 only."""
    from common.privacy import Scope
    from simulations.audit import audit_device

    rounds = {r["server_round"]: r for r in _rounds(loopback)}
    per_round = []
    for store in loopback["stores"]:
        # deployed devices keep their ledgers at user level (their default unit)
        dev = audit_device(store, delta=1e-6, round_config=rounds, sensitivity=1.0, unit=Scope.USER)
        assert dev.entries, f"{store} has an empty ledger"
        assert dev.flags == [], dev.flags
        per_round.append(sorted(dev.per_round))
    assert per_round[0] == [1, 2] and per_round[1] == [1, 2]
    assert per_round[2][0] == 1


def test_ingest_while_the_node_runs(loopback: dict[str, Any]) -> None:
    """`fedinterest ingest` adds events to a store its SuperNode is using."""
    assert loopback["ingest_rc"] == 0, loopback["ingest_log"]
    assert loopback["ingest_added"] >= 3


def test_unregistered_node_is_refused(loopback: dict[str, Any]) -> None:
    """A SuperNode whose key was never registered cannot join."""
    log = loopback["unregistered_log"]
    assert loopback["unregistered_rc"] not in (None, 0), log[-2000:]
    assert "SuperNode ID:" not in log
    assert "Failed to activate SuperNode" in log, log[-2000:]


def test_no_process_left_behind(loopback: dict[str, Any]) -> None:
    """Every process the test started, and every one Flower spawned under them, is gone."""
    assert loopback["left_behind"] == []
    assert loopback["clientapp_processes"] >= 3 * 4  # one per SecAgg+ stage and node


def test_edge_node_runs_without_torch_within_200_mb(loopback: dict[str, Any]) -> None:
    """The node installed with ``fedinterest[edge]`` ran its ClientApps from that install
    (no torch, transformers or opacus there: tests/client/test_edge_install.py), its own CLI
    embedded its events with the multilingual encoder, it released in both rounds, and no
    ClientApp process of it went above 200 MB peak RSS (embedding inside the round instead
    measured ~200 MB: docs/deployment.md)."""
    assert loopback["edge_encoded"] > 0
    cmds = loopback["edge_clientapp_cmds"]
    assert cmds and all("/edge" in c for c in cmds), cmds
    store = loopback["stores"][EDGE_NODE - 1]
    from client.encoder_registry import make_encoder
    from client.store import EventStore

    with EventStore(store, create=False) as st:
        assert st.embeddings.count(make_encoder(ENCODER).model_id) > 0
        assert sorted({e.server_round for e in st.ledger()}) == [1, 2]
    peak = loopback["edge_clientapp_peak_rss_mb"]
    assert 0 < peak < 200, peak
