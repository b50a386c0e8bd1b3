"""Profiles end to end: a small real simulation with the population histogram, then the
device-side commands, the metrics keys, and the audit of the analytics releases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.store import EventStore
from common.config import AnalyticsConfig, PrivacyConfig, RunConfig
from common.events import Event, EventType
from common.metrics import classification_scores
from common.privacy import Mechanism
from common.records import ReleaseMode
from simulations.audit import audit_run
from simulations.options import Engine
from simulations.profile_eval import temporal_split
from simulations.simulate import SimulateOptions, simulate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("profiles") / "run"
    run = RunConfig(
        rounds=2,
        seed=4,
        privacy=PrivacyConfig(epsilon=3.0, mode=ReleaseMode.LOCAL),
        analytics=AnalyticsConfig(popularity=True, histogram=True, top_k=2),
    )
    simulate(
        SimulateOptions(
            engine=Engine.DEVICES, clients=8, out=out, run=run, events_per_user=30, cache=cache
        )
    )
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_metrics_have_ranking_classification_and_drift(run_dir: Path) -> None:
    """metrics.json carries ranking.{federated,centralized,popularity,random}.{auc,ndcg10,recall10}
    and classification.{federated,centralized}."""
    m = json.loads((run_dir / "metrics.json").read_text())
    for method in ("federated", "centralized", "popularity", "random"):
        assert set(m["ranking"][method]) >= {"auc", "ndcg10", "recall10"}
        assert 0.0 <= m["ranking"][method]["auc"] <= 1.0
    assert m["ranking"]["popularity_prior"] == "dp item counts"
    for side in ("federated", "centralized"):
        assert set(m["classification"][side]["level1"]) == {
            "accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
        }
    assert m["unit"] == "user"
    assert m["epsilon_user_level_total"] == pytest.approx(3.0, rel=0.01)


@pytest.mark.slow
def test_histogram_and_popularity_are_released_and_audited(run_dir: Path) -> None:
    """The population histogram (each round) and the popularity counts (last round) are
    written, recorded in every device's ledger, and visible in the audit at both levels."""
    lines = [json.loads(x) for x in (run_dir / "analytics.jsonl").read_text().splitlines()]
    assert [r["server_round"] for r in lines] == [1, 2] and lines[0]["top_k"] == 2
    assert all("share" in n and "count" in n for n in lines[-1]["nodes"])
    assert (run_dir / "popularity.npz").is_file()
    with EventStore(sorted((run_dir / "clients").glob("*.db"))[0], create=False) as s:
        kinds = sorted(e.mechanism.value for e in s.ledger())
    assert kinds == [
        "gaussian_count",
        "gaussian_histogram",
        "gaussian_histogram",
        "gaussian_sum",
        "gaussian_sum",
    ]
    report = audit_run(run_dir)
    assert {"gaussian_histogram", "gaussian_count", "gaussian_sum"} <= set(report["mechanisms"])
    assert report["mechanisms"]["gaussian_histogram"]["entries"] == 16
    assert {"population histogram", "item popularity"} <= set(report["user_level"]["per_output"])
    assert report["flags"] == []


@pytest.mark.slow
def test_profile_and_recommend_commands(run_dir: Path, tmp_path: Path) -> None:
    """`profile` prints the tree of interests with drift (and keeps the hierarchy in the store
    for offline use); `recommend` ranks candidates, with the DP popularity prior."""
    store = sorted((run_dir / "clients").glob("*.db"))[0]
    out = cli(
        "profile",
        "--store",
        str(store),
        "--hierarchy",
        str(run_dir / "hierarchy.json"),
        "--json",
        "--population",
        str(run_dir / "analytics.jsonl"),
        "--min-population",
        "1",
    )
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p["interests"] and abs(sum(i["strength"] for i in p["interests"]) - 1.0) < 0.5
    assert set(p["drift"]) == {"divergence", "drifting", "rising", "falling", "since"}
    assert "segments" in p
    offline = cli("profile", "--store", str(store))
    assert offline.returncode == 0 and "drift level 1" in offline.stdout
    cands = tmp_path / "c.jsonl"
    cands.write_text(
        '{"item_id": "a", "text": "Champions League final tonight"}\n{"item_id": "b", "text": "Sourdough starter tips"}\nvegan curry\n'
    )
    rec = cli(
        "recommend",
        "--store",
        str(store),
        "--candidates",
        str(cands),
        "--popularity",
        str(run_dir / "popularity.npz"),
        "--json",
    )
    assert rec.returncode == 0, rec.stderr
    ranked = json.loads(rec.stdout)["ranked"]
    assert sorted(r["item_id"] for r in ranked) == ["3", "a", "b"] and ranked[0]["rank"] == 1
    bad = cli("recommend", "--store", str(store), "--candidates", str(tmp_path / "none.jsonl"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_temporal_split_holds_out_the_latest() -> None:
    """The last 20% of each user's events (by time) are held out; tiny histories are kept."""
    evs = [Event(f"e{i}", "u", 1.7e9 + i, EventType.VIEW, f"i{i}", f"t{i}") for i in range(10)]
    small = [Event("s0", "v", 1.7e9, EventType.VIEW, "x", "y")]
    train, test = temporal_split({"u": list(reversed(evs)), "v": small})
    assert [e.event_id for e in test["u"]] == ["e8", "e9"] and len(train["u"]) == 8
    assert train["v"] == small and test["v"] == []


def test_classification_scores_toy() -> None:
    """Accuracy and macro P/R/F1 on a hand-checked toy."""
    s = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert s["accuracy"] == 0.75
    assert s["macro_precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert s["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert Mechanism.GAUSSIAN_HISTOGRAM.value == "gaussian_histogram"
