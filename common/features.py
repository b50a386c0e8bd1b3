"""Behaviour features: how much one event says about an interest, and per-user aggregates.

The weight of an event is ``type_weight x dwell_factor x value_factor x recency``, capped at
``max_weight``. The cap matters beyond taste: the DP release bounds one event's contribution by
``clipping_norm x max_weight``, so the weights must be bounded by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.events import Event, EventType

__all__ = [
    "DEFAULT_TYPE_WEIGHTS",
    "UserAggregates",
    "WeightingConfig",
    "event_weights",
    "user_aggregates",
    "weights_for_events",
]

# purchase > add_to_cart > review > like > click > view (the required order); share sits with
# like, rate with review (its value modulates it), search with click.
DEFAULT_TYPE_WEIGHTS: Mapping[EventType, float] = MappingProxyType(
    {
        EventType.PURCHASE: 3.0,
        EventType.ADD_TO_CART: 2.2,
        EventType.REVIEW: 1.8,
        EventType.RATE: 1.6,
        EventType.LIKE: 1.5,
        EventType.SHARE: 1.5,
        EventType.CLICK: 1.0,
        EventType.SEARCH: 1.0,
        EventType.VIEW: 0.6,
    }
)

_DAY = 86400.0


@dataclass(frozen=True)
class WeightingConfig:
    """Per-event weights.

    Attributes:
        type_weights: base weight per event type.
        reference_dwell_seconds: dwell at which the dwell factor is 1; the factor grows with
            ``log1p(dwell) / log1p(reference)`` and is clipped to ``dwell_factor_range``.
        dwell_factor_range: bounds of the dwell factor.
        rating_scale: for ``rate`` and ``review`` events with a value, the factor is
            ``0.5 + value / rating_scale`` (0.5 for 0, 1.5 at the top of the scale).
        half_life_days: recency decay ``0.5 ** (age / half_life)``; ``None`` disables decay.
        max_weight: the hard cap on one event's weight (used by the DP sensitivity).
    """

    type_weights: Mapping[EventType, float] = field(default_factory=lambda: DEFAULT_TYPE_WEIGHTS)
    reference_dwell_seconds: float = 30.0
    dwell_factor_range: tuple[float, float] = (0.5, 1.5)
    rating_scale: float = 5.0
    half_life_days: float | None = 30.0
    max_weight: float = 4.0

    def __post_init__(self) -> None:
        missing = [t.value for t in EventType if t not in self.type_weights]
        if missing:
            raise ConfigError(f"`type_weights` must cover every event type. Missing {missing}.")
        for t, w in self.type_weights.items():
            if not (math.isfinite(w) and w > 0):
                raise ConfigError(f"`type_weights[{t.value}]` must be > 0. Found {w!r}.")
        if not self.reference_dwell_seconds > 0:
            raise ConfigError(
                f"`reference_dwell_seconds` must be > 0. Found {self.reference_dwell_seconds!r}."
            )
        lo, hi = self.dwell_factor_range
        if not 0 < lo <= 1 <= hi:
            raise ConfigError(
                f"`dwell_factor_range` must satisfy 0 < low <= 1 <= high. Found {self.dwell_factor_range!r}."
            )
        if not self.rating_scale > 0:
            raise ConfigError(f"`rating_scale` must be > 0. Found {self.rating_scale!r}.")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ConfigError(
                f"`half_life_days` must be > 0 or None. Found {self.half_life_days!r}."
            )
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigError(f"`max_weight` must be > 0. Found {self.max_weight!r}.")


def event_weights(
    event_types: Sequence[EventType | str] | npt.NDArray[np.integer],
    timestamps: npt.ArrayLike,
    *,
    dwell_seconds: npt.ArrayLike | None = None,
    values: npt.ArrayLike | None = None,
    reference_time: float,
    config: WeightingConfig | None = None,
) -> npt.NDArray[np.float64]:
    """Weight of each event, in ``(0, max_weight]``.

    Args:
        event_types: shape ``(n,)``: event types, or their codes into ``tuple(EventType)``.
        timestamps: unix seconds, shape ``(n,)``.
        dwell_seconds: shape ``(n,)``, NaN where unknown.
        values: ratings or prices, shape ``(n,)``, NaN where unknown.
        reference_time: "now" for the recency decay (unix seconds); events after it count as
            age 0. Use the end of the observed period, not the wall clock, for replayed data.
        config: the weighting; defaults to :class:`WeightingConfig`.

    Returns:
        shape ``(n,)``.
    """
    cfg = config if config is not None else WeightingConfig()
    order = tuple(EventType)
    if isinstance(event_types, np.ndarray) and np.issubdtype(event_types.dtype, np.integer):
        # a column of codes into ``tuple(EventType)`` (common.event_table): no Python loop
        codes = event_types.astype(np.int64)
    else:
        index = {t: i for i, t in enumerate(order)}
        codes = np.fromiter(
            (index[EventType(t)] for t in event_types), dtype=np.int64, count=len(event_types)
        )
    base = np.array([cfg.type_weights[t] for t in order], dtype=np.float64)[codes]
    w = base
    if dwell_seconds is not None:
        d = np.asarray(dwell_seconds, dtype=np.float64)
        lo, hi = cfg.dwell_factor_range
        with np.errstate(invalid="ignore"):
            f = np.log1p(np.maximum(d, 0.0)) / math.log1p(cfg.reference_dwell_seconds)
        f = np.where(np.isfinite(d), np.clip(f, lo, hi), 1.0)
        w = w * f
    if values is not None:
        v = np.asarray(values, dtype=np.float64)
        rated = np.isin(
            codes, [order.index(EventType.RATE), order.index(EventType.REVIEW)]
        ) & np.isfinite(v)
        f = np.where(rated, 0.5 + np.clip(np.nan_to_num(v) / cfg.rating_scale, 0.0, 1.0), 1.0)
        w = w * f
    if cfg.half_life_days is not None:
        age_days = np.maximum(reference_time - np.asarray(timestamps, dtype=np.float64), 0.0) / _DAY
        w = w * np.power(0.5, age_days / cfg.half_life_days)
    return np.minimum(w, cfg.max_weight)


def weights_for_events(
    events: Sequence[Event], *, reference_time: float, config: WeightingConfig | None = None
) -> npt.NDArray[np.float64]:
    """:func:`event_weights` for a list of :class:`Event`; shape ``(len(events),)``."""
    nan = float("nan")
    return event_weights(
        [e.event_type for e in events],
        np.array([e.timestamp for e in events], dtype=np.float64),
        dwell_seconds=np.array(
            [nan if e.dwell_seconds is None else e.dwell_seconds for e in events], dtype=np.float64
        ),
        values=np.array([nan if e.value is None else e.value for e in events], dtype=np.float64),
        reference_time=reference_time,
        config=config,
    )


@dataclass(frozen=True)
class UserAggregates:
    """Per-user behaviour aggregates.

    Attributes:
        user_id: the user.
        num_events: events seen.
        active_days: days between the first and last event (at least 1).
        events_per_day: ``num_events / active_days``.
        type_mix: share of each event type.
        click_through_rate: clicks per view, where views (impressions) exist; else ``None``.
        first_timestamp / last_timestamp: unix seconds.
    """

    user_id: str
    num_events: int
    active_days: float
    events_per_day: float
    type_mix: Mapping[str, float]
    click_through_rate: float | None
    first_timestamp: float
    last_timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "num_events": self.num_events,
            "active_days": self.active_days,
            "events_per_day": self.events_per_day,
            "type_mix": dict(self.type_mix),
            "click_through_rate": self.click_through_rate,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
        }


def user_aggregates(
    user_id: str, event_types: Sequence[EventType | str], timestamps: npt.ArrayLike
) -> UserAggregates:
    """Aggregates one user's events. ``view`` events count as impressions for the
    click-through rate (clicks / views)."""
    t = np.asarray(timestamps, dtype=np.float64)
    n = int(t.size)
    if n == 0:
        raise ConfigError(f"user {user_id!r} has no events to aggregate.")
    counts: dict[str, int] = {}
    for et in event_types:
        key = EventType(et).value
        counts[key] = counts.get(key, 0) + 1
    first, last = float(t.min()), float(t.max())
    days = max((last - first) / _DAY, 1.0)
    views = counts.get(EventType.VIEW.value, 0)
    ctr = counts.get(EventType.CLICK.value, 0) / views if views else None
    return UserAggregates(
        user_id=user_id,
        num_events=n,
        active_days=days,
        events_per_day=n / days,
        type_mix={k: v / n for k, v in sorted(counts.items())},
        click_through_rate=ctr,
        first_timestamp=first,
        last_timestamp=last,
    )
