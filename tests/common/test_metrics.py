"""Metrics against scikit-learn and hand-computed toys."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

from common.metrics import (
    adjusted_rand_index,
    auc,
    dendrogram_purity,
    ndcg_at_k,
    normalized_mutual_info,
    recall_at_k,
)


def test_nmi_ari_match_sklearn() -> None:
    """NMI (arithmetic) and ARI equal scikit-learn's on random labelings."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 6, 300)
        b = (a + rng.integers(0, 3, 300)) % 7
        assert normalized_mutual_info(a, b) == pytest.approx(
            normalized_mutual_info_score(a, b), abs=1e-12
        )
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert normalized_mutual_info(["x", "x"], ["p", "p"]) == 1.0


def test_weighted_nmi_equals_repetition() -> None:
    """Integer sample weights equal repeating the samples."""
    a, b, w = [0, 0, 1, 1, 2], [0, 1, 1, 1, 2], [3, 1, 2, 1, 4]
    rep_a = [x for x, k in zip(a, w, strict=True) for _ in range(k)]
    rep_b = [x for x, k in zip(b, w, strict=True) for _ in range(k)]
    assert normalized_mutual_info(a, b, weights=w) == pytest.approx(
        normalized_mutual_info(rep_a, rep_b)
    )


def test_dendrogram_purity_toys() -> None:
    """Pure leaves give 1; classes split across the root give their global share."""
    assert dendrogram_purity(list("aabb"), [(0, 0), (0, 0), (1, 1), (1, 1)]) == 1.0
    # each a-pair's LCA is the root (purity 2/4): one pair of a, one of b
    assert dendrogram_purity(list("aabb"), [(0, 0), (1, 2), (0, 0), (1, 2)]) == pytest.approx(0.5)
    # a's share one group with a b: pairs (a,a) LCA = group {a,a,b}: purity 2/3; b alone has no pair
    assert dendrogram_purity(list("aab"), [(0, 0), (0, 1), (0, 1)]) == pytest.approx(2 / 3)


def test_ranking_metrics() -> None:
    """recall@k, nDCG@k and AUC on hand-checked lists; AUC equals scikit-learn's."""
    rel = [False, True, False, True, False]
    assert recall_at_k(rel, 2) == 0.5
    assert ndcg_at_k(rel, 5) == pytest.approx(
        (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    )
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=100), 1)
    y = rng.random(100) < 0.3
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))
