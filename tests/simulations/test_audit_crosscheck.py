"""`fedinterest audit --strict` cross-checks the device ledgers against the server's record of
each round, under SecAgg+ and without DP (the local-mode run is in test_audit.py)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from common.config import PrivacyConfig, RunConfig
from common.records import ReleaseMode
from simulations.audit import audit_run
from simulations.cli import main as cli_main
from simulations.options import Engine
from simulations.simulate import SimulateOptions, simulate


@pytest.fixture(scope="module")
def secagg_no_dp_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """6 devices x 2 rounds under SecAgg+, no noise (the population and texts of
    test_audit.py's run: the session's embedding cache holds them)."""
    out = tmp_path_factory.mktemp("crosscheck") / "run"
    run = RunConfig(
        rounds=2,
        seed=3,
        privacy=PrivacyConfig(epsilon=2.0, mode=ReleaseMode.SECAGG, no_dp=True),
    )
    simulate(
        SimulateOptions(
            engine=Engine.DEVICES,
            clients=6,
            out=out,
            run=run,
            events_per_user=20,
            cache=cache,
            evaluate=False,
        )
    )
    return out


@pytest.fixture()
def run(secagg_no_dp_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(secagg_no_dp_run, out)
    return out


@pytest.mark.slow
def test_clean_secagg_run_has_no_flags(run: Path) -> None:
    report = audit_run(run)
    assert report["flags"] == [], report["flags"]
    assert report["crosscheck"]["rounds"]["1"] == {"leaf-sums": {"server": 6, "ledgers": 6}}
    assert report["crosscheck"]["rounds"]["2"]["item-counts"] == {"server": 6, "ledgers": 6}
    assert set(report["mechanisms"]) == {"non_private"}
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 0


@pytest.mark.slow
def test_deleted_ledger_rows_and_release_are_flagged(run: Path) -> None:
    """Round 1's ledger row and stored release of one device, deleted together."""
    with sqlite3.connect(run / "clients" / "client-00002.db") as con:
        con.execute("DELETE FROM ledger WHERE server_round = 1")
        con.execute("DELETE FROM state WHERE key LIKE 'release%:1:%'")
    con.close()
    flags = audit_run(run)["flags"]
    assert flags == [
        "round 1: server counted 6 releases, device ledgers hold 5 "
        "(every device took part; no entry in client-00002)",
        "client-00002: 1 ledger row deleted (number 1 of 1-3 missing)",
    ]
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1


@pytest.mark.slow
def test_removed_store_is_flagged(run: Path) -> None:
    (run / "clients" / "client-00005.db").unlink()
    flags = audit_run(run)["flags"]
    assert flags[0] == (
        "client-00005: device store clients/client-00005.db missing (the run had 6 devices)"
    )
    assert "round 2: server counted 6 item-counts releases, device ledgers hold 5" in " | ".join(
        flags
    )
    assert cli_main(["audit", str(run), "--strict", "--quiet"]) == 1
