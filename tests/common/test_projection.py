"""The public projection: orthonormal, seeded, re-normalised, fingerprinted."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from common.projection import PublicProjection, _portable_normals


def test_orthonormal_columns_and_unit_rows() -> None:
    """W has orthonormal columns; projected rows have norm 1."""
    p = PublicProjection(384, 128, seed=7)
    w = p.matrix.astype(np.float64)
    assert w.shape == (384, 128)
    assert np.allclose(w.T @ w, np.eye(128), atol=1e-5)
    x = np.random.default_rng(0).normal(size=(50, 384))
    y = p(x)
    assert y.shape == (50, 128) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_same_seed_same_matrix_other_seed_other() -> None:
    """Every party rebuilds the same matrix from the seed; the fingerprint tells them apart."""
    a, b, c = (
        PublicProjection(384, 64, 1),
        PublicProjection(384, 64, 1),
        PublicProjection(384, 64, 2),
    )
    assert np.array_equal(a.matrix, b.matrix) and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_portable_generator_is_pinned() -> None:
    """The raw-bit Box-Muller stream is fixed (guards against a silent change of matrix)."""
    z = _portable_normals(123, 4)
    assert np.allclose(z, _portable_normals(123, 4))
    assert abs(float(_portable_normals(1, 200_000).std()) - 1.0) < 0.01


def test_projection_keeps_neighbours() -> None:
    """Cosine similarities survive the projection approximately (JL)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 384))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    near = x + 0.3 * rng.normal(size=x.shape) / np.sqrt(384)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    p = PublicProjection(384, 128, 5)
    before = (x * near).sum(1)
    after = (p(x) * p(near)).sum(1)
    assert np.abs(before - after).max() < 0.1


def test_bad_dimensions() -> None:
    """Impossible shapes are configuration errors naming the field."""
    with pytest.raises(ConfigError, match="output_dim"):
        PublicProjection(16, 32)
    with pytest.raises(ConfigError, match="columns"):
        PublicProjection(384, 8)(np.zeros((2, 10)))
