"""The empirical-Bayes popularity prior from exact or DP counts."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from common.popularity import popularity_prior, standardised_prior


def test_exact_counts_give_log1p() -> None:
    c = np.array([0.0, 1.0, 5.0, 200.0])
    assert np.allclose(popularity_prior(c, 0.0), np.log1p(c))
    s = standardised_prior(c, 0.0)
    assert s.mean() == pytest.approx(0.0, abs=1e-12) and s.std() == pytest.approx(1.0)
    assert np.all(standardised_prior(np.ones(4), 0.0) == 0.0)


def test_denoised_prior_is_monotone_and_closer_to_the_truth() -> None:
    """Power-law counts (most items near 0) plus Gaussian noise: the posterior mean of
    log(1 + count) is monotone in the noisy count and has a smaller error than the plug-in
    log(1 + max(noisy, 0))."""
    rng = np.random.default_rng(0)
    true = np.floor(rng.pareto(1.2, 5000) * 2.0)
    noise = 8.0
    noisy = true + rng.normal(0.0, noise, len(true))
    post = popularity_prior(noisy, noise)
    order = np.argsort(noisy)
    assert np.all(np.diff(post[order]) >= -1e-9)
    truth = np.log1p(true)
    plug_in = np.log1p(np.maximum(noisy, 0.0))
    assert np.mean((post - truth) ** 2) < 0.5 * np.mean((plug_in - truth) ** 2)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="noise_std"):
        popularity_prior([1.0, 2.0], -1.0)
    with pytest.raises(ConfigError, match="finite"):
        popularity_prior([1.0, float("nan")], 1.0)
