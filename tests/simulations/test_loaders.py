"""Dataset loaders: MovieLens (real), MIND format, generic files, partitioning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.events import EventType
from simulations.datasets.loaders import load_events, load_mind, load_movielens, partition_by_user
from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl


@pytest.mark.movielens
def test_movielens_real_counts(movielens_dir: Path) -> None:
    """../shared/data/movielens-small yields 100,836 rate events for 610 users."""
    events, report = load_movielens(movielens_dir)
    assert len(events) == 100_836 and report.rejected == 0
    assert len({e.user_id for e in events}) == 610
    assert all(e.event_type is EventType.RATE and e.value is not None for e in events)
    tagged = [e for e in events if ". Tags: " in e.text]
    assert tagged and all(". Genres: " in e.text or "Tags" in e.text for e in tagged)
    toy = next(e for e in events if e.item_id == "1")
    assert toy.text.startswith("Toy Story (1995). Genres: Adventure, Animation")


def test_mind_format(tmp_path: Path) -> None:
    """MIND news/behaviors become history clicks, impression views and clicks with categories."""
    (tmp_path / "news.tsv").write_text(
        "N1\tsports\tsoccer\tCup final tonight\tThe big match.\turl\t[]\t[]\n"
        "N2\tfinance\tmarkets\tStocks rally\t\turl\t[]\t[]\n"
        "N3\tlifestyle\tfood\tPasta recipes\tQuick dinners.\turl\t[]\t[]\n",
        encoding="utf-8",
    )
    (tmp_path / "behaviors.tsv").write_text(
        "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN3-1 N2-0\n"
        "2\tU1\t11/16/2019 9:00:00 PM\tN1 N2\tN1-0 N9-1\n"
        "3\tU2\tnot a date\t\tN1-1\n",
        encoding="utf-8",
    )
    events, report = load_mind(tmp_path)
    u1 = [e for e in events if e.user_id == "U1"]
    assert (
        sum(e.event_type is EventType.CLICK and e.item_id in ("N1", "N2") for e in u1) == 2
    )  # history once
    assert any(e.item_id == "N3" and e.event_type is EventType.CLICK for e in u1)
    assert {e.category for e in u1} >= {"sports > soccer", "lifestyle > food"}
    assert next(e for e in u1 if e.item_id == "N1").text == "Cup final tonight. The big match."
    assert report.reasons == {"unknown_item": 2, "bad_timestamp": 1}
    no_views, _ = load_mind(tmp_path, include_impressions=False)
    assert not any(e.event_type is EventType.VIEW for e in no_views)


def test_generic_jsonl_and_partition(tmp_path: Path) -> None:
    """Generic JSONL loads with rejects counted; partitioning keeps each user's latest events."""
    ds = generate(SyntheticConfig(users=10, seed=1))
    path = tmp_path / "e.jsonl"
    write_jsonl(ds.events, path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json\n" + json.dumps(ds.events[0].to_dict()) + "\n")
    events, report = load_events(path)
    assert len(events) == len(ds.events) and report.rejected == 1 and report.duplicates == 1
    parts = partition_by_user(events, max_events_per_client=20)
    assert len(parts) == 10 and all(len(v) <= 20 for v in parts.values())
    for uid, evs in parts.items():
        mine = sorted(
            (e for e in events if e.user_id == uid), key=lambda e: (e.timestamp, e.event_id)
        )
        assert evs == mine[-20:]
    with pytest.raises(ConfigError, match="format"):
        load_events(tmp_path / "e.jsonl", fmt="xml")
