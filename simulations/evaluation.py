"""Evaluation against ground truth, and the two baselines the federated tree is compared with.

- **centralized** (non-private upper reference): all events pooled on one machine, same
  encoder and projection, the same release weights, spherical weighted k-means from the same
  public seeds, the same tree builder, no noise;
- **catalogue** (no behaviour data at all): the distinct public item texts, unweighted,
  k-means from the same seeds, the same tree builder;
- **seed method** (the design this project started from, centralized, no noise, no
  vocabulary): the pooled event embeddings, spherical k-means (k-means++ seeding) with k = the
  federated tree's number of leaves, then agglomerative clustering (Ward) of the leaf
  centroids into the federated tree's number of broad interests.

Metrics (when events carry ground-truth ``category`` paths): items and events are assigned to
the nearest leaf centroid; NMI and ARI per level against the ground-truth level of the same
depth, event-weighted and per distinct item (``item_nmi_*``; event-weighted scores are
dominated by a few popular items), and dendrogram purity of the learned tree over distinct
items with the finest ground-truth level as class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from client.local_clustering import weighted_kmeans
from common.events import Event
from common.hierarchy import Hierarchy, Node
from common.metrics import adjusted_rand_index, dendrogram_purity, normalized_mutual_info
from common.projection import normalize_rows
from common.vocabulary import LabelSpace
from server.hierarchy_builder import TreeConfig, build_hierarchy

__all__ = [
    "METRIC_KEYS",
    "GroundTruth",
    "assign_to_tree",
    "catalogue_baseline",
    "centralized_baseline",
    "clustering_metrics",
    "next_event_recall",
    "seed_method_baseline",
]

METRIC_KEYS = (
    "nmi_level1",
    "nmi_level2",
    "ari_level1",
    "ari_level2",
    "item_nmi_level1",
    "item_nmi_level2",
    "dendrogram_purity",
)


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth categories of the evaluated events.

    Attributes:
        level1 / level2: per event, the category path cut at depth 1 and 2 (``None`` when the
            path is shallower).
        item_rows: index of one event per distinct text (the "items").
        item_class: per item, its majority finest category.
    """

    level1: list[str]
    level2: list[str | None]
    item_rows: npt.NDArray[np.int64]
    item_class: list[str]

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> GroundTruth | None:
        """``None`` when no event has a category (metrics are then omitted, not zero)."""
        if not events or any(not e.category for e in events):
            return None
        paths = [e.category_path for e in events]
        l1 = [p[0] for p in paths]
        l2 = [" > ".join(p[:2]) if len(p) >= 2 else None for p in paths]
        first: dict[str, int] = {}
        votes: dict[str, Counter[str]] = {}
        for i, (e, p) in enumerate(zip(events, paths, strict=True)):
            first.setdefault(e.text, i)
            votes.setdefault(e.text, Counter())[" > ".join(p[:2])] += 1
        rows = np.fromiter(first.values(), dtype=np.int64)
        item_class = [votes[t].most_common(1)[0][0] for t in first]
        return cls(l1, l2, rows, item_class)

    @property
    def has_level2(self) -> bool:
        return all(x is not None for x in self.level2)


def assign_to_tree(vectors: npt.NDArray[np.float32], h: Hierarchy) -> tuple[list[str], list[str]]:
    """Nearest leaf (cosine) of each vector and that leaf's level-1 parent."""
    ids, c = h.centroids(2)
    if not ids:
        raise ValueError("the hierarchy has no leaves")
    best = np.argmax(np.asarray(vectors, dtype=np.float32) @ c.T, axis=1)
    leaves = [ids[i] for i in best]
    groups = [h.nodes[leaf].parent or "" for leaf in leaves]
    return leaves, groups


def clustering_metrics(
    vectors: npt.NDArray[np.float32], h: Hierarchy, truth: GroundTruth
) -> dict[str, float]:
    """The metrics of :data:`METRIC_KEYS` for one tree (level-2 keys only with depth-2 truth)."""
    leaves, groups = assign_to_tree(vectors, h)
    rows = truth.item_rows
    out = {
        "nmi_level1": normalized_mutual_info(truth.level1, groups),
        "ari_level1": adjusted_rand_index(truth.level1, groups),
        "item_nmi_level1": normalized_mutual_info(
            [truth.level1[i] for i in rows], [groups[i] for i in rows]
        ),
    }
    if truth.has_level2:
        l2 = [str(x) for x in truth.level2]
        out["nmi_level2"] = normalized_mutual_info(l2, leaves)
        out["ari_level2"] = adjusted_rand_index(l2, leaves)
        out["item_nmi_level2"] = normalized_mutual_info(
            [l2[i] for i in rows], [leaves[i] for i in rows]
        )
    out["dendrogram_purity"] = dendrogram_purity(
        truth.item_class, [(groups[i], leaves[i]) for i in rows]
    )
    return {k: float(out[k]) for k in METRIC_KEYS if k in out}


def _tree_from_kmeans(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    seeds: npt.NDArray[np.float32],
    *,
    labels: LabelSpace,
    fingerprint: str,
    tree: TreeConfig,
    prefix: str,
) -> Hierarchy:
    km = weighted_kmeans(vectors, weights, len(seeds), rng=np.random.default_rng(0), init=seeds)
    live = np.where(km.masses_ > 0)[0]
    return build_hierarchy(
        [f"{prefix}-{i:04d}" for i in live],
        km.cluster_centers_[live],
        km.masses_[live],
        version=1,
        server_round=0,
        projection_fingerprint=fingerprint,
        labels=labels,
        config=tree,
    )


def centralized_baseline(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    seeds: npt.NDArray[np.float32],
    *,
    labels: LabelSpace,
    fingerprint: str,
    tree: TreeConfig,
) -> Hierarchy:
    """All events pooled, weighted spherical k-means from the public seeds, same tree builder."""
    return _tree_from_kmeans(
        vectors, weights, seeds, labels=labels, fingerprint=fingerprint, tree=tree, prefix="central"
    )


def catalogue_baseline(
    item_vectors: npt.NDArray[np.float32],
    seeds: npt.NDArray[np.float32],
    *,
    labels: LabelSpace,
    fingerprint: str,
    tree: TreeConfig,
) -> Hierarchy:
    """Distinct public item texts only, unweighted k-means from the public seeds."""
    w = np.ones(len(item_vectors))
    return _tree_from_kmeans(
        item_vectors,
        w,
        seeds,
        labels=labels,
        fingerprint=fingerprint,
        tree=tree,
        prefix="catalogue",
    )


def seed_method_baseline(
    vectors: npt.NDArray[np.float32],
    leaves: int,
    broad: int,
    *,
    fingerprint: str,
    seed: int = 0,
) -> Hierarchy:
    """The seed method's tree: k-means (k-means++ seeding, ``seed``) of the pooled vectors with
    ``k = leaves``, Ward linkage of the leaf centroids cut into ``broad`` groups. Each
    distinct vector is clustered once with its multiplicity as weight (the same optimum as
    clustering every event, at the cost of the distinct texts)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    x = np.asarray(vectors, dtype=np.float32)
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq)).astype(np.float64)
    k = max(1, min(int(leaves), len(uniq)))
    km = weighted_kmeans(uniq, counts, k, rng=np.random.default_rng(seed))
    live = np.where(km.masses_ > 0)[0]
    cents = normalize_rows(km.cluster_centers_[live])
    mass = km.masses_[live] / float(km.masses_[live].sum())
    b = max(1, min(int(broad), len(live)))
    if b >= 2:
        group = fcluster(linkage(cents.astype(np.float64), "ward"), t=b, criterion="maxclust")
    else:
        group = np.ones(len(live), dtype=np.int64)
    nodes: dict[str, Node] = {}
    group_ids = sorted({int(g) for g in group})
    for g in group_ids:
        members = np.flatnonzero(group == g)
        gid = f"seed-g{g:03d}"
        c = normalize_rows((cents[members] * mass[members, None]).sum(axis=0, keepdims=True))[0]
        kids = tuple(f"seed-{int(i):04d}" for i in members)
        nodes[gid] = Node(gid, 1, "root", kids, c, float(mass[members].sum()))
        for i in members:
            nodes[f"seed-{int(i):04d}"] = Node(
                f"seed-{int(i):04d}", 2, gid, (), cents[i], float(mass[i])
            )
    root_c = normalize_rows((cents * mass[:, None]).sum(axis=0, keepdims=True))[0]
    nodes["root"] = Node("root", 0, None, tuple(f"seed-g{g:03d}" for g in group_ids), root_c, 1.0)
    return Hierarchy(
        version=1, dim=int(x.shape[1]), projection_fingerprint=fingerprint, nodes=nodes
    )


def next_event_recall(
    events: Sequence[Event],
    vectors: npt.NDArray[np.float32],
    *,
    k: int = 10,
    candidates: int = 100,
    seed: int = 0,
    max_queries: int = 3000,
) -> float:
    """Next-event retrieval recall@k: for consecutive events of a user (with different texts),
    is the next event's text among the ``k`` nearest of itself plus ``candidates`` random
    distinct texts of the dataset, ranked by cosine to the current event?

    Args:
        events: time-ordered within each user.
        vectors: unit vectors of ``events``, shape ``(n, d)`` (with or without an adapter).
    """
    rng = np.random.default_rng(seed)
    by_text: dict[str, int] = {}
    for i, e in enumerate(events):
        by_text.setdefault(e.text, i)
    pool = np.fromiter(by_text.values(), dtype=np.int64)
    last: dict[str, int] = {}
    pairs = []
    for i, e in enumerate(events):
        j = last.get(e.user_id)
        if j is not None and events[j].text != e.text:
            pairs.append((j, i))
        last[e.user_id] = i
    if not pairs or len(pool) <= candidates:
        return float("nan")
    if len(pairs) > max_queries:
        pairs = [pairs[i] for i in rng.choice(len(pairs), size=max_queries, replace=False)]
    hits = 0
    for q, target in pairs:
        neg = pool[rng.choice(len(pool), size=candidates, replace=False)]
        neg = neg[[events[int(n)].text != events[target].text for n in neg]]
        cand = np.concatenate([[target], neg])
        scores = vectors[cand] @ vectors[q]
        rank = int((scores > scores[0]).sum())
        hits += rank < k
    return hits / len(pairs)
