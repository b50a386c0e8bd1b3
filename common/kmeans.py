"""Spherical k-means with sample weights (k-means++ seeding): shared by the device (its
profile, :mod:`client.local_clustering`), the server (private seeding,
:mod:`server.private_seeding`) and the simulations' baselines. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.projection import normalize_rows

__all__ = ["KMeansResult", "weighted_kmeans"]


@dataclass(frozen=True)
class KMeansResult:
    """Spherical weighted k-means.

    Attributes:
        cluster_centers_: unit centres, shape ``(k, d)``.
        labels_: cluster of each vector, shape ``(n,)``.
        masses_: summed weight per cluster, shape ``(k,)``.
        n_iter_: iterations run.
    """

    cluster_centers_: npt.NDArray[np.float32]
    labels_: npt.NDArray[np.int64]
    masses_: npt.NDArray[np.float64]
    n_iter_: int


def weighted_kmeans(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    k: int,
    *,
    rng: np.random.Generator,
    init: npt.NDArray[np.float32] | None = None,
    max_iter: int = 50,
) -> KMeansResult:
    """Spherical k-means with sample weights (k-means++ seeding unless ``init`` is given).

    Args:
        vectors: unit vectors, shape ``(n, d)``.
        weights: non-negative, shape ``(n,)``.
        k: clusters (at most ``n``).
        rng: randomness for the seeding.
        init: initial centres, shape ``(k, d)``.
    """
    x = np.asarray(vectors, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float64)
    n = x.shape[0]
    if not (isinstance(k, int) and k >= 1 and (k <= max(n, 1) or init is not None)):
        raise ConfigError(f"`k` must be an int in [1, n={n}] (more only with `init`). Found {k!r}.")
    if w.shape != (n,) or (w < 0).any() or not np.isfinite(w).all():
        raise ConfigError(f"`weights` must be {n} finite values >= 0.")
    if init is not None:
        centers = normalize_rows(np.asarray(init, dtype=np.float32))
        if centers.shape != (k, x.shape[1]):
            raise ConfigError(f"`init` must have shape ({k}, {x.shape[1]}). Found {centers.shape}.")
    else:
        centers = _kmeans_plusplus(x, w, k, rng)
    labels = np.zeros(n, dtype=np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        new = np.argmax(x @ centers.T, axis=1).astype(np.int64)
        sums = np.zeros_like(centers)
        np.add.at(sums, new, x * w[:, None].astype(np.float32))
        live = np.linalg.norm(sums, axis=1) > 0
        centers[live] = normalize_rows(sums[live])
        if it > 1 and np.array_equal(new, labels):
            break
        labels = new
    masses = np.bincount(labels, weights=w, minlength=k).astype(np.float64)
    return KMeansResult(centers, labels, masses, it)


def _kmeans_plusplus(
    x: npt.NDArray[np.float32], w: npt.NDArray[np.float64], k: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    n = x.shape[0]
    p = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
    centers = [x[int(rng.choice(n, p=p))]]
    d2 = np.maximum(0.0, 2.0 - 2.0 * (x @ centers[0]))
    for _ in range(1, k):
        score = d2 * w
        total = score.sum()
        idx = int(rng.choice(n, p=score / total)) if total > 0 else int(rng.integers(n))
        centers.append(x[idx])
        d2 = np.minimum(d2, np.maximum(0.0, 2.0 - 2.0 * (x @ x[idx])))
    return np.stack(centers).astype(np.float32)
