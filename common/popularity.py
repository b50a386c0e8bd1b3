"""Item popularity as a ranking prior, from exact or DP (Gaussian-noised) counts.

A DP count release adds Gaussian noise of a known standard deviation to every catalogue
item's count. Ranking by the raw noisy counts mixes the long tail (true count 0-2, by far the
most items) with items of real but modest popularity. :func:`popularity_prior` denoises the
counts by **empirical Bayes** (post-processing of the release, so it costs no privacy):

1. the distribution of true counts is estimated from the noisy counts themselves by the
   nonparametric maximum-likelihood estimator (Kiefer-Wolfowitz, EM on a grid of counts), with
   the release's known noise;
2. each item's prior is the posterior mean of ``log(1 + true count)`` given its noisy count.

Items whose noisy count is within the noise get nearly the same value (the tail mean), so the
profile score decides among them; items clearly above the noise keep their order. With
``noise_std == 0`` (exact counts) the prior is ``log(1 + count)``.

The prior is standardised over the **whole catalogue** (:func:`standardised_prior`), not per
candidate list: a prior the noise has flattened then contributes little instead of having
its small differences blown up to unit variance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = ["popularity_prior", "standardised_prior"]

#: EM iterations of the grid estimator (converged well before this on the data measured).
_EM_ITERATIONS = 200


def _grid(top: float) -> npt.NDArray[np.float64]:
    ints = np.arange(0.0, min(50.0, math.ceil(top)) + 1.0)
    if top <= 50.0:
        return ints
    return np.unique(np.concatenate([ints, np.geomspace(50.0, top, 60)]))


def popularity_prior(counts: npt.ArrayLike, noise_std: float) -> npt.NDArray[np.float64]:
    """Posterior mean of ``log(1 + true count)`` per item given counts released with
    Gaussian noise of standard deviation ``noise_std`` (0: exact counts).

    Raises:
        ConfigError: non-finite counts, or a negative or non-finite ``noise_std``.
    """
    y = np.asarray(counts, dtype=np.float64).ravel()
    if not np.all(np.isfinite(y)):
        raise ConfigError("popularity counts must be finite.")
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ConfigError(f"`noise_std` must be a finite number >= 0. Found {noise_std!r}.")
    if noise_std == 0 or len(y) == 0:
        out: npt.NDArray[np.float64] = np.log1p(np.maximum(y, 0.0))
        return out
    grid = _grid(max(float(y.max()), 1.0) + 2.0 * noise_std)
    # bin the observations (1/10 of the noise) so the EM is over bins, not items
    width = noise_std / 10.0
    bins = np.round(y / width)
    centres, inverse, weight = np.unique(bins, return_inverse=True, return_counts=True)
    obs = centres * width
    lik = np.exp(-0.5 * ((obs[:, None] - grid[None, :]) / noise_std) ** 2)
    lik += 1e-300
    pi = np.full(len(grid), 1.0 / len(grid))
    w = weight / weight.sum()
    for _ in range(_EM_ITERATIONS):
        post = lik * pi
        post /= post.sum(axis=1, keepdims=True)
        pi = w @ post
    post = lik * pi
    post /= post.sum(axis=1, keepdims=True)
    per_bin = post @ np.log1p(grid)
    prior: npt.NDArray[np.float64] = per_bin[inverse]
    return prior


def standardised_prior(counts: npt.ArrayLike, noise_std: float) -> npt.NDArray[np.float64]:
    """:func:`popularity_prior` standardised over the whole catalogue (mean 0, sd 1; all
    zeros when the prior is constant)."""
    p = popularity_prior(counts, noise_std)
    sd = float(p.std())
    out: npt.NDArray[np.float64] = (p - p.mean()) / sd if sd > 0 else np.zeros_like(p)
    return out
