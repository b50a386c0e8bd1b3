"""One server round as a pure state transition: no I/O, no Flower.

``round_step(state, cohort, config) -> (state, outcome)``, in the model of
:func:`server.aggregation.aggregate_round`: a frozen :class:`ServerState` in, a new one and a
:class:`RoundOutcome` (the round record, the new tree version, the server's ledger entries,
what to persist) out. The Flower side (sending the round, collecting and validating replies,
secure aggregation) is in :mod:`server.collectors`, the loop that drives rounds in
:mod:`server.round_loop`, and the database and run-directory writes in
:mod:`server.persistence`. The data types are defined in :mod:`server.round_state` and
re-exported here: ``server.round`` is the round's API.

A round, as data:

1. **Plan** (:func:`sample_cohort`, :func:`release_request`): which devices, the round's
   :class:`~common.round_config.RoundConfig` (the one definition of the noise share and of
   the device's ledger entry), and the public arrays sent with it.
2. A collector hands back the cohort's sum of releases (:class:`ReleaseSum`) and, when the
   adapter trains this round (:func:`adapter_action`), the averaged update
   (:class:`AdapterUpdate`), together a :class:`CohortResult`.
3. :func:`round_step`: a round with fewer than ``min_clients`` usable releases is skipped (no
   new version); otherwise the DP-Lloyd step, the tree over the significant leaves (stable ids,
   labels in the adapter's space), the adapter's new weights and the server's user-level
   ledger entries.
4. Releases over the new tree (:func:`aux_requests`: the population histogram every round
   when enabled, the item popularity in the last round): a collector sums each and
   :func:`aux_step` folds it into the state and the outcome.

Everything the server does after the devices' noise is post-processing; the round's privacy
is the devices' releases (:class:`~common.round_config.RoundConfig`) and, for the adapter, the
server-side Gaussian of DP-FedAvg (McMahan et al. 2018, "Learning differentially private
recurrent language models", Alg. 1; user level, sensitivity ``server_clipping_norm``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.adapter import AdapterWeights
from common.errors import ConfigError
from common.hierarchy import Hierarchy
from common.privacy import epsilon_of_entries
from common.privacy.ledger import LedgerEntry, Mechanism, Scope
from common.records import ReleaseMode, ReleaseTask, encode_ids
from common.round_config import RoundConfig
from common.vocabulary import LabelSpace
from server.aggregation import LeafState, aggregate_round, leaf_statistics, listed_leaves
from server.hierarchy_builder import build_hierarchy, rename_hierarchy
from server.private_seeding import reduce_codebook
from server.round_state import (
    AdapterState,
    AdapterUpdate,
    AuxResult,
    CohortResult,
    PopularityRelease,
    ReleaseRequest,
    ReleaseSum,
    RoundOutcome,
    RoundStatus,
    RoundSummary,
    ServerConfig,
    ServerState,
    initial_server_state,
    noise_norm_bound,
    run_dpsgd_entry,
)

__all__ = [
    "AdapterAction",
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
    "adapter_action",
    "aux_requests",
    "aux_step",
    "device_epsilon",
    "initial_server_state",
    "labels_for",
    "noise_norm_bound",
    "release_request",
    "round_step",
    "sample_cohort",
]

_MIN_TREE_LEAVES = 4

#: Variance of ``n x`` (robust mean) of Gaussian noise relative to the plain sum (local mode).
_ROBUST_NOISE_FACTOR: Final = MappingProxyType({"none": 1.0, "trimmed": 1.1, "median": math.pi / 2})

#: Where each auxiliary release reports in the round record's ``analytics``.
_AUX_KEY: Final = MappingProxyType(
    {ReleaseTask.ITEM_COUNTS: "popularity", ReleaseTask.HISTOGRAM: "histogram"}
)

ADAPTER_STOPPED: Final = "stopped: the server's user-level budget is spent"


# -- planning ---------------------------------------------------------------------------------


def sample_cohort(nodes: Sequence[int], server_round: int, config: ServerConfig) -> list[int]:
    """The round's cohort: ``max(min_clients, ceil(fraction x registered))`` devices, drawn
    with the run's public seed and the round.

    Raises:
        ConfigError: the cohort would exceed ``max_replies`` (a resource limit).
    """
    run = config.run
    k = max(run.min_clients, math.ceil(run.fraction * len(nodes)))
    if k > run.max_replies:
        raise ConfigError(
            f"a round would sample {k} devices, more than `max_replies` = {run.max_replies}; "
            "lower `fraction` or raise the limit."
        )
    if k >= len(nodes):
        return list(nodes)
    rng = np.random.default_rng([run.seed, server_round])
    picks = sorted(int(i) for i in rng.choice(len(nodes), size=k, replace=False))
    return [nodes[i] for i in picks]


def _adapter_arrays(state: ServerState, config: ServerConfig) -> tuple[npt.NDArray[Any], ...]:
    """The adapter's weights travel with every release while it trains."""
    if config.run.adapter.enabled and state.adapter.training:
        return (state.adapter.weights.a, state.adapter.weights.b)
    return ()


def dequantised(releases: ReleaseSum, cfg: RoundConfig) -> ReleaseSum:
    """A sum of integer shares back in release units (times the granularity); a continuous
    release as it is."""
    if not cfg.discrete or releases.total is None:
        return releases
    return replace(releases, total=releases.total * cfg.granularity)


def _codebook_round(state: ServerState, config: ServerConfig) -> int | None:
    """In private seeding's first round (the state's leaves are still the public codebook),
    the number of leaves its cells are reduced to; else ``None``."""
    return config.private_k if state.hierarchy is None else None


def release_request(
    state: ServerState, config: ServerConfig, server_round: int, nodes: Sequence[int]
) -> ReleaseRequest:
    """The tree release of a round: the leaf sums over the current public centroids."""
    leaves = state.leaves
    cfg = config.release_config(
        ReleaseTask.LEAF_SUMS,
        server_round=server_round,
        hierarchy_version=state.version,
        sampled=len(nodes),
        release_dim=(leaves.num_leaves + 1) * leaves.dim,
    )
    if _codebook_round(state, config) is not None:
        # the codebook round: every event goes to its nearest cell (random cells are far
        # from most texts; the unassigned row would swallow them)
        cfg = replace(cfg, residual_threshold=-1.0)
    return ReleaseRequest(
        nodes=tuple(nodes),
        config=cfg,
        arrays=(leaves.centroids, *_adapter_arrays(state, config)),
        shape=(leaves.num_leaves + 1, leaves.dim),
        min_survivors=max(config.run.min_clients, cfg.min_cohort),
    )


class AdapterAction(enum.Enum):
    """What the adapter does in a round."""

    OFF = "off"
    """Not enabled, or its training stopped earlier."""
    TRAIN = "train"
    STOP = "stop"
    """Another round would exceed the server's user-level budget: training stops now."""


def adapter_action(state: ServerState, config: ServerConfig) -> tuple[AdapterAction, float]:
    """Whether the adapter trains this round, and the server's user-level epsilon for the
    adapter after it would (``nan`` when not checked).

    The server-side Gaussian of DP-FedAvg is composed over the rounds recorded in the ledger;
    training stops before a round would exceed ``server_user_epsilon``.
    """
    a = config.run.adapter
    if not (a.enabled and state.adapter.training):
        return AdapterAction.OFF, math.nan
    if a.server_noise_multiplier <= 0:
        return AdapterAction.TRAIN, math.nan
    spent = [e for e in state.ledger if e.mechanism is Mechanism.SERVER_GAUSSIAN]
    nxt = _server_gaussian(config, None)
    eps = epsilon_of_entries([*spent, nxt], delta=config.run.privacy.delta, scope=Scope.USER)
    if eps > a.server_user_epsilon:
        return AdapterAction.STOP, eps
    return AdapterAction.TRAIN, eps


def _server_gaussian(config: ServerConfig, server_round: int | None) -> LedgerEntry:
    a = config.run.adapter
    return LedgerEntry(
        Mechanism.SERVER_GAUSSIAN,
        a.server_noise_multiplier,
        a.server_clipping_norm,
        server_round=server_round,
        scope=Scope.USER,
        details={"output": "adapter (DP-FedAvg, server-side fixed clipping)"}
        if server_round is not None
        else {},
    )


def labels_for(config: ServerConfig, adapter: AdapterWeights) -> LabelSpace:
    """The label space in the space an adapter defines (the projected adapted raw vectors)."""
    labels = config.labels
    if adapter.is_identity() or labels.raw_vectors is None:
        return labels
    return labels.with_vectors(config.projection(adapter.apply(labels.raw_vectors)))


# -- the step ---------------------------------------------------------------------------------


def round_step(
    state: ServerState, cohort: CohortResult, config: ServerConfig
) -> tuple[ServerState, RoundOutcome]:
    """One round from the cohort's result: the adapter's update, then (unless too few
    releases are usable) the DP-Lloyd step, the tree and the server's ledger entries.

    Args:
        state: the state the round was planned from (its request came from it).
        cohort: the cohort's release sum and, when :func:`adapter_action` said ``TRAIN``, the
            adapter update.
        config: the run's fixed settings.

    Returns:
        ``(new_state, outcome)``; a skipped round changes only the adapter.

    Raises:
        ConfigError: the adapter trains this round but the cohort result has no update.
    """
    request, releases = cohort.request, dequantised(cohort.releases, cohort.request.config)
    cfg = request.config
    server_round = cfg.server_round
    adapter, adapter_record = _adapter_transition(state, cohort.adapter, config, server_round)
    summary = RoundSummary(
        server_round=server_round,
        status=RoundStatus.OK,
        sampled=len(request.nodes),
        usable=releases.usable if releases.total is not None else 0,
        attempt=cohort.attempt,
        failures=dict(releases.failures),
        statuses=dict(releases.statuses),
        noise_multiplier=config.noise_multiplier,
        noise_std=cfg.noise_std,
        min_cohort=cfg.min_cohort,
        adapter=adapter_record,
    )
    stepped = replace(state, adapter=adapter)
    # the adapter's update is applied (and published with the next release) even when the
    # tree round is skipped: its server-side noise goes on the ledger either way
    adapter_entries = _adapter_ledger_entries(state, stepped, config, server_round)
    if releases.total is None or releases.usable < config.run.min_clients:
        skipped = RoundOutcome(
            summary=replace(summary, status=RoundStatus.SKIPPED),
            cohort=request.nodes,
            adapter_entries=adapter_entries,
        )
        return replace(stepped, ledger=state.ledger + skipped.ledger_entries), skipped

    noise_var = releases.usable * cfg.noise_std**2
    if cfg.mode is ReleaseMode.LOCAL:
        noise_var *= _ROBUST_NOISE_FACTOR[config.run.robust]
    leaves, diag = aggregate_round(
        state.leaves,
        releases.total,
        noise_var=noise_var,
        config=config.aggregation,
        server_round=server_round,
    )
    if (k := _codebook_round(state, config)) is not None:
        # private seeding: this was the codebook round; its significant cells become the
        # leaves (post-processing, server.private_seeding)
        leaves = reduce_codebook(
            leaves,
            k,
            null_rate=config.run.clustering.tree_null_rate,
            seed=config.projection.seed,
        )
    # the devices assigned in the space of the adapter they were sent: the tree is labelled
    # in that space, and that adapter is stored with the version
    tree_adapter = state.adapter.weights
    h = _build_tree(
        leaves, state.hierarchy, server_round, diag.merged, labels_for(config, tree_adapter), config
    )
    stepped = replace(stepped, leaves=leaves, hierarchy=h)
    outcome = RoundOutcome(
        summary=replace(
            summary,
            hierarchy_version=h.version,
            live_leaves=len(h.leaves),
            level1_nodes=len(h.level(1)),
            aggregation=diag.to_dict(),
            epsilon_event_level=device_epsilon(stepped, config, server_round),
            epsilon_user_level=device_epsilon(stepped, config, server_round, Scope.USER),
        ),
        cohort=request.nodes,
        hierarchy=h,
        tree_adapter=tree_adapter,
        view={
            "centroids": state.leaves.centroids,
            "cohort_sum": releases.total,
            "noise_var": noise_var,
            "usable": releases.usable,
        },
        release_entries=(cfg.user_ledger_entry(),),
        adapter_entries=adapter_entries,
    )
    return replace(stepped, ledger=state.ledger + outcome.ledger_entries), outcome


def _adapter_transition(
    state: ServerState, update: AdapterUpdate | None, config: ServerConfig, server_round: int
) -> tuple[AdapterState, dict[str, Any]]:
    action, eps = adapter_action(state, config)
    if action is AdapterAction.OFF:
        return state.adapter, {}
    if action is AdapterAction.STOP:
        return replace(state.adapter, training=False), {"status": ADAPTER_STOPPED, "epsilon": eps}
    if update is None:
        raise ConfigError(
            f"round {server_round}: the adapter trains this round, but the cohort result has no "
            "adapter update."
        )
    record = {
        "usable": update.usable,
        "failures": dict(update.failures),
        "statuses": dict(update.statuses),
        "update_norm": round(update.weights.minus(state.adapter.weights), 6),
    }
    if not update.usable:
        return state.adapter, record
    return (
        replace(
            state.adapter,
            weights=update.weights,
            rounds=(*state.adapter.rounds, server_round),
        ),
        record,
    )


def _adapter_ledger_entries(
    before: ServerState, after: ServerState, config: ServerConfig, server_round: int
) -> tuple[LedgerEntry, ...]:
    """The server's user-level record of the adapter when this step applied an update (one
    per applied update, a retried round included): DP-FedAvg's server-side Gaussian, or
    ``non_private`` without server noise (or with a robust combination, to which DP-FedAvg's
    accounting does not apply)."""
    if len(after.adapter.rounds) == len(before.adapter.rounds):
        return ()
    a = config.run.adapter
    if a.server_noise_multiplier > 0 and config.run.robust == "none":
        return (_server_gaussian(config, server_round),)
    return (
        LedgerEntry(
            Mechanism.NON_PRIVATE,
            0.0,
            a.update_clipping_norm,
            server_round=server_round,
            scope=Scope.USER,
            details={"output": "adapter without server noise"},
        ),
    )


def _build_tree(
    leaves: LeafState,
    previous: Hierarchy | None,
    server_round: int,
    merged: dict[str, str],
    labels: LabelSpace,
    config: ServerConfig,
) -> Hierarchy:
    mass, z = leaf_statistics(leaves)
    c = config.run.clustering
    if c.tree_z is not None:
        live = np.where(z >= c.tree_z)[0]
    else:
        live = listed_leaves(z, leaves.dim, c.tree_null_rate)
    if len(live) < _MIN_TREE_LEAVES:
        # too little signal for a tree: keep the most significant leaves (post-processing)
        live = np.argsort(-z)[: min(_MIN_TREE_LEAVES, leaves.num_leaves)]
    masses = np.maximum(mass[live], 1e-6)
    return build_hierarchy(
        [leaves.ids[i] for i in live],
        leaves.centroids[live],
        masses,
        version=(previous.version + 1) if previous is not None else 1,
        server_round=server_round,
        projection_fingerprint=config.projection.fingerprint,
        labels=labels,
        previous=previous,
        merged_leaves=merged,
        config=config.tree,
        items=config.names,
    )


def device_epsilon(
    state: ServerState, config: ServerConfig, server_round: int, scope: Scope = Scope.EVENT
) -> float:
    """A participating device's epsilon at ``scope`` after ``server_round`` rounds: its ledger
    entries, built by the same :meth:`RoundConfig.ledger_entry` and
    :func:`~common.round_config.dpsgd_ledger_entry` the device uses, composed: a tree release
    every round, the auxiliary releases summed so far, the adapter's DP-SGD in the rounds its
    update was applied. (The entries' details, e.g. the hierarchy version, do not enter the
    epsilon.)"""
    if config.noise_multiplier == 0:
        return math.inf
    # integer noise: the other relation's bound grows with the release's dimension; the
    # largest possible one is used (an upper bound; the devices' ledgers have the exact one)
    c = config.run.clustering
    dims = {
        ReleaseTask.LEAF_SUMS: (c.max_leaves + 1) * config.projection.output_dim,
        ReleaseTask.ITEM_COUNTS: len(config.catalogue or ()) or 1,
        ReleaseTask.HISTOGRAM: c.max_leaves,
    }
    entries = [
        config.release_config(
            ReleaseTask.LEAF_SUMS,
            server_round=r,
            hierarchy_version=0,
            sampled=config.run.min_clients,
            release_dim=dims[ReleaseTask.LEAF_SUMS],
        ).ledger_entry(scope)
        for r in range(1, server_round + 1)
    ]
    entries += [
        config.release_config(
            task,
            server_round=r,
            hierarchy_version=0,
            sampled=config.run.min_clients,
            release_dim=dims[task],
        ).ledger_entry(scope)
        for r, task in state.aux_releases
    ]
    if state.adapter.rounds:
        if scope is Scope.USER:
            # the adapter's update leaves each device outside the secure sum, bounded per
            # example, not per device: no user-level bound covers it
            return math.inf
        entries += [run_dpsgd_entry(config.run, r) for r in state.adapter.rounds]
    p = config.run.privacy
    return epsilon_of_entries(
        entries, delta=p.delta, scope=scope, accountant=p.composition_accountant
    )


# -- releases over the new tree ---------------------------------------------------------------


def aux_requests(
    state: ServerState, outcome: RoundOutcome, config: ServerConfig
) -> list[ReleaseRequest]:
    """The releases a completed round asks the same cohort for over its new version: the
    population histogram (every round, when enabled), then the item popularity (the last
    round, when a catalogue is public)."""
    h = outcome.hierarchy
    if outcome.summary.status is not RoundStatus.OK or h is None:
        return []
    run = config.run
    server_round = outcome.summary.server_round
    nodes = outcome.cohort
    out = []
    if run.analytics.histogram:
        ids, g = h.centroids(1)
        k = max(1, min(run.analytics.top_k, len(ids)))
        cfg = config.release_config(
            ReleaseTask.HISTOGRAM,
            server_round=server_round,
            hierarchy_version=h.version,
            sampled=len(nodes),
            top_k=k,
            release_dim=len(ids),
        )
        out.append(
            ReleaseRequest(
                nodes=nodes,
                config=cfg,
                arrays=(g, *_adapter_arrays(state, config)),
                shape=(len(ids),),
                min_survivors=max(run.min_clients, cfg.min_cohort),
            )
        )
    if config.catalogue is not None and run.analytics.popularity and server_round == run.rounds:
        cfg = config.release_config(
            ReleaseTask.ITEM_COUNTS,
            server_round=server_round,
            hierarchy_version=h.version,
            sampled=len(nodes),
            release_dim=len(config.catalogue),
        )
        out.append(
            ReleaseRequest(
                nodes=nodes,
                config=cfg,
                arrays=(encode_ids(list(config.catalogue)),),
                shape=(len(config.catalogue),),
                min_survivors=max(run.min_clients, cfg.min_cohort),
            )
        )
    return out


def aux_step(
    state: ServerState, outcome: RoundOutcome, result: AuxResult, config: ServerConfig
) -> tuple[ServerState, RoundOutcome]:
    """Folds one auxiliary release into the state and the round's outcome: the analytics
    record, the server's ledger entry, the device epsilon. A release that did not sum
    changes nothing but the record of what happened."""
    task = result.request.task
    handlers = {
        ReleaseTask.HISTOGRAM: _histogram_result,
        ReleaseTask.ITEM_COUNTS: _popularity_result,
    }
    if task not in handlers:
        raise ConfigError(f"`{task.value}` is not an auxiliary release.")
    result = replace(result, releases=dequantised(result.releases, result.request.config))
    record, extra = handlers[task](outcome, result, config)
    summary = replace(
        outcome.summary, analytics={**outcome.summary.analytics, _AUX_KEY[task]: record}
    )
    if result.releases.total is None:
        return state, replace(outcome, summary=summary)
    server_round = outcome.summary.server_round
    before = state.ledger[: len(state.ledger) - len(outcome.ledger_entries)]
    new_state = replace(state, aux_releases=(*state.aux_releases, (server_round, task)))
    popularity = extra.get("popularity")
    if popularity is not None and config.names is not None and outcome.hierarchy is not None:
        # the round's tree is renamed from the catalogue weighted by the DP popularity
        # (post-processing; persisted with the round, before any device sees the version)
        h = rename_hierarchy(
            outcome.hierarchy,
            config.names,
            dict(zip(popularity.items, popularity.counts.tolist(), strict=True)),
            labels_for(config, outcome.tree_adapter or state.adapter.weights),
            config.tree,
        )
        extra = {**extra, "hierarchy": h}
        new_state = replace(new_state, hierarchy=h)
    new_outcome = replace(
        outcome,
        aux_entries=(*outcome.aux_entries, result.request.config.user_ledger_entry()),
        **extra,
    )
    new_outcome = replace(
        new_outcome,
        summary=replace(
            summary,
            epsilon_event_level=device_epsilon(new_state, config, server_round),
            epsilon_user_level=device_epsilon(new_state, config, server_round, Scope.USER),
        ),
    )
    # the ledger keeps each round's entries in one order: release, auxiliary, adapter
    return replace(new_state, ledger=before + new_outcome.ledger_entries), new_outcome


def _histogram_result(
    outcome: RoundOutcome, result: AuxResult, config: ServerConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Population analytics: the share of devices whose top-k broad interests include each
    level-1 node of the new version (DP counts, summed like the releases)."""
    rel = result.releases
    record: dict[str, Any] = {
        "usable": rel.usable,
        "failures": dict(rel.failures),
        # what the devices were asked for (the audit checks their ledgers against it)
        "noise_multiplier": result.request.config.noise_multiplier,
        "device_noise_std": result.request.config.noise_std,
    }
    h = outcome.hierarchy
    if rel.total is None or h is None:
        return record, {}
    cfg = result.request.config
    k = cfg.top_k if cfg.top_k is not None else 1
    ids, _ = h.centroids(1)
    # each device contributes 1/sqrt(k) per chosen node
    counts = np.maximum(rel.total * math.sqrt(k), 0.0)
    share = counts / counts.sum() if counts.sum() > 0 else counts
    histogram = {
        "server_round": cfg.server_round,
        "hierarchy_version": h.version,
        "devices": rel.usable,
        "top_k": k,
        "noise_std_per_count": math.sqrt(rel.usable) * cfg.noise_std * math.sqrt(k),
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
    record["devices"] = rel.usable
    return record, {"histogram": histogram}


def _popularity_result(
    outcome: RoundOutcome, result: AuxResult, config: ServerConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """DP item popularity over the public catalogue (once, in the last round)."""
    rel = result.releases
    record: dict[str, Any] = {
        "usable": rel.usable,
        "failures": dict(rel.failures),
        "statuses": dict(rel.statuses),
        "noise_multiplier": result.request.config.noise_multiplier,
        "device_noise_std": result.request.config.noise_std,
    }
    if rel.total is None or config.catalogue is None:
        return record, {}
    std = result.request.config.noise_std
    noise_std = math.sqrt(rel.usable) * std
    record["noise_std"] = noise_std
    popularity = PopularityRelease(config.catalogue, rel.total, rel.usable * std**2, noise_std)
    return record, {"popularity": popularity}
