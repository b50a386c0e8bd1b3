"""On-device clustering: public assignment and private k-means."""

from __future__ import annotations

import numpy as np
import pytest

from client.local_clustering import assign_public, weighted_kmeans
from common.errors import ConfigError
from common.projection import normalize_rows


def test_assign_public_nearest_and_residual() -> None:
    """Events go to the nearest centroid; far-off events go to the unassigned row k."""
    c = np.eye(3, dtype=np.float32)
    v = normalize_rows(np.array([[1, 0.1, 0], [0, 0, 1], [-1, -1, -1]], dtype=np.float32))
    assert assign_public(v, c).tolist() == [0, 2, 0] or assign_public(v, c)[:2].tolist() == [0, 2]
    assert assign_public(v, c, residual_threshold=0.2).tolist() == [0, 2, 3]
    with pytest.raises(ConfigError, match="agree on d"):
        assign_public(v, np.eye(4, dtype=np.float32))


def test_one_event_moves_only_its_own_assignment() -> None:
    """The public partition of an event does not depend on the other events."""
    rng = np.random.default_rng(0)
    c = normalize_rows(rng.normal(size=(5, 16)).astype(np.float32))
    v = normalize_rows(rng.normal(size=(30, 16)).astype(np.float32))
    full = assign_public(v, c, residual_threshold=0.1)
    without = assign_public(np.delete(v, 7, axis=0), c, residual_threshold=0.1)
    assert np.array_equal(np.delete(full, 7), without)


def test_weighted_kmeans_finds_weighted_clusters() -> None:
    """Two tight clusters are found; masses are the summed weights."""
    rng = np.random.default_rng(1)
    a = normalize_rows(np.eye(8)[0] + 0.05 * rng.normal(size=(20, 8)))
    b = normalize_rows(np.eye(8)[1] + 0.05 * rng.normal(size=(10, 8)))
    x = np.vstack([a, b]).astype(np.float32)
    w = np.concatenate([np.full(20, 0.5), np.full(10, 2.0)])
    km = weighted_kmeans(x, w, 2, rng=np.random.default_rng(2))
    assert len(set(km.labels_[:20])) == 1 and len(set(km.labels_[20:])) == 1
    assert sorted(km.masses_.tolist()) == pytest.approx([10.0, 20.0])
    with pytest.raises(ConfigError, match="k"):
        weighted_kmeans(x, w, 0, rng=np.random.default_rng(0))
