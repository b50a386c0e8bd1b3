"""Events as columns: a whole population's behaviour log in a few numpy arrays.

A :class:`~common.events.Event` is a Python object of ~600 bytes; 100,000 users with ~60
events each are 6 million of them (gigabytes, minutes to build). An :class:`EventTable` holds
the same fields as integer and float columns (~30 bytes an event) plus the distinct strings
once (texts, item ids, categories, user ids), rows grouped by user and in time order within
each user. The batched simulation engine, the scaled synthetic generator and the evaluation
sample work on it; a device and the small-population paths keep using :class:`Event` lists,
and :meth:`EventTable.from_events` / :meth:`EventTable.user_events` convert between the two
without loss of any field a release or a metric reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.events import Event, EventType

__all__ = ["EVENT_TYPES", "EventTable"]

#: Event types in code order: column ``event_type`` holds indices into this tuple.
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)


def _index(values: Sequence[str | None]) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Distinct non-None strings (first-seen order) and each value's index (-1 for None)."""
    table: dict[str, int] = {}
    codes = np.empty(len(values), dtype=np.int32)
    for i, v in enumerate(values):
        codes[i] = -1 if v is None else table.setdefault(v, len(table))
    return list(table), codes


@dataclass(frozen=True)
class EventTable:
    """A population's events as columns, grouped by user, time order within a user.

    Attributes:
        users: user ids; column ``user`` indexes it. Every user has at least one event.
        texts: distinct event texts; column ``text`` indexes it.
        items: distinct item ids; column ``item`` indexes it (-1: no item, e.g. searches).
        categories: distinct category paths; column ``category`` (-1: none).
        user / timestamp / event_type / text / item / category: one entry per event.
        dwell / value: NaN where unknown.
        event_ids: the events' ids, or ``None`` (then derived as ``"{user}-{j}"``, j the
            event's position in its user's timeline).
    """

    users: list[str]
    texts: list[str]
    items: list[str]
    categories: list[str]
    user: npt.NDArray[np.int32]
    timestamp: npt.NDArray[np.float64]
    event_type: npt.NDArray[np.int8]
    text: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    category: npt.NDArray[np.int32]
    dwell: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    event_ids: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("timestamp", "event_type", "text", "item", "category", "dwell", "value"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"column `{name}` has {len(getattr(self, name))} rows; `user` has {n}."
                )
        if self.event_ids is not None and len(self.event_ids) != n:
            raise ConfigError(
                f"`event_ids` has {len(self.event_ids)} entries; the table has {n} rows."
            )
        if n and (np.diff(self.user) < 0).any():
            raise ConfigError("rows must be grouped by user, in user order.")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Row boundaries: user ``u``'s events are rows ``offsets[u]:offsets[u + 1]``."""
        counts = np.bincount(self.user, minlength=self.num_users)
        out = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=out[1:])
        return out

    # -- conversions ----------------------------------------------------------------------

    @classmethod
    def from_events(cls, parts: dict[str, list[Event]]) -> EventTable:
        """A table of ``parts`` (user id -> that user's events, kept in the given order; users
        without events are dropped)."""
        users = [u for u, evs in parts.items() if evs]
        flat = [e for u in users for e in parts[u]]
        texts, text = _index([e.text for e in flat])
        items, item = _index([e.item_id for e in flat])
        cats, cat = _index([e.category for e in flat])
        type_code = {t: i for i, t in enumerate(EVENT_TYPES)}
        nan = float("nan")
        return cls(
            users=users,
            texts=texts,
            items=items,
            categories=cats,
            user=np.repeat(np.arange(len(users), dtype=np.int32), [len(parts[u]) for u in users]),
            timestamp=np.array([e.timestamp for e in flat], dtype=np.float64),
            event_type=np.array([type_code[e.event_type] for e in flat], dtype=np.int8),
            text=text,
            item=item,
            category=cat,
            dwell=np.array(
                [nan if e.dwell_seconds is None else e.dwell_seconds for e in flat],
                dtype=np.float64,
            ),
            value=np.array([nan if e.value is None else e.value for e in flat], dtype=np.float64),
            event_ids=[e.event_id for e in flat],
        )

    def user_events(self, users: Sequence[int] | None = None) -> dict[str, list[Event]]:
        """The events of ``users`` (indices; default all) as :class:`Event` lists."""
        off = self.offsets
        idx = range(self.num_users) if users is None else users
        out: dict[str, list[Event]] = {}
        for u in idx:
            uid = self.users[int(u)]
            evs = []
            for j, r in enumerate(range(int(off[u]), int(off[u + 1]))):
                it, cat = int(self.item[r]), int(self.category[r])
                d, v = float(self.dwell[r]), float(self.value[r])
                evs.append(
                    Event(
                        event_id=self.event_ids[r] if self.event_ids is not None else f"{uid}-{j}",
                        user_id=uid,
                        timestamp=float(self.timestamp[r]),
                        event_type=EVENT_TYPES[int(self.event_type[r])],
                        item_id=self.items[it] if it >= 0 else None,
                        text=self.texts[int(self.text[r])],
                        category=self.categories[cat] if cat >= 0 else None,
                        dwell_seconds=None if d != d else d,
                        value=None if v != v else v,
                    )
                )
            out[uid] = evs
        return out

    # -- selections -----------------------------------------------------------------------

    def take_rows(self, rows: npt.NDArray[np.int64]) -> EventTable:
        """The table of the given rows (kept grouped); users left without rows are dropped and
        the others renumbered in order. String tables are kept whole."""
        rows = np.asarray(rows, dtype=np.int64)
        kept_users, new_user = np.unique(self.user[rows], return_inverse=True)
        return EventTable(
            users=[self.users[int(u)] for u in kept_users],
            texts=self.texts,
            items=self.items,
            categories=self.categories,
            user=new_user.astype(np.int32),
            timestamp=self.timestamp[rows],
            event_type=self.event_type[rows],
            text=self.text[rows],
            item=self.item[rows],
            category=self.category[rows],
            dwell=self.dwell[rows],
            value=self.value[rows],
            event_ids=None if self.event_ids is None else [self.event_ids[int(r)] for r in rows],
        )

    def take_users(self, users: npt.NDArray[np.int64]) -> EventTable:
        """The table of the given users (indices, kept in increasing order), users without
        events included (a shard's users are its users, whatever their events)."""
        off = self.offsets
        u = np.unique(np.asarray(users, dtype=np.int64))
        if u.size == 0:
            return self.take_rows(np.zeros(0, dtype=np.int64))
        lengths = off[u + 1] - off[u]
        starts = np.repeat(off[u] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        rows = starts + np.arange(int(lengths.sum()))
        sub = self.take_rows(rows)
        return replace(
            sub,
            users=[self.users[int(i)] for i in u],
            user=np.repeat(np.arange(len(u), dtype=np.int32), lengths),
        )

    def latest(self, cap: int | None) -> EventTable:
        """Each user's latest ``cap`` events (``None``: all)."""
        if cap is None:
            return self
        if cap < 1:
            raise ConfigError(f"`max_events_per_client` must be >= 1. Found {cap!r}.")
        off = self.offsets
        pos = np.arange(len(self)) - off[self.user]
        size = (off[1:] - off[:-1])[self.user]
        keep = pos >= size - cap
        return self if keep.all() else self.take_rows(np.flatnonzero(keep))

    def temporal_split(
        self, holdout: float, min_events: int = 5
    ) -> tuple[EventTable, EventTable | None]:
        """Per user, the last ``holdout`` share of events (time order) as the test table; users
        with fewer than ``min_events`` keep everything for training (as
        :func:`simulations.profile_eval.temporal_split`, which rounds the same way)."""
        off = self.offsets
        size = off[1:] - off[:-1]
        n_test = np.where(size >= min_events, np.round(holdout * size), 0).astype(np.int64)
        pos = np.arange(len(self)) - off[self.user]
        test = pos >= (size - n_test)[self.user]
        train_t = self.take_rows(np.flatnonzero(~test))
        test_t = self.take_rows(np.flatnonzero(test)) if test.any() else None
        return train_t, test_t

    def with_events(self, extra: dict[int, list[Event]], *, replace: bool = False) -> EventTable:
        """This table with ``extra`` events added to users (by index), each user's events
        re-sorted by ``(timestamp, event_id)`` as :func:`simulations.profile_eval.temporal_split`
        orders them (the empirical audit's canaries); with ``replace`` the users' own events are
        dropped (a user given an empty list keeps no event)."""
        if not extra:
            return self
        bad = [u for u in extra if not 0 <= u < self.num_users]
        if bad:
            raise ConfigError(f"extra events name user {bad[0]}; the table has {self.num_users}.")
        touched = sorted(extra)
        parts = self.user_events(touched)
        merged = {
            uid: sorted(
                [*([] if replace else parts[uid]), *extra[u]],
                key=lambda e: (e.timestamp, e.event_id),
            )
            for u, uid in zip(touched, parts, strict=True)
        }
        # a user left without events (replace with an empty list) has no rows in ``new``
        filled = np.asarray(
            [u for u, uid in zip(touched, parts, strict=True) if merged[uid]], dtype=np.int32
        )
        new = EventTable.from_events(merged)
        texts, items, cats = list(self.texts), list(self.items), list(self.categories)

        def remap(strings: list[str], table: list[str]) -> npt.NDArray[np.int32]:
            index = {s: i for i, s in enumerate(table)}
            out = np.empty(len(strings) + 1, dtype=np.int32)
            for i, s in enumerate(strings):
                out[i] = index.setdefault(s, len(table))
                if out[i] == len(table):
                    table.append(s)
            out[-1] = -1  # -1 (none) stays -1
            return out

        m_text, m_item, m_cat = (
            remap(new.texts, texts),
            remap(new.items, items),
            remap(new.categories, cats),
        )
        keep = ~np.isin(self.user, touched)
        rows_user = np.concatenate([self.user[keep], filled[new.user]])
        order = np.argsort(rows_user, kind="stable")

        def col(name: str, mapped: npt.NDArray[np.int32] | None = None) -> npt.NDArray[Any]:
            add = getattr(new, name)
            if mapped is not None:
                add = mapped[add]
            return np.concatenate([getattr(self, name)[keep], add])[order]

        ids = None
        if self.event_ids is not None:
            base_ids = [self.event_ids[int(r)] for r in np.flatnonzero(keep)]
            all_ids = base_ids + list(new.event_ids or [])
            ids = [all_ids[int(i)] for i in order]
        return EventTable(
            users=self.users,
            texts=texts,
            items=items,
            categories=cats,
            user=rows_user[order].astype(np.int32),
            timestamp=col("timestamp"),
            event_type=col("event_type"),
            text=col("text", m_text),
            item=col("item", m_item),
            category=col("category", m_cat),
            dwell=col("dwell"),
            value=col("value"),
            event_ids=ids,
        )
