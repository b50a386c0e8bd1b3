"""The round's data: the run's fixed settings, the state carried from round to round, what
is asked of a cohort and what it answers, and what a round produces.

All frozen, all plain data (the model of :class:`server.aggregation.LeafState`); the
functions that move between them are in :mod:`server.round`, which re-exports these names.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.adapter import AdapterWeights
from common.config import RunConfig
from common.errors import ConfigError
from common.hierarchy import Hierarchy
from common.privacy import calibrate_release_multiplier
from common.privacy.ledger import LedgerEntry
from common.projection import PublicProjection, normalize_rows
from common.records import (
    COUNTS,
    HISTOGRAM,
    MESSAGE_QUERY_HISTOGRAM,
    MESSAGE_TRAIN_COUNTS,
    MESSAGE_TRAIN_INTERESTS,
    SUMS,
    ReleaseTask,
)
from common.round_config import RoundConfig, dpsgd_ledger_entry
from common.vocabulary import LabelSpace
from server.aggregation import AggregationConfig, LeafState, initial_state
from server.hierarchy_builder import CutCriterion, TreeConfig
from server.naming import CatalogueTexts
from server.private_seeding import public_codebook

__all__ = [
    "AdapterState",
    "AdapterUpdate",
    "AuxResult",
    "CohortResult",
    "PopularityRelease",
    "ReleaseRequest",
    "ReleaseSum",
    "RoundOutcome",
    "RoundStatus",
    "RoundSummary",
    "ServerConfig",
    "ServerState",
    "adapter_event_terms",
    "initial_server_state",
    "noise_norm_bound",
    "run_dpsgd_entry",
]

#: The reply array and the local-mode message type of each release task.
_ARRAY_KEY: Final = MappingProxyType(
    {ReleaseTask.LEAF_SUMS: SUMS, ReleaseTask.ITEM_COUNTS: COUNTS, ReleaseTask.HISTOGRAM: HISTOGRAM}
)
_MESSAGE_TYPE: Final = MappingProxyType(
    {
        ReleaseTask.LEAF_SUMS: MESSAGE_TRAIN_INTERESTS,
        ReleaseTask.ITEM_COUNTS: MESSAGE_TRAIN_COUNTS,
        ReleaseTask.HISTOGRAM: MESSAGE_QUERY_HISTOGRAM,
    }
)


def noise_norm_bound(std: float, entries: int) -> float:
    """A bound on the norm of ``N(0, std^2 I_entries)``: it concentrates at ``std sqrt(N)``;
    8 std above it is a < 1e-13 event."""
    return std * (math.sqrt(entries) + 8.0)


# -- configuration and state ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """What stays fixed over a run (public).

    Attributes:
        run: the run configuration.
        labels: the embedded label vocabulary; its leaves seed the first round.
        projection: the run's public projection.
        noise_multiplier: the tree release's ``z``, calibrated so that every release of the
            run (and the adapter's DP-SGD) composes to the run's event-level epsilon.
        aggregation / tree: the aggregation and tree-building rules.
        catalogue: the public item ids (the popularity release counts over them).
        seeds: the first round's leaf centroids when they do not come from the vocabulary
            (catalogue seeding), shape ``(k, dim)``, unit rows.
        names: the public catalogue's texts, embedded: what names the tree's nodes
            (:mod:`server.naming`); ``None``: close vocabulary labels only.
        private_k: with ``private`` seeding, the leaves the codebook round is reduced to
            (:mod:`server.private_seeding`; ``seeds`` is then the public codebook).
    """

    run: RunConfig
    labels: LabelSpace
    projection: PublicProjection
    noise_multiplier: float
    aggregation: AggregationConfig
    tree: TreeConfig
    catalogue: tuple[str, ...] | None = None
    seeds: npt.NDArray[np.float32] | None = None
    names: CatalogueTexts | None = None
    private_k: int | None = None

    @classmethod
    def build(
        cls,
        run: RunConfig,
        labels: LabelSpace,
        catalogue: Sequence[str] | None = None,
        seeds: npt.NDArray[np.floating] | None = None,
        names: CatalogueTexts | None = None,
    ) -> ServerConfig:
        """Checks the labels against the run and calibrates the noise.

        Raises:
            ConfigError: labels projected with another projection, an adapter without the
                raw label vectors, or a budget the adapter alone already spends.
        """
        c = run.clustering
        projection = PublicProjection(
            labels.encoder_dim, c.projection_dim, c.projection_seed, labels.encoder_id
        )
        if (
            labels.projection_fingerprint
            and labels.projection_fingerprint != projection.fingerprint
        ):
            raise ConfigError(
                f"the label vectors were projected with {labels.projection_fingerprint!r}, but this run's "
                f"projection is {projection.fingerprint!r}; re-embed the labels for this run."
            )
        if run.adapter.enabled and labels.raw_vectors is None:
            raise ConfigError(
                "the adapter needs the label vectors before projection (re-run `fedinterest labels`)."
            )
        items = tuple(catalogue) if catalogue else None
        p = run.privacy
        z = (
            0.0
            if p.no_dp
            else calibrate_release_multiplier(
                epsilon=p.epsilon,
                delta=p.delta,
                rounds=run.gaussian_releases(popularity=items is not None),
                other=adapter_event_terms(run),
                accountant=p.composition_accountant,
            )
        )
        aggregation = AggregationConfig.from_clustering(c)
        tree = TreeConfig(
            criterion=CutCriterion(c.cut), level1_k=c.level1_k, label_weight=c.label_weight
        )
        checked = None
        private_k = None
        if c.seeding == "private":
            if seeds is not None:
                raise ConfigError(
                    "`seeding` 'private' draws its own codebook; catalogue `seeds` were given too."
                )
            private_k = c.leaves_to_seed(labels.vocabulary)
            seeds = public_codebook(labels.dim, c.codebook_size, c.projection_seed)
        if seeds is not None:
            checked = np.asarray(seeds, dtype=np.float32)
            if (
                checked.ndim != 2
                or checked.shape[1] != labels.dim
                or len(checked) < 2
                or not np.isfinite(checked).all()
            ):
                raise ConfigError(
                    f"`seeds` must be finite with shape (k >= 2, {labels.dim}). Found {checked.shape}."
                )
            checked = normalize_rows(checked)
        if names is not None and names.vectors.shape[1:] != (labels.dim,):
            raise ConfigError(
                f"`names` vectors must have dimension {labels.dim}. Found {names.vectors.shape}."
            )
        return cls(run, labels, projection, z, aggregation, tree, items, checked, names, private_k)

    def task_noise_multiplier(self, task: ReleaseTask) -> float:
        """The task's ``z``: the tree's times the task's noise factor (``AnalyticsConfig``)."""
        a = self.run.analytics
        factor = {
            ReleaseTask.LEAF_SUMS: 1.0,
            ReleaseTask.ITEM_COUNTS: a.popularity_noise_factor,
            ReleaseTask.HISTOGRAM: a.histogram_noise_factor,
        }[task]
        return self.noise_multiplier * factor

    def release_config(
        self,
        task: ReleaseTask,
        *,
        server_round: int,
        hierarchy_version: int,
        sampled: int,
        top_k: int | None = None,
        release_dim: int | None = None,
    ) -> RoundConfig:
        """The round config of one release task for a cohort of ``sampled`` devices
        (``release_dim``: the release's coordinates, needed by integer noise)."""
        p = self.run.privacy
        return RoundConfig.for_release(
            server_round=server_round,
            hierarchy_version=hierarchy_version,
            task=task,
            mode=p.mode,
            noise_multiplier=self.task_noise_multiplier(task),
            sampled=sampled,
            min_cohort_fraction=p.min_cohort_fraction,
            clipping_norm=p.clipping_norm,
            max_weight=p.max_weight,
            user_clipping_norm=p.user_bound,
            unit=p.unit,
            noise=p.noise_kind,
            release_dim=release_dim,
            residual_threshold=self.run.clustering.residual_threshold,
            projection_seed=self.projection.seed,
            projection_dim=self.projection.output_dim,
            projection_fingerprint=self.projection.fingerprint,
            delta=p.delta,
            top_k=top_k,
        )


def adapter_event_terms(run: RunConfig) -> tuple[tuple[float, float, int], ...]:
    """The adapter's DP-SGD over the whole run, in event-level terms (its ledger entry):
    the ``other`` mechanisms the release noise is calibrated against."""
    a = run.adapter
    if not a.enabled:
        return ()
    e = run_dpsgd_entry(run, None)
    return ((e.noise_multiplier, e.sample_rate, a.steps * run.rounds),)


def run_dpsgd_entry(run: RunConfig, server_round: int | None) -> LedgerEntry:
    """A participating device's DP-SGD ledger entry for one adapter round of this run."""
    a = run.adapter
    return dpsgd_ledger_entry(
        noise_multiplier=a.noise_multiplier,
        sample_rate=a.sample_rate,
        max_grad_norm=a.max_grad_norm,
        steps=a.steps,
        server_round=server_round,
    )


@dataclass(frozen=True)
class AdapterState:
    """The public adapter and its training history.

    Attributes:
        weights: the current averaged weights.
        training: False once the server's user-level budget stopped the training.
        rounds: the rounds whose averaged update was applied (a retried round may repeat).
    """

    weights: AdapterWeights
    training: bool = True
    rounds: tuple[int, ...] = ()


@dataclass(frozen=True)
class ServerState:
    """Everything the server carries from one round to the next.

    Attributes:
        leaves: the aggregation state (public leaves and their accumulated noisy sums).
        hierarchy: the latest tree version (``None`` before the first completed round).
        adapter: the adapter's weights and history.
        aux_releases: the ``(round, task)`` of each auxiliary release that was summed.
        ledger: the server's ledger entries (user level), oldest first.
    """

    leaves: LeafState
    hierarchy: Hierarchy | None
    adapter: AdapterState
    aux_releases: tuple[tuple[int, ReleaseTask], ...] = ()
    ledger: tuple[LedgerEntry, ...] = ()

    @property
    def version(self) -> int:
        return self.hierarchy.version if self.hierarchy is not None else 0


def initial_server_state(config: ServerConfig) -> ServerState:
    """Cold start: one public leaf per leaf label (or per catalogue seed or codebook cell,
    with :attr:`ServerConfig.seeds`), the adapter at its public initial weights."""
    vocab = config.labels.vocabulary
    if config.seeds is not None:
        seeds = config.seeds
    else:
        _, seeds = config.labels.subset(list(vocab.leaves) or list(vocab.labels))
    a = config.run.adapter
    return ServerState(
        leaves=initial_state(seeds),
        hierarchy=None,
        adapter=AdapterState(AdapterWeights.initial(config.labels.encoder_dim, a.rank, a.seed)),
    )


# -- what travels: requests and cohort results ------------------------------------------------


@dataclass(frozen=True)
class ReleaseRequest:
    """One release task to collect from a cohort.

    Attributes:
        nodes: the cohort's node ids (Python ints; uint64 never goes through numpy).
        config: the round config every device receives.
        arrays: the public arrays sent with it: the centroids (or the catalogue's encoded
            ids), then optionally the adapter's ``a`` and ``b``.
        shape: the shape of one release.
        min_survivors: fewest releases worth summing (secure aggregation halts below it).
    """

    nodes: tuple[int, ...]
    config: RoundConfig
    arrays: tuple[npt.NDArray[Any], ...] = field(repr=False)
    shape: tuple[int, ...]
    min_survivors: int

    @property
    def task(self) -> ReleaseTask:
        return self.config.task

    @property
    def array_key(self) -> str:
        """The reply array a local-mode release travels in."""
        return _ARRAY_KEY[self.task]

    @property
    def message_type(self) -> str:
        """The local-mode message type of this task."""
        return _MESSAGE_TYPE[self.task]

    @property
    def per_device_bound(self) -> float:
        """The largest norm an honest device's noisy release can have (user bound + noise;
        integer noise: in integer units)."""
        entries = int(np.prod(self.shape))
        cfg = self.config
        if cfg.discrete:
            return (
                cfg.integer_range
                - 16.0 * cfg.integer_sigma
                + noise_norm_bound(cfg.integer_sigma, entries)
            )
        return cfg.user_clipping_norm + noise_norm_bound(cfg.noise_std, entries)

    @property
    def clipping_range(self) -> float:
        """The coordinate range SecAgg+ quantizes (the user bound plus the noise's tails;
        integer noise: the integer range, see :attr:`quantization_range`)."""
        if self.config.discrete:
            return float(self.config.integer_range)
        return self.config.user_clipping_norm + 8 * self.config.noise_std

    @property
    def quantization_range(self) -> int | None:
        """Integer shares: ``2 R``, Flower's quantisation then adds ``R`` exactly."""
        return 2 * self.config.integer_range if self.config.discrete else None


@dataclass(frozen=True)
class ReleaseSum:
    """A collector's answer to one :class:`ReleaseRequest`.

    Attributes:
        total: the cohort's sum of releases, ``None`` when nothing usable arrived.
        usable: releases in the sum (secure aggregation: the survivors).
        failures: reasons of dropped or refused replies, with counts.
        statuses: the reply statuses of the usable replies, with counts.
    """

    total: npt.NDArray[np.float64] | None = field(repr=False)
    usable: int
    failures: Mapping[str, int] = field(default_factory=dict)
    statuses: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterUpdate:
    """The adapter step's result: the averaged weights (the old ones when no update was
    usable) and what happened."""

    weights: AdapterWeights
    usable: int
    failures: Mapping[str, int] = field(default_factory=dict)
    statuses: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortResult:
    """What a round's cohort sent: the release sum and, when the adapter trained, its update."""

    request: ReleaseRequest
    releases: ReleaseSum
    adapter: AdapterUpdate | None = None
    attempt: int = 1


@dataclass(frozen=True)
class AuxResult:
    """An auxiliary release's request and its sum."""

    request: ReleaseRequest
    releases: ReleaseSum


# -- what comes out ---------------------------------------------------------------------------


class RoundStatus(str, enum.Enum):
    """How a round ended."""

    OK = "ok"
    SKIPPED = "skipped"
    """Too few usable releases: no new version; the round may be tried again."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RoundSummary:
    """What happened in one round (one line of ``rounds.jsonl``)."""

    server_round: int
    status: RoundStatus
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
    epsilon_user_level: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    aggregation: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    analytics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # records read back from rounds.jsonl carry the status as a string
        object.__setattr__(self, "status", RoundStatus(self.status))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["status"] = self.status.value
        return out


@dataclass(frozen=True)
class PopularityRelease:
    """The DP item counts over the public catalogue (``popularity.npz``).

    Attributes:
        items: the catalogue's item ids.
        counts: the noisy counts, shape ``(len(items),)``.
        noise_var / noise_std: the noise variance and std of each count.
    """

    items: tuple[str, ...]
    counts: npt.NDArray[np.float64] = field(repr=False)
    noise_var: float
    noise_std: float


@dataclass(frozen=True)
class RoundOutcome:
    """What one round produced, for the edges to persist.

    Attributes:
        summary: the round record.
        cohort: the round's devices (the auxiliary releases ask the same ones).
        hierarchy: the new tree version (``None`` when the round was skipped).
        tree_adapter: the adapter whose space that version's centroids live in.
        view: the server's view of the round, kept for the empirical audit: the public
            centroids the devices assigned to and the DP cohort sum (nothing device-level).
        release_entries / aux_entries / adapter_entries: the server's new ledger entries.
        histogram: the population histogram record (``analytics.jsonl``).
        popularity: the DP item popularity.
    """

    summary: RoundSummary
    cohort: tuple[int, ...] = ()
    hierarchy: Hierarchy | None = None
    tree_adapter: AdapterWeights | None = None
    view: Mapping[str, Any] | None = field(default=None, repr=False)
    release_entries: tuple[LedgerEntry, ...] = ()
    aux_entries: tuple[LedgerEntry, ...] = ()
    adapter_entries: tuple[LedgerEntry, ...] = ()
    histogram: Mapping[str, Any] | None = None
    popularity: PopularityRelease | None = None

    @property
    def ledger_entries(self) -> tuple[LedgerEntry, ...]:
        """The round's server ledger entries: the tree release, the auxiliary releases, the
        adapter."""
        return (*self.release_entries, *self.aux_entries, *self.adapter_entries)
