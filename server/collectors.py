"""Collectors: send a :class:`~server.round.ReleaseRequest` to a cohort over Flower and hand
back the cohort's sum of releases (:class:`~server.round.ReleaseSum`).

A collector is swappable: :func:`server.round.round_step` sees only its result. Two ship:

- :class:`SecAggCollector` (default): Flower's SecAgg+ (:func:`server.secagg.secagg_sum`);
  the server only ever holds the sum, checked for shape, finiteness and its norm bound;
- :class:`LocalCollector`: each device's noisy release arrives on its own, is validated
  (:func:`server.replies.validate_local_reply`) and summed, or combined robustly
  (coordinate-wise trimmed mean or median, which bounds poisoning).

:func:`collector_for` picks one by :class:`~common.records.ReleaseMode` (a dict, not a chain
of ifs). :class:`MeteredGrid` counts the bytes of every message in each direction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.errors import InvalidReleaseError
from common.records import (
    ADAPTER,
    ADAPTER_A,
    ADAPTER_B,
    CENTROIDS,
    REPLY_META,
    ROUND_CONFIG,
    ReleaseMode,
    ReplyKeys,
)
from common.secagg_wire import wire_array
from server.aggregation import robust_mean
from server.replies import MAX_REPLY_BYTES, failure_reason, reply_size, validate_local_reply
from server.round_state import ReleaseRequest, ReleaseSum
from server.secagg import secagg_sum

__all__ = [
    "LocalCollector",
    "MeteredGrid",
    "ReleaseCollector",
    "SecAggCollector",
    "collector_for",
]

log = logging.getLogger("fedinterest.server")


class ReleaseCollector(Protocol):
    """Sends one release request to its cohort and returns the cohort's sum."""

    def population(self) -> list[int]:
        """The ids of the devices a cohort is sampled from."""
        ...

    def collect(self, request: ReleaseRequest) -> ReleaseSum: ...


def _node_ids(grid: Grid) -> list[int]:
    return sorted(int(n) for n in grid.get_node_ids())


class MeteredGrid(Grid):
    """A Grid that counts the bytes of every message's content, per direction, and can hand
    every reply to an observer (egress tests)."""

    def __init__(self, inner: Grid, on_reply: Callable[[Message], None] | None = None) -> None:
        self._inner = inner
        self._on_reply = on_reply
        self.bytes_down = 0
        self.bytes_up = 0
        self.replies = 0

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        self.bytes_down += sum(reply_size(m) for m in msgs)
        return self._inner.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = list(self._inner.pull_messages(message_ids))
        self._count_up(out)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        msgs = list(messages)
        self.bytes_down += sum(reply_size(m) for m in msgs)
        out = list(self._inner.send_and_receive(msgs, timeout=timeout))
        self._count_up(out)
        return out

    def _count_up(self, replies: list[Message]) -> None:
        for r in replies:
            if self._on_reply is not None:
                self._on_reply(r)
            if not r.has_error():
                self.bytes_up += reply_size(r)
                self.replies += 1


class LocalCollector:
    """Local mode: one noisy release per device, each validated, then summed (or combined
    robustly with ``robust`` = ``trimmed`` / ``median``)."""

    def __init__(
        self,
        grid: Grid,
        *,
        timeout: float | None = None,
        robust: str = "none",
        trim_fraction: float = 0.1,
    ) -> None:
        self.grid = grid
        self.timeout = timeout
        self.robust = robust
        self.trim_fraction = trim_fraction

    def population(self) -> list[int]:
        return _node_ids(self.grid)

    def collect(self, request: ReleaseRequest) -> ReleaseSum:
        cfg = request.config
        config_record: dict[str, Any] = cfg.to_record()
        records: dict[str, Any] = {
            ROUND_CONFIG: ConfigRecord(config_record),
            CENTROIDS: ArrayRecord({CENTROIDS: Array(wire_array(request.arrays[0]))}),
        }
        if len(request.arrays) == 3:
            records[ADAPTER] = ArrayRecord(
                {ADAPTER_A: Array(request.arrays[1]), ADAPTER_B: Array(request.arrays[2])}
            )
        content = RecordDict(records)
        msgs = [
            self.grid.create_message(content, request.message_type, node, str(cfg.server_round))
            for node in request.nodes
        ]
        replies = self.grid.send_and_receive(msgs, timeout=self.timeout)
        failures: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        total = np.zeros(request.shape)
        usable = 0
        answered: set[int] = set()
        kept: list[npt.NDArray[np.float32]] = []
        robust = self.robust != "none"
        expected = set(request.nodes)
        bound = request.per_device_bound
        for r in replies:
            node = int(r.metadata.src_node_id)
            if node not in expected or node in answered:
                failures["reply from a device not asked (or twice)"] += 1
                continue
            answered.add(node)
            if not r.has_error() and reply_size(r) > MAX_REPLY_BYTES:
                failures[f"reply larger than {MAX_REPLY_BYTES} bytes"] += 1
                continue
            try:
                x = validate_local_reply(
                    r,
                    array_key=request.array_key,
                    expected_shape=request.shape,
                    norm_bound=bound,
                    server_round=cfg.server_round,
                    version=cfg.hierarchy_version,
                )
            except InvalidReleaseError as err:
                log.warning("dropping reply of node %d: %s", node, err)
                failures[failure_reason(str(err))] += 1
                continue
            statuses[str(r.content.config_records[REPLY_META][ReplyKeys.STATUS])] += 1
            if x is not None:
                total += x
                usable += 1
                if robust:
                    kept.append(x.astype(np.float32))
        missing = len(expected - answered)
        if missing:
            failures["no reply before the timeout"] += missing
        if robust and kept:
            total = usable * robust_mean(np.stack(kept), self.robust, self.trim_fraction)
        return ReleaseSum(total if usable else None, usable, dict(failures), dict(statuses))


class SecAggCollector:
    """Secure aggregation: the cohort's sum under Flower's SecAgg+; rounds with fewer
    survivors than the noise shares assume halt before unmasking."""

    def __init__(self, grid: Grid, context: Context, *, timeout: float | None = None) -> None:
        self.grid = grid
        self.context = context
        self.timeout = timeout

    def population(self) -> list[int]:
        return _node_ids(self.grid)

    def collect(self, request: ReleaseRequest) -> ReleaseSum:
        cfg = request.config
        outcome = secagg_sum(
            self.grid,
            self.context,
            request.nodes,
            arrays=list(request.arrays),
            config=cfg.to_record(),
            server_round=cfg.server_round,
            clipping_range=request.clipping_range,
            quantization_range=request.quantization_range,
            min_survivors=request.min_survivors,
            timeout=self.timeout,
        )
        failures: Counter[str] = Counter(failure_reason(f) for f in outcome.failures)
        statuses: Counter[str] = Counter(
            str(meta.get(ReplyKeys.STATUS, "?")) for meta in outcome.metadata
        )
        total = outcome.total
        if total is not None:
            if total.shape != request.shape or not np.isfinite(total).all():
                failures["cohort sum malformed"] += 1
                total = None
            elif float(np.linalg.norm(total)) > outcome.survivors * request.per_device_bound:
                failures["cohort sum above its norm bound"] += 1
                total = None
        return ReleaseSum(total, outcome.survivors, dict(failures), dict(statuses))


_COLLECTORS: dict[ReleaseMode, Callable[[Grid, Context, RunConfig], ReleaseCollector]] = {
    ReleaseMode.SECAGG: lambda grid, context, run: SecAggCollector(
        grid, context, timeout=run.round_timeout
    ),
    ReleaseMode.LOCAL: lambda grid, context, run: LocalCollector(
        grid, timeout=run.round_timeout, robust=run.robust, trim_fraction=run.trim_fraction
    ),
}


def collector_for(grid: Grid, context: Context, run: RunConfig) -> ReleaseCollector:
    """The collector of the run's release mode."""
    return _COLLECTORS[run.privacy.mode](grid, context, run)
