"""The synthetic behaviour generator: the embedded default dataset.

Users hold a few interests (leaves of :mod:`simulations.datasets.taxonomy`; how many follows a
power law, and so does leaf popularity); they view, click, like, share, add to cart, buy, rate
and review catalogue items of those leaves, and write **private free text** (search queries
and reviews) that no catalogue holds. A configurable share of users drifts: mid-way their
interests switch to a new set. Every event carries its ground-truth ``category`` path.

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
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.events import Event, EventType
from simulations.datasets.taxonomy import LEAF_TERMS, ROOT_TERMS

__all__ = [
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticItem",
    "SyntheticUser",
    "generate",
    "write_jsonl",
]

_DAY = 86400.0

_ARTICLE = (
    "{n} things nobody tells you about {a}",
    "Why {a} is changing how people think about {b}",
    "A beginner's guide to {a} and {b}",
    "The surprising history of {a}",
    "{A} vs {b}: which one is right for you?",
    "Everything you need to know about {a} this year",
    "How I got into {a}, and what I would do differently",
    "Expert tips for getting more out of {a}",
    "Inside the world of {a}: {b} and beyond",
    "Is {a} worth it? An honest look at {b}",
    "The complete checklist for {a}",
    "{n} common mistakes with {a} and how to avoid them",
    "What {aud} should know before trying {a}",
    "{A}: the trends to watch, from {b} to {c}",
)
_PRODUCT = (
    "{brand} {a}, {adj} edition",
    "{Adj} {a} bundle with {b}",
    "{brand} {a}: {adj} and made for {b}",
    "{A} starter kit by {brand}",
    "Set of {n}: {adj} {a}",
    "{brand} {adj} {a} for {aud}",
)
_MEDIA = (
    "Watch: {a} explained in {n} minutes",
    "Live stream: {a} and {b}, questions answered",
    "Podcast episode {n}: talking {a} with an expert",
    "{A} tutorial for {aud}",
    "Video review: {a} tested against {b}",
)
_DESCRIPTION = (
    "A {r} favourite: covers {b}, {c} and more.",
    "Perfect for anyone into {r}, especially {b} or {c}.",
    "Includes notes on {b} and {c}, for people who love {r}.",
    "From {c} to {b}: a closer look at {r} and {r2}.",
    "With a section on {c}.",
    "All about {r} and {r2}, with tips on {b}.",
    "Covers {b}, {c} and more.",
    "",
)
_SEARCH = (
    "{a}",
    "best {a}",
    "{a} near me",
    "cheap {a}",
    "{a} for {aud}",
    "how to get started with {a}",
    "{a} vs {b}",
    "{a} reviews",
    "is {a} worth it",
    "{a} {b} tips",
    "where to buy {a}",
    "{a} recommendations {aud}",
    "what is {a}",
    "{a} {r} news",
    "{r} {a} ideas",
)
_REVIEW = (
    "Loved it! The {a} is {adj2} and {opinion}.",
    "The {a} was {adj2}, but the part about {b} could be better.",
    "Bought this for my {rel}, who is really into {a}. {Opinion}.",
    "Five stars: great on {a}, and {b} is covered well too.",
    "Disappointed. I expected more on {a}; {b} felt rushed.",
    "Honest review: {a} is {adj2} here and {b} is {adj3}.",
    "Second time I picked something about {a}. {Opinion}.",
    "If you care about {a} or {b}, get this. {Opinion}.",
)
_ADJ = (
    "lightweight", "premium", "compact", "professional", "classic", "ultimate",
    "beginner-friendly", "durable", "eco-friendly", "limited", "deluxe", "everyday",
    "travel-size", "heavy-duty", "essential", "advanced",
)  # fmt: skip
_ADJ2 = (
    "excellent", "solid", "fantastic", "decent", "mediocre", "well made", "surprisingly good",
    "overpriced", "brilliant", "useful",
)  # fmt: skip
_OPINION = (
    "would recommend it to a friend", "worth every penny", "arrived quickly", "exactly as described",
    "I use it every week", "not sure I would buy it again", "my whole family enjoys it",
    "it exceeded my expectations",
)  # fmt: skip
_BRAND = (
    "Northpeak", "Altura", "Veloce", "Brightwell", "Kestrel", "Lumio", "Oakridge", "Solace",
    "Trident", "Zenova", "Harbor & Finch", "Maple Lane", "Corvid", "Pinecrest",
)  # fmt: skip
_AUD = (
    "beginners", "families", "busy professionals", "students", "experts", "kids", "seniors",
    "weekend enthusiasts", "first-timers",
)  # fmt: skip
_REL = ("partner", "dad", "mum", "sister", "brother", "best friend", "son", "daughter")

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
class SyntheticItem:
    """A catalogue item: public text, one leaf."""

    item_id: str
    leaf: str
    text: str


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
        return list(LEAF_TERMS)

    def truth(self) -> dict[str, Any]:
        return {
            "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
            "users": [u.to_dict() for u in self.users],
        }


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fill(template: str, rng: np.random.Generator, root: tuple[str, ...], picks: list[str]) -> str:
    a, b, c = picks
    r, r2 = (root[int(i)] for i in rng.choice(len(root), size=2, replace=False))
    values = {
        "r": r,
        "r2": r2,
        "a": a,
        "b": b,
        "c": c,
        "A": _cap(a),
        "n": str(int(rng.integers(3, 13))),
        "adj": _ADJ[int(rng.integers(len(_ADJ)))],
        "Adj": _cap(_ADJ[int(rng.integers(len(_ADJ)))]),
        "adj2": _ADJ2[int(rng.integers(len(_ADJ2)))],
        "adj3": _ADJ2[int(rng.integers(len(_ADJ2)))],
        "opinion": _OPINION[int(rng.integers(len(_OPINION)))],
        "Opinion": _cap(_OPINION[int(rng.integers(len(_OPINION)))]),
        "brand": _BRAND[int(rng.integers(len(_BRAND)))],
        "aud": _AUD[int(rng.integers(len(_AUD)))],
        "rel": _REL[int(rng.integers(len(_REL)))],
    }
    return template.format(**values)


def _pick3(rng: np.random.Generator, terms: tuple[str, ...]) -> list[str]:
    idx = rng.choice(len(terms), size=3, replace=False)
    return [terms[int(i)] for i in idx]


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, list[SyntheticItem]]:
    kinds = (_ARTICLE, _PRODUCT, _MEDIA)
    kind_p = np.array([0.45, 0.35, 0.20])
    out: dict[str, list[SyntheticItem]] = {}
    counter = 0
    for leaf, terms in LEAF_TERMS.items():
        items = []
        for _ in range(cfg.items_per_leaf):
            templates = kinds[int(rng.choice(3, p=kind_p))]
            picks = _pick3(rng, terms)
            root = ROOT_TERMS[leaf.split(" > ")[0]]
            title = _fill(templates[int(rng.integers(len(templates)))], rng, root, picks)
            desc = _fill(_DESCRIPTION[int(rng.integers(len(_DESCRIPTION)))], rng, root, picks)
            counter += 1
            sep = " " if title.endswith(("?", "!", ".")) else ". "
            items.append(SyntheticItem(f"it{counter:05d}", leaf, f"{title}{sep}{desc}".strip()))
        out[leaf] = items
    return out


def _zipf_p(n: int, s: float) -> npt.NDArray[np.float64]:
    p: npt.NDArray[np.float64] = np.arange(1, n + 1, dtype=np.float64) ** (-s)
    out: npt.NDArray[np.float64] = p / float(p.sum())
    return out


def _draw_interests(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    leaves: list[str],
    leaf_p: np.ndarray,
    exclude_roots: set[str],
) -> tuple[tuple[str, float], ...]:
    k_p = _zipf_p(cfg.max_interests, cfg.interest_exponent)
    k = int(rng.choice(cfg.max_interests, p=k_p)) + 1
    roots = np.array([leaf.split(" > ")[0] for leaf in leaves])
    allowed = (
        ~np.isin(roots, sorted(exclude_roots)) if exclude_roots else np.ones(len(leaves), bool)
    )
    chosen: list[int] = []
    for _ in range(k):
        mask = allowed.copy()
        mask[chosen] = False
        if chosen and rng.random() < cfg.same_root_prob:
            same = np.isin(roots, sorted({roots[i] for i in chosen}))
            if (mask & same).any():
                mask &= same
        if not mask.any():
            break
        p = np.where(mask, leaf_p, 0.0)
        chosen.append(int(rng.choice(len(leaves), p=p / p.sum())))
    strengths = rng.dirichlet(np.full(len(chosen), 1.5))
    order = np.argsort(-strengths, kind="stable")
    return tuple((leaves[chosen[i]], float(strengths[i])) for i in order)


def generate(config: SyntheticConfig | None = None) -> SyntheticDataset:
    """Generates the synthetic dataset for ``config`` (deterministic in ``config.seed``)."""
    cfg = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    leaves = list(LEAF_TERMS)
    ranking = rng.permutation(len(leaves))
    leaf_p = np.empty(len(leaves))
    leaf_p[ranking] = _zipf_p(len(leaves), cfg.leaf_popularity_exponent)
    catalogue = _make_items(cfg, rng)
    item_p = _zipf_p(cfg.items_per_leaf, 1.0)
    types = [t for t, _ in _TYPE_MIX]
    type_p = np.array([p for _, p in _TYPE_MIX])
    type_p = type_p / type_p.sum()
    end = cfg.end_timestamp
    start = end - cfg.months * 30 * _DAY

    events: list[Event] = []
    users: list[SyntheticUser] = []
    width = max(4, len(str(cfg.users)))
    for u in range(cfg.users):
        uid = f"u{u + 1:0{width}d}"
        before = _draw_interests(rng, cfg, leaves, leaf_p, set())
        n = int(
            np.clip(
                round(cfg.events_per_user * rng.lognormal(0.0, 0.5)), 12, 8 * cfg.events_per_user
            )
        )
        t0 = start + rng.uniform(0.0, 0.3) * (end - start)
        times = np.sort(rng.uniform(t0, end - 60.0, size=n))
        drift_at: float | None = None
        after: tuple[tuple[str, float], ...] = ()
        switch = n
        if rng.random() < cfg.drift_share:
            held = {leaf.split(" > ")[0] for leaf, _ in before}
            after = _draw_interests(rng, cfg, leaves, leaf_p, held)
            switch = int(n * rng.uniform(0.4, 0.6))
            drift_at = float(times[switch])
        for j in range(n):
            current = before if j < switch else after
            if rng.random() < cfg.explore_prob:
                leaf = leaves[int(rng.choice(len(leaves), p=leaf_p))]
                on_interest = False
            else:
                w = np.array([s for _, s in current])
                leaf = current[int(rng.choice(len(current), p=w / w.sum()))][0]
                on_interest = True
            etype = types[int(rng.choice(len(types), p=type_p))]
            events.append(
                _make_event(
                    rng,
                    cfg,
                    uid,
                    j,
                    float(times[j]),
                    etype,
                    leaf,
                    on_interest,
                    catalogue[leaf],
                    item_p,
                )
            )
        users.append(SyntheticUser(uid, before, drift_at, after))
    events.sort(key=lambda e: (e.timestamp, e.event_id))
    items = [it for leaf in leaves for it in catalogue[leaf]]
    return SyntheticDataset(cfg, events, users, items)


def _make_event(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    uid: str,
    j: int,
    ts: float,
    etype: EventType,
    leaf: str,
    on_interest: bool,
    items: list[SyntheticItem],
    item_p: np.ndarray,
) -> Event:
    terms = LEAF_TERMS[leaf]
    root = ROOT_TERMS[leaf.split(" > ")[0]]
    item = items[int(rng.choice(len(items), p=item_p))]
    item_id: str | None = item.item_id
    text = item.text
    dwell: float | None = None
    value: float | None = None
    if etype is EventType.SEARCH:
        item_id = None
        text = _fill(_SEARCH[int(rng.integers(len(_SEARCH)))], rng, root, _pick3(rng, terms))
    elif etype is EventType.REVIEW:
        text = _fill(_REVIEW[int(rng.integers(len(_REVIEW)))], rng, root, _pick3(rng, terms))
        value = float(rng.integers(3, 6) if on_interest else rng.integers(1, 4))
    elif etype is EventType.RATE:
        value = float(
            np.clip(round(2 * rng.normal(4.2 if on_interest else 2.8, 0.7)) / 2, 0.5, 5.0)
        )
    elif etype is EventType.PURCHASE:
        value = round(float(rng.lognormal(3.3, 0.8)), 2)
    if etype in (EventType.VIEW, EventType.CLICK, EventType.LIKE, EventType.SHARE):
        median = {EventType.VIEW: 15.0, EventType.CLICK: 40.0}.get(etype, 60.0)
        dwell = round(float(median * rng.lognormal(0.0, 0.8) * (1.0 if on_interest else 0.5)), 1)
    return Event(
        event_id=f"s{cfg.seed}-{uid}-{j:04d}",
        user_id=uid,
        timestamp=round(ts),
        event_type=etype,
        item_id=item_id,
        text=text,
        category=leaf,
        dwell_seconds=dwell,
        value=value,
    )


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
