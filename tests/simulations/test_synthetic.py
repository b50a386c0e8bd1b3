"""The synthetic generator: deterministic, hierarchical, with private text and drift."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.events import CleaningConfig, EventType, parse_event
from simulations.cli import main
from simulations.datasets.synthetic import SyntheticConfig, generate
from simulations.datasets.taxonomy import LEAF_TERMS, ROOTS


def test_taxonomy_size_and_distinct_terms() -> None:
    """15-25 roots, 100-200 leaves, each with its own terms."""
    assert 15 <= len(ROOTS) <= 25 and 100 <= len(LEAF_TERMS) <= 200
    terms = Counter(t.lower() for ts in LEAF_TERMS.values() for t in ts)
    assert max(terms.values()) == 1
    assert {p.split(" > ")[0] for p in LEAF_TERMS} == set(ROOTS)


def test_synth_cli_twice_gives_identical_files(tmp_path: Path) -> None:
    """`data synth --users 200 --seed 1` twice writes byte-identical files with categories."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["data", "synth", "--users", "200", "--seed", "1", "--out", str(a), "-q"]) == 0
    assert main(["data", "synth", "--users", "200", "--seed", "1", "--out", str(b), "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()
    import json

    rows = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
    assert len({r["user_id"] for r in rows}) == 200
    assert all(r.get("category") in LEAF_TERMS for r in rows)
    c = tmp_path / "c.jsonl"
    main(["data", "synth", "--users", "200", "--seed", "2", "--out", str(c), "-q"])
    assert c.read_bytes() != a.read_bytes()


def test_events_are_valid_and_varied() -> None:
    """Every generated event passes validation; types, dwell and values look like behaviour."""
    ds = generate(SyntheticConfig(users=60, seed=4))
    for e in ds.events[:500]:
        assert (
            parse_event(e.to_dict() | {"timestamp": e.timestamp}, config=CleaningConfig()).event_id
            == e.event_id
        )
    types = Counter(e.event_type for e in ds.events)
    assert set(types) == set(EventType)
    assert types[EventType.VIEW] > types[EventType.PURCHASE]
    assert all(e.value is not None for e in ds.events if e.event_type is EventType.RATE)
    assert len({e.text for e in ds.events}) > 0.3 * len(ds.events)


def test_private_text_is_not_in_the_catalogue() -> None:
    """Searches and reviews are free text that no catalogue item holds."""
    ds = generate(SyntheticConfig(users=80, seed=5))
    catalogue = {it.text for it in ds.items}
    private = [e for e in ds.events if e.event_type in (EventType.SEARCH, EventType.REVIEW)]
    assert len(private) > 0.1 * len(ds.events)
    assert not any(e.text in catalogue for e in private)
    assert all(e.item_id is None for e in private if e.event_type is EventType.SEARCH)


def test_interests_power_law_and_drift() -> None:
    """Most users hold one or two interests; the drift share switches interests mid-way."""
    ds = generate(SyntheticConfig(users=400, seed=6, drift_share=0.25))
    k = Counter(len(u.interests) for u in ds.users)
    assert k[1] > k[2] > k[4] and max(k) <= 5
    drifting = [u for u in ds.users if u.drift_at is not None]
    assert 0.15 < len(drifting) / len(ds.users) < 0.35
    u = drifting[0]
    before_roots = {leaf.split(" > ")[0] for leaf, _ in u.interests}
    after_roots = {leaf.split(" > ")[0] for leaf, _ in u.interests_after}
    assert not before_roots & after_roots
    evs = [e for e in ds.events if e.user_id == u.user_id]
    late = [e for e in evs if e.timestamp > u.drift_at]  # type: ignore[operator]
    share_after = sum(e.category.split(" > ")[0] in after_roots for e in late) / len(late)  # type: ignore[union-attr]
    assert share_after > 0.7


def test_config_validation() -> None:
    """Bad generator settings name the field."""
    with pytest.raises(ConfigError, match="users"):
        SyntheticConfig(users=0)
    with pytest.raises(ConfigError, match="drift_share"):
        SyntheticConfig(drift_share=2.0)
