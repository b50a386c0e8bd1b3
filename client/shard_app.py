"""Flower ClientApp glue of the batched simulation engine: one virtual node per shard.

Two handlers:

- ``query.roster``: the shard's users (global indices), so the server can sample cohorts of
  users and route each member to its shard;
- ``train.shard``: one release request (round config, its public array, the members asked);
  :class:`client.shard.ShardDevices` answers it for every member as that device would, and
  the reply carries the noisy sum, how many members released and their statuses.

A shard's settings (its store, whether rounds without noise are accepted, a noise seed for
tests) come from a resolver on the node's context, as for :func:`client.app.build_client_app`.
A simulation only: a deployment runs one SuperNode per device (:mod:`client.app`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.policy import DevicePolicy
from client.shard import ShardDevices
from common.errors import ReleaseRefusedError, StoreError
from common.records import (
    CENTROIDS,
    ROUND_CONFIG,
    SHARD_META,
    SHARD_SUM,
    SHARD_USERS,
    ReplyStatus,
    ShardKeys,
)

__all__ = ["ShardSettings", "build_shard_app"]

log = logging.getLogger("fedinterest.client")


@dataclass(frozen=True)
class ShardSettings:
    """How one shard runs: its store, its index, ``--no-dp`` acceptance, a test noise seed and
    its devices' own policy (delta, unit, minimum cohort)."""

    store: Path
    shard: int
    allow_no_dp: bool = False
    noise_seed: int | None = None
    policy: DevicePolicy = field(default_factory=DevicePolicy)


#: The shards this process has loaded, by store path (Flower's Ray backend may run any node's
#: message on any actor; each actor loads a shard once and re-reads its ledgers when another
#: actor has written since: :meth:`client.shard.ShardDevices.release`).
_SHARDS: dict[Path, ShardDevices] = {}


def _devices(settings: ShardSettings) -> ShardDevices:
    dev = _SHARDS.get(settings.store)
    if dev is None:
        dev = ShardDevices(
            settings.store,
            allow_no_dp=settings.allow_no_dp,
            noise_seed=settings.noise_seed,
            shard=settings.shard,
            policy=settings.policy,
        )
        _SHARDS[settings.store] = dev
    return dev


def _ray_node() -> str:
    """The Ray node this process runs on ("" outside Ray): lets a run show where work ran."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""
    return ""


def _meta(settings: ShardSettings, **values: Any) -> ConfigRecord:
    return ConfigRecord(
        {ShardKeys.SHARD: settings.shard, ShardKeys.RAY_NODE: _ray_node(), **values}
    )


def build_shard_app(
    settings_for: Callable[[Context], ShardSettings], mods: list[Any] | None = None
) -> ClientApp:
    """A ClientApp whose virtual nodes are shards of simulated devices."""
    app = ClientApp(mods=mods or [])

    @app.query("roster")
    def roster(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        users = _devices(settings).users
        content = RecordDict(
            {
                SHARD_USERS: ArrayRecord({SHARD_USERS: Array(np.ascontiguousarray(users))}),
                SHARD_META: _meta(settings),
            }
        )
        return Message(content, reply_to=msg)

    @app.train("shard")
    def release(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        record = msg.content.config_records.get(ROUND_CONFIG)
        cfg = dict(record) if record is not None else {}
        members = msg.content.array_records[SHARD_USERS][SHARD_USERS].numpy()
        first = msg.content.array_records[CENTROIDS][CENTROIDS].numpy()
        try:
            out = _devices(settings).release(cfg, first, members.tolist())
        except (ReleaseRefusedError, StoreError) as err:
            # every member refuses; the reason stays here (a device sends codes, not text)
            log.warning("shard %d refused a request: %s", settings.shard, err)
            statuses = {ReplyStatus.REFUSED.value: len(members)}
            return Message(
                RecordDict(
                    {
                        SHARD_META: _meta(
                            settings,
                            **{
                                ShardKeys.USABLE: 0,
                                ShardKeys.STATUSES: json.dumps(statuses),
                                ShardKeys.ERROR: ReplyStatus.REFUSED.value,
                            },
                        )
                    }
                ),
                reply_to=msg,
            )
        records: dict[str, Any] = {
            SHARD_META: _meta(
                settings,
                **{
                    ShardKeys.USABLE: out.usable,
                    ShardKeys.STATUSES: json.dumps(out.statuses, sort_keys=True),
                    ShardKeys.SECONDS: round(out.seconds, 4),
                    ShardKeys.REUSED: out.reused,
                },
            )
        }
        if out.total is not None:
            records[SHARD_SUM] = ArrayRecord({SHARD_SUM: Array(np.ascontiguousarray(out.total))})
        return Message(RecordDict(records), reply_to=msg)

    return app
