"""Clustering on the device.

Two different jobs, kept apart on purpose:

- :func:`assign_public` decides **what is released**: each event goes to the nearest of the
  *public* centroids the server broadcast (a federated DP-Lloyd step), or to the "unassigned"
  row when no centroid is close. The partition depends only on public data and on the event
  itself, so adding or removing one event moves only that event's own contribution: this is
  what the sensitivity analysis of :mod:`client.release` relies on.
- :func:`weighted_kmeans` clusters the device's own data for its profile or to look at
  candidate interests. A partition computed from private data must never define a release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.projection import normalize_rows

__all__ = ["KMeansResult", "assign_public", "weighted_kmeans"]


def assign_public(
    vectors: npt.NDArray[np.float32],
    centroids: npt.NDArray[np.float32],
    *,
    residual_threshold: float | None = None,
) -> npt.NDArray[np.int64]:
    """Nearest public centroid by cosine similarity.

    Args:
        vectors: unit event vectors, shape ``(n, d)``.
        centroids: public unit centroids, shape ``(k, d)``.
        residual_threshold: events whose best cosine is below it go to row ``k`` (the
            unassigned bucket); ``None`` disables the bucket.

    Returns:
        int64 array of shape ``(n,)`` with values in ``[0, k]``.
    """
    v = np.asarray(vectors, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    if v.ndim != 2 or c.ndim != 2 or v.shape[1] != c.shape[1]:
        raise ConfigError(
            f"`vectors` (n, d) and `centroids` (k, d) must agree on d. Found {v.shape} and {c.shape}."
        )
    if c.shape[0] == 0:
        raise ConfigError("`centroids` must have at least one row.")
    if v.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    sims = v @ c.T
    best: npt.NDArray[np.int64] = np.argmax(sims, axis=1).astype(np.int64)
    if residual_threshold is not None:
        best[sims[np.arange(len(best)), best] < residual_threshold] = c.shape[0]
    return best


@dataclass(frozen=True)
class KMeansResult:
    """Spherical weighted k-means on one device.

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
