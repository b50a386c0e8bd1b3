"""EventTable: the columnar population against the Event lists it replaces at scale (every
selection checked against the list-based function it mirrors)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from common.event_table import EventTable
from common.events import Event, EventType
from simulations.datasets.loaders import partition_by_user
from simulations.datasets.synthetic import SyntheticConfig, generate
from simulations.profile_eval import temporal_split


@pytest.fixture(scope="module")
def parts() -> dict[str, list[Event]]:
    return partition_by_user(generate(SyntheticConfig(users=25, seed=2, events_per_user=20)).events)


def test_round_trip(parts: dict[str, list[Event]]) -> None:
    t = EventTable.from_events(parts)
    assert t.num_users == 25 and len(t) == sum(map(len, parts.values()))
    assert t.user_events() == parts
    assert list(t.offsets[1:] - t.offsets[:-1]) == [len(v) for v in parts.values()]


def test_selections_match_the_list_functions(parts: dict[str, list[Event]]) -> None:
    t = EventTable.from_events(parts)
    train, test = t.temporal_split(0.2)
    want_train, want_test = temporal_split(parts, 0.2)
    assert train.user_events() == want_train
    assert test is not None and test.user_events() == {u: v for u, v in want_test.items() if v}
    users = list(parts)
    sub = t.take_users(np.array([7, 3, 3, 20]))
    assert sub.users == [users[3], users[7], users[20]]
    assert sub.user_events() == {u: parts[u] for u in sub.users}
    capped = partition_by_user([e for v in parts.values() for e in v], max_events_per_client=9)
    assert t.latest(9).user_events() == capped
    with pytest.raises(ConfigError, match="max_events_per_client"):
        t.latest(0)


def test_with_events_merges_in_time_order(parts: dict[str, list[Event]]) -> None:
    t = EventTable.from_events(parts)
    users = list(parts)
    extra = {
        2: [Event("canary-0", users[2], 1.7e9, EventType.PURCHASE, "canary-item", "a new text")],
        9: [Event("canary-1", users[9], 1.0, EventType.SEARCH, None, "an early query")],
    }
    got = t.with_events(extra).user_events()
    for i, u in enumerate(users):
        want = sorted([*parts[u], *extra.get(i, [])], key=lambda e: (e.timestamp, e.event_id))
        assert got[u] == want
    with pytest.raises(ConfigError, match="user 99"):
        t.with_events({99: extra[2]})


def test_bad_columns_are_refused(parts: dict[str, list[Event]]) -> None:
    t = EventTable.from_events(parts)
    with pytest.raises(ConfigError, match="grouped by user"):
        EventTable(
            t.users, t.texts, t.items, t.categories, t.user[::-1].copy(), t.timestamp,
            t.event_type, t.text, t.item, t.category, t.dwell, t.value,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="`timestamp`"):
        EventTable(
            t.users, t.texts, t.items, t.categories, t.user, t.timestamp[:-1],
            t.event_type, t.text, t.item, t.category, t.dwell, t.value,
        )  # fmt: skip
