"""Tree building on toys: weighted Ward, cuts, stable ids, labels, changes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage

from common.hierarchy import NodeChange
from common.projection import normalize_rows
from common.vocabulary import LabelSpace, Vocabulary
from server.hierarchy_builder import (
    CutCriterion,
    TreeConfig,
    build_hierarchy,
    cut_tree,
    weighted_ward,
)


def two_groups(rng: np.random.Generator, n: int = 6, d: int = 6) -> np.ndarray:
    a = normalize_rows(np.eye(d)[0] + 0.1 * rng.normal(size=(n, d)))
    b = normalize_rows(np.eye(d)[1] + 0.1 * rng.normal(size=(n, d)))
    return np.vstack([a, b])


def test_unit_weights_match_scipy_ward() -> None:
    """With equal weights, weighted Ward gives scipy's Ward partitions."""
    x = np.random.default_rng(0).normal(size=(20, 5))
    ours = weighted_ward(x, np.ones(20))
    ref = linkage(x, "ward")
    for k in (2, 3, 5, 8):
        a = cut_tree(ours, 20, k)
        b = fcluster(ref, k, "maxclust")
        # same partition up to label names
        assert len({(i, j) for i, j in zip(a, b, strict=True)}) == k


def test_mass_weights_change_the_merge_order() -> None:
    """A heavy point resists merging: the light pair merges first."""
    x = np.array([[0.0], [1.0], [2.2]])
    z = weighted_ward(x, np.array([100.0, 1.0, 1.0]))
    assert {int(z[0, 0]), int(z[0, 1])} == {1, 2}


def test_build_two_groups_with_labels_and_cut() -> None:
    """Two clear groups become two level-1 nodes labelled by their leaves' roots."""
    rng = np.random.default_rng(1)
    c = two_groups(rng)
    vocab = Vocabulary.from_paths(
        [["Sports", "Soccer"], ["Sports", "Tennis"], ["Music", "Jazz"], ["Music", "Rock"]]
    )
    vecs = np.zeros((len(vocab.labels), 6), dtype=np.float32)
    for i, lab in enumerate(vocab.labels):
        vecs[i] = {"Sports": np.eye(6)[0], "Music": np.eye(6)[1]}[lab.root] + (0.01 * i)
    ls = LabelSpace(vocab, normalize_rows(vecs))
    ids = [f"leaf-{i:04d}" for i in range(12)]
    h = build_hierarchy(
        ids, c, np.ones(12), version=1, server_round=1, projection_fingerprint="f", labels=ls
    )
    groups = h.level(1)
    assert len(groups) == 2
    assert sorted(g.label for g in groups) == ["Music", "Sports"]
    assert all(len(g.children) == 6 for g in groups)
    assert sum(n.weight for n in h.leaves) == pytest.approx(1.0)
    assert all(n.change == NodeChange.NEW for n in h.nodes.values())


def test_one_dominant_root_falls_back_to_the_silhouette() -> None:
    """Leaves in 6 clear groups that the vocabulary names with one root (a films-only
    dataset): the top level is cut by the silhouette into >= k_min groups, not into 1-2."""
    rng = np.random.default_rng(2)
    d = 8
    c = np.vstack([normalize_rows(np.eye(d)[g] + 0.05 * rng.normal(size=(5, d))) for g in range(6)])
    vocab = Vocabulary.from_paths([["Movies", "Drama"], ["Movies", "Comedy"], ["Books", "Poetry"]])
    # the film labels sit between three groups each: close to every leaf (cosine ~0.58,
    # above the threshold for an unmeasured encoder), the books label far away
    where = {"Drama": [0, 1, 2], "Comedy": [3, 4, 5], "Poetry": [7]}
    vecs = np.zeros((len(vocab.labels), d), dtype=np.float32)
    for i, lab in enumerate(vocab.labels):
        vecs[i, where.get(lab.name, [6])] = 1.0
    ls = LabelSpace(vocab, normalize_rows(vecs))
    ids = [f"leaf-{i:04d}" for i in range(30)]
    h = build_hierarchy(
        ids, c, np.ones(30), version=1, server_round=1, projection_fingerprint="f", labels=ls
    )
    assert len(h.level(1)) == 6
    assert all(len(g.children) == 5 for g in h.level(1))


def test_ids_stay_stable_across_versions_and_changes_are_reported() -> None:
    """A perturbed next version keeps group ids; weight changes are grown/shrunk."""
    rng = np.random.default_rng(2)
    c = two_groups(rng)
    ids = [f"leaf-{i:04d}" for i in range(12)]
    cfg = TreeConfig(criterion=CutCriterion.FIXED, level1_k=2)
    m1 = np.ones(12)
    h1 = build_hierarchy(
        ids, c, m1, version=1, server_round=1, projection_fingerprint="f", config=cfg
    )
    c2 = normalize_rows(c + 0.02 * rng.normal(size=c.shape))
    m2 = m1.copy()
    m2[:6] *= 3.0
    h2 = build_hierarchy(
        ids, c2, m2, version=2, server_round=2, projection_fingerprint="f", previous=h1, config=cfg
    )
    assert {g.node_id for g in h1.level(1)} == {g.node_id for g in h2.level(1)}
    for leaf in ids:
        assert h1.nodes[leaf].parent == h2.nodes[leaf].parent
    heavy = h2.nodes[h2.nodes["leaf-0000"].parent]
    light = h2.nodes[h2.nodes["leaf-0006"].parent]
    assert heavy.change == NodeChange.GROWN and light.change == NodeChange.SHRUNK
    assert h2.parent_version == 1


def test_merged_and_gone_are_reported() -> None:
    """Leaves merged by aggregation, and a vanished group, appear in merged/gone."""
    rng = np.random.default_rng(3)
    c = two_groups(rng)
    ids = [f"leaf-{i:04d}" for i in range(12)]
    cfg = TreeConfig(criterion=CutCriterion.FIXED, level1_k=2)
    h1 = build_hierarchy(
        ids, c, np.ones(12), version=1, server_round=1, projection_fingerprint="f", config=cfg
    )
    keep = [*range(6), 6]  # group B shrinks to one leaf; others merged into leaf-0006
    merged = {f"leaf-{i:04d}": "leaf-0006" for i in range(7, 12)}
    h2 = build_hierarchy(
        [ids[i] for i in keep],
        c[keep],
        np.ones(7),
        version=2,
        server_round=2,
        projection_fingerprint="f",
        previous=h1,
        merged_leaves=merged,
        config=cfg,
    )
    assert all(h2.merged[k] == "leaf-0006" for k in merged)
    assert not h2.gone
