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

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.kmeans import KMeansResult, weighted_kmeans

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
