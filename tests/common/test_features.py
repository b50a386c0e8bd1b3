"""Behaviour features: bounded per-event weights and per-user aggregates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from common.events import EventType
from common.features import WeightingConfig, event_weights, user_aggregates

T = 1.75e9


def test_type_order() -> None:
    """purchase > add_to_cart > review > like > click > view."""
    order = ["purchase", "add_to_cart", "review", "like", "click", "view"]
    w = event_weights(order, np.full(6, T), reference_time=T)
    assert all(w[i] > w[i + 1] for i in range(5))


def test_dwell_factor_bounded_and_monotone() -> None:
    """Longer dwell weighs more, within the configured factor range; unknown dwell is neutral."""
    dwell = np.array([0.0, 5.0, 30.0, 300.0, 1e6, np.nan])
    w = event_weights(["view"] * 6, np.full(6, T), dwell_seconds=dwell, reference_time=T)
    base = WeightingConfig().type_weights[EventType.VIEW]
    assert np.all(np.diff(w[:5]) >= 0)
    assert w[0] == pytest.approx(0.5 * base) and w[4] == pytest.approx(1.5 * base)
    assert w[2] == pytest.approx(base) and w[5] == pytest.approx(base)


def test_recency_halves_at_half_life() -> None:
    """An event one half-life old weighs half; future events count as age 0."""
    cfg = WeightingConfig(half_life_days=10.0)
    w = event_weights(
        ["click"] * 3, np.array([T, T - 10 * 86400, T + 99]), reference_time=T, config=cfg
    )
    assert w[1] == pytest.approx(w[0] / 2) and w[2] == pytest.approx(w[0])
    no_decay = event_weights(
        ["click"],
        np.array([T - 1e8]),
        reference_time=T,
        config=WeightingConfig(half_life_days=None),
    )
    assert no_decay[0] == pytest.approx(1.0)


def test_rating_modulates_rate_and_review_only() -> None:
    """A rating scales rate/review weights by 0.5 + value/scale; other types ignore value."""
    w = event_weights(
        ["rate", "rate", "purchase"],
        np.full(3, T),
        values=np.array([5.0, 0.0, 999.0]),
        reference_time=T,
    )
    tw = WeightingConfig().type_weights
    assert w[0] == pytest.approx(1.5 * tw[EventType.RATE]) and w[1] == pytest.approx(
        0.5 * tw[EventType.RATE]
    )
    assert w[2] == pytest.approx(tw[EventType.PURCHASE])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([t.value for t in EventType]), min_size=1, max_size=20),
    st.floats(0.1, 10.0),
    st.one_of(st.floats(-1e6, 1e9), st.just(float("nan"))),
    st.one_of(st.floats(-10.0, 1e4), st.just(float("nan"))),
)
def test_weights_positive_and_capped(
    types: list[str], cap: float, dwell: float, value: float
) -> None:
    """Every weight lies in (0, max_weight], whatever the inputs."""
    n = len(types)
    w = event_weights(
        types,
        np.full(n, T - 86400.0),
        dwell_seconds=np.full(n, dwell),
        values=np.full(n, value),
        reference_time=T,
        config=WeightingConfig(max_weight=cap),
    )
    assert np.all(w > 0) and np.all(w <= cap)


def test_config_errors_name_the_field() -> None:
    """Invalid weighting settings are rejected with the field's name."""
    with pytest.raises(ConfigError, match="max_weight"):
        WeightingConfig(max_weight=0)
    with pytest.raises(ConfigError, match="half_life_days"):
        WeightingConfig(half_life_days=-1)
    with pytest.raises(ConfigError, match="type_weights"):
        WeightingConfig(type_weights={EventType.VIEW: 1.0})


def test_user_aggregates() -> None:
    """Events per day, type mix and click-through (clicks per view)."""
    a = user_aggregates(
        "u", ["view", "view", "view", "view", "click", "purchase"], T + np.arange(6) * 86400.0 * 2
    )
    assert a.num_events == 6 and a.active_days == pytest.approx(10.0)
    assert a.events_per_day == pytest.approx(0.6)
    assert a.click_through_rate == pytest.approx(0.25)
    assert math.isclose(sum(a.type_mix.values()), 1.0)
    assert user_aggregates("v", ["click"], [T]).click_through_rate is None
