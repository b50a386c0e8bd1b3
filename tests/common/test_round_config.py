"""The typed round config: the server builds it, it travels as Flower's config record and
back unchanged, and it is the one definition of the noise share and the device's ledger
entry; a config the device cannot parse or check is refused."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError, ReleaseRefusedError
from common.privacy import epsilon_of_entries, gaussian_epsilon, secagg_share_std
from common.privacy.ledger import Mechanism, Scope
from common.records import TASK_SENSITIVITY, ReleaseMode, ReleaseTask, RoundKeys
from common.round_config import RoundConfig, dpsgd_ledger_entry, min_cohort_for


def build(**over: Any) -> RoundConfig:
    kw: dict[str, Any] = {
        "server_round": 3,
        "hierarchy_version": 2,
        "mode": ReleaseMode.SECAGG,
        "noise_multiplier": 4.5,
        "sampled": 100,
        "min_cohort_fraction": 0.7,
        "clipping_norm": 1.0,
        "max_weight": 2.0,
        "user_clipping_norm": 100.0,
        "residual_threshold": 0.2,
        "projection_seed": 7,
        "projection_dim": 128,
        "projection_fingerprint": "fp",
        "delta": 1e-5,
    }
    kw.update(over)
    return RoundConfig.for_release(**kw)


positive = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(
    task=st.sampled_from(list(ReleaseTask)),
    mode=st.sampled_from(list(ReleaseMode)),
    z=st.one_of(st.just(0.0), positive),
    sampled=st.integers(1, 100_000),
    fraction=st.floats(0.01, 1.0),
    clip=positive,
    weight=positive,
    user_clip=positive,
    residual=st.floats(-1.0, 1.0),
    server_round=st.integers(1, 10**6),
    version=st.integers(0, 10**6),
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(2, 4096),
    fp=st.text(max_size=40),
    delta=st.floats(1e-12, 0.5),
    top_k=st.one_of(st.none(), st.integers(1, 50)),
)
def test_round_trip_through_the_config_record(
    task: ReleaseTask,
    mode: ReleaseMode,
    z: float,
    sampled: int,
    fraction: float,
    clip: float,
    weight: float,
    user_clip: float,
    residual: float,
    server_round: int,
    version: int,
    seed: int,
    dim: int,
    fp: str,
    delta: float,
    top_k: int | None,
) -> None:
    """Any config the server builds survives Flower's ConfigRecord and the device's parser
    unchanged, and passes the device's checks."""
    from flwr.app import ConfigRecord

    cfg = RoundConfig.for_release(
        server_round=server_round,
        hierarchy_version=version,
        mode=mode,
        noise_multiplier=z,
        sampled=sampled,
        min_cohort_fraction=fraction,
        clipping_norm=clip,
        max_weight=weight,
        user_clipping_norm=user_clip,
        residual_threshold=residual,
        projection_seed=seed,
        projection_dim=dim,
        projection_fingerprint=fp,
        delta=delta,
        task=task,
        top_k=top_k,
    )
    wire = dict(ConfigRecord(dict(cfg.to_record())))
    assert RoundConfig.from_record(wire, allow_no_dp=True) == cfg
    assert cfg.noise_std == cfg.required_noise_std
    if z > 0:
        assert RoundConfig.from_record(wire) == cfg
    else:
        with pytest.raises(ReleaseRefusedError, match="without noise"):
            RoundConfig.from_record(wire)


def test_noise_share_is_the_shared_formula() -> None:
    """Secagg: z * Delta / sqrt(min_cohort) with min_cohort = ceil(0.7 x sampled); local: the
    full z * Delta, whatever min_cohort says."""
    s = build()
    assert s.min_cohort == 70 == min_cohort_for(ReleaseMode.SECAGG, 100, 0.7)
    assert s.noise_std == secagg_share_std(noise_multiplier=4.5, sensitivity=2.0, min_cohort=70)
    assert s.noise_std == pytest.approx(4.5 * 2.0 / math.sqrt(70))
    loc = build(mode=ReleaseMode.LOCAL)
    assert loc.min_cohort == 1 and loc.noise_std == 4.5 * 2.0
    assert replace(loc, min_cohort=50).required_noise_std == 4.5 * 2.0
    assert build(sampled=1).min_cohort == 2
    hist = build(task=ReleaseTask.HISTOGRAM, top_k=3)
    assert hist.sensitivity == TASK_SENSITIVITY[ReleaseTask.HISTOGRAM]


def test_device_and_user_ledger_entries() -> None:
    """The device records its event-level spend; the server's user-level record divides the
    full noise by the user bound (1 for a histogram vector); no noise is non_private."""
    s = build(mode=ReleaseMode.LOCAL)
    e = s.ledger_entry()
    assert (e.mechanism, e.noise_multiplier, e.sensitivity, e.scope) == (
        Mechanism.GAUSSIAN_SUM,
        4.5,
        2.0,
        Scope.EVENT,
    )
    assert e.details["noise_std"] == s.noise_std and e.server_round == 3
    assert epsilon_of_entries([e], delta=1e-5) == pytest.approx(gaussian_epsilon(4.5, 1e-5))
    u = s.user_ledger_entry()
    assert (u.mechanism, u.scope, u.sensitivity) == (Mechanism.GAUSSIAN_SUM, Scope.USER, 100.0)
    assert u.noise_multiplier == pytest.approx(4.5 * 2.0 / 100.0)
    assert u.details["output"] == "leaf sums" and u.details["user_clipping_norm"] == 100.0
    assert u.details["event_noise_multiplier"] == pytest.approx(4.5)
    h = build(task=ReleaseTask.HISTOGRAM, top_k=1).user_ledger_entry()
    assert h.mechanism is Mechanism.GAUSSIAN_HISTOGRAM and h.sensitivity == 1.0
    assert h.noise_multiplier == pytest.approx(4.5 * math.sqrt(2.0))
    c = build(task=ReleaseTask.ITEM_COUNTS).ledger_entry()
    assert c.mechanism is Mechanism.GAUSSIAN_COUNT and c.sensitivity == 1.0
    off = build(noise_multiplier=0.0)
    assert off.ledger_entry().mechanism is Mechanism.NON_PRIVATE
    assert off.user_ledger_entry().mechanism is Mechanism.NON_PRIVATE
    assert epsilon_of_entries([off.ledger_entry()], delta=1e-5) == math.inf


def test_dpsgd_entry_is_group_privacy() -> None:
    """One event touches 3 examples: z / 3 at rate 1 - (1 - q)^3, sensitivity 3 C."""
    e = dpsgd_ledger_entry(
        noise_multiplier=12.0, sample_rate=0.05, max_grad_norm=1.0, steps=10, server_round=2
    )
    assert e.mechanism is Mechanism.DPSGD and e.noise_multiplier == pytest.approx(4.0)
    assert e.sample_rate == pytest.approx(1 - 0.95**3) and e.steps == 10
    assert e.sensitivity == 3.0


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({RoundKeys.NOISE_STD: 0.1}, "below"),
        ({RoundKeys.MIN_COHORT: 1}, "min_cohort"),
        ({RoundKeys.MIN_COHORT: 10**400}, "refused"),
        ({RoundKeys.TASK: "everything"}, "task"),
        ({RoundKeys.MODE: "plain"}, "mode"),
        ({RoundKeys.TOP_K: 0}, "top_k"),
        ({RoundKeys.TOP_K: "3"}, "top-k"),
        ({RoundKeys.SERVER_ROUND: "1"}, "server-round"),
        ({RoundKeys.DELTA: math.nan}, "finite"),
        ({RoundKeys.DELTA: 2.0}, "delta"),
        ({RoundKeys.CLIPPING_NORM: 1e-200, RoundKeys.MAX_WEIGHT: 1e-200}, "refused"),
        ({RoundKeys.NOISE_MULTIPLIER: 1e308, RoundKeys.MAX_WEIGHT: 1e308}, "below"),
        ({RoundKeys.USER_CLIPPING_NORM: True}, "user-clipping-norm"),
    ],
)
def test_device_refuses_what_it_cannot_parse_or_check(over: dict[str, Any], match: str) -> None:
    """Every malformed or unsafe config is a ReleaseRefusedError naming the problem."""
    record: dict[str, Any] = {**build().to_record(), **over}
    with pytest.raises(ReleaseRefusedError, match=match):
        RoundConfig.from_record(record)


def test_missing_key_is_refused() -> None:
    """A config without one of its keys is refused, naming the key."""
    for key in build().to_record():
        record = build().to_record()
        del record[key]
        if key == RoundKeys.TASK:  # optional: the leaf sums
            assert RoundConfig.from_record(record).task is ReleaseTask.LEAF_SUMS
            continue
        if key == RoundKeys.UNIT:  # optional: event level (the device accounts its own unit)
            assert RoundConfig.from_record(record).unit is Scope.EVENT
            continue
        with pytest.raises(ReleaseRefusedError, match=key):
            RoundConfig.from_record(record)


def test_refusal_is_a_config_error_and_the_server_builds_only_valid_configs() -> None:
    """ReleaseRefusedError is a ConfigError; the server cannot build an unsafe config."""
    assert issubclass(ReleaseRefusedError, ConfigError)
    with pytest.raises(ConfigError):
        build(delta=1.5)


def test_user_level_round_calibrates_to_the_user_bound() -> None:
    """At user level the noise is z x the user bound; the same release recorded at event level
    has multiplier sigma / min(event bound, 2 x user bound); the device records its own unit;
    the unit travels in the record and a missing key reads as event level."""
    s = build(unit=Scope.USER, user_clipping_norm=1.0, mode=ReleaseMode.LOCAL)
    assert s.sensitivity == s.user_sensitivity == 1.0 and s.noise_std == pytest.approx(4.5)
    assert s.event_sensitivity == 2.0  # C x max_weight = 2 = 2 x the user bound
    user, event = s.ledger_entry(Scope.USER), s.ledger_entry(Scope.EVENT)
    assert (user.scope, user.noise_multiplier, user.sensitivity) == (Scope.USER, 4.5, 1.0)
    assert (event.scope, event.noise_multiplier) == (Scope.EVENT, pytest.approx(2.25))
    assert user.details["event_noise_multiplier"] == pytest.approx(2.25)
    assert s.user_ledger_entry().noise_multiplier == pytest.approx(4.5)
    hist = build(unit=Scope.USER, user_clipping_norm=1.0, task=ReleaseTask.HISTOGRAM, top_k=2)
    assert hist.sensitivity == 1.0 and hist.event_sensitivity == pytest.approx(math.sqrt(2))
    record = s.to_record()
    assert record[RoundKeys.UNIT] == "user"
    assert RoundConfig.from_record(record).unit is Scope.USER
    legacy = {k: v for k, v in build(mode=ReleaseMode.LOCAL).to_record().items() if k != "unit"}
    assert RoundConfig.from_record(legacy).unit is Scope.EVENT
    with pytest.raises(ReleaseRefusedError, match="unit") as caught:
        RoundConfig.from_record({**record, RoundKeys.UNIT: "household"})
    assert caught.value.code.value == "unit"
