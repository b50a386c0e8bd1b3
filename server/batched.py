"""The batched engine's collector: cohorts of simulated users spread over shard nodes.

In a batched simulation each Flower virtual node hosts a shard of the population
(:mod:`client.shard_app`). :class:`BatchedCollector` asks every node once for its roster,
offers the union as the population cohorts are sampled from, and collects a request by
sending each shard the members it hosts; the shards' noisy sums add up to the cohort's sum.
The checks of the secure-aggregation path apply to that sum: fewer usable releases than the
request's ``min_survivors`` and nothing is summed (SecAgg+ would halt before unmasking), a
malformed or out-of-bound sum is dropped.

What it does not simulate (docs/performance.md): masking, key agreement and the per-stage
dropouts of SecAgg+; the sum is exact.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from common.errors import ConfigError, InvalidReleaseError
from common.records import (
    CENTROIDS,
    MESSAGE_QUERY_ROSTER,
    MESSAGE_TRAIN_SHARD,
    ROUND_CONFIG,
    SHARD_META,
    SHARD_SUM,
    SHARD_USERS,
    ShardKeys,
)
from common.secagg_wire import wire_array
from server.round_state import ReleaseRequest, ReleaseSum

__all__ = ["BatchedCollector", "ShardWork"]

log = logging.getLogger("fedinterest.server")


@dataclass
class ShardWork:
    """What one shard node did: its index, users, the Ray node it answered from, requests
    answered and seconds spent computing them."""

    node: int
    shard: int
    users: int
    ray_nodes: set[str]
    requests: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "shard": self.shard,
            "users": self.users,
            "ray_nodes": sorted(self.ray_nodes),
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
        }


class BatchedCollector:
    """Collects releases from shard nodes (see the module docstring).

    Args:
        grid: the Flower grid.
        timeout: seconds to wait for the shards of one request.
    """

    def __init__(self, grid: Grid, *, timeout: float | None = None) -> None:
        self.grid = grid
        self.timeout = timeout
        self._users: np.ndarray | None = None
        self._owner: np.ndarray | None = None
        self.work: dict[int, ShardWork] = {}

    def population(self) -> list[int]:
        """Every shard's users (global indices), after one roster query per node."""
        if self._users is None:
            self._roster()
        assert self._users is not None
        out: list[int] = self._users.tolist()
        return out

    def _roster(self) -> None:
        nodes = sorted(int(n) for n in self.grid.get_node_ids())
        msgs = [
            self.grid.create_message(RecordDict({}), MESSAGE_QUERY_ROSTER, n, "roster")
            for n in nodes
        ]
        users: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for r in self.grid.send_and_receive(msgs, timeout=self.timeout):
            node = int(r.metadata.src_node_id)
            if r.has_error():
                raise InvalidReleaseError(f"shard node {node} did not answer the roster query.")
            u = r.content.array_records[SHARD_USERS][SHARD_USERS].numpy().astype(np.int64)
            meta = r.content.config_records[SHARD_META]
            self.work[node] = ShardWork(
                node, int(str(meta[ShardKeys.SHARD])), len(u), {str(meta[ShardKeys.RAY_NODE])}
            )
            users.append(u)
            owners.append(np.full(len(u), node, dtype=np.uint64))
        if len(self.work) != len(nodes):
            raise InvalidReleaseError(
                f"{len(nodes) - len(self.work)} of {len(nodes)} shard nodes did not answer the roster query."
            )
        all_users = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_users, kind="stable")
        self._users = all_users[order]
        self._owner = (np.concatenate(owners) if owners else np.zeros(0, np.uint64))[order]
        if len(self._users) and (np.diff(self._users) == 0).any():
            raise InvalidReleaseError("two shards claim the same user.")

    def collect(self, request: ReleaseRequest) -> ReleaseSum:
        if len(request.arrays) != 1:
            raise ConfigError(
                "the batched engine does not train or apply the adapter; use --engine devices."
            )
        if self._users is None:
            self._roster()
        assert self._users is not None and self._owner is not None
        cfg = request.config
        members = np.asarray(request.nodes, dtype=np.int64)
        pos = np.searchsorted(self._users, members)
        if (pos >= len(self._users)).any() or (
            self._users[np.minimum(pos, len(self._users) - 1)] != members
        ).any():
            raise InvalidReleaseError("the cohort names users no shard hosts.")
        owner = self._owner[pos]
        record = ConfigRecord(dict(cfg.to_record()))
        first = ArrayRecord({CENTROIDS: Array(wire_array(request.arrays[0]))})
        msgs, asked = [], {}
        for node in np.unique(owner).tolist():
            mine = members[owner == node]
            asked[int(node)] = len(mine)
            content = RecordDict(
                {
                    ROUND_CONFIG: record,
                    CENTROIDS: first,
                    SHARD_USERS: ArrayRecord({SHARD_USERS: Array(np.ascontiguousarray(mine))}),
                }
            )
            msgs.append(
                self.grid.create_message(
                    content, MESSAGE_TRAIN_SHARD, int(node), str(cfg.server_round)
                )
            )
        failures: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        total = np.zeros(request.shape)
        usable = 0
        answered: set[int] = set()
        for r in self.grid.send_and_receive(msgs, timeout=self.timeout):
            node = int(r.metadata.src_node_id)
            if node not in asked or node in answered:
                failures["reply from a shard not asked (or twice)"] += 1
                continue
            answered.add(node)
            if r.has_error():
                failures["shard failed"] += asked[node]
                continue
            meta = r.content.config_records[SHARD_META]
            work = self.work[node]
            work.requests += 1
            work.seconds += float(str(meta.get(ShardKeys.SECONDS, 0.0)))
            work.ray_nodes.add(str(meta[ShardKeys.RAY_NODE]))
            statuses.update(json.loads(str(meta[ShardKeys.STATUSES])))
            n = int(str(meta[ShardKeys.USABLE]))
            if n == 0:
                continue
            x = r.content.array_records[SHARD_SUM][SHARD_SUM].numpy()
            if x.shape != request.shape or not np.isfinite(x).all():
                failures["shard sum malformed"] += asked[node]
                continue
            total += x
            usable += n
        for node, n in asked.items():
            if node not in answered:
                failures["no reply before the timeout"] += n
        out = total if usable else None
        if out is not None and usable < request.min_survivors:
            # secure aggregation halts before unmasking with fewer survivors than the noise
            # shares assume
            failures["fewer releases than the noise shares assume"] += usable
            out, usable = None, 0
        if out is not None and float(np.linalg.norm(out)) > usable * request.per_device_bound:
            failures["cohort sum above its norm bound"] += 1
            out = None
        return ReleaseSum(out, usable, dict(failures), dict(statuses))

    def workers(self) -> list[dict[str, object]]:
        """What each shard node did, by shard index."""
        return [w.to_dict() for w in sorted(self.work.values(), key=lambda w: w.shard)]
