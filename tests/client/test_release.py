"""The device's DP release: sensitivity, noise calibration, fail-closed checks, ledger order."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from client.policy import DevicePolicy
from client.release import (
    RELEASE_WEIGHTING,
    ReleaseParams,
    ReleaseRefusedError,
    leaf_sums,
    release_round,
)
from client.store import EventStore
from common.errors import BudgetExceededError, RefusalCode
from common.events import iter_records
from common.privacy import PrivacyBudget, Scope, noise_multiplier_for_rounds
from common.projection import PublicProjection, normalize_rows
from common.records import ReleaseMode, RoundKeys
from simulations.datasets.synthetic import SyntheticConfig, generate

#: These tests' devices: event level at the delta of :func:`config` (the unit's own tests are
#: in test_user_level.py).
EVENT_POLICY = DevicePolicy(delta=1e-5, unit=Scope.EVENT)

D = 16


class HashEncoder:
    """A deterministic stand-in encoder for release tests that are not about text quality:
    each text maps to a fixed random unit vector (no model, no cache miss cost)."""

    model_id = "hash-encoder:test"
    dim = 32

    def encode(self, texts):  # type: ignore[no-untyped-def]
        out = []
        for t in texts:
            rng = np.random.default_rng(abs(hash(t)) % 2**32)
            out.append(rng.normal(size=self.dim))
        return normalize_rows(np.asarray(out, dtype=np.float32))


def config(**over: object) -> dict[str, object]:
    proj = PublicProjection(32, D, 11, HashEncoder.model_id)
    z = noise_multiplier_for_rounds(epsilon=2.0, delta=1e-5, rounds=5)
    cfg: dict[str, object] = {
        RoundKeys.SERVER_ROUND: 1,
        RoundKeys.HIERARCHY_VERSION: 0,
        RoundKeys.MODE: "local",
        RoundKeys.CLIPPING_NORM: 1.0,
        RoundKeys.MAX_WEIGHT: 1.0,
        RoundKeys.NOISE_MULTIPLIER: z,
        RoundKeys.NOISE_STD: z * 1.0,
        RoundKeys.MIN_COHORT: 1,
        RoundKeys.USER_CLIPPING_NORM: 1000.0,
        RoundKeys.RESIDUAL_THRESHOLD: -1.0,
        RoundKeys.PROJECTION_SEED: 11,
        RoundKeys.PROJECTION_DIM: D,
        RoundKeys.PROJECTION_FINGERPRINT: proj.fingerprint,
        RoundKeys.DELTA: 1e-5,
    }
    cfg.update(over)
    return cfg


@pytest.fixture()
def store(tmp_path: Path) -> EventStore:
    s = EventStore(tmp_path / "d.db")
    s.ingest(iter_records(generate(SyntheticConfig(users=1, seed=4)).events))
    return s


def centroids(k: int = 6) -> np.ndarray:
    return normalize_rows(np.random.default_rng(5).normal(size=(k, D)).astype(np.float32))


def test_sensitivity_of_one_event() -> None:
    """Adding one event changes the noiseless release by at most C x max_weight, in one row."""
    rng = np.random.default_rng(0)
    v = normalize_rows(rng.normal(size=(40, D)).astype(np.float32)) * 3.0  # norms above C
    w = rng.uniform(0, 5, 40)
    a = rng.integers(0, 7, 40)
    full = leaf_sums(v, w, a, 7, clipping_norm=1.0, max_weight=2.0)
    minus = leaf_sums(v[1:], w[1:], a[1:], 7, clipping_norm=1.0, max_weight=2.0)
    diff = full - minus
    assert float(np.linalg.norm(diff)) <= 2.0 + 1e-5
    assert int((np.abs(diff).sum(1) > 0).sum()) == 1


def test_params_fail_closed() -> None:
    """Too little noise, a non-private round, a bad cohort or a missing key are refused."""
    ReleaseParams.from_config(config())
    with pytest.raises(ReleaseRefusedError, match="below"):
        ReleaseParams.from_config(config(**{RoundKeys.NOISE_STD: 0.1}))
    with pytest.raises(ReleaseRefusedError, match="without noise"):
        ReleaseParams.from_config(
            config(**{RoundKeys.NOISE_MULTIPLIER: 0.0, RoundKeys.NOISE_STD: 0.0})
        )
    with pytest.raises(ReleaseRefusedError, match="min_cohort"):
        ReleaseParams.from_config(config(**{RoundKeys.MODE: "secagg", RoundKeys.MIN_COHORT: 1}))
    bad = config()
    del bad[RoundKeys.DELTA]
    with pytest.raises(ReleaseRefusedError, match="missing"):
        ReleaseParams.from_config(bad)
    p = ReleaseParams.from_config(
        config(**{RoundKeys.MODE: "secagg", RoundKeys.MIN_COHORT: 4, RoundKeys.NOISE_STD: 2.3})
    )
    assert p.mode is ReleaseMode.SECAGG and p.required_noise_std == pytest.approx(
        p.noise_multiplier / 2
    )


def test_release_records_ledger_and_reuses_round(store: EventStore) -> None:
    """A release writes one ledger entry; asking again for the round returns the same
    release and spends nothing more."""
    p = ReleaseParams.from_config(config())
    budget = PrivacyBudget(2.0, 1e-5)
    out = release_round(
        store, p, centroids(), encoder=HashEncoder(), budget=budget, rng=np.random.default_rng(1)
    )
    assert out.sums.shape == (7, D) and out.sums.dtype == np.float32
    assert len(store.ledger()) == 1 and store.ledger()[0].noise_multiplier == p.noise_multiplier
    again = release_round(
        store, p, centroids(), encoder=HashEncoder(), budget=budget, rng=np.random.default_rng(2)
    )
    assert again.reused and np.array_equal(again.sums, out.sums) and len(store.ledger()) == 1


def test_budget_exhausted_releases_nothing(store: EventStore) -> None:
    """Once the budget is spent the device raises and records nothing."""
    budget = PrivacyBudget(1.0, 1e-5)
    for r in (1, 2):
        p = ReleaseParams.from_config(config(**{RoundKeys.SERVER_ROUND: r}))
        if r == 1:
            release_round(
                store,
                p,
                centroids(),
                encoder=HashEncoder(),
                budget=budget,
                rng=np.random.default_rng(r),
            )
    assert len(store.ledger()) == 1
    # one release at z(eps=2, 5 rounds) costs ~0.87; the second would exceed 1.0
    with pytest.raises(BudgetExceededError):
        release_round(
            store,
            p,
            centroids(),
            encoder=HashEncoder(),
            budget=budget,
            rng=np.random.default_rng(3),
        )
    assert len(store.ledger()) == 1


def test_noise_present_and_scaled(tmp_path: Path, store: EventStore) -> None:
    """Two devices differing in one event release different sums; the noise std matches the
    calibration for the stated epsilon and delta."""
    other = EventStore(tmp_path / "other.db")
    evs = store.events()
    other.ingest(iter_records(evs[1:]))
    p = ReleaseParams.from_config(config())
    budget = PrivacyBudget(100.0, 1e-5)
    a = release_round(
        store, p, centroids(), encoder=HashEncoder(), budget=budget, rng=np.random.default_rng(9)
    )
    b = release_round(
        other, p, centroids(), encoder=HashEncoder(), budget=budget, rng=np.random.default_rng(9)
    )
    assert not np.allclose(a.sums, b.sums)
    # the noise alone: many releases of a device with no events
    empty = EventStore(tmp_path / "empty.db")
    draws = []
    for r in range(1, 21):
        pr = ReleaseParams.from_config(config(**{RoundKeys.SERVER_ROUND: r}))
        draws.append(
            release_round(
                empty,
                pr,
                centroids(),
                encoder=HashEncoder(),
                budget=PrivacyBudget(1e9, 1e-5),
                rng=np.random.default_rng(r),
            ).sums
        )
    z = noise_multiplier_for_rounds(epsilon=2.0, delta=1e-5, rounds=5)
    sd = float(np.std(np.stack(draws)))
    assert sd == pytest.approx(z * 1.0 * 1.0, rel=0.05)
    assert RELEASE_WEIGHTING.half_life_days is None and math.isfinite(sd)


def test_another_encoder_of_the_same_dimension_is_refused(store: EventStore) -> None:
    """A run whose fingerprint covers another encoder (same dimension, same projection seed)
    is refused with the encoder code, and nothing reaches the ledger."""

    class OtherEncoder(HashEncoder):
        model_id = "another-encoder:test"

    p = ReleaseParams.from_config(config())
    with pytest.raises(ReleaseRefusedError, match="another encoder") as err:
        release_round(
            store,
            p,
            centroids(),
            encoder=OtherEncoder(),
            budget=PrivacyBudget(2.0, 1e-5),
            rng=np.random.default_rng(0),
        )
    assert err.value.code is RefusalCode.ENCODER
    assert store.ledger() == []


def test_projection_mismatch_is_refused(store: EventStore) -> None:
    """A server fingerprint that is not this device's projection refuses the round."""
    p = ReleaseParams.from_config(config(**{RoundKeys.PROJECTION_FINGERPRINT: "not-it"}))
    with pytest.raises(ReleaseRefusedError, match="fingerprint"):
        release_round(
            store,
            p,
            centroids(),
            encoder=HashEncoder(),
            budget=PrivacyBudget(2.0, 1e-5),
            rng=np.random.default_rng(0),
        )
    assert store.ledger() == []


def test_device_app_refuses_an_unparseable_round(tmp_path: Path) -> None:
    """The device's handler parses the round config first: a malformed one is refused (the
    `refused` reply status) before the store is touched, and the reply's echo of a garbage
    round or version is -1, not a crash."""
    from client.app import DeviceSettings, _dispatch, _meta
    from common.records import ReplyKeys, ReplyStatus

    settings = DeviceSettings(store=tmp_path / "absent.db")
    for bad in (
        {},
        config(**{RoundKeys.SERVER_ROUND: "one"}),
        config(**{RoundKeys.TASK: "everything"}),
        config(**{RoundKeys.NOISE_STD: 1e-3}),
    ):
        with pytest.raises(ReleaseRefusedError):
            _dispatch(settings, bad, centroids(), None)
    meta = _meta(ReplyStatus.REFUSED, config(**{RoundKeys.SERVER_ROUND: "one"}))
    assert meta[ReplyKeys.SERVER_ROUND] == -1 and meta[ReplyKeys.HIERARCHY_VERSION] == 0
    assert meta[ReplyKeys.STATUS] == "refused"


def test_release_params_is_the_shared_round_config() -> None:
    """The device parses with the same typed config the server builds (one definition)."""
    from common.round_config import RoundConfig

    assert ReleaseParams is RoundConfig
    p = ReleaseParams.from_config(config())
    assert RoundConfig.from_record(p.to_record()) == p
