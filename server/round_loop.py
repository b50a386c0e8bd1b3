"""The Flower-driving loop: runs a run's remaining rounds on a Flower grid.

Per round (attempts until one is ``ok``, at most ``round_attempts``):

1. plan the round from the state (:func:`server.round.sample_cohort`,
   :func:`server.round.release_request`);
2. collect the cohort's release sum with the run's collector (:mod:`server.collectors`:
   SecAgg+ by default, local mode, or any other :class:`~server.collectors.ReleaseCollector`
   passed in) and, when :func:`server.round.adapter_action` says so, the adapter's averaged
   DP-SGD update (:func:`server.adapter_fedavg.run_adapter_step`);
3. :func:`server.round.round_step` (pure);
4. the releases over the new version (:func:`server.round.aux_requests`), each collected and
   folded in with :func:`server.round.aux_step` (pure);
5. :func:`server.persistence.persist_round`, once, at the end of the round.

A bad reply is logged with its node id and reason and dropped; the round continues with the
rest. A round with fewer than ``min_clients`` usable replies is skipped (no new version) and
tried again while attempts remain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid

from common.errors import ConfigError, InvalidReleaseError
from server.adapter_fedavg import run_adapter_step
from server.collectors import MeteredGrid, ReleaseCollector, collector_for
from server.persistence import last_completed_round, load_state, persist_round
from server.round import (
    AdapterAction,
    AdapterUpdate,
    AuxResult,
    CohortResult,
    RoundStatus,
    RoundSummary,
    ServerConfig,
    ServerState,
    adapter_action,
    aux_requests,
    aux_step,
    release_request,
    round_step,
    sample_cohort,
)
from server.storage import ServerStorage

__all__ = ["RoundLoop"]

log = logging.getLogger("fedinterest.server")


class RoundLoop:
    """Runs the rounds of one run.

    Args:
        config: the run's fixed settings (:meth:`ServerConfig.build`).
        storage: the server's database.
        run_dir: where ``hierarchy.json``, ``rounds.jsonl`` and the other outputs go.
        expected_nodes: wait until this many devices registered (default: ``min_clients``).
        wait_timeout: seconds to wait for them.
        on_round: called with each :class:`RoundSummary` (progress display).
        on_reply: called with every reply message the server receives (egress checks).
        collector: how releases are collected (default: the run's mode,
            :func:`server.collectors.collector_for`).
        collector_factory: builds the collector from the metered grid instead (the batched
            simulation engine's :class:`server.batched.BatchedCollector`).
    """

    def __init__(
        self,
        config: ServerConfig,
        storage: ServerStorage,
        *,
        run_dir: str | Path,
        expected_nodes: int | None = None,
        wait_timeout: float = 120.0,
        on_round: Callable[[RoundSummary], None] | None = None,
        on_reply: Callable[[Message], None] | None = None,
        collector: ReleaseCollector | None = None,
        collector_factory: Callable[[Grid], ReleaseCollector] | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.run_dir = Path(run_dir)
        self.expected_nodes = expected_nodes or config.run.min_clients
        self.wait_timeout = wait_timeout
        self.on_round = on_round
        self.on_reply = on_reply
        self.collector = collector
        self.collector_factory = collector_factory

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            ids = sorted(int(n) for n in grid.get_node_ids())
            if len(ids) >= self.expected_nodes or time.monotonic() > deadline:
                return ids
            time.sleep(0.2)

    def run(self, grid: Grid, context: Context) -> list[RoundSummary]:
        """Runs the remaining rounds; returns their summaries (one per attempt)."""
        run = self.config.run
        metered = MeteredGrid(grid, self.on_reply)
        if self.collector is not None:
            collector = self.collector
        elif self.collector_factory is not None:
            collector = self.collector_factory(metered)
        else:
            collector = collector_for(metered, context, run)
        state = load_state(self.storage, self.config)
        self.wait_for_nodes(grid)
        nodes = collector.population()
        if len(nodes) < run.min_clients:
            raise InvalidReleaseError(
                f"only {len(nodes)} devices registered within {self.wait_timeout:.0f}s; "
                f"the run needs at least {run.min_clients}."
            )
        summaries = []
        start = last_completed_round(self.storage, state) + 1
        for server_round in range(start, run.rounds + 1):
            for attempt in range(1, run.round_attempts + 1):
                nodes = collector.population()
                state, summary = self.run_round(
                    metered, collector, state, server_round, nodes, attempt=attempt
                )
                summaries.append(summary)
                if self.on_round is not None:
                    self.on_round(summary)
                if summary.status is RoundStatus.OK:
                    break
                log.warning(
                    "round %d attempt %d skipped; %s",
                    server_round,
                    attempt,
                    "retrying" if attempt < run.round_attempts else "moving on",
                )
        return summaries

    def run_round(
        self,
        grid: MeteredGrid,
        collector: ReleaseCollector,
        state: ServerState,
        server_round: int,
        nodes: list[int],
        *,
        attempt: int = 1,
    ) -> tuple[ServerState, RoundSummary]:
        """One round: collect, step, the releases over the new version, persist."""
        cfg = self.config
        t0 = time.perf_counter()
        up0, down0 = grid.bytes_up, grid.bytes_down
        request = release_request(state, cfg, server_round, sample_cohort(nodes, server_round, cfg))
        releases = collector.collect(request)
        adapter = self._adapter_update(grid, state, request.nodes, server_round)
        state, outcome = round_step(state, CohortResult(request, releases, adapter, attempt), cfg)
        if outcome.summary.status is RoundStatus.SKIPPED:
            log.warning(
                "round %d skipped: %d usable releases (%s)",
                server_round,
                releases.usable,
                dict(releases.failures),
            )
        for aux in aux_requests(state, outcome, cfg):
            state, outcome = aux_step(state, outcome, AuxResult(aux, collector.collect(aux)), cfg)
        summary = replace(
            outcome.summary,
            seconds=time.perf_counter() - t0,
            bytes_up=grid.bytes_up - up0,
            bytes_down=grid.bytes_down - down0,
        )
        persist_round(self.storage, self.run_dir, state, replace(outcome, summary=summary))
        return state, summary

    def _adapter_update(
        self, grid: Grid, state: ServerState, nodes: tuple[int, ...], server_round: int
    ) -> AdapterUpdate | None:
        """The adapter's DP-SGD step of the round, when it trains."""
        cfg = self.config
        action, eps = adapter_action(state, cfg)
        if action is AdapterAction.STOP:
            log.warning(
                "adapter training stops: user-level epsilon %.3f would exceed %.3f",
                eps,
                cfg.run.adapter.server_user_epsilon,
            )
        if action is not AdapterAction.TRAIN:
            return None
        raw = cfg.labels.raw_vectors
        if raw is None:  # ServerConfig.build refuses an adapter without them
            raise ConfigError("the adapter needs the raw label vectors.")
        return run_adapter_step(
            grid,
            nodes,
            state.adapter.weights,
            raw,
            cfg.run.adapter,
            server_round=server_round,
            delta=cfg.run.privacy.delta,
            timeout=cfg.run.round_timeout,
            robust=cfg.run.robust,
            trim=cfg.run.trim_fraction,
        )
