"""The seed-method baseline (pooled embeddings, k-means with the federated tree's number of
leaves, Ward to its number of broad interests, no noise, no vocabulary)."""

from __future__ import annotations

import numpy as np

from common.projection import normalize_rows
from simulations.evaluation import seed_method_baseline


def test_seed_method_recovers_separated_clusters() -> None:
    """Six tight clusters in two far-apart pairs of three: six leaves, two broad interests,
    each leaf holding one cluster and each group one triple; masses follow the counts."""
    rng = np.random.default_rng(0)
    d = 16
    axes = np.eye(d, dtype=np.float32)
    centres = []
    for side in (0, 8):
        for j in range(3):
            centres.append(normalize_rows((3 * axes[side] + axes[side + 1 + j])[None])[0])
    sizes = [50, 30, 20, 40, 40, 20]
    x = np.concatenate(
        [
            c + 0.01 * rng.normal(size=(n, d)).astype(np.float32)
            for c, n in zip(centres, sizes, strict=True)
        ]
    )
    truth = np.repeat(np.arange(6), sizes)
    h = seed_method_baseline(normalize_rows(x), 6, 2, fingerprint="fp", seed=1)
    leaves = h.level(2)
    groups = h.level(1)
    assert len(leaves) == 6 and len(groups) == 2
    ids, c = h.centroids(2)
    nearest = np.argmax(normalize_rows(x) @ c.T, axis=1)
    # every true cluster maps to exactly one leaf, and leaves do not mix clusters
    for t in range(6):
        assert len(set(nearest[truth == t].tolist())) == 1
    assert len({int(nearest[truth == t][0]) for t in range(6)}) == 6
    parent = {leaf: h.nodes[leaf].parent for leaf in ids}
    left = {parent[ids[int(nearest[truth == t][0])]] for t in range(3)}
    right = {parent[ids[int(nearest[truth == t][0])]] for t in range(3, 6)}
    assert len(left) == 1 and len(right) == 1 and left != right
    assert abs(sum(h.nodes[g].weight for g in (*left, *right)) - 1.0) < 1e-6


def test_seed_method_with_fewer_points_than_leaves() -> None:
    """Asked for more leaves than distinct vectors: one leaf per distinct vector."""
    x = normalize_rows(np.eye(4, dtype=np.float32)[[0, 0, 1, 2]])
    h = seed_method_baseline(x, 10, 5, fingerprint="fp")
    assert len(h.level(2)) == 3 and 1 <= len(h.level(1)) <= 3
