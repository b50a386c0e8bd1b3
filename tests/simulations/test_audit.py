"""Audits: ledger-only recomputation on a real simulation, budgets, tamper flags, and the
empirical attack and bound."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from client.store import EventStore
from common.config import PrivacyConfig, RunConfig
from common.privacy import LedgerEntry, Mechanism
from common.privacy.ledger import Scope
from common.records import ReleaseMode
from server.storage import ServerStorage
from simulations.audit import audit_device, audit_run
from simulations.cli import main as cli_main
from simulations.empirical_audit import _attack, one_run_lower_bound
from simulations.options import Engine
from simulations.simulate import SimulateOptions, simulate


@pytest.fixture(scope="module")
def small_budget_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """6 devices x 3 rounds; device 0's budget allows exactly one release."""
    out = tmp_path_factory.mktemp("audit") / "run"
    run = RunConfig(
        rounds=3,
        seed=3,
        privacy=PrivacyConfig(epsilon=2.0, mode=ReleaseMode.LOCAL, unit=Scope.EVENT, delta=1e-5),
    )
    from common.privacy import gaussian_epsilon, noise_multiplier_for_rounds

    # the run calibrates its multiplier over the 3 tree rounds and the popularity release
    z = noise_multiplier_for_rounds(
        epsilon=2.0, delta=1e-5, rounds=run.gaussian_releases(popularity=True)
    )
    one = gaussian_epsilon(z, 1e-5)
    simulate(
        SimulateOptions(
            engine=Engine.DEVICES,
            clients=6,
            out=out,
            run=run,
            events_per_user=20,
            cache=cache,
            device_budgets={0: one * 1.2},
        )
    )
    return out


@pytest.mark.slow
def test_small_budget_device_stops_and_audit_is_clean(small_budget_run: Path) -> None:
    """The small-budget device releases leaf sums in round 1 only; the server keeps going with the others;
    audit.json shows every device within budget and matches dp-accounting."""
    rounds = [json.loads(x) for x in (small_budget_run / "rounds.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rounds] == ["ok", "ok", "ok"]
    assert rounds[0]["statuses"] == {"ok": 6}
    assert rounds[1]["statuses"] == {"ok": 5, "budget_exceeded": 1}
    report = audit_run(small_budget_run)
    assert (
        json.loads((small_budget_run / "audit.json").read_text())["event_level"]["over_budget"]
        == []
    )
    per = {d["device"]: d for d in report["event_level"]["per_device"]}
    # device 0: one leaf-sum release (round 1); the item-count release of the last round
    # costs as much as a round, which its remaining budget does not cover; device 1: three
    # sums plus the counts
    assert per["client-00000"]["entries"] == 1 and per["client-00001"]["entries"] == 4
    assert set(per["client-00000"]["per_round"]) == {"1"}
    assert set(per["client-00000"]["per_mechanism"]) == {"gaussian_sum"}
    assert set(per["client-00001"]["per_mechanism"]) == {"gaussian_sum", "gaussian_count"}
    assert report["event_level"]["epsilon_max"] == pytest.approx(2.0, rel=0.01)
    assert report["flags"] == []
    for key in ("epsilon_max", "epsilon_median"):
        assert key in report["event_level"]
    assert {"epsilon", "per_output"} <= set(report["user_level"]) and report["delta"] == 1e-5
    assert set(report["per_round"]) == {"1", "2", "3"} and "gaussian_sum" in report["mechanisms"]
    # the server's count of releases per round matches the ledgers (device 0 stops after 1)
    cross = report["crosscheck"]
    assert cross["device_stores"] == {
        "expected": 6,
        "found": 6,
        "audited": 6,
        "missing": [],
        "unreadable": [],
        "unexpected": [],
    }
    assert cross["rounds"]["1"] == {"leaf-sums": {"server": 6, "ledgers": 6}}
    assert cross["rounds"]["3"] == {
        "leaf-sums": {"server": 5, "ledgers": 5},
        "item-counts": {"server": 5, "ledgers": 5},
    }


@pytest.mark.slow
def test_audit_flags_tampering(small_budget_run: Path, tmp_path: Path) -> None:
    """A release stored without its ledger entry, a wrong noise multiplier, and an over-budget
    device are all flagged."""
    copy = tmp_path / "run"
    shutil.copytree(small_budget_run, copy)
    store = copy / "clients" / "client-00002.db"
    with EventStore(store) as s:
        s.connection.execute("DELETE FROM ledger WHERE server_round = 2")
        s.append_ledger(LedgerEntry(Mechanism.GAUSSIAN_SUM, 0.5, 1.0, server_round=9))
        s.set_state("release:9:0", b"x")
    report = audit_run(copy)
    flags = " | ".join(report["flags"])
    assert "release of round 2 stored without a ledger entry" in flags
    dev = audit_device(store, delta=1e-5, budget_epsilon=1.0)
    assert any(f.startswith("over budget") for f in dev.flags)


def test_one_run_bound_values() -> None:
    """All-correct guesses give the binomial bound; chance-level guesses give 0."""
    p = 0.05 ** (1 / 100)
    assert one_run_lower_bound(100, 100, 100, 0.0) == pytest.approx(np.log(p / (1 - p)), rel=1e-3)
    assert one_run_lower_bound(50, 100, 100, 1e-5) == 0.0
    assert one_run_lower_bound(70, 100, 100, 1e-5) > 0.0


def test_attack_finds_canaries_without_noise_not_with(tmp_path: Path) -> None:
    """From the server's view (centroids + cohort sums), the regression attack recovers
    membership of unit canaries when there is no noise, and fails under heavy noise."""
    from common.projection import PublicProjection

    rng = np.random.default_rng(0)
    proj = PublicProjection(384, 128)
    raw = rng.normal(size=(40, 384)).astype(np.float32)
    cv = proj(raw).astype(np.float64)
    present = rng.random(40) < 0.5
    centroids = -np.eye(128, dtype=np.float32)[:5]  # canaries land in the unassigned row
    for name, std in (("clean", 0.0), ("noisy", 50.0)):
        with ServerStorage(tmp_path / f"{name}.db") as st:
            total = np.zeros((6, 128))
            total[5] = (
                (cv[present]).sum(0) + rng.normal(0, std, 128) if std else (cv[present]).sum(0)
            )
            total[:5] += rng.normal(0, std, (5, 128)) if std else 0
            st.put_arrays(
                "round:1",
                {"centroids": centroids, "cohort_sum": total, "noise_var": std**2, "usable": 10},
            )
            scores = _attack(st, raw, proj, 1, threshold=0.5)
        top = np.argsort(-scores)[:20]
        acc = present[top].mean()
        if name == "clean":
            assert acc == 1.0
        else:
            assert acc < 0.9


@pytest.mark.slow
def test_audit_of_a_run_dir_without_device_stores(small_budget_run: Path, tmp_path: Path) -> None:
    """A deployed run's directory holds no device stores: the audit states the server's
    announced event-level spend and the user-level ledger, and says so."""
    d = tmp_path / "deployed"
    d.mkdir()
    for name in ("rounds.jsonl", "server.db", "hierarchy.json"):
        shutil.copy(small_budget_run / name, d / name)
    # a deployed run's config.json (server.deploy.write_run_config): no `clients`
    cfg = json.loads((small_budget_run / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("clients", "events_per_user")}
    cfg.update(dataset="deployment", engine="flower-deployment", expected_nodes=None)
    (d / "config.json").write_text(json.dumps(cfg))
    full = (
        json.loads((small_budget_run / "audit.json").read_text())
        if (small_budget_run / "audit.json").is_file()
        else audit_run(small_budget_run)
    )
    report = audit_run(d)
    assert report["source"] == "server announcements" and report["notes"]
    assert report["event_level"]["devices"] == 0
    assert report["event_level"]["epsilon_max"] == pytest.approx(2.0, rel=0.01)
    assert report["user_level"]["epsilon"] == pytest.approx(full["user_level"]["epsilon"])
    assert report["guarantees"] and (d / "audit.json").is_file()
    # nothing to cross-check against: the devices keep their ledgers
    assert report["flags"] == [] and report["crosscheck"]["rounds"] == {}
    assert cli_main(["audit", str(d), "--strict", "--quiet"]) == 0


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _digests(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "clients").glob("*.db"))
    }


@pytest.mark.slow
def test_audit_crosschecks_deleted_ledger_entries_and_releases(
    small_budget_run: Path, tmp_path: Path
) -> None:
    """A device's ledger rows and its stored release deleted together leave no trace a
    device-only audit sees; the server's record of each round's releases does: the round is
    flagged, the gap in the device's ledger numbers names the device, and `audit --strict`
    exits 1. Covering the gap (the ledger's counter reset) still leaves the round flagged."""
    run = _copy(small_budget_run, tmp_path)
    # both connections closed (a WAL checkpoint on close rewrites the file) before the digest
    with contextlib.closing(sqlite3.connect(run / "clients" / "client-00003.db")) as con, con:
        con.execute("DELETE FROM ledger WHERE server_round = 2")
        con.execute("DELETE FROM state WHERE key LIKE 'release%:2:%'")
    with contextlib.closing(sqlite3.connect(run / "clients" / "client-00004.db")) as con, con:
        # the last round's releases (leaf sums and item counts), then the counter
        con.execute("DELETE FROM ledger WHERE server_round = 3")
        con.execute("DELETE FROM state WHERE key LIKE 'release%:3:%'")
        con.execute(
            "UPDATE sqlite_sequence SET seq = (SELECT MAX(seq) FROM ledger) WHERE name = 'ledger'"
        )
    before = _digests(run)
    report = audit_run(run)
    flags = report["flags"]
    assert "round 2: server counted 5 releases, device ledgers hold 4" in flags
    assert "round 3: server counted 5 releases, device ledgers hold 4" in flags
    assert "round 3: server counted 5 item-counts releases, device ledgers hold 4" in flags
    assert "client-00003: 1 ledger row deleted (number 2 of 1-4 missing)" in flags
    assert not any(f.startswith("client-00004") for f in flags)
    assert report["crosscheck"]["rounds"]["2"]["leaf-sums"] == {"server": 5, "ledgers": 4}
    assert _digests(run) == before  # the audit reads the stores, never writes them
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1
    assert cli_main(["audit", str(run), "--quiet"]) == 0


@pytest.mark.slow
def test_audit_flags_a_missing_device_store(small_budget_run: Path, tmp_path: Path) -> None:
    """A store removed from clients/ is flagged by name, and each round it took part in; the
    others keep their own budgets (device 0's small budget is not handed to device 1)."""
    run = _copy(small_budget_run, tmp_path)
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 0
    (run / "clients" / "client-00000.db").unlink()
    report = audit_run(run)
    assert report["flags"] == [
        "client-00000: device store clients/client-00000.db missing (the run had 6 devices)",
        "round 1: server counted 6 releases, device ledgers hold 5 "
        "(every device took part; no entry in client-00000)",
    ]
    assert report["crosscheck"]["device_stores"]["missing"] == ["client-00000"]
    assert report["event_level"]["devices"] == 5 and report["event_level"]["over_budget"] == []
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_audit_flags_every_store_gone(small_budget_run: Path, tmp_path: Path) -> None:
    """A simulated run whose clients/ is gone is not taken for a deployed run."""
    run = _copy(small_budget_run, tmp_path)
    shutil.rmtree(run / "clients")
    report = audit_run(run)
    assert report["source"] == "server announcements"
    assert report["flags"][0] == (
        "all 6 device stores missing (clients/client-00000.db to clients/client-00005.db)"
    )
    assert "round 1: server counted 6 releases, device ledgers hold 0" in report["flags"][1]
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_audit_flags_unreadable_and_foreign_stores(small_budget_run: Path, tmp_path: Path) -> None:
    """A store that is not SQLite, another program's database, an empty file and a store the
    run never had are flagged; the audit does not crash and audits the rest."""
    run = _copy(small_budget_run, tmp_path)
    clients = run / "clients"
    (clients / "client-00001.db").write_bytes(b"not a database " * 200)
    (clients / "client-00002.db").unlink()
    with sqlite3.connect(clients / "client-00002.db") as con:
        con.execute("CREATE TABLE notes (body TEXT)")
    con.close()
    (clients / "client-00003.db").write_bytes(b"")
    shutil.copy(clients / "client-00004.db", clients / "client-00099.db")
    report = audit_run(run)
    flags = report["flags"]
    assert any(
        f.startswith("client-00001: store cannot be audited:") and "not a readable" in f
        for f in flags
    )
    assert any(
        f.startswith("client-00002: store cannot be audited:")
        and "not a fedinterest store (no ledger, meta, state tables)" in f
        for f in flags
    )
    assert any(f.startswith("client-00003: store cannot be audited:") for f in flags)
    assert (
        "client-00099: a device store the run did not have (config.json lists 6 devices)" in flags
    )
    assert "round 1: server counted 6 releases, device ledgers hold 3" in " | ".join(flags)
    stores = report["crosscheck"]["device_stores"]
    assert stores["unreadable"] == ["client-00001", "client-00002", "client-00003"]
    assert stores["unexpected"] == ["client-00099"] and stores["audited"] == 4
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1
