"""The synthetic generator: deterministic, hierarchical, with private text and drift."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from common.event_table import EVENT_TYPES
from common.events import CleaningConfig, EventType, parse_event
from simulations.cli import main
from simulations.datasets.synthetic import (
    _TYPE_MIX,
    REVIEWS_PER_LEAF,
    SEARCHES_PER_LEAF,
    SyntheticConfig,
    event_id,
    generate,
    generate_table,
)
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


def test_table_and_event_list_agree() -> None:
    """`generate` is `generate_table` as Event objects: same events, fields, ids and truth;
    the table is grouped by user, in time order within a user, with whole-second times."""
    cfg = SyntheticConfig(users=50, seed=7, drift_share=0.4)
    syn, ds = generate_table(cfg, event_ids=True), generate(cfg)
    t = syn.table
    assert (
        syn.users == ds.users and syn.items == ds.items and t.users == [u.user_id for u in ds.users]
    )
    assert len(t) == len(ds.events) and t.event_ids is not None
    by_id = {e.event_id: e for e in ds.events}
    assert len(by_id) == len(ds.events)
    off = t.offsets
    for u, uid in enumerate(t.users):
        rows = range(int(off[u]), int(off[u + 1]))
        assert [t.event_ids[r] for r in rows] == [event_id(7, uid, j) for j in range(len(rows))]
        assert (np.diff(t.timestamp[off[u] : off[u + 1]]) >= 0).all()
    for r in range(len(t)):
        e = by_id[t.event_ids[r]]
        assert e.user_id == t.users[t.user[r]] and e.timestamp == t.timestamp[r] == round(
            e.timestamp
        )
        assert e.event_type is EVENT_TYPES[t.event_type[r]] and e.text == t.texts[t.text[r]]
        assert e.item_id == (t.items[t.item[r]] if t.item[r] >= 0 else None)
        assert e.category == t.categories[t.category[r]]
        for got, col in ((e.dwell_seconds, t.dwell[r]), (e.value, t.value[r])):
            assert (got is None and np.isnan(col)) or got == col
    # the generator's decimals (dwell to 0.1 s)
    assert all(
        e.dwell_seconds is None or e.dwell_seconds == round(e.dwell_seconds, 1) for e in ds.events
    )
    assert ds.events == sorted(ds.events, key=lambda e: (e.timestamp, e.event_id))
    # without ids, the same columns (ids are derived then)
    plain = generate_table(cfg).table
    assert plain.event_ids is None and plain.texts == t.texts and plain.items == t.items
    for col in ("user", "timestamp", "event_type", "text", "item", "category", "dwell", "value"):
        assert np.array_equal(getattr(plain, col), getattr(t, col), equal_nan=True), col


def test_table_is_deterministic() -> None:
    """Same config, same table and truth, array for array; another seed differs."""
    cfg = SyntheticConfig(users=300, seed=11)
    a, b = generate_table(cfg), generate_table(cfg)
    assert a.users == b.users and a.items == b.items
    assert (a.table.texts, a.table.items, a.table.categories, a.table.users) == (
        b.table.texts,
        b.table.items,
        b.table.categories,
        b.table.users,
    )
    for col in ("user", "timestamp", "event_type", "text", "item", "category", "dwell", "value"):
        x, y = getattr(a.table, col), getattr(b.table, col)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), col
    c = generate_table(SyntheticConfig(users=300, seed=12))
    assert not np.array_equal(a.table.timestamp[:100], c.table.timestamp[:100])


def test_distinct_texts_are_bounded_by_catalogue_and_pools() -> None:
    """Ten times the users, ten times the events, but the distinct texts stay under the
    catalogue plus the per-leaf pools: embedding cost follows texts, not users."""
    small, large = (generate_table(SyntheticConfig(users=n, seed=2)) for n in (200, 2000))
    bound = len(large.items) + len(LEAF_TERMS) * (SEARCHES_PER_LEAF + REVIEWS_PER_LEAF)
    assert len(large.table) > 9 * len(small.table)
    private = {EVENT_TYPES.index(EventType.SEARCH), EVENT_TYPES.index(EventType.REVIEW)}
    for syn in (small, large):
        t = syn.table
        assert len(t.texts) == len(set(t.texts)) == len(np.unique(t.text)) <= bound
        is_private = np.isin(t.event_type, list(private))
        assert len(np.unique(t.text[is_private])) <= len(LEAF_TERMS) * (
            SEARCHES_PER_LEAF + REVIEWS_PER_LEAF
        )
        assert not set(np.unique(t.text[is_private]).tolist()) & set(t.text[~is_private].tolist())
    # ten times the events, under a third of the distinct texts per event
    assert len(large.table.texts) / len(large.table) < len(small.table.texts) / len(small.table) / 3
    # the catalogue and the pools do not depend on the number of users
    assert small.items == large.items


def test_type_mix_drift_and_ratings_statistics() -> None:
    """Over ~200,000 events: type shares within 0.005 of the mix; event counts around the
    median; the drifting share near `drift_share`; after the switch a drifter's on-interest
    events come from the new interests; off-interest ratings are low, on-interest high."""
    cfg = SyntheticConfig(users=3000, seed=13, drift_share=0.3)
    syn = generate_table(cfg)
    t = syn.table
    total = sum(p for _, p in _TYPE_MIX)
    counts = np.bincount(t.event_type, minlength=len(EVENT_TYPES)) / len(t)
    for etype, p in _TYPE_MIX:
        assert abs(counts[EVENT_TYPES.index(etype)] - p / total) < 0.005, etype
    sizes = np.diff(t.offsets)
    assert 0.9 * cfg.events_per_user <= np.median(sizes) <= 1.1 * cfg.events_per_user
    assert sizes.min() >= 12 and sizes.max() <= 8 * cfg.events_per_user
    drifting = [u for u, truth in enumerate(syn.users) if truth.drift_at is not None]
    assert abs(len(drifting) / cfg.users - 0.3) < 0.04
    cat = np.array(t.categories)[t.category]
    off = t.offsets
    held = np.zeros(len(t), dtype=bool)  # the event's leaf is one of the user's interests then
    sure = np.ones(len(t), dtype=bool)  # not within a second of a switch (times are rounded)
    late = np.zeros(len(t), dtype=bool)  # after a switch
    for u, truth in enumerate(syn.users):
        rows = slice(off[u], off[u + 1])
        held[rows] = np.isin(cat[rows], [leaf for leaf, _ in truth.interests])
        if truth.drift_at is not None:
            late[rows] = t.timestamp[rows] > truth.drift_at
            new = np.isin(cat[rows], [leaf for leaf, _ in truth.interests_after])
            held[rows] = np.where(late[rows], new, held[rows])
            sure[rows] = np.abs(t.timestamp[rows] - truth.drift_at) > 1
    assert held[late & sure].mean() > 0.85
    # off-interest share ~ explore_prob, less the explores that hit a held leaf
    assert 0.05 < 1 - held[sure].mean() <= cfg.explore_prob + 0.01
    review = (t.event_type == EVENT_TYPES.index(EventType.REVIEW)) & sure
    assert (t.value[review & ~held] <= 3).all() and (t.value[review] >= 1).all()
    assert t.value[review & held].mean() > 3.6 > 2.4 > t.value[review & ~held].mean()
    dwell = (t.event_type == EVENT_TYPES.index(EventType.VIEW)) & sure
    assert np.median(t.dwell[dwell & held]) > 1.6 * np.median(t.dwell[dwell & ~held])
