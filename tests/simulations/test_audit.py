"""Audits: ledger-only recomputation on a real simulation, budgets, tamper flags, and the
empirical attack and bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.store import EventStore
from common.config import PrivacyConfig, RunConfig
from common.privacy import LedgerEntry, Mechanism
from common.records import ReleaseMode
from server.storage import ServerStorage
from simulations.audit import audit_device, audit_run
from simulations.empirical_audit import _attack, one_run_lower_bound
from simulations.simulate import SimulateOptions, simulate


@pytest.fixture(scope="module")
def small_budget_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """6 devices x 3 rounds; device 0's budget allows exactly one release."""
    out = tmp_path_factory.mktemp("audit") / "run"
    run = RunConfig(rounds=3, seed=3, privacy=PrivacyConfig(epsilon=2.0, mode=ReleaseMode.LOCAL))
    from common.privacy import gaussian_epsilon, noise_multiplier_for_rounds

    # the run calibrates its multiplier over the 3 tree rounds and the popularity release
    z = noise_multiplier_for_rounds(
        epsilon=2.0, delta=1e-5, rounds=run.gaussian_releases(popularity=True)
    )
    one = gaussian_epsilon(z, 1e-5)
    simulate(
        SimulateOptions(
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


@pytest.mark.slow
def test_audit_flags_tampering(small_budget_run: Path, tmp_path: Path) -> None:
    """A release stored without its ledger entry, a wrong noise multiplier, and an over-budget
    device are all flagged."""
    import shutil

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
    import shutil

    d = tmp_path / "deployed"
    d.mkdir()
    for name in ("config.json", "rounds.jsonl", "server.db", "hierarchy.json"):
        shutil.copy(small_budget_run / name, d / name)
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
