"""The arithmetic of a release, vectorised over users: a device is a population of one.

Every function here takes a **population** of users (``num_users``; each event names its
user) and returns the **sum over users of each user's clipped release**, together with the
per-user norms it clipped. A device calls them with one user and gets its own clipped
release (:mod:`client.release`); the batched simulation engine calls them with a shard of
thousands of users and gets the shard's sum (:mod:`client.shard`). One code path, so the two
engines release the same numbers (tests/simulations/test_engines.py checks it).

Events refer to **texts** (rows of ``text_vectors``) by index: many users share the texts of
one catalogue, so the per-text work (projection, assignment to the nearest public centroid,
per-row clipping) is done once per distinct text, not once per event. A device passes its
own events' vectors with ``event_text = arange(n)``.

Per user (the device's release, :mod:`client.release` for the privacy argument):

1. each text vector is clipped to ``clipping_norm`` and each event weight to
   ``[0, max_weight]``;
2. the user's release ``R_u`` has one row per public centroid (plus the unassigned row); row
   ``r`` is ``sum of w_e x_e`` over the user's events assigned to ``r``;
3. ``R_u`` is scaled to Frobenius norm at most ``user_clipping_norm``
   (:func:`common.privacy.clip_total`'s projection onto the ball, with the same 1e-6 margin).

Memory is bounded by ``chunk_events`` rows of width ``d`` at a time, whatever the population.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, RefusalCode, ReleaseRefusedError
from common.privacy.discrete import conditional_round, sample_discrete_gaussian
from common.privacy.ledger import Scope
from common.round_config import RoundConfig

__all__ = [
    "CLIP_MARGIN",
    "UserSum",
    "count_sum",
    "histogram_sum",
    "integer_share",
    "integer_shares_sum",
    "leaf_sum",
    "user_scales",
]

#: The margin every clip keeps under its bound (float32 rounding could otherwise leave a norm
#: a hair above it): the same factor as :func:`common.privacy.clip_total`.
CLIP_MARGIN = 1 - 1e-6

#: Events whose weighted vectors are formed at once (``chunk x d`` float64: 64 MiB at d = 128).
_CHUNK_EVENTS = 65_536


class UserSum:
    """The sum over users of their clipped releases.

    Attributes:
        total: float64, the sum of the clipped per-user releases.
        norms: each user's release norm **before** the user clip, shape ``(num_users,)``.
        scales: the factor each user's release was multiplied by (1 when under the bound).
    """

    __slots__ = ("norms", "scales", "total")

    def __init__(
        self,
        total: npt.NDArray[np.float64],
        norms: npt.NDArray[np.float64],
        scales: npt.NDArray[np.float64],
    ) -> None:
        self.total = total
        self.norms = norms
        self.scales = scales


def user_scales(norms: npt.NDArray[np.float64], bound: float) -> npt.NDArray[np.float64]:
    """Per user, the factor that projects a release of norm ``norms`` onto the ball of radius
    ``bound`` (1 inside it)."""
    if not (np.isfinite(bound) and bound > 0):
        raise ConfigError(f"`user_clipping_norm` must be > 0. Found {bound!r}.")
    n = np.asarray(norms, dtype=np.float64)
    return np.where(n <= bound, 1.0, bound * CLIP_MARGIN / np.maximum(n, 1e-300))


def _check_events(num_users: int, *columns: npt.NDArray[np.generic]) -> int:
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ConfigError(f"event columns disagree in length: {[len(c) for c in columns]}.")
    if not (isinstance(num_users, (int, np.integer)) and num_users >= 0):
        raise ConfigError(f"`num_users` must be an int >= 0. Found {num_users!r}.")
    return n


def _clip_text_vectors(
    x: npt.NDArray[np.floating], clipping_norm: float
) -> npt.NDArray[np.float64]:
    if not (np.isfinite(clipping_norm) and clipping_norm > 0):
        raise ConfigError(f"`clipping_norm` must be > 0. Found {clipping_norm!r}.")
    a = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = a * np.minimum(
        1.0, clipping_norm * CLIP_MARGIN / np.maximum(norms, 1e-300)
    )
    return out


def leaf_sum(
    text_vectors: npt.NDArray[np.floating],
    text_row: npt.NDArray[np.integer],
    event_text: npt.NDArray[np.integer],
    event_weight: npt.NDArray[np.floating],
    event_user: npt.NDArray[np.integer],
    num_users: int,
    num_rows: int,
    *,
    clipping_norm: float,
    max_weight: float,
    user_clipping_norm: float,
) -> UserSum:
    """The leaf-sum release summed over users.

    Args:
        text_vectors: the distinct texts' unit vectors in the public space, ``(T, d)``.
        text_row: each text's release row (its nearest public centroid, or the unassigned row),
            ``(T,)``, values in ``[0, num_rows)``.
        event_text / event_weight / event_user: per event, ``(n,)``.

    Returns:
        ``total`` of shape ``(num_rows, d)``.
    """
    n = _check_events(num_users, event_text, event_weight, event_user)
    x = _clip_text_vectors(text_vectors, clipping_norm)
    d = x.shape[1]
    rows = np.asarray(text_row, dtype=np.int64)
    if rows.shape != (x.shape[0],) or (rows.size and (rows.min() < 0 or rows.max() >= num_rows)):
        raise ConfigError(
            f"`text_row` must give each of the {x.shape[0]} texts a row in [0, {num_rows})."
        )
    t = np.asarray(event_text, dtype=np.int64)
    u = np.asarray(event_user, dtype=np.int64)
    w = np.clip(np.asarray(event_weight, dtype=np.float64), 0.0, max_weight)
    r = rows[t]
    # per (user, row) pair: the row of the user's release; its squared norm adds to the user's
    pair = u * num_rows + r
    order = np.argsort(pair, kind="stable")
    sq = np.zeros(num_users, dtype=np.float64)
    start = 0
    while start < n:
        stop = min(n, start + _CHUNK_EVENTS)
        # never split a pair across chunks: extend to the end of the last pair
        while stop < n and pair[order[stop]] == pair[order[stop - 1]]:
            stop += 1
        idx = order[start:stop]
        keys = pair[idx]
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        rows_of_pairs = np.add.reduceat(x[t[idx]] * w[idx, None], bounds, axis=0)
        np.add.at(sq, keys[bounds] // num_rows, np.einsum("ij,ij->i", rows_of_pairs, rows_of_pairs))
        start = stop
    norms = np.sqrt(sq)
    scales = user_scales(norms, user_clipping_norm)
    # the sum: per (row, text) the total scaled weight, times the text's vector
    coef = np.bincount(r * x.shape[0] + t, weights=w * scales[u], minlength=num_rows * x.shape[0])
    total = coef.reshape(num_rows, x.shape[0]) @ x if n else np.zeros((num_rows, d))
    return UserSum(np.asarray(total, dtype=np.float64), norms, scales)


def histogram_sum(
    text_group: npt.NDArray[np.integer],
    event_text: npt.NDArray[np.integer],
    event_weight: npt.NDArray[np.floating],
    event_user: npt.NDArray[np.integer],
    num_users: int,
    num_groups: int,
    *,
    top_k: int,
    user_clipping_norm: float,
) -> UserSum:
    """The population-histogram release summed over users: each user's top-``top_k`` groups by
    event weight, as a k-hot vector of norm 1 (all-zero for a user without events).

    Args:
        text_group: each text's nearest group centroid, ``(T,)``.
    """
    n = _check_events(num_users, event_text, event_weight, event_user)
    if not 1 <= top_k <= num_groups:
        raise ConfigError(f"`top_k` must be in [1, {num_groups}]. Found {top_k!r}.")
    g = np.asarray(text_group, dtype=np.int64)[np.asarray(event_text, dtype=np.int64)]
    u = np.asarray(event_user, dtype=np.int64)
    active = np.bincount(u, minlength=num_users) > 0
    total = np.zeros(num_groups, dtype=np.float64)
    norms: npt.NDArray[np.float64] = np.where(active, 1.0, 0.0).astype(np.float64)
    scales = user_scales(norms, user_clipping_norm)
    block = max(1, _CHUNK_EVENTS // max(num_groups, 1))
    w = np.asarray(event_weight, dtype=np.float64)
    for lo in range(0, num_users, block):
        hi = min(num_users, lo + block)
        sel = (u >= lo) & (u < hi) if n else np.zeros(0, dtype=bool)
        mass = np.bincount(
            (u[sel] - lo) * num_groups + g[sel], weights=w[sel], minlength=(hi - lo) * num_groups
        ).reshape(hi - lo, num_groups)
        top = np.argsort(-mass, axis=1)[:, :top_k]
        keep = active[lo:hi]
        value = scales[lo:hi][keep] / np.sqrt(top_k)
        np.add.at(total, top[keep], np.broadcast_to(value[:, None], (int(keep.sum()), top_k)))
    return UserSum(total, norms, scales)


def count_sum(
    event_item: npt.NDArray[np.integer],
    event_user: npt.NDArray[np.integer],
    num_users: int,
    num_items: int,
    *,
    user_clipping_norm: float,
) -> UserSum:
    """The item-popularity release summed over users: per user, how many of its events touch
    each catalogue item (``event_item`` -1: not in the catalogue), clipped to the user bound."""
    _check_events(num_users, event_item, event_user)
    i = np.asarray(event_item, dtype=np.int64)
    u = np.asarray(event_user, dtype=np.int64)
    known = i >= 0
    keys, counts = np.unique(u[known] * num_items + i[known], return_counts=True)
    users, items = keys // num_items, keys % num_items
    c = counts.astype(np.float64)
    norms = np.sqrt(np.bincount(users, weights=c * c, minlength=num_users))
    scales = user_scales(norms, user_clipping_norm)
    total = np.bincount(items, weights=c * scales[users], minlength=num_items).astype(np.float64)
    return UserSum(total, norms.astype(np.float64), scales)


def _round_unbiased(x: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    low = np.floor(x)
    out: npt.NDArray[np.int64] = (low + (rng.random(x.shape) < (x - low))).astype(np.int64)
    return out


def integer_share(
    params: RoundConfig, release: npt.NDArray[np.floating], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """One device's integer share of a release under integer noise
    (:mod:`common.privacy.discrete`): scaled by ``1 / granularity``, rounded (at user level
    conditionally to the norm ``Delta_2``, at event level coordinate by coordinate), plus its
    ``N_Z(0, sigma^2)`` noise; float32 (exact: the range is below 2^24).

    Raises:
        ReleaseRefusedError: the release's size is not the announced ``release_dim``, or the
            share left the integer range (probability below 1e-50; nothing is sent).
    """
    x = np.asarray(release, dtype=np.float64)
    if x.size != params.release_dim:
        raise ReleaseRefusedError(
            f"the release has {x.size} coordinates, the round announced {params.release_dim}."
        )
    scaled = x.ravel() / params.granularity
    ints = (
        conditional_round(scaled, params.integer_sensitivity_at(Scope.USER), rng)
        if params.unit is Scope.USER
        else _round_unbiased(scaled, rng)
    )
    share = ints + sample_discrete_gaussian(params.integer_sigma, ints.shape, rng)
    if share.size and int(np.abs(share).max()) > params.integer_range:
        raise ReleaseRefusedError(
            "the integer share left its range; refusing to send it.", RefusalCode.INTERNAL
        )
    return share.reshape(x.shape).astype(np.float32)


def integer_shares_sum(
    params: RoundConfig, total: npt.NDArray[np.floating], m: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """The batched engine's sum of ``m`` devices' integer shares, whose releases sum to
    ``total``: the scaled sum rounded once, plus one ``N_Z(0, m sigma^2)`` draw per coordinate.

    Two simplifications, both documented: the ``m`` independent roundings (variance below
    ``m / 4`` per coordinate) are one rounding of the sum, below ``1 / (4 sigma^2)`` (~1e-7 at
    the calibrated sigma) of the noise variance; the sum of ``m`` discrete Gaussians is drawn
    as the discrete Gaussian with the summed variance, to which it is close within KLS21's
    ``tau`` (0 to float precision at these sigmas)."""
    scaled = np.asarray(total, dtype=np.float64) / params.granularity
    ints = _round_unbiased(scaled, rng)
    noise = sample_discrete_gaussian(params.integer_sigma * math.sqrt(m), ints.shape, rng)
    out: npt.NDArray[np.float64] = (ints + noise).astype(np.float64)
    return out
