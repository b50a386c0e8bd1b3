"""The synthetic behaviour generator: the embedded default dataset.

Users hold a few interests (leaves of :mod:`simulations.datasets.taxonomy`; how many follows a
power law, and so does leaf popularity); they view, click, like, share, add to cart, buy, rate
and review catalogue items of those leaves, and write **private free text** (search queries
and reviews) that no catalogue holds. A configurable share of users drifts: mid-way their
interests switch to a new set. Every event carries its ground-truth ``category`` path.

The events are drawn as columns (:func:`generate_table`, an
:class:`~common.event_table.EventTable`): every per-event choice (explore or interest leaf,
item, type, dwell, value, time) is one numpy draw over all events, and only each user's few
interests are drawn in a Python loop, so 100,000 users take seconds, not hours.
:func:`generate` turns the same table into :class:`~common.events.Event` objects for the small
populations that devices and tests use.

Private texts come from **finite per-leaf pools** (:data:`SEARCHES_PER_LEAF` queries and
:data:`REVIEWS_PER_LEAF` reviews, drawn once per dataset by
:mod:`simulations.datasets.synthetic_text`, which writes the catalogue too): users share a
catalogue of texts, so the number of distinct texts, and the cost of embedding them, is
bounded by the catalogue plus the pools whatever the number of users.

Everything is drawn from one seeded ``numpy`` generator: the same arguments give the same
events, byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.event_table import EVENT_TYPES, EventTable
from common.events import Event, EventType
from simulations.datasets.catalogue import Catalogue
from simulations.datasets.synthetic_text import (
    SyntheticItem,
    make_catalogue,
    review_pool,
    root_of,
    search_pool,
)
from simulations.datasets.taxonomy import LEAF_TERMS

__all__ = [
    "REVIEWS_PER_LEAF",
    "SEARCHES_PER_LEAF",
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticItem",
    "SyntheticTable",
    "SyntheticUser",
    "event_id",
    "generate",
    "generate_table",
    "write_jsonl",
]

_DAY = 86400.0

#: Search queries pre-generated per leaf: every search event of a leaf picks one of them
#: uniformly. 40 (x 15 templates, 3 of the leaf's 12 terms each) keeps queries varied within a
#: leaf while 136 leaves bound the distinct queries to 5,440 whatever the number of users.
SEARCHES_PER_LEAF: Final[int] = 40
#: Reviews pre-generated per leaf, picked like searches (at most 5,440 distinct reviews). A
#: review's text is drawn independently of its rating, as the templates mix praise and
#: complaints; the rating carries on/off-interest (3-5 stars on-interest, 1-3 off).
REVIEWS_PER_LEAF: Final[int] = 40
# The generator rounds dwell and value to these decimals (dwell to 0.1 s; prices to cents,
# ratings to halves), as a log would record them.
_DWELL_DECIMALS: Final[int] = 1
_VALUE_DECIMALS: Final[int] = 2

# Shares of event types (views dominate, purchases are rare). Reviews and searches are the
# private free text.
_TYPE_MIX: tuple[tuple[EventType, float], ...] = (
    (EventType.VIEW, 0.40),
    (EventType.CLICK, 0.22),
    (EventType.LIKE, 0.07),
    (EventType.SHARE, 0.03),
    (EventType.ADD_TO_CART, 0.05),
    (EventType.PURCHASE, 0.03),
    (EventType.REVIEW, 0.06),
    (EventType.SEARCH, 0.10),
    (EventType.RATE, 0.04),
)
# Median dwell (seconds) of the event types that have one; off-interest dwell is halved.
_DWELL_MEDIAN: dict[EventType, float] = {
    EventType.VIEW: 15.0,
    EventType.CLICK: 40.0,
    EventType.LIKE: 60.0,
    EventType.SHARE: 60.0,
}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Attributes:
        users: number of users.
        seed: the only source of randomness.
        events_per_user: median events per user (log-normal, clipped to [12, 8x median]).
        items_per_leaf: catalogue items per leaf.
        max_interests: a user holds 1..max_interests leaves, ``P(k) ~ k^-interest_exponent``.
        interest_exponent: the power law of the number of interests.
        leaf_popularity_exponent: leaf popularity ``~ rank^-s`` over a seeded ranking.
        same_root_prob: chance that a user's next interest is in a root they already hold.
        explore_prob: chance that one event is off-interest (a random popular leaf).
        drift_share: share of users whose interests switch once, between 40% and 60% of their
            timeline, to leaves of roots they did not hold.
        months: length of the observed period (30-day months).
        end: end of the observed period (ISO-8601 UTC); fixed so output is reproducible.
    """

    users: int = 100
    seed: int = 0
    events_per_user: int = 60
    items_per_leaf: int = 30
    max_interests: int = 5
    interest_exponent: float = 1.3
    leaf_popularity_exponent: float = 0.6
    same_root_prob: float = 0.5
    explore_prob: float = 0.08
    drift_share: float = 0.2
    months: int = 6
    end: str = "2025-06-30T00:00:00Z"

    def __post_init__(self) -> None:
        _check_int(self.users, "users", 1)
        _check_int(self.events_per_user, "events_per_user", 1)
        _check_int(self.items_per_leaf, "items_per_leaf", 3)
        _check_int(self.max_interests, "max_interests", 1)
        _check_int(self.months, "months", 1)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"`seed` must be an int >= 0. Found {self.seed!r}.")
        for name in ("same_root_prob", "explore_prob", "drift_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"`{name}` must be in [0, 1]. Found {v!r}.")
        for name in ("interest_exponent", "leaf_popularity_exponent"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"`{name}` must be >= 0. Found {v!r}.")
        try:
            self.end_timestamp  # noqa: B018 (validates the field)
        except ValueError:
            raise ConfigError(f"`end` must be ISO-8601. Found {self.end!r}.") from None

    @property
    def end_timestamp(self) -> float:
        return (
            datetime.fromisoformat(self.end.replace("Z", "+00:00"))
            .astimezone(timezone.utc)
            .timestamp()
        )


def _check_int(v: object, name: str, low: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ConfigError(f"`{name}` must be an int >= {low}. Found {v!r}.")


@dataclass(frozen=True)
class SyntheticUser:
    """Ground truth of one user.

    Attributes:
        interests: ``(leaf, strength)`` before any drift; strengths sum to 1.
        drift_at: unix time of the switch, or ``None``.
        interests_after: the interests after the switch (empty without drift).
    """

    user_id: str
    interests: tuple[tuple[str, float], ...]
    drift_at: float | None = None
    interests_after: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "interests": [[leaf, round(s, 6)] for leaf, s in self.interests],
            "drift_at": self.drift_at,
            "interests_after": [[leaf, round(s, 6)] for leaf, s in self.interests_after],
        }


@dataclass
class SyntheticDataset:
    """Events plus the ground truth they were drawn from."""

    config: SyntheticConfig
    events: list[Event]
    users: list[SyntheticUser]
    items: list[SyntheticItem] = field(default_factory=list)

    @property
    def leaves(self) -> list[str]:
        return list(dict.fromkeys(it.leaf for it in self.items)) or list(LEAF_TERMS)

    def truth(self) -> dict[str, Any]:
        return {
            "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
            "users": [u.to_dict() for u in self.users],
        }


@dataclass(frozen=True)
class SyntheticTable:
    """The synthetic dataset as columns (what :func:`generate_table` returns).

    Attributes:
        config: what was generated.
        table: the events, grouped by user in ``users`` order, time order within a user;
            timestamps are whole seconds. ``table.texts`` / ``items`` / ``categories`` hold
            only the strings some event uses.
        users: the ground truth, one per user, in ``table.users`` order.
        items: the whole catalogue, leaf by leaf (items no event touched included).
    """

    config: SyntheticConfig
    table: EventTable
    users: list[SyntheticUser]
    items: list[SyntheticItem]


def event_id(seed: int, user_id: str, j: int) -> str:
    """The id of the ``j``-th event (time order) of ``user_id`` in the dataset of ``seed``:
    deterministic, and unique across seeds so that two synthetic files can share a store."""
    return f"s{seed}-{user_id}-{j:04d}"


def _zipf_p(n: int, s: float) -> npt.NDArray[np.float64]:
    p: npt.NDArray[np.float64] = np.arange(1, n + 1, dtype=np.float64) ** (-s)
    out: npt.NDArray[np.float64] = p / float(p.sum())
    return out


def _draw_interests(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    k: int,
    leaf_p: npt.NDArray[np.float64],
    leaf_root: npt.NDArray[np.intp],
    held_roots: npt.NDArray[np.bool_] | None,
) -> tuple[list[int], npt.NDArray[np.float64]]:
    """Up to ``k`` distinct leaves (indices) with strengths (Dirichlet(1.5), strongest first).

    Each leaf is drawn by popularity ``leaf_p`` among the leaves not yet chosen and, after the
    first, with chance ``cfg.same_root_prob`` among those of a root already chosen (when any is
    left). ``held_roots`` (a mask over roots) excludes the roots a drifting user held before;
    fewer than ``k`` leaves come back only when the allowed leaves run out.
    """
    allowed = np.ones(len(leaf_p), dtype=bool) if held_roots is None else ~held_roots[leaf_root]
    chosen_roots = np.zeros(int(leaf_root.max()) + 1, dtype=bool)
    chosen: list[int] = []
    coins = rng.random((k, 2))
    for same_coin, pick_u in coins.tolist():
        mask = allowed
        if chosen and same_coin < cfg.same_root_prob:
            same = allowed & chosen_roots[leaf_root]
            if same.any():
                mask = same
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            break
        cdf = np.cumsum(leaf_p[idx])
        leaf = int(idx[min(int(np.searchsorted(cdf, pick_u * cdf[-1], "right")), idx.size - 1)])
        chosen.append(leaf)
        allowed[leaf] = False
        chosen_roots[leaf_root[leaf]] = True
    strengths = rng.dirichlet(np.full(len(chosen), 1.5))
    order = np.argsort(-strengths, kind="stable")
    return [chosen[i] for i in order], strengths[order]


_Mixture = tuple[list[int], npt.NDArray[np.float64]]  # leaf indices, strengths (sum 1)


def _draw_mixtures(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    leaf_p: npt.NDArray[np.float64],
    leaf_root: npt.NDArray[np.intp],
    drifting: npt.NDArray[np.bool_],
) -> list[_Mixture]:
    """Every user's interests: row ``2u`` before any drift, ``2u + 1`` after (empty for a
    user who does not drift). The per-user Python loop of the generator (~30 us a user).
    Clears ``drifting[u]`` for a user who holds every root and so has nothing to drift to."""
    k_cdf = np.cumsum(_zipf_p(cfg.max_interests, cfg.interest_exponent))
    draws = rng.random((len(drifting), 2))
    k = np.minimum(np.searchsorted(k_cdf, draws, "right"), len(k_cdf) - 1) + 1
    none: _Mixture = ([], np.zeros(0))
    mix: list[_Mixture] = []
    for u, (k_before, k_after) in enumerate(k.tolist()):
        before = _draw_interests(rng, cfg, k_before, leaf_p, leaf_root, None)
        after = none
        if drifting[u]:
            held = np.zeros(int(leaf_root.max()) + 1, dtype=bool)
            held[leaf_root[before[0]]] = True
            after = _draw_interests(rng, cfg, k_after, leaf_p, leaf_root, held)
            drifting[u] = bool(after[0])
        mix += (before, after)
    return mix


def _draw_leaves(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    leaf_p: npt.NDArray[np.float64],
    row: npt.NDArray[np.int32],
    mix: list[_Mixture],
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.bool_]]:
    """Each event's leaf and whether it is on-interest: with chance ``cfg.explore_prob`` a
    leaf by popularity (off-interest), else a leaf of mixture ``mix[row]`` by strength."""
    # the mixtures as a padded (rows, most interests) table of leaves and cumulative strengths
    length = np.array([len(m[0]) for m in mix], dtype=np.int64)
    mix_leaf = np.zeros((len(mix), int(length.max())), dtype=np.int16)
    mix_cdf = np.ones(mix_leaf.shape)  # padding 1.0: never below a uniform draw
    at = (
        np.repeat(np.arange(len(mix)), length),
        np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length),
    )
    mix_leaf[at] = [leaf for m in mix for leaf in m[0]]
    mix_cdf[at] = np.concatenate([np.cumsum(m[1]) for m in mix])
    mix_cdf[length > 0, length[length > 0] - 1] = 1.0  # exactly, whatever the rounding

    explore = rng.random(len(row)) < cfg.explore_prob
    leaf = np.empty(len(row), dtype=np.int16)
    leaf[explore] = rng.choice(len(leaf_p), size=int(explore.sum()), p=leaf_p)
    on = np.flatnonzero(~explore)
    on_row = row[on]
    u01 = rng.random(on.size)
    comp = np.zeros(on.size, dtype=np.intp)  # the first component whose cdf exceeds u01
    for col in range(mix_cdf.shape[1] - 1):
        comp += mix_cdf[on_row, col] < u01
    leaf[on] = mix_leaf[on_row, comp]
    return leaf, ~explore


def _sorted_uniforms(
    rng: np.random.Generator, user: npt.NDArray[np.int32]
) -> npt.NDArray[np.float64]:
    """Uniform draws in [0, 1], sorted within each user (``user`` grouped, ascending): one sort
    of ``user + u`` orders every user's draws at once. The sum keeps ``u`` to ~1.5e-11 at
    100,000 users, far below the whole seconds the times are rounded to."""
    u = rng.random(len(user))
    u += user
    u.sort()
    u -= user
    return u


def _root_index(leaves: list[str]) -> npt.NDArray[np.intp]:
    """Each leaf's root, as an index into the distinct roots (in order of appearance)."""
    roots: dict[str, int] = {}
    return np.array([roots.setdefault(root_of(leaf), len(roots)) for leaf in leaves], np.intp)


def _compact(codes: npt.NDArray[np.int32], size: int) -> tuple[list[int], npt.NDArray[np.int32]]:
    """The entries of a ``size``-long string table that ``codes`` use (in table order), and
    ``codes`` renumbered into them (-1 stays -1)."""
    used = np.zeros(size, dtype=bool)
    used[codes[codes >= 0]] = True
    new = (np.cumsum(used) - 1).astype(np.int32)
    out = np.where(codes >= 0, new[np.maximum(codes, 0)], -1).astype(np.int32)
    return np.flatnonzero(used).tolist(), out


def generate_table(
    config: SyntheticConfig | None = None,
    *,
    event_ids: bool = False,
    catalogue: Catalogue | None = None,
) -> SyntheticTable:
    """Generates the synthetic dataset for ``config`` as columns (deterministic in
    ``config.seed``); :func:`generate` returns the same events as objects.

    Per user (a short Python loop): the number of events (log-normal around
    ``events_per_user``), the start of the timeline, whether and where interests drift, and
    the interests themselves. Per event (numpy over all events at once): off-interest
    (``explore_prob``, a leaf by popularity) or a leaf of the user's interest mixture before or
    after the switch, the type (``_TYPE_MIX``), the item (Zipf within the leaf), a pool text
    for searches and reviews, value and dwell (lower off-interest), and the time (uniform
    over the user's timeline, sorted, rounded to whole seconds).

    Args:
        config: what to generate (default :class:`SyntheticConfig`).
        event_ids: also store every event's id (:func:`event_id`). Off by default: at 100,000
            users the ids (~70 bytes each) would take more memory than all the columns; the
            table then derives ``"{user}-{j}"`` ids.
        catalogue: simulate users over this public catalogue (items with a text and a
            category path, :mod:`simulations.datasets.catalogue`) instead of the project's
            taxonomy. The same user model, with three differences a catalogue imposes: a
            leaf's popularity is its share of the catalogue's items (not a seeded Zipf
            ranking); the item within a leaf follows Zipf(1) over the leaf's items in file
            order (``rank = floor((n + 1)^u) - 1``, leaves differ in size); and there are no
            searches or reviews (a catalogue has no private texts: their shares of the type
            mix go to the other types pro rata). ``items_per_leaf`` is unused.
    """
    cfg = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    if catalogue is None:
        leaves = list(LEAF_TERMS)
        leaf_root = _root_index(leaves)
        ranking = rng.permutation(len(leaves))
        leaf_p = np.empty(len(leaves))
        leaf_p[ranking] = _zipf_p(len(leaves), cfg.leaf_popularity_exponent)
        items = make_catalogue(rng, cfg.items_per_leaf)
        searches = [t for leaf in leaves for t in search_pool(rng, leaf, SEARCHES_PER_LEAF)]
        reviews = [t for leaf in leaves for t in review_pool(rng, leaf, REVIEWS_PER_LEAF)]
        type_mix = _TYPE_MIX
    else:
        leaves = catalogue.leaves
        leaf_root = _root_index(leaves)
        leaf_of = {leaf: i for i, leaf in enumerate(leaves)}
        items = sorted(catalogue.items, key=lambda it: leaf_of[it.leaf])  # stable: file order
        leaf_size = np.bincount([leaf_of[it.leaf] for it in items], minlength=len(leaves))
        leaf_start = np.cumsum(leaf_size) - leaf_size
        leaf_p = leaf_size / float(leaf_size.sum())
        searches, reviews = [], []
        private = (EventType.SEARCH, EventType.REVIEW)
        type_mix = tuple((t, p) for t, p in _TYPE_MIX if t not in private)
    text_code: dict[str, int] = {}
    item_text, search_text, review_text = (
        np.array([text_code.setdefault(t, len(text_code)) for t in texts], dtype=np.int32)
        for texts in ([it.text for it in items], searches, reviews)
    )
    if catalogue is None:
        search_text = search_text.reshape(len(leaves), SEARCHES_PER_LEAF)
        review_text = review_text.reshape(len(leaves), REVIEWS_PER_LEAF)

    # -- users --------------------------------------------------------------------------------
    n_users = cfg.users
    width = max(4, len(str(n_users)))
    uids = [f"u{u + 1:0{width}d}" for u in range(n_users)]
    size = np.clip(
        np.round(cfg.events_per_user * rng.lognormal(0.0, 0.5, n_users)),
        12,
        8 * cfg.events_per_user,
    ).astype(np.int64)
    end = cfg.end_timestamp
    start = end - cfg.months * 30 * _DAY
    t0 = start + rng.uniform(0.0, 0.3, n_users) * (end - start)
    drifting = rng.random(n_users) < cfg.drift_share
    switch = (size * rng.uniform(0.4, 0.6, n_users)).astype(np.int64)
    mix = _draw_mixtures(rng, cfg, leaf_p, leaf_root, drifting)

    # -- events -------------------------------------------------------------------------------
    n_events = int(size.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int32), size)
    first = np.cumsum(size) - size
    pos = np.arange(n_events, dtype=np.int64) - np.repeat(first, size)
    row = 2 * user + (drifting[user] & (pos >= switch[user]))  # the mixture each event uses
    del pos  # (each temporary is ~50 MB at 100,000 users)
    leaf, on_interest = _draw_leaves(rng, cfg, leaf_p, row, mix)
    del row

    type_p = np.array([p for _, p in type_mix])
    type_code = np.array([EVENT_TYPES.index(t) for t, _ in type_mix], dtype=np.int8)
    event_type = type_code[rng.choice(len(type_mix), size=n_events, p=type_p / type_p.sum())]
    if catalogue is None:
        ipl = cfg.items_per_leaf
        rank = rng.choice(ipl, size=n_events, p=_zipf_p(ipl, 1.0)).astype(np.int32)
        item = leaf.astype(np.int32) * ipl + rank
    else:
        n_leaf = leaf_size[leaf]
        rank = np.floor(np.exp(rng.random(n_events) * np.log(n_leaf + 1.0))).astype(np.int64) - 1
        item = (leaf_start[leaf] + np.clip(rank, 0, n_leaf - 1)).astype(np.int32)
        del n_leaf
    del rank
    text = item_text[item]

    def rows_of(etype: EventType) -> npt.NDArray[np.intp]:
        return np.flatnonzero(event_type == EVENT_TYPES.index(etype))

    value = np.full(n_events, np.nan, dtype=np.float64)
    if catalogue is None:
        at = rows_of(EventType.SEARCH)
        text[at] = search_text[leaf[at], rng.integers(SEARCHES_PER_LEAF, size=at.size)]
        item[at] = -1
        at = rows_of(EventType.REVIEW)
        text[at] = review_text[leaf[at], rng.integers(REVIEWS_PER_LEAF, size=at.size)]
        value[at] = rng.integers(0, 3, size=at.size) + np.where(on_interest[at], 3, 1)
    at = rows_of(EventType.RATE)
    stars = rng.normal(np.where(on_interest[at], 4.2, 2.8), 0.7)
    value[at] = np.clip(np.round(2 * stars) / 2, 0.5, 5.0)
    at = rows_of(EventType.PURCHASE)
    value[at] = np.round(rng.lognormal(3.3, 0.8, size=at.size), _VALUE_DECIMALS)
    median = np.full(len(EVENT_TYPES), np.nan)
    for etype, m in _DWELL_MEDIAN.items():
        median[EVENT_TYPES.index(etype)] = m
    at = np.flatnonzero(np.isfinite(median[event_type]))
    dwell = np.full(n_events, np.nan, dtype=np.float64)
    scale = median[event_type[at]] * np.where(on_interest[at], 1.0, 0.5)
    dwell[at] = np.round(scale * rng.lognormal(0.0, 0.8, size=at.size), _DWELL_DECIMALS)
    del at, scale, on_interest

    # times: uniform over each user's [t0, end - 60 s], in order within the user
    timestamp = t0[user] + _sorted_uniforms(rng, user) * ((end - 60.0) - t0)[user]
    drift_at = timestamp[first + switch]
    np.round(timestamp, out=timestamp)

    kept_texts, text = _compact(text, len(text_code))
    all_texts = list(text_code)
    kept_items, item = _compact(item, len(items))
    kept_leaves, category = _compact(leaf.astype(np.int32), len(leaves))
    del leaf
    table = EventTable(
        users=uids,
        texts=[all_texts[i] for i in kept_texts],
        items=[items[i].item_id for i in kept_items],
        categories=[leaves[i] for i in kept_leaves],
        user=user,
        timestamp=timestamp,
        event_type=event_type,
        text=text,
        item=item,
        category=category,
        dwell=dwell,
        value=value,
        event_ids=(
            [
                event_id(cfg.seed, uid, j)
                for uid, m in zip(uids, size.tolist(), strict=True)
                for j in range(m)
            ]
            if event_ids
            else None
        ),
    )

    def interests(m: _Mixture) -> tuple[tuple[str, float], ...]:
        return tuple((leaves[i], s) for i, s in zip(m[0], m[1].tolist(), strict=True))

    truth = [
        SyntheticUser(
            uid,
            interests(mix[2 * u]),
            float(drift_at[u]) if drifting[u] else None,
            interests(mix[2 * u + 1]),
        )
        for u, uid in enumerate(uids)
    ]
    return SyntheticTable(cfg, table, truth, items)


def generate(
    config: SyntheticConfig | None = None, *, catalogue: Catalogue | None = None
) -> SyntheticDataset:
    """Generates the synthetic dataset for ``config`` (deterministic in ``config.seed``): the
    events of :func:`generate_table` (over ``catalogue`` when given), with their ids, as
    :class:`Event` objects sorted by time (then id). For small populations: an
    :class:`Event` costs ~600 bytes."""
    cfg = config if config is not None else SyntheticConfig()
    syn = generate_table(cfg, event_ids=True, catalogue=catalogue)
    events = [e for evs in syn.table.user_events().values() for e in evs]
    events.sort(key=lambda e: (e.timestamp, e.event_id))
    return SyntheticDataset(cfg, events, syn.users, syn.items)


def iter_jsonl_lines(events: list[Event]) -> Iterator[str]:
    for e in events:
        yield json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True)


def write_jsonl(events: list[Event], path: str | Path) -> int:
    """Writes events as JSON Lines (sorted keys, UTF-8) and returns the number written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for line in iter_jsonl_lines(events):
            f.write(line + "\n")
            n += 1
    return n
