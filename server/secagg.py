"""Secure aggregation of releases with Flower's SecAgg+ (its legacy ``fitins.*`` /
``fitres.*`` record layout, which SecAgg+ needs in flwr 1.42, is :mod:`common.secagg_wire`).

:func:`secagg_sum` runs the four SecAgg+ stages over a cohort and returns only the cohort's
**sum** of releases: the server never holds an individual release. Each device reports
``num_examples = 1``, so the workflow's weighted average is the plain mean, and the sum is
``mean x survivors``. Before unmasking, the round is aborted if fewer than ``min_survivors``
devices sent masked vectors: their noise shares would not add up to the calibrated noise.

**Shares per device** (:data:`DEFAULT_NUM_SHARES`, a bounded constant): each device
secret-shares its mask seed and its masking key with ``num_shares - 1`` neighbours (a random
ring, Flower's SecAgg+ graph), any ``reconstruction_threshold`` x ``num_shares`` of which
recover them. A device's crypto grows linearly with ``num_shares`` (one key agreement, one
encrypted share and one pseudo-random mask of the release's size per neighbour; measured per
round at 257 x 128 with the simulation's fast Shamir: ~27 ms at 11 shares, ~51 ms at 21,
~80-100 ms at 31), so it stays fixed as the cohort grows instead of growing with it (``num_shares = n``
costs O(n^2) a round). The trade-off: to unmask one device's release the server needs the
threshold's worth of that device's neighbours to collude with it. With 21 shares and threshold
13 (20 neighbours), a random graph and a colluding fraction ``g`` of devices, a given device is
exposed with probability ``P[Binomial(20, g) >= 13]``: 4e-9 at g = 0.1, 2e-5 at g = 0.2, 1e-3 at
g = 0.3 (11 shares: 9e-6, 9e-4, 1e-2; see ``docs/performance.md``). Pass ``num_shares`` to
change it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from common.secagg_wire import fitins_for_devices, read_fitres_metadata, widen_masked_vectors

__all__ = [
    "DEFAULT_NUM_SHARES",
    "DEFAULT_RECONSTRUCTION_THRESHOLD",
    "SecAggOutcome",
    "default_num_shares",
    "secagg_sum",
]

#: Shares per device in cohorts larger than this (smaller cohorts: every device shares with all).
DEFAULT_NUM_SHARES = 21
#: The share of a device's shares that reconstructs its secrets.
DEFAULT_RECONSTRUCTION_THRESHOLD = 0.6


def default_num_shares(cohort: int) -> int | float:
    """Shares per device for a cohort of ``cohort`` devices: all of them (Flower's ``1.0``) up
    to :data:`DEFAULT_NUM_SHARES`, then that constant (see the module docstring)."""
    return 1.0 if cohort <= DEFAULT_NUM_SHARES else DEFAULT_NUM_SHARES


log = logging.getLogger("fedinterest.server")


@dataclass
class SecAggOutcome:
    """Result of one secure summation.

    Attributes:
        total: the cohort sum, or ``None`` when the protocol halted.
        survivors: devices whose masked vector is in the sum.
        failures: error texts of devices that dropped out or refused.
        metadata: the plaintext reply metadata of each survivor (status, round echo).
    """

    total: npt.NDArray[np.float64] | None
    survivors: int
    failures: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)


class _CollectStrategy(Strategy):
    """A legacy Strategy that only hands out FitIns and keeps the aggregated mean."""

    def __init__(self, proxies: list[ClientProxy], fitins: FitIns) -> None:
        self._proxies = proxies
        self._fitins = fitins
        self.mean: list[npt.NDArray[np.float64]] | None = None
        self.survivors = 0
        self.failures: list[str] = []
        self.metadata: list[dict[str, Any]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(p, self._fitins) for p in self._proxies]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        if results:
            self.mean = [
                np.asarray(a, dtype=np.float64)
                for a in parameters_to_ndarrays(results[0][1].parameters)
            ]
        self.survivors = len(results)
        self.metadata = [read_fitres_metadata(r) for _, r in results]
        self.failures = [str(f) for f in failures]
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[Any]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Any]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Any]] | None:
        return None


class _WideningGrid(Grid):
    """Passes everything to ``inner``; masked vectors that arrive as uint32 (the devices'
    compact upload, :func:`common.secagg_wire.compact_masked_vectors`) are widened back to the
    int64 arrays Flower's workflow sums. Bytes are metered by ``inner``, at their wire size."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner

    @property
    def run(self) -> Any:
        return self._inner.run

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        return self._widen(self._inner.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
        return self._widen(self._inner.send_and_receive(messages, timeout=timeout))

    @staticmethod
    def _widen(replies: Iterable[Any]) -> list[Any]:
        out = list(replies)
        for msg in out:
            if not msg.has_error():
                widen_masked_vectors(msg.content)
        return out


class _GuardedSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ that halts before unmasking when too few masked vectors arrived."""

    def __init__(self, *args: Any, min_survivors: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_survivors = min_survivors
        self.halted_reason: str | None = None
        self.stage_failures: list[str] = []

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().share_keys_stage(grid, context, state))
        # Flower 1.42 keeps every device sampled at setup in `sampled_node_ids`, so a device
        # that dropped before its key shares went out is later treated as "dead": the
        # survivors are asked for shares of it they never received (KeyError on every device,
        # the round fails) and the server would strip pairwise masks nobody added. Only the
        # devices whose shares were forwarded take part in masking from here on.
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {
            nid: set(nb) & alive for nid, nb in state.nid_to_neighbours.items() if nid in alive
        }
        return ok

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().collect_masked_vectors_stage(_WideningGrid(grid), context, state))
        self.stage_failures = [str(f) for f in state.failures]
        if ok and len(state.active_node_ids) < self.min_survivors:
            self.halted_reason = (
                f"only {len(state.active_node_ids)} masked releases arrived, fewer than the "
                f"{self.min_survivors} the noise shares were calibrated for; aborting before unmasking."
            )
            log.warning(self.halted_reason)
            return False
        return ok


def secagg_sum(
    grid: Grid,
    context: Context,
    node_ids: Iterable[int],
    *,
    arrays: list[npt.NDArray[np.float32]],
    config: Mapping[str, Any],
    server_round: int,
    clipping_range: float,
    min_survivors: int,
    quantization_range: int | None = None,
    num_shares: int | float | None = None,
    reconstruction_threshold: float = DEFAULT_RECONSTRUCTION_THRESHOLD,
    timeout: float | None = None,
) -> SecAggOutcome:
    """Sums one release per device under SecAgg+.

    Args:
        grid: Flower's grid.
        context: the ServerApp context (wrapped into the legacy context SecAgg+ expects).
        node_ids: the cohort (uint64 ids, kept as Python ints).
        arrays: the public arrays sent to the devices: the centroids, then (optionally) the
            adapter's ``a`` and ``b``.
        config: the round's config record.
        server_round: the round number.
        clipping_range: every release coordinate must lie in ``[-range, range]`` (releases are
            clipped to the user bound, plus the noise share's tails).
        min_survivors: fewest masked vectors to unmask at all.
        quantization_range: integer shares (the distributed discrete Gaussian): ``2 x
            clipping_range``, so that Flower's quantisation maps each integer ``v`` to
            ``v + clipping_range`` exactly (no rounding) and the masked sum is the integers'
            sum; ``None``: the continuous default below.
        num_shares: secret shares per device (default: :func:`default_num_shares`).
        reconstruction_threshold: share of the shares needed to reconstruct.
        timeout: seconds per stage.
    """
    ids = [int(n) for n in node_ids]
    if len(ids) < 2:
        return SecAggOutcome(None, 0, ["secure aggregation needs at least 2 devices"])
    proxies: list[ClientProxy] = [GridClientProxy(n, grid, grid.run.run_id) for n in ids]
    strategy = _CollectStrategy(proxies, fitins_for_devices(arrays, config))
    legacy = LegacyContext(context, strategy=strategy)
    cfg = ConfigRecord()
    cfg[Key.CURRENT_ROUND] = server_round
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = cfg
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(1)]), keep_input=True
    )
    n = len(ids)
    shares: int | float = num_shares if num_shares is not None else default_num_shares(n)
    # the masked sum of n quantized vectors must stay below the modulus (2**32)
    quant = 1 << max(8, min(22, int(math.log2((2**32 - 1) / (n + 1)))))
    if quantization_range is not None:
        if quantization_range * (n + 1) >= 2**32:
            return SecAggOutcome(
                None,
                0,
                [f"{n} integer shares of range {quantization_range} would wrap modulo 2^32"],
            )
        quant = quantization_range
    workflow = _GuardedSecAggPlus(
        num_shares=shares,
        reconstruction_threshold=reconstruction_threshold,
        max_weight=1.0,
        clipping_range=float(clipping_range),
        quantization_range=quant,
        timeout=timeout,
        min_survivors=min_survivors,
    )
    workflow(grid, legacy)
    failures = workflow.stage_failures or strategy.failures
    if workflow.halted_reason is not None or strategy.mean is None:
        reason = (
            workflow.halted_reason
            or "secure aggregation halted (too few devices for the reconstruction threshold)"
        )
        return SecAggOutcome(None, 0, [*failures, reason])
    total: npt.NDArray[np.float64] = strategy.mean[0] * strategy.survivors
    return SecAggOutcome(total, strategy.survivors, failures, strategy.metadata)
