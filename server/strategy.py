"""The server's round loop (Flower Message API), reply validation, and the per-round record.

One round:

1. sample devices; build the round config (:class:`common.records.RoundKeys`) and send the
   public centroids;
2. collect the cohort's **sum** of releases: under SecAgg+ (:mod:`server.secagg`, default) or
   as individual noisy releases that are validated one by one and summed (``local``);
3. :func:`server.aggregation.aggregate_round` (DP-Lloyd step), then
   :func:`server.hierarchy_builder.build_hierarchy` on the live leaves;
4. store the new version, the aggregation state and the round record in one transaction,
   and write ``hierarchy.json`` and ``rounds.jsonl`` into the run directory.

A bad reply is logged with its node id and reason and dropped; the round continues with the
rest. A round with fewer than ``min_clients`` usable replies is skipped (no new version).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from common.adapter import AdapterWeights, event_level_dpsgd
from common.config import RunConfig
from common.errors import ConfigError, InvalidReleaseError
from common.hierarchy import Hierarchy
from common.privacy import calibrate_release_multiplier, epsilon_of_entries
from common.privacy.ledger import LedgerEntry, Mechanism, Scope
from common.projection import PublicProjection
from common.records import (
    ADAPTER,
    ADAPTER_A,
    ADAPTER_B,
    CENTROIDS,
    COUNTS,
    HISTOGRAM,
    MESSAGE_QUERY_HISTOGRAM,
    MESSAGE_TRAIN_COUNTS,
    MESSAGE_TRAIN_INTERESTS,
    RELEASE_ARRAYS,
    REPLY_ARRAYS,
    REPLY_META,
    ROUND_CONFIG,
    SUMS,
    TASK_SENSITIVITY,
    ReleaseMode,
    ReleaseTask,
    ReplyKeys,
    ReplyStatus,
    RoundKeys,
    encode_ids,
)
from common.vocabulary import LabelSpace
from server.adapter_fedavg import run_adapter_step
from server.aggregation import (
    AggregationConfig,
    LeafState,
    aggregate_round,
    initial_state,
    leaf_statistics,
    robust_mean,
)
from server.hierarchy_builder import CutCriterion, TreeConfig, build_hierarchy
from server.secagg import secagg_sum
from server.storage import ServerStorage

__all__ = [
    "MAX_REPLY_BYTES",
    "InterestServer",
    "MeteredGrid",
    "RoundSummary",
    "json_safe",
    "validate_local_reply",
]

log = logging.getLogger("fedinterest.server")

_STATE_KEY = "leaf_state"
_ADAPTER_KEY = "adapter"
_MIN_TREE_LEAVES = 4


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
        self.bytes_down += sum(_size(m) for m in msgs)
        return self._inner.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = list(self._inner.pull_messages(message_ids))
        self._count_up(out)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        msgs = list(messages)
        self.bytes_down += sum(_size(m) for m in msgs)
        out = list(self._inner.send_and_receive(msgs, timeout=timeout))
        self._count_up(out)
        return out

    def _count_up(self, replies: list[Message]) -> None:
        for r in replies:
            if self._on_reply is not None:
                self._on_reply(r)
            if not r.has_error():
                self.bytes_up += _size(r)
                self.replies += 1


def _size(msg: Message) -> int:
    if msg.has_error():
        return 0
    return int(recorddict_to_proto(msg.content).ByteSize())


@dataclass
class RoundSummary:
    """What happened in one round (one line of ``rounds.jsonl``)."""

    server_round: int
    status: str
    sampled: int
    usable: int
    attempt: int = 1
    failures: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    hierarchy_version: int | None = None
    live_leaves: int = 0
    level1_nodes: int = 0
    noise_multiplier: float = 0.0
    noise_std: float = 0.0
    min_cohort: int = 0
    epsilon_event_level: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    aggregation: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    analytics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_STATUS_VALUES = frozenset(s.value for s in ReplyStatus)

#: Parsed ``.npy`` headers by their bytes: a round's releases all share one header.
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype[Any]]] = {}


def _array_view(arr: Array) -> npt.NDArray[Any]:
    """A read-only view of a Flower Array's values (what ``arr.numpy()`` returns, without a
    copy and without re-parsing the same ``.npy`` header for each of thousands of replies;
    new headers go through numpy's own parser, pickles are never loaded)."""
    import io

    data = arr.data
    if arr.stype != "numpy.ndarray" or len(data) < 10 or data[:6] != b"\x93NUMPY":
        return arr.numpy()
    major = data[6]
    offset = 10 + int.from_bytes(data[8:10], "little") if major == 1 else None
    if major in (2, 3) and len(data) >= 12:
        offset = 12 + int.from_bytes(data[8:12], "little")
    if offset is None or offset > len(data):
        return arr.numpy()
    head = bytes(data[:offset])
    parsed = _NPY_HEADERS.get(head)
    if parsed is None:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in readers:
            return arr.numpy()
        shape, fortran, dtype = readers[version](f)
        if dtype.hasobject:
            return arr.numpy()  # refuses pickles
        parsed = (tuple(shape), bool(fortran), dtype)
        if len(_NPY_HEADERS) < 64:
            _NPY_HEADERS[head] = parsed
    shape, fortran, dtype = parsed
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        return arr.numpy()  # let numpy raise its own error
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def validate_local_reply(
    msg: Message,
    *,
    expected_shape: tuple[int, ...],
    array_key: str = SUMS,
    norm_bound: float,
    server_round: int,
    version: int,
) -> npt.NDArray[np.float64] | None:
    """Checks one local-mode reply; returns its release, ``None`` for a status without one.

    Raises:
        InvalidReleaseError: naming what is wrong (keys outside the allow-list, shape, dtype,
            NaN/Inf, norm above the bound, round or version mismatch).
    """
    if msg.has_error():
        raise InvalidReleaseError(f"device error: {msg.error.reason}")
    content = msg.content
    # each of these properties rebuilds a typed view of the record dict: read them once
    array_records = content.array_records
    config_records = content.config_records
    extra = (
        set(array_records) - {REPLY_ARRAYS}
        | set(config_records) - {REPLY_META}
        | set(content.metric_records)
    )
    if extra:
        raise InvalidReleaseError(f"reply carries records outside the allow-list: {sorted(extra)}.")
    if REPLY_META not in config_records:
        raise InvalidReleaseError(f"reply has no `{REPLY_META}` record.")
    meta = config_records[REPLY_META]
    unknown_meta = set(meta) - {
        ReplyKeys.STATUS,
        ReplyKeys.SERVER_ROUND,
        ReplyKeys.HIERARCHY_VERSION,
    }
    if unknown_meta:
        raise InvalidReleaseError(
            f"reply metadata has keys outside the allow-list: {sorted(unknown_meta)}."
        )
    status = meta.get(ReplyKeys.STATUS)
    if status not in _STATUS_VALUES:
        raise InvalidReleaseError(
            f"reply status must be one of {[s.value for s in ReplyStatus]}. Found {status!r}."
        )
    if (
        meta.get(ReplyKeys.SERVER_ROUND) != server_round
        or meta.get(ReplyKeys.HIERARCHY_VERSION) != version
    ):
        raise InvalidReleaseError(
            f"reply is for round {meta.get(ReplyKeys.SERVER_ROUND)!r} version {meta.get(ReplyKeys.HIERARCHY_VERSION)!r}; "
            f"expected round {server_round} version {version}."
        )
    if status != ReplyStatus.OK.value:
        if REPLY_ARRAYS in array_records:
            raise InvalidReleaseError(f"a reply with status {status!r} must not carry a release.")
        return None
    if REPLY_ARRAYS not in array_records:
        raise InvalidReleaseError("an ok reply needs its release arrays.")
    if array_key not in RELEASE_ARRAYS:
        raise InvalidReleaseError(f"`{array_key}` is not a release array.")
    arrays = array_records[REPLY_ARRAYS]
    if set(arrays) != {array_key}:
        raise InvalidReleaseError(
            f"release arrays must be exactly ['{array_key}']. Found {sorted(arrays)}."
        )
    arr = arrays[array_key]
    if arr.dtype != "float32":
        raise InvalidReleaseError(f"`{array_key}` must be float32. Found {arr.dtype}.")
    if tuple(arr.shape) != expected_shape:
        raise InvalidReleaseError(
            f"`{array_key}` must have shape {expected_shape}. Found {tuple(arr.shape)}."
        )
    raw = _array_view(arr)
    # One pass for both checks: a NaN or Inf anywhere makes the sum of squares non-finite
    # (squares cannot cancel). A ufunc reduction, not np.linalg.norm: a 2-thread BLAS call
    # took ~10 ms instead of ~10 us on the loaded 2-core host (docs/performance.md).
    sq = float(np.square(raw, dtype=np.float64).sum())
    if not math.isfinite(sq) and not np.isfinite(raw).all():
        raise InvalidReleaseError(f"`{array_key}` has NaN or Inf values.")
    norm = math.sqrt(sq)
    if norm > norm_bound:
        raise InvalidReleaseError(
            f"`{array_key}` norm {norm:.3g} exceeds the bound {norm_bound:.3g} (user clip + noise)."
        )
    return raw.astype(np.float64)


#: The largest reply the server decodes (a resource limit; Flower's own gRPC limit is higher).
MAX_REPLY_BYTES = 16 << 20


def _noise_norm_bound(std: float, entries: int) -> float:
    # |N(0, s^2 I_N)| concentrates at s sqrt(N); 8 s above it is a < 1e-13 event.
    return std * (math.sqrt(entries) + 8.0)


class InterestServer:
    """The federated interest-hierarchy server.

    Args:
        run: the run configuration.
        labels: the embedded label vocabulary (public); its leaf labels seed the first round.
        storage: the server's database.
        run_dir: where ``hierarchy.json`` and ``rounds.jsonl`` are written.
        expected_nodes: wait until this many devices registered (default: ``min_clients``).
        wait_timeout: seconds to wait for them.
        on_round: called with each :class:`RoundSummary` (progress display).
        on_reply: called with every reply message the server receives (egress checks).
        catalogue: the public item ids (the popularity release counts over them).
    """

    def __init__(
        self,
        run: RunConfig,
        labels: LabelSpace,
        storage: ServerStorage,
        *,
        run_dir: str | Path,
        expected_nodes: int | None = None,
        wait_timeout: float = 120.0,
        on_round: Callable[[RoundSummary], None] | None = None,
        on_reply: Callable[[Message], None] | None = None,
        catalogue: list[str] | None = None,
    ) -> None:
        self.on_reply = on_reply
        self.catalogue = list(catalogue) if catalogue else None
        self._aux_rounds: list[tuple[int, ReleaseTask]] = []
        self._adapter_rounds: list[int] = []
        self.run_cfg = run
        self.labels = labels
        self.storage = storage
        self.run_dir = Path(run_dir)
        self.expected_nodes = expected_nodes or run.min_clients
        self.wait_timeout = wait_timeout
        self.on_round = on_round
        c = run.clustering
        self.projection = PublicProjection(labels.encoder_dim, c.projection_dim, c.projection_seed)
        if (
            labels.projection_fingerprint
            and labels.projection_fingerprint != self.projection.fingerprint
        ):
            raise ConfigError(
                f"the label vectors were projected with {labels.projection_fingerprint!r}, but this run's "
                f"projection is {self.projection.fingerprint!r}; re-embed the labels for this run."
            )
        self.agg_cfg = AggregationConfig(
            memory=c.memory,
            prior_strength=c.prior_strength,
            live_z=c.live_z,
            new_leaf_z=c.new_leaf_z,
            merge_cosine=c.merge_cosine,
            split_mass=c.split_mass,
            max_leaves=c.max_leaves,
        )
        self.tree_cfg = TreeConfig(
            criterion=CutCriterion(c.cut), level1_k=c.level1_k, label_weight=c.label_weight
        )
        p = run.privacy
        self.adapter_cfg = run.adapter
        if self.adapter_cfg.enabled and labels.raw_vectors is None:
            raise ConfigError(
                "the adapter needs the label vectors before projection (re-run `fedinterest labels`)."
            )
        self.noise_multiplier = (
            0.0
            if p.no_dp
            else calibrate_release_multiplier(
                epsilon=p.epsilon,
                delta=p.delta,
                rounds=run.gaussian_releases(popularity=self.catalogue is not None),
                other=self._adapter_event_terms(),
                accountant=p.accountant,
            )
        )

    def _adapter_event_terms(self) -> tuple[tuple[float, float, int], ...]:
        """The adapter's DP-SGD over the whole run, in event-level terms (group of 3)."""
        a = self.adapter_cfg
        if not a.enabled:
            return ()
        z, q = event_level_dpsgd(a.noise_multiplier, a.sample_rate)
        return ((z, q, a.steps * self.run_cfg.rounds),)

    # -- state ----------------------------------------------------------------------------------

    def _initial(self) -> LeafState:
        leaves = list(self.labels.vocabulary.leaves) or list(self.labels.vocabulary.labels)
        _, vecs = self.labels.subset(leaves)
        return initial_state(vecs)

    def _restore(self) -> tuple[LeafState, Hierarchy | None]:
        arrays = self.storage.get_arrays(_STATE_KEY)
        adapter = self.storage.get_arrays(_ADAPTER_KEY)
        self.adapter = (
            AdapterWeights.from_arrays(adapter)
            if adapter is not None
            else AdapterWeights.initial(
                self.labels.encoder_dim, self.adapter_cfg.rank, self.adapter_cfg.seed
            )
        )
        released = self.storage.get_json("released") or {}
        self._aux_rounds = [(int(r), ReleaseTask(t)) for r, t in released.get("aux", [])]
        self._adapter_rounds = [int(r) for r in released.get("adapter", [])]
        if arrays is None:
            return self._initial(), None
        return LeafState.from_arrays(arrays), self.storage.latest_version()

    def labels_for(self, adapter: AdapterWeights) -> LabelSpace:
        """The label space in the space an adapter defines (the projected adapted raw vectors)."""
        if adapter.is_identity() or self.labels.raw_vectors is None:
            return self.labels
        return self.labels.with_vectors(self.projection(adapter.apply(self.labels.raw_vectors)))

    # -- the loop -------------------------------------------------------------------------------

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            ids = sorted(int(n) for n in grid.get_node_ids())
            if len(ids) >= self.expected_nodes or time.monotonic() > deadline:
                return ids
            time.sleep(0.2)

    def run(self, grid: Grid, context: Context) -> list[RoundSummary]:
        """Runs the remaining rounds; returns their summaries."""
        metered = MeteredGrid(grid, self.on_reply)
        state, hierarchy = self._restore()
        nodes = self.wait_for_nodes(grid)
        if len(nodes) < self.run_cfg.min_clients:
            raise InvalidReleaseError(
                f"only {len(nodes)} devices registered within {self.wait_timeout:.0f}s; "
                f"the run needs at least {self.run_cfg.min_clients}."
            )
        summaries = []
        recorded = [int(r["server_round"]) for r in self.storage.rounds()]
        start = max([state.server_round, *recorded]) + 1
        for server_round in range(start, self.run_cfg.rounds + 1):
            for attempt in range(1, self.run_cfg.round_attempts + 1):
                nodes = sorted(int(n) for n in grid.get_node_ids())
                summary, state, hierarchy = self.run_round(
                    metered, context, server_round, nodes, state, hierarchy, attempt=attempt
                )
                summaries.append(summary)
                if self.on_round is not None:
                    self.on_round(summary)
                if summary.status == "ok":
                    break
                log.warning(
                    "round %d attempt %d skipped; %s",
                    server_round,
                    attempt,
                    "retrying" if attempt < self.run_cfg.round_attempts else "moving on",
                )
        return summaries

    def _sample(self, nodes: list[int], server_round: int) -> list[int]:
        k = max(self.run_cfg.min_clients, math.ceil(self.run_cfg.fraction * len(nodes)))
        if k > self.run_cfg.max_replies:
            raise ConfigError(
                f"a round would sample {k} devices, more than `max_replies` = {self.run_cfg.max_replies}; "
                "lower `fraction` or raise the limit."
            )
        if k >= len(nodes):
            return list(nodes)
        rng = np.random.default_rng([self.run_cfg.seed, server_round])
        picks = sorted(int(i) for i in rng.choice(len(nodes), size=k, replace=False))
        return [nodes[i] for i in picks]  # ids stay Python ints (uint64 never goes through numpy)

    def round_config(
        self,
        server_round: int,
        version: int,
        sampled: int,
        task: ReleaseTask = ReleaseTask.LEAF_SUMS,
    ) -> tuple[dict[str, Any], int]:
        """The round config of one release task, and the minimum cohort it assumes."""
        p = self.run_cfg.privacy
        secagg = p.mode is ReleaseMode.SECAGG
        min_cohort = max(2, math.ceil(p.min_cohort_fraction * sampled)) if secagg else 1
        sensitivity = p.sensitivity if task is ReleaseTask.LEAF_SUMS else TASK_SENSITIVITY[task]
        z = self.noise_multiplier * self._factor(task)
        full = z * sensitivity
        noise_std = full / math.sqrt(min_cohort) if secagg else full
        cfg = {
            RoundKeys.SERVER_ROUND: server_round,
            RoundKeys.HIERARCHY_VERSION: version,
            RoundKeys.TASK: task.value,
            RoundKeys.MODE: p.mode.value,
            RoundKeys.CLIPPING_NORM: float(p.clipping_norm),
            RoundKeys.MAX_WEIGHT: float(p.max_weight),
            RoundKeys.NOISE_MULTIPLIER: float(z),
            RoundKeys.NOISE_STD: float(noise_std),
            RoundKeys.MIN_COHORT: int(min_cohort),
            RoundKeys.USER_CLIPPING_NORM: float(p.user_clipping_norm),
            RoundKeys.RESIDUAL_THRESHOLD: float(self.run_cfg.clustering.residual_threshold),
            RoundKeys.PROJECTION_SEED: int(self.projection.seed),
            RoundKeys.PROJECTION_DIM: int(self.projection.output_dim),
            RoundKeys.PROJECTION_FINGERPRINT: self.projection.fingerprint,
            RoundKeys.DELTA: float(p.delta),
        }
        return cfg, min_cohort

    def _factor(self, task: ReleaseTask) -> float:
        """The task's noise multiplier relative to the tree's (see ``AnalyticsConfig``)."""
        a = self.run_cfg.analytics
        return {
            ReleaseTask.LEAF_SUMS: 1.0,
            ReleaseTask.ITEM_COUNTS: a.popularity_noise_factor,
            ReleaseTask.HISTOGRAM: a.histogram_noise_factor,
        }[task]

    def run_round(
        self,
        grid: MeteredGrid,
        context: Context,
        server_round: int,
        nodes: list[int],
        state: LeafState,
        hierarchy: Hierarchy | None,
        *,
        attempt: int = 1,
    ) -> tuple[RoundSummary, LeafState, Hierarchy | None]:
        """One round: the release step, the adapter step (if enabled), aggregation, the tree."""
        t0 = time.perf_counter()
        up0, down0 = grid.bytes_up, grid.bytes_down
        version = hierarchy.version if hierarchy is not None else 0
        sampled = self._sample(nodes, server_round)
        cfg, min_cohort = self.round_config(server_round, version, len(sampled))
        noise_std = float(cfg[RoundKeys.NOISE_STD])
        summary = RoundSummary(
            server_round=server_round,
            status="ok",
            sampled=len(sampled),
            usable=0,
            noise_multiplier=self.noise_multiplier,
            noise_std=noise_std,
            min_cohort=min_cohort,
            attempt=attempt,
        )
        adapter_used = self.adapter
        total, usable, failures, statuses = self._release_step(
            grid, context, sampled, state, cfg, min_cohort
        )
        summary.failures = dict(failures)
        summary.statuses = dict(statuses)
        summary.usable = usable if total is not None else 0

        if self.adapter_cfg.enabled:
            self._adapter_step(grid, sampled, server_round, summary)

        if total is None or usable < self.run_cfg.min_clients:
            summary.status = "skipped"
            log.warning(
                "round %d skipped: %d usable releases (%s)", server_round, usable, dict(failures)
            )
            summary.seconds = time.perf_counter() - t0
            summary.bytes_up, summary.bytes_down = grid.bytes_up - up0, grid.bytes_down - down0
            self._persist(summary, None, None, [])
            return summary, state, hierarchy

        noise_var = usable * noise_std**2
        if self.run_cfg.privacy.mode is ReleaseMode.LOCAL:
            # variance of n x (robust mean) of Gaussian noise, relative to the plain sum
            noise_var *= {"none": 1.0, "trimmed": 1.1, "median": math.pi / 2}[self.run_cfg.robust]
        new_state, diag = aggregate_round(
            state, total, noise_var=noise_var, config=self.agg_cfg, server_round=server_round
        )
        new_h = self._build(
            new_state, hierarchy, server_round, diag.merged, self.labels_for(adapter_used)
        )
        summary.hierarchy_version = new_h.version
        summary.live_leaves = len(new_h.leaves)
        summary.level1_nodes = len(new_h.level(1))
        summary.aggregation = diag.to_dict()
        if self.run_cfg.analytics.histogram:
            summary.analytics["histogram"] = self._histogram_step(
                grid, context, sampled, server_round, new_h
            )
        if (
            self.catalogue is not None
            and self.run_cfg.analytics.popularity
            and server_round == self.run_cfg.rounds
        ):
            summary.analytics["popularity"] = self._popularity_step(
                grid, context, sampled, server_round, new_h.version
            )
        summary.epsilon_event_level = self._epsilon_after(server_round)
        summary.seconds = time.perf_counter() - t0
        summary.bytes_up, summary.bytes_down = grid.bytes_up - up0, grid.bytes_down - down0
        # the server's view of the round, kept for the empirical audit and reports: the public
        # centroids the devices assigned to and the DP cohort sum (nothing device-level)
        view = {
            "centroids": state.centroids,
            "cohort_sum": total,
            "noise_var": noise_var,
            "usable": usable,
        }
        self._persist(
            summary, new_state, new_h, self._server_ledger_entries(server_round), adapter_used, view
        )
        return summary, new_state, new_h

    def _release_step(
        self,
        grid: MeteredGrid,
        context: Context,
        sampled: list[int],
        state: LeafState,
        cfg: dict[str, Any],
        min_cohort: int,
    ) -> tuple[npt.NDArray[np.float64] | None, int, Counter[str], Counter[str]]:
        arrays = [state.centroids]
        if self.adapter_cfg.enabled:
            arrays += [self.adapter.a, self.adapter.b]
        return self._collect(
            grid,
            context,
            sampled,
            arrays,
            cfg,
            (state.num_leaves + 1, state.dim),
            min_cohort,
            array_key=SUMS,
            message_type=MESSAGE_TRAIN_INTERESTS,
        )

    def _collect(
        self,
        grid: MeteredGrid,
        context: Context,
        sampled: list[int],
        arrays: list[npt.NDArray[np.float32]],
        cfg: dict[str, Any],
        shape: tuple[int, ...],
        min_cohort: int,
        *,
        array_key: str,
        message_type: str,
    ) -> tuple[npt.NDArray[np.float64] | None, int, Counter[str], Counter[str]]:
        """The cohort's sum of one release task, under SecAgg+ or from validated local-mode
        replies; ``(sum or None, usable, failures, statuses)``."""
        noise_std = float(cfg[RoundKeys.NOISE_STD])
        entries = int(np.prod(shape))
        per_device_bound = self.run_cfg.privacy.user_clipping_norm + _noise_norm_bound(
            noise_std, entries
        )
        failures: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        if self.run_cfg.privacy.mode is not ReleaseMode.SECAGG:
            total, usable = self._local_sum(
                grid,
                sampled,
                arrays,
                cfg,
                shape,
                per_device_bound,
                failures,
                statuses,
                array_key=array_key,
                message_type=message_type,
            )
            return total, usable, failures, statuses
        outcome = secagg_sum(
            grid,
            context,
            sampled,
            arrays=arrays,
            config=cfg,
            server_round=int(cfg[RoundKeys.SERVER_ROUND]),
            clipping_range=self.run_cfg.privacy.user_clipping_norm + 8 * noise_std,
            min_survivors=max(self.run_cfg.min_clients, min_cohort),
            timeout=self.run_cfg.round_timeout,
        )
        for f in outcome.failures:
            failures[_reason(f)] += 1
        for meta in outcome.metadata:
            statuses[str(meta.get(ReplyKeys.STATUS, "?"))] += 1
        total = outcome.total
        if total is not None:
            if total.shape != shape or not np.isfinite(total).all():
                failures["cohort sum malformed"] += 1
                total = None
            elif float(np.linalg.norm(total)) > outcome.survivors * per_device_bound:
                failures["cohort sum above its norm bound"] += 1
                total = None
        return total, outcome.survivors, failures, statuses

    def _popularity_step(
        self,
        grid: MeteredGrid,
        context: Context,
        sampled: list[int],
        server_round: int,
        version: int,
    ) -> dict[str, Any]:
        """DP item popularity over the public catalogue (once, in the last round)."""
        assert self.catalogue is not None
        cfg, min_cohort = self.round_config(
            server_round, version, len(sampled), ReleaseTask.ITEM_COUNTS
        )
        total, usable, failures, statuses = self._collect(
            grid,
            context,
            sampled,
            [encode_ids(self.catalogue)],
            cfg,
            (len(self.catalogue),),
            min_cohort,
            array_key=COUNTS,
            message_type=MESSAGE_TRAIN_COUNTS,
        )
        out: dict[str, Any] = {
            "usable": usable,
            "failures": dict(failures),
            "statuses": dict(statuses),
        }
        if total is None:
            return out
        noise_std = float(cfg[RoundKeys.NOISE_STD])
        self._aux_rounds.append((server_round, ReleaseTask.ITEM_COUNTS))
        with self.storage.transaction() as conn:
            self.storage.put_arrays(
                "popularity", {"counts": total, "noise_var": usable * noise_std**2}, conn=conn
            )
            self.storage.put_json("popularity_items", list(self.catalogue), conn=conn)
        np.savez_compressed(
            self.run_dir / "popularity.npz",
            items=np.asarray(self.catalogue),
            counts=total.astype(np.float32),
            noise_std=np.asarray(math.sqrt(usable) * noise_std),
        )
        out["noise_std"] = math.sqrt(usable) * noise_std
        return out

    def _histogram_step(
        self,
        grid: MeteredGrid,
        context: Context,
        sampled: list[int],
        server_round: int,
        h: Hierarchy,
    ) -> dict[str, Any]:
        """Population analytics: the share of devices whose top-k broad interests include each
        level-1 node of the new version (DP counts, summed like the releases)."""
        ids, g = h.centroids(1)
        k = max(1, min(self.run_cfg.analytics.top_k, len(ids)))
        cfg, min_cohort = self.round_config(
            server_round, h.version, len(sampled), ReleaseTask.HISTOGRAM
        )
        cfg[RoundKeys.TOP_K] = k
        arrays = [g]
        if self.adapter_cfg.enabled:
            arrays += [self.adapter.a, self.adapter.b]
        total, usable, failures, _statuses = self._collect(
            grid,
            context,
            sampled,
            arrays,
            cfg,
            (len(ids),),
            min_cohort,
            array_key=HISTOGRAM,
            message_type=MESSAGE_QUERY_HISTOGRAM,
        )
        out: dict[str, Any] = {"usable": usable, "failures": dict(failures)}
        if total is None:
            return out
        self._aux_rounds.append((server_round, ReleaseTask.HISTOGRAM))
        counts = np.maximum(
            total * math.sqrt(k), 0.0
        )  # each device contributes 1/sqrt(k) per chosen node
        share = counts / counts.sum() if counts.sum() > 0 else counts
        noise_std = float(cfg[RoundKeys.NOISE_STD])
        record = {
            "server_round": server_round,
            "hierarchy_version": h.version,
            "devices": usable,
            "top_k": k,
            "noise_std_per_count": math.sqrt(usable) * noise_std * math.sqrt(k),
            "nodes": [
                {
                    "id": nid,
                    "label": h.nodes[nid].label,
                    "count": round(float(c), 3),
                    "share": round(float(sh), 5),
                }
                for nid, c, sh in zip(ids, counts, share, strict=True)
            ],
        }
        with open(self.run_dir / "analytics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        self.storage.put_json(f"analytics:{server_round}", record)
        out["devices"] = usable
        return out

    def _adapter_step(
        self, grid: MeteredGrid, sampled: list[int], server_round: int, summary: RoundSummary
    ) -> None:
        a = self.adapter_cfg
        if a.server_noise_multiplier > 0:
            spent = [e for e in self.storage.ledger() if e.mechanism is Mechanism.SERVER_GAUSSIAN]
            nxt = LedgerEntry(
                Mechanism.SERVER_GAUSSIAN,
                a.server_noise_multiplier,
                a.server_clipping_norm,
                scope=Scope.USER,
            )
            eps = epsilon_of_entries(
                [*spent, nxt], delta=self.run_cfg.privacy.delta, scope=Scope.USER
            )
            if eps > a.server_user_epsilon:
                summary.adapter = {
                    "status": "stopped: the server's user-level budget is spent",
                    "epsilon": eps,
                }
                self.adapter_cfg = replace(a, enabled=False)
                log.warning(
                    "adapter training stops: user-level epsilon %.3f would exceed %.3f",
                    eps,
                    a.server_user_epsilon,
                )
                return
        raw = self.labels.raw_vectors
        assert raw is not None  # checked in __init__
        result = run_adapter_step(
            grid,
            sampled,
            self.adapter,
            raw,
            a,
            server_round=server_round,
            delta=self.run_cfg.privacy.delta,
            timeout=self.run_cfg.round_timeout,
            robust=self.run_cfg.robust,
            trim=self.run_cfg.trim_fraction,
        )
        summary.adapter = {
            "usable": result.usable,
            "failures": dict(result.failures),
            "statuses": dict(result.statuses),
            "update_norm": round(result.weights.minus(self.adapter), 6),
        }
        if result.usable:
            self.adapter = result.weights
            self._adapter_rounds.append(server_round)

    def _server_ledger_entries(self, server_round: int) -> list[LedgerEntry]:
        """The user-level view of what this round released (the server's ledger)."""
        p = self.run_cfg.privacy
        out = []
        if self.noise_multiplier > 0:
            out.append(
                LedgerEntry(
                    Mechanism.GAUSSIAN_SUM,
                    self.noise_multiplier * p.sensitivity / p.user_clipping_norm,
                    p.user_clipping_norm,
                    server_round=server_round,
                    scope=Scope.USER,
                    details={"output": "leaf sums", "user_clipping_norm": p.user_clipping_norm},
                )
            )
        else:
            out.append(
                LedgerEntry(
                    Mechanism.NON_PRIVATE,
                    0.0,
                    p.user_clipping_norm,
                    server_round=server_round,
                    scope=Scope.USER,
                    details={"output": "leaf sums"},
                )
            )
        for r, task in self._aux_rounds:
            if r != server_round:
                continue
            z_task = self.noise_multiplier * self._factor(task)
            if task is ReleaseTask.ITEM_COUNTS:
                z_user = z_task * TASK_SENSITIVITY[task] / p.user_clipping_norm
                out.append(
                    _user_entry(
                        Mechanism.GAUSSIAN_COUNT, z_user, p.user_clipping_norm, r, "item popularity"
                    )
                )
            else:
                # a device's k-hot vector has norm 1: user-level multiplier = z x sqrt(2)
                z_user = z_task * TASK_SENSITIVITY[task]
                out.append(
                    _user_entry(
                        Mechanism.GAUSSIAN_HISTOGRAM, z_user, 1.0, r, "population histogram"
                    )
                )
        if server_round in self._adapter_rounds:
            a = self.adapter_cfg
            if a.server_noise_multiplier > 0 and self.run_cfg.robust == "none":
                out.append(
                    LedgerEntry(
                        Mechanism.SERVER_GAUSSIAN,
                        a.server_noise_multiplier,
                        a.server_clipping_norm,
                        server_round=server_round,
                        scope=Scope.USER,
                        details={"output": "adapter (DP-FedAvg, server-side fixed clipping)"},
                    )
                )
            else:
                out.append(
                    LedgerEntry(
                        Mechanism.NON_PRIVATE,
                        0.0,
                        a.update_clipping_norm,
                        server_round=server_round,
                        scope=Scope.USER,
                        details={"output": "adapter without server noise"},
                    )
                )
        return out

    def _local_sum(
        self,
        grid: Grid,
        sampled: list[int],
        arrays: list[npt.NDArray[np.float32]],
        cfg: dict[str, Any],
        shape: tuple[int, ...],
        bound: float,
        failures: Counter[str],
        statuses: Counter[str],
        *,
        array_key: str = SUMS,
        message_type: str = MESSAGE_TRAIN_INTERESTS,
    ) -> tuple[npt.NDArray[np.float64] | None, int]:
        records: dict[str, Any] = {
            ROUND_CONFIG: ConfigRecord(cfg),
            CENTROIDS: ArrayRecord({CENTROIDS: Array(_wire(arrays[0]))}),
        }
        if len(arrays) == 3:
            records[ADAPTER] = ArrayRecord(
                {ADAPTER_A: Array(arrays[1]), ADAPTER_B: Array(arrays[2])}
            )
        content = RecordDict(records)
        msgs = [
            grid.create_message(content, message_type, node, str(cfg[RoundKeys.SERVER_ROUND]))
            for node in sampled
        ]
        replies = grid.send_and_receive(msgs, timeout=self.run_cfg.round_timeout)
        total = np.zeros(shape)
        usable = 0
        answered = set()
        kept: list[npt.NDArray[np.float32]] = []
        robust = self.run_cfg.robust != "none"
        expected = set(sampled)
        for r in replies:
            node = int(r.metadata.src_node_id)
            if node not in expected or node in answered:
                failures["reply from a device not asked (or twice)"] += 1
                continue
            answered.add(node)
            if not r.has_error() and _size(r) > MAX_REPLY_BYTES:
                failures[f"reply larger than {MAX_REPLY_BYTES} bytes"] += 1
                continue
            try:
                x = validate_local_reply(
                    r,
                    array_key=array_key,
                    expected_shape=shape,
                    norm_bound=bound,
                    server_round=int(cfg[RoundKeys.SERVER_ROUND]),
                    version=int(cfg[RoundKeys.HIERARCHY_VERSION]),
                )
            except InvalidReleaseError as err:
                log.warning("dropping reply of node %d: %s", node, err)
                failures[_reason(str(err))] += 1
                continue
            status = str(r.content.config_records[REPLY_META][ReplyKeys.STATUS])
            statuses[status] += 1
            if x is not None:
                total += x
                usable += 1
                if robust:
                    kept.append(x.astype(np.float32))
        missing = len(set(sampled) - answered)
        if missing:
            failures["no reply before the timeout"] += missing
        if robust and kept:
            total = usable * robust_mean(
                np.stack(kept), self.run_cfg.robust, self.run_cfg.trim_fraction
            )
        return (total if usable else None), usable

    def _build(
        self,
        state: LeafState,
        previous: Hierarchy | None,
        server_round: int,
        merged: dict[str, str],
        labels: LabelSpace,
    ) -> Hierarchy:
        mass, z = leaf_statistics(state)
        live = np.where(z >= self.run_cfg.clustering.tree_z)[0]
        if len(live) < _MIN_TREE_LEAVES:
            # too little signal for a tree: keep the most significant leaves (post-processing)
            live = np.argsort(-z)[: min(_MIN_TREE_LEAVES, state.num_leaves)]
        masses = np.maximum(mass[live], 1e-6)
        return build_hierarchy(
            [state.ids[i] for i in live],
            state.centroids[live],
            masses,
            version=(previous.version + 1) if previous is not None else 1,
            server_round=server_round,
            projection_fingerprint=self.projection.fingerprint,
            labels=labels,
            previous=previous,
            merged_leaves=merged,
            config=self.tree_cfg,
        )

    def _epsilon_after(self, server_round: int) -> float:
        """A participating device's event-level epsilon after ``server_round`` rounds (what
        its ledger composes to: the releases and, when on, the adapter's DP-SGD)."""
        if self.noise_multiplier == 0:
            return math.inf
        p = self.run_cfg.privacy
        entries = [
            LedgerEntry(
                Mechanism.GAUSSIAN_SUM, self.noise_multiplier, p.sensitivity, server_round=r
            )
            for r in range(1, server_round + 1)
        ]
        entries += [
            LedgerEntry(
                Mechanism.GAUSSIAN_COUNT,
                self.noise_multiplier * self._factor(task),
                1.0,
                server_round=r,
            )
            for r, task in self._aux_rounds
        ]
        for r in self._adapter_rounds:
            z, q = event_level_dpsgd(
                self.adapter_cfg.noise_multiplier, self.adapter_cfg.sample_rate
            )
            entries.append(
                LedgerEntry(
                    Mechanism.DPSGD,
                    z,
                    1.0,
                    sample_rate=q,
                    steps=self.adapter_cfg.steps,
                    server_round=r,
                )
            )
        return epsilon_of_entries(entries, delta=p.delta, accountant=p.accountant)

    def _persist(
        self,
        summary: RoundSummary,
        state: LeafState | None,
        h: Hierarchy | None,
        ledger: list[LedgerEntry],
        adapter: AdapterWeights | None = None,
        view: dict[str, Any] | None = None,
    ) -> None:
        """Version, state, adapter, server ledger and round record: one transaction."""
        record = json_safe(summary.to_dict())
        with self.storage.transaction() as conn:
            if view is not None:
                self.storage.put_arrays(f"round:{summary.server_round}", view, conn=conn)
            if state is not None:
                self.storage.put_arrays(_STATE_KEY, state.to_arrays(), conn=conn)
            self.storage.put_arrays(_ADAPTER_KEY, self.adapter.to_arrays(), conn=conn)
            if h is not None:
                self.storage.put_version(h, conn=conn)
                if adapter is not None:
                    # the adapter whose space this version's centroids live in
                    self.storage.put_arrays(f"adapter:v{h.version}", adapter.to_arrays(), conn=conn)
            for entry in ledger:
                self.storage.append_ledger(entry, conn=conn)
            self.storage.put_json(
                "released",
                {
                    "aux": [[r, t.value] for r, t in self._aux_rounds],
                    "adapter": self._adapter_rounds,
                },
                conn=conn,
            )
            self.storage.put_round(summary.server_round, record, conn=conn)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if h is not None:
            h.save(self.run_dir / "hierarchy.json")
            if adapter is not None:
                np.savez(self.run_dir / "adapter.npz", a=adapter.a, b=adapter.b)
        with open(self.run_dir / "rounds.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record), sort_keys=True) + "\n")


def json_safe(o: Any) -> Any:
    """numpy scalars to Python, non-finite floats to strings ("inf"), recursively."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def _wire(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """float32 for vectors; uint8 (encoded ids) travels as it is."""
    arr = np.ascontiguousarray(a)
    return arr if arr.dtype == np.uint8 else arr.astype(np.float32)


def _reason(text: str) -> str:
    t = text.strip().splitlines()[-1] if text.strip() else "unknown"
    return t[:160]


def _user_entry(
    mechanism: Mechanism, z_user: float, sensitivity: float, server_round: int, output: str
) -> LedgerEntry:
    """A user-level record of one analytics release: ``non_private`` when it carried no
    noise (``--no-dp``), so the audit reports infinity instead of a huge finite epsilon."""
    if z_user <= 0:
        return LedgerEntry(
            Mechanism.NON_PRIVATE,
            0.0,
            sensitivity,
            server_round=server_round,
            scope=Scope.USER,
            details={"output": output},
        )
    return LedgerEntry(
        mechanism,
        z_user,
        sensitivity,
        server_round=server_round,
        scope=Scope.USER,
        details={"output": output},
    )
