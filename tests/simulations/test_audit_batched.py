"""`fedinterest audit` and `fedinterest report` on batched runs (``--engine batched``): each
user's epsilon from its own ledger in its shard store, one accounting per distinct ledger, and
the shard stores' cross-checks.

A real batched run (Flower, 30 users in 2 shard stores, 2 rounds) for the audit against an
independent per-user computation, the hostile cases and the report; shard stores written
directly (real SQLite through :class:`ShardStore`, real dp-accounting, no Flower) for a
population with many distinct ledgers, and, opt-in with --run-bench, for 100,000 users.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.shard_store import ShardData, ShardStore, StoredRelease
from common.config import PrivacyConfig, RunConfig
from common.errors import ConfigError
from common.privacy import (
    LedgerEntry,
    Mechanism,
    Scope,
    epsilon_of_entries,
    noise_multiplier_for_rounds,
)
from common.records import ReleaseTask
from simulations.audit import audit_run
from simulations.cli import main as cli_main
from simulations.options import Engine
from simulations.report import write_report
from simulations.simulate import SimulateOptions, simulate

USERS, WORKERS = 30, 2


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """30 users in 2 shard stores x 2 rounds (SecAgg+ mode, popularity in the last round)."""
    out = tmp_path_factory.mktemp("audit-batched") / "run"
    run = RunConfig(rounds=2, seed=3, privacy=PrivacyConfig(epsilon=2.0))
    simulate(
        SimulateOptions(
            clients=USERS,
            out=out,
            run=run,
            engine=Engine.BATCHED,
            workers=WORKERS,
            events_per_user=20,
            cache=cache,
            evaluate=False,
        )
    )
    return out


@pytest.fixture()
def run(batched_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(batched_run, out)
    return out


def _digests(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "clients").glob("*.db"))
    }


def _independent(run: Path, delta: float) -> dict[str, dict[str, Any]]:
    """Each user's figures computed on its own: its ledger (``ShardStore.user_ledger``) composed
    with ``epsilon_of_entries``, one user at a time."""
    out = {}
    for path in sorted((run / "clients").glob("shard-*.db")):
        with ShardStore(path, read_only=True) as st:
            users = sorted(st.ledger_ids())
            for u in users:
                # the run is user level: each entry carries its event-level multiplier
                entries = [
                    replace(
                        e, noise_multiplier=e.details["event_noise_multiplier"], scope=Scope.EVENT
                    )
                    if e.scope is Scope.USER
                    else e
                    for e in st.user_ledger(u)
                ]
                kinds = sorted({e.mechanism.value for e in entries})
                rounds = sorted({e.server_round for e in entries if e.server_round is not None})
                out[f"user-{u:05d}"] = {
                    "entries": len(entries),
                    "epsilon": epsilon_of_entries(entries, delta=delta),
                    "per_mechanism": {
                        k: epsilon_of_entries(
                            [e for e in entries if e.mechanism.value == k], delta=delta
                        )
                        for k in kinds
                    },
                    "per_round": {
                        str(r): epsilon_of_entries(
                            [e for e in entries if (e.server_round or 0) <= r], delta=delta
                        )
                        for r in rounds
                    },
                }
    return out


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        row["device"]: {k: row[k] for k in ("entries", "epsilon", "per_mechanism", "per_round")}
        for row in report["event_level"]["per_device"]
    }


@pytest.mark.slow
def test_clean_batched_run_audits_every_user(run: Path) -> None:
    """Every user's epsilon, per mechanism and per round equal the per-user computation; the
    shard stores are read, never written; nothing is flagged and the server's counts match."""
    before = _digests(run)
    report = audit_run(run)
    assert report["engine"] == "batched" and report["source"] == "user ledgers"
    assert report["flags"] == [], report["flags"]
    assert _rows(report) == _independent(run, 1e-6)
    head = report["headline"]
    assert head["unit"] == "user" and head["epsilon_user_level"] == pytest.approx(2.0, abs=0.01)
    ev = report["event_level"]
    assert ev["devices"] == USERS and ev["over_budget"] == []
    # every user took part in both rounds: one ledger for all (entries identical across shards
    # but for their created_at)
    assert ev["distinct_ledgers"] == 1
    # integer noise (the secagg default): the event level implied by a conditionally rounded
    # user-level release uses twice its rounded norm bound, so it is about twice the user level
    assert ev["epsilon_max"] == head["epsilon_event_level"] > head["epsilon_user_level"]
    assert [r["shards"] for r in ev["per_device"]] == [["shard-000"]] * 15 + [["shard-001"]] * 15
    assert report["crosscheck"]["shard_stores"] == {
        "expected": 2,
        "found": 2,
        "audited": 2,
        "missing": [],
        "unreadable": [],
        "unexpected": [],
    }
    assert report["crosscheck"]["users"] == {
        "expected": USERS,
        "found": USERS,
        "missing": [],
        "duplicated": [],
        "unexpected": [],
    }
    assert report["crosscheck"]["rounds"]["1"] == {"leaf-sums": {"server": 30, "ledgers": 30}}
    assert report["crosscheck"]["rounds"]["2"]["item-counts"] == {"server": 30, "ledgers": 30}
    assert report["mechanisms"]["discrete_gaussian"]["entries"] == 3 * USERS
    assert any("Batched engine" in g for g in report["guarantees"])
    assert json.loads((run / "audit.json").read_text())["engine"] == "batched"
    assert _digests(run) == before
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 0


@pytest.mark.slow
def test_missing_shard_store(run: Path) -> None:
    """A shard store removed: the file, its users and the rounds they took part in are named."""
    (run / "clients" / "shard-001.db").unlink()
    report = audit_run(run)
    assert report["flags"][:2] == [
        "shard-001: shard store clients/shard-001.db missing (config.json `workers` is 2)",
        "15 users of the run in no readable shard store: 15-29 (config.json `clients` is 30)",
    ]
    assert (
        "round 1: server counted 30 releases, user ledgers hold 15 (every user took part; no "
        "entry in user-00015, user-00016, user-00017, user-00018, user-00019, user-00020, "
        "user-00021, user-00022, user-00023, user-00024 and 5 more)"
    ) in report["flags"]
    assert report["crosscheck"]["shard_stores"]["missing"] == ["shard-001"]
    assert report["crosscheck"]["users"]["missing"] == list(range(15, 30))
    assert report["event_level"]["devices"] == 15
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_every_shard_store_gone(run: Path) -> None:
    """No shard store left: the server's announcement, said to be one."""
    shutil.rmtree(run / "clients")
    report = audit_run(run)
    assert report["source"] == "server announcements"
    assert "no readable shard store under clients/" in report["notes"][0]
    assert report["flags"][:2] == [
        "all 2 shard stores missing (clients/shard-000.db to clients/shard-001.db)",
        "30 users of the run in no readable shard store: 0-29 (config.json `clients` is 30)",
    ]


@pytest.mark.slow
def test_foreign_database_named_as_a_shard_store(run: Path) -> None:
    """Another program's SQLite file in shard-000.db's place is named, not read as a shard; a
    device store among the shards is said to be one; the other shard is audited."""
    clients = run / "clients"
    (clients / "shard-000.db").unlink()
    with contextlib.closing(sqlite3.connect(clients / "shard-000.db")) as con, con:
        con.execute("CREATE TABLE notes (body TEXT)")
    report = audit_run(run)
    flags = report["flags"]
    assert flags[0].startswith("shard-000: shard store cannot be audited: ")
    assert flags[0].endswith("is not a fedinterest shard store (meta kind None; tables notes).")
    assert flags[1] == (
        "15 users of the run in no readable shard store: 0-14 (config.json `clients` is 30)"
    )
    stores = report["crosscheck"]["shard_stores"]
    assert stores["unreadable"] == ["shard-000"] and stores["audited"] == 1
    assert report["event_level"]["devices"] == 15
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_store_the_run_did_not_have(run: Path, batched_run: Path) -> None:
    """A device store and a third shard store under clients/ are named; the copy's users are
    in two shard stores, their ledgers composed, so that they exceed their budget."""
    clients = run / "clients"
    shutil.copy(clients / "shard-001.db", clients / "shard-002.db")
    (clients / "client-00000.db").write_bytes(b"")
    report = audit_run(run)
    flags = report["flags"]
    assert flags[0].startswith("client-00000: shard store cannot be audited: ")
    assert "client-00000: a shard store the run did not have (config.json `workers` is 2)" in flags
    assert "shard-002: a shard store the run did not have (config.json `workers` is 2)" in flags
    assert (
        "users 15-29 are each in 2 shard stores (clients/shard-001.db, clients/shard-002.db): "
        "the ledgers of every copy are composed"
    ) in flags
    assert report["crosscheck"]["users"]["duplicated"] == list(range(15, 30))
    per = {r["device"]: r for r in report["event_level"]["per_device"]}
    assert per["user-00015"]["shards"] == ["shard-001", "shard-002"]
    assert per["user-00015"]["entries"] == 2 * per["user-00000"]["entries"]
    assert report["event_level"]["over_budget"] == [f"user-{u:05d}" for u in range(15, 30)]
    assert any(f.startswith("15 users (user-00015, ") and "over budget" in f for f in flags)


@pytest.mark.slow
def test_user_duplicated_across_shards(run: Path) -> None:
    """User 3 added to shard-001 with a ledger there too: flagged by name with both files, and
    its epsilon composes both ledgers (over its budget); the others keep theirs."""
    with ShardStore(run / "clients" / "shard-001.db", read_only=True) as st:
        released = st.ledger_ids()[15]
    with contextlib.closing(sqlite3.connect(run / "clients" / "shard-001.db")) as con, con:
        local = con.execute("SELECT max(local) FROM users").fetchone()[0] + 1
        con.execute("INSERT INTO users VALUES (3, ?, 'copy', 2.0)", (local,))
        con.executemany(
            "INSERT INTO ledger (user, seq, mechanism, release_key) VALUES (3, ?, ?, 'copied')",
            list(enumerate(released, start=1)),
        )
    report = audit_run(run)
    assert (
        "user 3 is in 2 shard stores (clients/shard-000.db, clients/shard-001.db): the "
        "ledgers of every copy are composed"
    ) in report["flags"]
    assert report["crosscheck"]["users"]["duplicated"] == [3]
    per = {r["device"]: r for r in report["event_level"]["per_device"]}
    assert per["user-00003"]["shards"] == ["shard-000", "shard-001"]
    with ShardStore(run / "clients" / "shard-000.db", read_only=True) as a:
        mine = a.user_ledger(3)
    with ShardStore(run / "clients" / "shard-001.db", read_only=True) as b:
        copy = b.user_ledger(3)
    assert per["user-00003"]["epsilon_user"] == epsilon_of_entries(
        [*mine, *copy], delta=1e-6, scope=Scope.USER
    )
    assert report["event_level"]["over_budget"] == ["user-00003"]
    assert per["user-00004"]["epsilon_user"] == pytest.approx(2.0, rel=0.01)
    assert report["event_level"]["devices"] == USERS


@pytest.mark.slow
def test_deleted_ledger_row_and_release(run: Path) -> None:
    """User 4's round-1 ledger row deleted: the gap names the user and the file, the shard's
    stored release counts one more releasing user than its rows, the server one more than
    the ledgers. Deleting its last row leaves no gap; the release and the round still show."""
    with contextlib.closing(sqlite3.connect(run / "clients" / "shard-000.db")) as con, con:
        con.execute("DELETE FROM ledger WHERE user = 4 AND seq = 1")
        con.execute("DELETE FROM ledger WHERE user = 5 AND seq = 3")
        key = con.execute("SELECT key FROM releases WHERE key LIKE 'release:1:%'").fetchone()[0]
    flags = audit_run(run)["flags"]
    assert (
        f"clients/shard-000.db: release {key!r} stored with 15 releasing users, the ledger "
        "rows of that release number 14"
    ) in flags
    assert (
        "round 1: server counted 30 releases, user ledgers hold 29 (every user took part; no "
        "entry in user-00004)"
    ) in flags
    assert (
        "round 2: server counted 30 item-counts releases, user ledgers hold 29 (every user "
        "took part; no entry in user-00005)"
    ) in flags
    assert "user-00004 (clients/shard-000.db): 1 ledger row deleted (number 1 of 1-3 missing)" in (
        flags
    )
    assert not any(f.startswith("user-00005 ") for f in flags)
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_clients_in_config_against_users_found(run: Path) -> None:
    """config.json's `clients` against the users found, both ways; a batched config without
    `workers` is refused, naming the file and the value."""
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "clients": 31}))
    report = audit_run(run)
    assert report["flags"][0] == (
        "1 user of the run in no readable shard store: 30 (config.json `clients` is 31)"
    )
    cfg_path.write_text(json.dumps({**cfg, "clients": 29}))
    report = audit_run(run)
    assert report["flags"][0] == (
        "clients/shard-001.db: 1 user the run did not have: 29 (config.json `clients` is 29: "
        "users 0-28)"
    )
    assert report["crosscheck"]["users"]["unexpected"] == [29]
    cfg_path.write_text(json.dumps({**cfg, "workers": None}))
    with pytest.raises(ConfigError, match=r"`workers` must be an integer >= 1 in a batched run"):
        audit_run(run)


@pytest.mark.slow
def test_audit_store_refuses_a_shard_store(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit --store` names a shard store for what it is and points at the run directory."""
    shard = run / "clients" / "shard-000.db"
    before = _digests(run)
    assert cli_main(["audit", "--store", str(shard)]) != 0
    assert "is a batched run's shard store" in capsys.readouterr().err
    assert _digests(run) == before


@pytest.mark.slow
def test_report_renders_a_batched_run(run: Path) -> None:
    """The report audits the users' ledgers, says why the per-version metrics are missing,
    and leaves the shard stores as they were."""
    from simulations.report.data import load_run

    before = _digests(run)
    res = write_report(run)
    assert res.sections == ("tree", "privacy", "utility", "parameters")
    assert res.summary["audit_flags"] == 0
    data = load_run(run)
    assert data.audit is not None and data.audit["event_level"]["devices"] == USERS
    assert data.utility == [] and "no ground-truth categories" in data.utility_note
    page = res.path.read_text()
    assert "batched: 2 shard stores" in page and "no ground-truth categories" in page
    assert "not measured (batched engine: bytes per shard)" in page
    assert _digests(run) == before


# --------------------------------------------------------------------------------------------
# shard stores written directly: many users, many distinct ledgers
# --------------------------------------------------------------------------------------------


def write_synthetic_batched_run(
    d: Path, *, users: int, workers: int, rounds: int, fraction: float, seed: int = 0
) -> None:
    """A batched run directory as the batched engine leaves it, for the audit: ``config.json``,
    ``rounds.jsonl`` and ``workers`` shard stores (no events), each round releasing the leaf
    sums of a random ``fraction`` of the users and, in the last round, their item counts; user
    1's budget is overridden."""
    rng = np.random.default_rng(seed)
    delta = 1e-5
    z = noise_multiplier_for_rounds(epsilon=2.0, delta=delta, rounds=rounds + 1)
    d.mkdir(parents=True)
    (d / "clients").mkdir()
    cohorts = [np.flatnonzero(rng.random(users) < fraction) for _ in range(rounds)]
    records = []
    for r, cohort in enumerate(cohorts, start=1):
        rec: dict[str, Any] = {
            "server_round": r,
            "status": "ok",
            "noise_multiplier": z,
            "sampled": len(cohort),
            "usable": len(cohort),
            "statuses": {"ok": len(cohort)},
            "epsilon_event_level": 0.0,
        }
        if r == rounds:
            rec["analytics"] = {"popularity": {"usable": len(cohort)}}
        records.append(rec)
    (d / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    config = {
        "dataset": "synthetic",
        "clients": users,
        "engine": "batched",
        "workers": workers,
        "run": {
            "rounds": rounds,
            "privacy": {
                "epsilon": 2.0,
                "delta": delta,
                "mode": "secagg",
                "clipping_norm": 1.0,
                "max_weight": 1.0,
                "accountant": "pld",
            },
        },
        "device_budget_epsilon": 2.0,
        "device_budgets": {"1": 0.5},
    }
    (d / "config.json").write_text(json.dumps(config))
    for s, block in enumerate(np.array_split(np.arange(users, dtype=np.int64), workers)):
        empty = np.zeros(0)
        data = ShardData(
            users=block,
            names=[f"u{u}" for u in block.tolist()],
            budgets=np.full(len(block), 2.0),
            user=empty.astype(np.int32),
            timestamp=empty,
            event_type=empty.astype(np.int8),
            text=empty.astype(np.int32),
            item=empty.astype(np.int32),
            dwell=empty.astype(np.float32),
            value=empty.astype(np.float32),
            text_hashes=[],
            embeddings=np.zeros((0, 384), np.float32),
            item_ids=[],
            model_id="synthetic",
        )
        seq = dict.fromkeys(block.tolist(), 0)
        with ShardStore(d / "clients" / f"shard-{s:03d}.db", create=True) as st:
            st.write(data)
            for r, cohort in enumerate(cohorts, start=1):
                members = cohort[(cohort >= block[0]) & (cohort <= block[-1])]
                tasks = [ReleaseTask.LEAF_SUMS] + ([ReleaseTask.ITEM_COUNTS] * (r == rounds))
                for task in tasks:
                    mechanism = (
                        Mechanism.GAUSSIAN_SUM
                        if task is ReleaseTask.LEAF_SUMS
                        else Mechanism.GAUSSIAN_COUNT
                    )
                    entry = LedgerEntry(
                        mechanism, z, 1.0, server_round=r, details={"task": task.value}
                    )
                    us = members.tolist()
                    for u in us:
                        seq[u] += 1
                    key = (
                        f"release:{r}:{r - 1}"
                        if task is ReleaseTask.LEAF_SUMS
                        else f"release-{task.value}:{r}:{r - 1}"
                    )
                    st.record_release(
                        key,
                        entry,
                        us,
                        [seq[u] for u in us],
                        StoredRelease("bench", members, np.zeros(4), len(us), {"ok": len(us)}),
                    )


def test_grouped_audit_equals_the_per_user_computation(tmp_path: Path) -> None:
    """2,000 users in 4 shard stores, 6 rounds of random cohorts: hundreds of distinct
    ledgers, each composed once; every user's figures equal its own computation, the budget
    override of user 1 is applied to user 1 alone, and nothing else is flagged."""
    run = tmp_path / "run"
    write_synthetic_batched_run(run, users=2000, workers=4, rounds=6, fraction=0.5)
    report = audit_run(run)
    ev = report["event_level"]
    assert ev["devices"] == 2000 and 40 < ev["distinct_ledgers"] < 2000
    own = _independent(run, 1e-5)
    # a user in no cohort has an empty ledger, as an unused device has
    empty = {"entries": 0, "epsilon": 0.0, "per_mechanism": {}, "per_round": {}}
    assert _rows(report) == {f"user-{u:05d}": own.get(f"user-{u:05d}", empty) for u in range(2000)}
    over = [f for f in report["flags"] if "over budget" in f]
    one = {r["device"]: r for r in ev["per_device"]}["user-00001"]
    assert (one["epsilon"] > 0.5) == (ev["over_budget"] == ["user-00001"])
    assert [f for f in report["flags"] if f not in over] == []
    assert all(f.startswith("user-00001: over budget") for f in over)
    assert (
        report["crosscheck"]["rounds"]["6"]["item-counts"]["server"]
        == (report["crosscheck"]["rounds"]["6"]["item-counts"]["ledgers"])
    )


@pytest.mark.bench
def test_audit_of_100000_users(tmp_path: Path) -> None:
    """100,000 users in 8 shard stores, 10 rounds of 30% cohorts: the audit's wall time."""
    run = tmp_path / "run"
    t0 = time.perf_counter()
    write_synthetic_batched_run(run, users=100_000, workers=8, rounds=10, fraction=0.3)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = audit_run(run)
    seconds = time.perf_counter() - t0
    size = (run / "audit.json").stat().st_size
    print(
        f"\n100,000 users: shard stores written in {written:.1f}s; audit {seconds:.1f}s, "
        f"{report['event_level']['distinct_ledgers']} distinct ledgers, audit.json "
        f"{size / 1e6:.1f} MB"
    )
    assert report["event_level"]["devices"] == 100_000
    assert [f for f in report["flags"] if not f.startswith("user-00001: over budget")] == []
    assert seconds < 120


@pytest.mark.slow
def test_every_kind_of_release_is_checked_against_its_announcement(run: Path) -> None:
    """A user-ledger mechanism of the item-count release whose noise multiplier was lowered
    (as a device that added too little noise would record it) is flagged, naming the task,
    like a leaf-sum one."""
    with contextlib.closing(sqlite3.connect(run / "clients" / "shard-000.db")) as con, con:
        rows = con.execute("SELECT id, entry FROM mechanisms").fetchall()
        counts = [
            (i, json.loads(e))
            for i, e in rows
            if json.loads(e)["details"].get("task") == "item-counts"
        ]
        assert counts, "the run released item counts"
        mid, entry = counts[0]
        entry["noise_multiplier"] *= 0.5
        con.execute("UPDATE mechanisms SET entry = ? WHERE id = ?", (json.dumps(entry), mid))
    flags = audit_run(run)["flags"]
    assert any("item-counts: ledger noise multiplier" in f for f in flags), flags
