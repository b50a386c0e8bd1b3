"""Private seeding (``seeding = "private"``): the first round's leaves from the devices' own
data, through the run's DP release, where the server has no public catalogue to seed from.

Round 1 is an ordinary DP-Lloyd round whose public centroids are a **codebook** of
``codebook_size`` unit vectors drawn from the public projection seed: data-independent, so
the release partition stays public (:mod:`client.local_clustering`). The nearest codebook
vector of an event is a spherical locality-sensitive hash: nearby texts share a cell
(Terasawa and Tanaka 2007, "Spherical LSH for approximate nearest neighbor search on unit
hypersphere", WADS; Andoni et al. 2015, "Practical and optimal LSH for angular distance",
NeurIPS, Sec. 2). The cohort's noisy per-cell sums are a private coreset of the events, in
the spirit of the LSH-bucket coreset of Google's differentially private clustering library
(Chang, Ghazi, Kumar and Manurangsi 2021, "Locally private k-means in one round", ICML;
the library keeps the buckets whose noisy counts clear a threshold and clusters their noisy
means). Here the cells that pass the published tree's own significance test
(:func:`server.aggregation.listed_leaves`) are reduced by weighted spherical k-means to
``k`` leaves, whose accumulated sums are the sums of their cells: the following rounds
refine them like any other leaves.

Privacy: the devices release exactly what a tree round releases (same clipping, noise and
ledger entry; the codebook is one more set of public centroids), so round 1 is one of the
run's ``rounds`` and costs nothing beyond it. Everything after the release (the test, the
k-means, the merged sums) is post-processing (Dwork and Roth 2014, Prop. 2.1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.kmeans import weighted_kmeans
from common.projection import normalize_rows
from server.aggregation import LeafState, leaf_statistics, listed_leaves

__all__ = ["PRIVATE_SEEDING_POPULATION", "auto_seeding", "public_codebook", "reduce_codebook"]

#: ``auto`` seeds privately (where no catalogue seeds the run) from this many devices up;
#: below it the vocabulary seeds, as a last resort. The codebook round's cells need users
#: to rise above user-level noise: measured, the user-level DP-Lloyd study in the brief
#: (ratios to centralized 0.68 / 0.87 at 1,000 devices, 0.96 / 0.98 at 10,000), and
#: KuaiRec private seeding in docs/federated.md.
PRIVATE_SEEDING_POPULATION = 1000

#: k-means++ starts of the reduction (post-processing: as many as the server likes).
_STARTS = 8
#: How far a split child starts from its leaf (the aggregation's split uses the same).
_SPLIT_STEP = 0.35


def auto_seeding(requested: str, *, has_catalogue: bool, population: int | None) -> str:
    """What ``requested`` seeding resolves to where the server has ``has_catalogue`` seeds
    or not, for ``population`` devices (``None``: unknown): ``auto`` without a catalogue is
    ``private`` from :data:`PRIVATE_SEEDING_POPULATION` devices up, else ``vocabulary``."""
    if requested != "auto" or has_catalogue:
        return requested
    if population is not None and population >= PRIVATE_SEEDING_POPULATION:
        return "private"
    return "vocabulary"


def public_codebook(dim: int, size: int, seed: int) -> npt.NDArray[np.float32]:
    """``size`` unit vectors in the projected space, drawn from Gaussian directions with the
    public ``seed`` (the projection's): every party can recompute them; no data enters."""
    if not (isinstance(dim, int) and dim >= 1 and isinstance(size, int) and size >= 2):
        raise ConfigError(f"a codebook needs dim >= 1 and size >= 2. Found {dim!r}, {size!r}.")
    rng = np.random.default_rng([int(seed), 0x5EED])
    return normalize_rows(rng.normal(size=(size, dim)).astype(np.float32))


def reduce_codebook(
    state: LeafState,
    k: int,
    *,
    null_rate: float,
    seed: int,
    min_cells: int = 4,
    split: bool = True,
) -> LeafState:
    """The codebook round's state reduced to at most ``k`` leaves (post-processing).

    Args:
        state: the state after aggregating the codebook round (one slot per cell, plus any
            leaf the aggregation added).
        k: the number of leaves wanted (fewer when fewer cells pass the test).
        null_rate: the listing test's family-wise rate (``tree_null_rate``): only cells
            that pass it carry their sums into the leaves; the rest (noise, or too little
            data to tell) are dropped.
        seed: public randomness of the k-means++ seeding.
        min_cells: with fewer significant cells, the most significant ``min_cells`` are kept.
        split: with fewer significant cells than ``k``, split the heaviest leaves up to ``k``.

    Returns:
        A state whose leaves are the k-means centres of the significant cells' noisy means,
        weighted by their estimated masses; each leaf accumulates the sums and noise
        variances of its cells and keeps the id of its heaviest cell; leaves are public
        seeds (never pruned).
    """
    if not (isinstance(k, int) and k >= 2):
        raise ConfigError(f"`k` must be an int >= 2. Found {k!r}.")
    mass, z = leaf_statistics(state)
    cells = listed_leaves(z, state.dim, null_rate)
    if len(cells) < min_cells:
        cells = np.sort(np.argsort(-z)[: min(min_cells, state.num_leaves)])
    means = normalize_rows(state.acc[cells].astype(np.float32))
    weights = np.maximum(mass[cells], 0.0)
    if not weights.sum() > 0:
        weights = np.ones(len(cells))
    # the best of a few k-means++ starts (weighted cosine objective): one start can leave
    # two clusters in one leaf and split a third
    rng = np.random.default_rng([int(seed), 0xC0DE])
    runs = [weighted_kmeans(means, weights, min(k, len(cells)), rng=rng) for _ in range(_STARTS)]
    km = max(runs, key=lambda r: float(weights @ (means * r.cluster_centers_[r.labels_]).sum(1)))
    groups = [cells[km.labels_ == j] for j in range(len(km.cluster_centers_))]
    groups = [g for g in groups if len(g)]
    heaviest = [int(g[np.argmax(mass[g])]) for g in groups]
    acc = np.stack([state.acc[g].sum(axis=0) for g in groups])
    centroids = normalize_rows(acc.astype(np.float32))
    ids = [state.ids[i] for i in heaviest]
    var = [float(state.acc_var[g].sum()) for g in groups]
    norm = [float(state.weight_norm[g].max()) for g in groups]
    next_id = state.next_id
    if split and len(groups) < k:
        # fewer significant cells than leaves wanted: the heaviest leaves (mixtures of
        # whatever shared their cells) get a child along a public random direction, as in
        # bisecting k-means; the next rounds' Lloyd steps separate them or the merge rule
        # joins them again (server.aggregation)
        order = np.argsort(-np.linalg.norm(acc, axis=1))[: k - len(groups)]
        u = normalize_rows(rng.normal(size=(len(order), state.dim)).astype(np.float32))
        u = normalize_rows(u - (u * centroids[order]).sum(1, keepdims=True) * centroids[order])
        children = normalize_rows(centroids[order] + _SPLIT_STEP * u)
        centroids = np.concatenate([centroids, children]).astype(np.float32)
        acc = np.concatenate([acc, np.zeros((len(order), state.dim))])
        ids += [f"leaf-{next_id + i:04d}" for i in range(len(order))]
        next_id += len(order)
        var += [0.0] * len(order)
        norm += [0.0] * len(order)
    n = len(ids)
    return LeafState(
        server_round=state.server_round,
        ids=tuple(ids),
        centroids=centroids,
        acc=acc,
        acc_var=np.asarray(var, dtype=np.float64),
        weight_norm=np.asarray(norm, dtype=np.float64),
        seed=np.ones(n, dtype=bool),
        dormant_rounds=np.zeros(n, dtype=np.int64),
        residual_acc=state.residual_acc,
        residual_var=state.residual_var,
        residual_norm=state.residual_norm,
        next_id=next_id,
    )
