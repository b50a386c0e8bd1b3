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
from common.errors import ReleaseRefusedError
from common.privacy import PrivacyBudget
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
