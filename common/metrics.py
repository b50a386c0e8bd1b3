"""Evaluation metrics: clustering agreement (NMI, ARI), dendrogram purity, ranking (recall@k,
nDCG@k, AUC). numpy only; checked against scikit-learn and hand-computed toys in the tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = [
    "adjusted_rand_index",
    "auc",
    "classification_scores",
    "dendrogram_purity",
    "ndcg_at_k",
    "normalized_mutual_info",
    "recall_at_k",
]


def _contingency(
    a: Sequence[Hashable], b: Sequence[Hashable], weights: npt.ArrayLike | None
) -> npt.NDArray[np.float64]:
    if len(a) != len(b):
        raise ConfigError(
            f"label sequences must have the same length. Found {len(a)} and {len(b)}."
        )
    _, ia = np.unique(np.asarray(a, dtype=object).astype(str), return_inverse=True)
    _, ib = np.unique(np.asarray(b, dtype=object).astype(str), return_inverse=True)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
    table = np.zeros((int(ia.max(initial=-1)) + 1, int(ib.max(initial=-1)) + 1))
    np.add.at(table, (ia, ib), w)
    return table


def _entropy(p: npt.NDArray[np.float64]) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(
    truth: Sequence[Hashable], pred: Sequence[Hashable], *, weights: npt.ArrayLike | None = None
) -> float:
    """NMI with arithmetic-mean normalisation (scikit-learn's default); optional sample
    weights. 1.0 when both labelings are a single identical cluster."""
    table = _contingency(truth, pred, weights)
    n = table.sum()
    if n == 0:
        raise ConfigError("NMI needs at least one sample.")
    p = table / n
    pa, pb = p.sum(1), p.sum(0)
    ha, hb = _entropy(pa), _entropy(pb)
    if ha == 0 and hb == 0:
        return 1.0
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    denom = (ha + hb) / 2
    return max(0.0, min(1.0, mi / denom)) if denom > 0 else 0.0


def adjusted_rand_index(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """ARI (Hubert and Arabie 1985)."""
    table = _contingency(truth, pred, None)
    n = table.sum()

    def comb2(x: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64] | float:
        return x * (x - 1) / 2

    sum_ij = float(np.sum(comb2(table)))
    sum_a = float(np.sum(comb2(table.sum(1))))
    sum_b = float(np.sum(comb2(table.sum(0))))
    total = float(comb2(n))
    if total == 0:
        return 1.0
    expected = sum_a * sum_b / total
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (sum_ij - expected) / (maximum - expected)


def dendrogram_purity(classes: Sequence[Hashable], paths: Sequence[Sequence[Hashable]]) -> float:
    """Dendrogram purity (Heller and Ghahramani 2005) of a tree of fixed depth.

    For every pair of items of the same class, the purity of their least common ancestor
    (the share of that subtree's items having the class) is averaged over all such pairs.

    Args:
        classes: the ground-truth class of each item, shape ``(n,)``.
        paths: each item's node path from the top level down (``(level1, leaf)``); the root
            is implicit. All paths have the same length.

    Returns:
        A value in (0, 1]; 1 when no subtree mixes classes below the LCA of same-class pairs.
    """
    n = len(classes)
    if n != len(paths) or n == 0:
        raise ConfigError(
            f"`classes` and `paths` must be non-empty and of equal length. Found {n} and {len(paths)}."
        )
    depth = len(paths[0])
    if any(len(p) != depth for p in paths):
        raise ConfigError("all `paths` must have the same length.")
    # counts[k][(prefix, class)] and sizes[k][prefix] for prefixes of length k (0 = root)
    counts = [Counter[tuple[tuple[Hashable, ...], Hashable]]() for _ in range(depth + 1)]
    sizes = [Counter[tuple[Hashable, ...]]() for _ in range(depth + 1)]
    for c, p in zip(classes, paths, strict=True):
        t = tuple(p)
        for k in range(depth + 1):
            counts[k][(t[:k], c)] += 1
            sizes[k][t[:k]] += 1

    def pairs(m: int) -> float:
        return m * (m - 1) / 2

    # same-class pairs inside each (prefix, class), summed per parent prefix
    below: list[dict[tuple[tuple[Hashable, ...], Hashable], float]] = [{} for _ in range(depth + 1)]
    for k in range(1, depth + 1):
        for (prefix, c), m in counts[k].items():
            key = (prefix[:-1], c)
            below[k - 1][key] = below[k - 1].get(key, 0.0) + pairs(m)
    total: float = 0.0
    weighted: float = 0.0
    for k in range(depth + 1):
        for (prefix, c), m in counts[k].items():
            exact = pairs(m) - below[k].get(
                (prefix, c), 0.0
            )  # pairs whose LCA is exactly this node
            if exact > 0:
                total += exact
                weighted += exact * m / sizes[k][prefix]
    return 1.0 if total == 0 else weighted / total


def recall_at_k(ranked_relevance: Sequence[bool] | npt.ArrayLike, k: int) -> float:
    """Share of the relevant items found in the top ``k`` of a ranked list."""
    r = np.asarray(ranked_relevance, dtype=bool)
    total = int(r.sum())
    if total == 0:
        raise ConfigError("recall@k needs at least one relevant item.")
    return float(r[:k].sum()) / total


def ndcg_at_k(ranked_relevance: Sequence[bool] | npt.ArrayLike, k: int) -> float:
    """nDCG@k with binary relevance."""
    r = np.asarray(ranked_relevance, dtype=np.float64)
    total = int(r.sum())
    if total == 0:
        raise ConfigError("nDCG@k needs at least one relevant item.")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((r[:k] * discounts[: len(r[:k])]).sum())
    ideal = float(discounts[: min(total, k)].sum())
    return dcg / ideal


def auc(scores: npt.ArrayLike, relevant: npt.ArrayLike) -> float:
    """Probability that a random relevant item outscores a random irrelevant one (ties 1/2)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(relevant, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ConfigError("AUC needs relevant and irrelevant items.")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks for ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[y].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def classification_scores(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 over the true classes
    (a class never predicted has precision 0)."""
    if len(truth) != len(pred) or not truth:
        raise ConfigError(
            f"`truth` and `pred` must be non-empty and equally long. Found {len(truth)} and {len(pred)}."
        )
    t = [str(x) for x in truth]
    p = [str(x) for x in pred]
    classes = sorted(set(t))
    acc = sum(a == b for a, b in zip(t, p, strict=True)) / len(t)
    prec, rec, f1 = [], [], []
    for c in classes:
        tp = sum(a == c and b == c for a, b in zip(t, p, strict=True))
        fp = sum(a != c and b == c for a, b in zip(t, p, strict=True))
        fn = sum(a == c and b != c for a, b in zip(t, p, strict=True))
        pc = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        prec.append(pc)
        rec.append(rc)
        f1.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    n = len(classes)
    return {
        "accuracy": acc,
        "macro_precision": sum(prec) / n,
        "macro_recall": sum(rec) / n,
        "macro_f1": sum(f1) / n,
    }
