"""Devices protect themselves (issue 16, first part): a stored release answers only the very
request it was made for, and a device accounts at its own delta, refusing a larger one. Each
breach is tried against a real device store (and a real shard store) and must be refused
with nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from client.app import DeviceSettings, _dispatch
from client.release import release_round
from client.shard import ShardDevices
from client.shard_store import ShardStore
from client.store import EventStore
from common.errors import BudgetExceededError, ReleaseRefusedError
from common.privacy import PrivacyBudget, Scope
from common.records import RoundKeys
from common.round_config import RoundConfig
from tests.client.test_release import EVENT_POLICY, HashEncoder, centroids, config
from tests.client.test_shard import Population


def _state(store: EventStore) -> tuple[int, list[tuple[str, bytes]]]:
    rows = store.connection.execute("SELECT key, value FROM state ORDER BY key").fetchall()
    return len(store.ledger()), [(str(k), bytes(v)) for k, v in rows]


@pytest.mark.parametrize(
    ("change", "first"),
    [
        ({RoundKeys.MODE: "secagg", RoundKeys.MIN_COHORT: 4}, None),  # a secagg share later
        ({RoundKeys.NOISE_STD: 9.0}, None),  # another noise
        ({RoundKeys.USER_CLIPPING_NORM: 3.0}, None),  # another bound
        ({RoundKeys.DELTA: 1e-6}, None),  # another delta
        ({}, 9),  # another number of leaves: before, this released a second time
    ],
)
def test_a_stored_release_is_never_resent_under_other_parameters(
    tmp_path: Path, change: dict[str, object], first: int | None
) -> None:
    pop = Population(tmp_path, 1)
    enc = HashEncoder()
    with EventStore(pop.devices[0], create=False) as s:
        params = RoundConfig.from_record(config())
        budget = PrivacyBudget(100.0, 1e-5)
        out = release_round(
            s, params, centroids(), encoder=enc, budget=budget, rng=np.random.default_rng(1)
        )
        again = release_round(
            s, params, centroids(), encoder=enc, budget=budget, rng=np.random.default_rng(2)
        )
        assert again.reused and np.array_equal(again.sums, out.sums)
        before = _state(s)
        other = RoundConfig.from_record({**config(), **change})
        with pytest.raises(ReleaseRefusedError, match="other mechanism parameters"):
            release_round(
                s,
                other,
                centroids(first or 6),
                encoder=enc,
                budget=budget,
                rng=np.random.default_rng(3),
            )
        assert _state(s) == before


def test_a_device_accounts_at_its_own_delta(tmp_path: Path) -> None:
    """A round announcing a delta above the device's is refused before anything is written;
    the budget is accounted at the device's delta."""
    pop = Population(tmp_path, 1)
    settings = DeviceSettings(pop.devices[0], budget_epsilon=4.0, policy=EVENT_POLICY)
    with EventStore(pop.devices[0], create=False) as s:
        before = _state(s)
    with pytest.raises(ReleaseRefusedError, match=r"delta 0\.1"):
        _dispatch(settings, {**config(), RoundKeys.DELTA: 0.1}, centroids(), None)
    with EventStore(pop.devices[0], create=False) as s:
        assert _state(s) == before


def test_a_shard_refuses_a_larger_delta_and_replays_under_other_parameters(
    tmp_path: Path,
) -> None:
    pop = Population(tmp_path, 4, budget=100.0)
    shard = ShardDevices(pop.shard, policy=EVENT_POLICY)
    with pytest.raises(ReleaseRefusedError, match=r"delta 0\.1"):
        shard.release({**config(), RoundKeys.DELTA: 0.1}, centroids(), [0, 1, 2, 3])
    out = shard.release(config(), centroids(), [0, 1, 2, 3])
    assert out.usable == 4
    assert shard.release(config(), centroids(), [0, 1, 2, 3]).reused
    other = shard.release({**config(), RoundKeys.NOISE_STD: 9.0}, centroids(), [0, 1, 2, 3])
    assert other.usable == 0 and other.statuses == {"refused": 4}
    with ShardStore(pop.shard, read_only=True) as st:
        assert [len(st.user_ledger(u)) for u in range(4)] == [1, 1, 1, 1]
    assert math.isfinite(float(np.linalg.norm(out.total)))


def test_refusals_leave_the_device_as_codes_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused round is answered with a status and a code; the exception's text (which can
    quote local paths or values) never leaves the device: local mode through the real
    ClientApp, secure aggregation through the handler's wrapper (Flower forwards an
    exception's text to the server)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    # outside a SuperNode or a simulation, the process's task identity is unset
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import _codes_only, build_client_app
    from common.errors import DeviceRefusalError, RefusalCode
    from common.records import REPLY_META, ROUND_CONFIG, ReplyKeys

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    pop = Population(tmp_path, 1)
    settings = DeviceSettings(pop.devices[0], budget_epsilon=4.0, policy=EVENT_POLICY)
    app = build_client_app(lambda _ctx: settings)
    msg = Message(
        RecordDict({ROUND_CONFIG: ConfigRecord({**config(), RoundKeys.DELTA: 0.1})}),
        dst_node_id=1,
        message_type="train.interests",
    )
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with EventStore(pop.devices[0], create=False) as s:
        before = _state(s)
    reply = app(msg, ctx)
    meta = dict(reply.content.config_records[REPLY_META])
    assert meta[ReplyKeys.STATUS] == "refused" and meta[ReplyKeys.CODE] == "delta"
    assert not any(str(pop.devices[0]) in str(v) or "0.1" in str(v) for v in meta.values())
    with EventStore(pop.devices[0], create=False) as s:
        assert _state(s) == before

    secret = f"cannot open {pop.devices[0]}"
    with pytest.raises(DeviceRefusalError) as caught, _codes_only("d"):
        raise ReleaseRefusedError(secret, RefusalCode.MIN_COHORT)
    assert str(caught.value) == "min_cohort" and caught.value.__cause__ is None
    with pytest.raises(DeviceRefusalError) as caught, _codes_only("d"):
        raise OSError(secret)
    assert str(caught.value) == "internal"


def _release(settings: DeviceSettings, record: dict[str, object]) -> object:
    """What the device's handler does for a leaf-sum round (:func:`client.app._dispatch`:
    parse, the device's policy, its budget at its own delta and unit), with these tests'
    32-dimensional encoder instead of the bundled model."""
    params = RoundConfig.from_record(record)
    settings.policy.admit(params)
    with EventStore(settings.store, create=False) as s:
        return release_round(
            s,
            params,
            centroids(),
            encoder=HashEncoder(),
            budget=settings.policy.budget(settings.budget_epsilon),
            rng=np.random.default_rng(0),
        )


def test_a_device_refuses_a_cohort_below_its_floor(tmp_path: Path) -> None:
    """Secure-aggregation shares for a cohort below the device's own minimum are refused with
    code min_cohort and nothing written; at the floor the device releases; local mode (the
    device adds the whole noise) is not bound by it."""
    from client.policy import DevicePolicy
    from common.errors import RefusalCode

    pop = Population(tmp_path, 1)
    policy = DevicePolicy(delta=1e-5, unit=Scope.EVENT, min_cohort=20)
    settings = DeviceSettings(pop.devices[0], budget_epsilon=100.0, policy=policy)
    z = float(config()[RoundKeys.NOISE_MULTIPLIER])  # type: ignore[arg-type]

    def secagg(m: int) -> dict[str, object]:
        return {
            **config(),
            RoundKeys.MODE: "secagg",
            RoundKeys.MIN_COHORT: m,
            RoundKeys.NOISE_STD: z / math.sqrt(m),
        }

    with EventStore(pop.devices[0], create=False) as s:
        before = _state(s)
    with pytest.raises(ReleaseRefusedError, match="minimum of 20") as caught:
        _dispatch(settings, secagg(2), centroids(), None)
    assert caught.value.code is RefusalCode.MIN_COHORT
    with EventStore(pop.devices[0], create=False) as s:
        assert _state(s) == before
    _release(settings, secagg(20))
    _release(settings, {**config(), RoundKeys.SERVER_ROUND: 2})


def test_a_user_level_device_accounts_every_round_at_user_level(tmp_path: Path) -> None:
    """A device keeping a user-level budget records its releases at user level whatever the
    round's unit: a round calibrated for events with a loose user bound (100) costs it
    z / 100 as a user, its budget refuses it with nothing written; a user-level round at the
    same z is recorded at user level with multiplier z. The device refuses the adapter."""
    from client.app import _run_adapter
    from client.policy import DevicePolicy
    from common.errors import RefusalCode
    from common.privacy import epsilon_of_entries, gaussian_epsilon

    pop = Population(tmp_path, 1)
    policy = DevicePolicy(delta=1e-5, unit=Scope.USER)
    settings = DeviceSettings(pop.devices[0], budget_epsilon=4.0, policy=policy)
    event_round = {**config(), RoundKeys.USER_CLIPPING_NORM: 100.0}
    with EventStore(pop.devices[0], create=False) as s:
        before = _state(s)
    with pytest.raises(BudgetExceededError, match="user level"):
        _release(settings, event_round)
    with EventStore(pop.devices[0], create=False) as s:
        assert _state(s) == before
    z = float(config()[RoundKeys.NOISE_MULTIPLIER])  # type: ignore[arg-type]
    user_round = {**config(), RoundKeys.USER_CLIPPING_NORM: 1.0, RoundKeys.UNIT: "user"}
    out = _release(settings, user_round)
    with EventStore(pop.devices[0], create=False) as s:
        (entry,) = s.ledger()
    assert entry.scope is Scope.USER and entry.noise_multiplier == pytest.approx(z)
    spent = out.epsilon_spent  # type: ignore[attr-defined]
    assert spent == pytest.approx(gaussian_epsilon(z, 1e-5))
    assert epsilon_of_entries([entry], delta=1e-5, scope=Scope.USER) == spent
    with pytest.raises(ReleaseRefusedError) as caught:
        _run_adapter(settings, {}, None, np.zeros(1))  # type: ignore[arg-type]
    assert caught.value.code is RefusalCode.UNIT
