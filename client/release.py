"""The device's DP release of leaf sums (and nothing else).

One round, on the device:

1. every stored event's text is embedded (cache first), passed through the public adapter if
   any, projected with the public projection and clipped to ``clipping_norm``;
2. each event gets its behaviour weight (type x dwell x rating, **no recency decay**: a
   reference time taken from the device's own data would let one new event change every
   other event's weight), capped at ``max_weight``;
3. each event goes to the nearest public centroid, or to the unassigned row
   (:func:`client.local_clustering.assign_public`); per row the weighted sum is formed;
4. the whole release is clipped to ``user_clipping_norm`` (bounds one device's influence; a
   projection onto a ball, so event-level sensitivity is unchanged);
5. the budget is checked including this release; if it would be exceeded nothing is released
   (:class:`~common.errors.BudgetExceededError`); otherwise the ledger entry and the noisy
   release are written in one transaction **before** anything leaves the device;
6. Gaussian noise is added: the full ``z * Delta`` in local mode, the share
   ``z * Delta / sqrt(min_cohort)`` under secure aggregation.

The round's parameters, their checks, the ledger entry and the noise share are defined once,
for the server and the device, in :class:`common.round_config.RoundConfig`.

Sensitivity (event level, add/remove one event): ``Delta = clipping_norm * max_weight`` in
L2 over the whole ``(k + 1, d)`` release, because one event lands in exactly one row, with a
vector of norm <= ``clipping_norm`` and a weight <= ``max_weight``; the partition comes from
public centroids only. Selection rules that depend on other events (a "most recent N" cap,
quality flags computed from the device's statistics) are deliberately not applied: each
would let one event change other events' contributions.

A repeated request for the same round and hierarchy version gets the same stored noisy
release back (post-processing, no new spend), but only if every mechanism parameter matches
(:func:`mechanism_digest`); a request for the same round and version under other parameters
is refused: never re-sent (a secure-aggregation share in the clear, a share sized for another
cohort), never released a second time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from client.encoder import TextEncoder, encode_cached
from client.local_clustering import assign_public
from client.release_math import count_sum, histogram_sum, integer_share, leaf_sum
from client.store import EventStore
from common.errors import RefusalCode, ReleaseRefusedError
from common.events import Event
from common.features import WeightingConfig, weights_for_events
from common.privacy import (
    PrivacyBudget,
    check_budget,
    clip_rows,
    clip_total,
    gaussian_noise,
)
from common.projection import PublicProjection
from common.records import ReleaseTask
from common.round_config import RoundConfig

__all__ = [
    "RELEASE_WEIGHTING",
    "ReleaseOutcome",
    "ReleaseParams",
    "ReleaseRefusedError",
    "checked_centroids",
    "checked_groups",
    "count_release",
    "event_vectors",
    "histogram_release",
    "leaf_sums",
    "mechanism_digest",
    "nearest_group",
    "public_projection",
    "release_key",
    "release_round",
]

#: Behaviour weights of released events: the default weights without recency decay.
RELEASE_WEIGHTING = WeightingConfig(half_life_days=None)

_STATE_RELEASE = "release:{round}:{version}"
_STATE_AUX = "release-{task}:{round}:{version}"


#: The round's parameters as the device reads them: the shared, typed round config (parsed and
#: checked, fail closed, by :meth:`~common.round_config.RoundConfig.from_record`). The name is
#: kept for callers of this module.
ReleaseParams = RoundConfig


@dataclass(frozen=True)
class ReleaseOutcome:
    """What the device sends (``sums``) and what it recorded.

    Attributes:
        sums: the noisy release, shape ``(k + 1, d)``, float32.
        epsilon_spent: the device's event-level epsilon after this release.
        reused: True when a stored release of the same round was sent again.
    """

    sums: npt.NDArray[np.float32]
    epsilon_spent: float
    reused: bool = False


def leaf_sums(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    assignment: npt.NDArray[np.int64],
    num_rows: int,
    *,
    clipping_norm: float,
    max_weight: float,
) -> npt.NDArray[np.float32]:
    """Per-row weighted sums of clipped vectors (no noise).

    Args:
        vectors: shape ``(n, d)``.
        weights: shape ``(n,)``, clipped to ``[0, max_weight]`` here.
        assignment: row of each vector, shape ``(n,)``, values in ``[0, num_rows)``.

    Returns:
        float32, shape ``(num_rows, d)``.
    """
    x = clip_rows(vectors, clipping_norm)
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, max_weight).astype(np.float32)
    out = np.zeros((num_rows, x.shape[1]), dtype=np.float32)
    if x.shape[0]:
        np.add.at(out, np.asarray(assignment, dtype=np.int64), x * w[:, None])
    return out


def event_vectors(
    events: list[Event],
    store: EventStore,
    encoder: TextEncoder,
    projection: PublicProjection,
    adapter: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None = None,
) -> npt.NDArray[np.float32]:
    """Unit vectors of the events in the public projected space, shape ``(n, d)``."""
    if not events:
        return np.zeros((0, projection.output_dim), dtype=np.float32)
    emb = encode_cached(encoder, store.embeddings, [e.text for e in events])
    if adapter is not None:
        emb = adapter(emb)
    return projection(emb)


def release_round(
    store: EventStore,
    params: ReleaseParams,
    centroids: npt.NDArray[np.float32],
    *,
    encoder: TextEncoder,
    budget: PrivacyBudget | None,
    rng: np.random.Generator,
    adapter: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None = None,
    weighting: WeightingConfig = RELEASE_WEIGHTING,
    checkpoint: Callable[[str], None] | None = None,
) -> ReleaseOutcome:
    """Computes, accounts for and noises this device's release for one round.

    Args:
        budget: the device's lifetime event-level budget; ``None`` only for a device that
            allows non-private releases (the spend is still recorded).
        checkpoint: called with ``"before_ledger"`` and ``"after_ledger"`` (fault-injection
            tests kill the process there).

    Raises:
        ReleaseRefusedError: the projection or centroids disagree with the round config.
        BudgetExceededError: the release would exceed ``budget``; nothing was recorded.
    """
    if budget is None and not params.non_private:
        raise ReleaseRefusedError("a DP release needs the device's privacy budget.")
    projection = public_projection(params, encoder.dim, encoder.model_id)
    c = checked_centroids(params, centroids)
    key = release_key(params)

    def compute() -> npt.NDArray[np.float64]:
        events = store.events()
        vectors = event_vectors(events, store, encoder, projection, adapter)
        weights = (
            weights_for_events(events, reference_time=0.0, config=weighting)
            if events
            else np.zeros(0)
        )
        assignment = assign_public(vectors, c, residual_threshold=params.residual_threshold)
        n = len(events)
        # this device as a population of one (the batched engine calls the same function)
        return leaf_sum(
            vectors,
            assignment,
            np.arange(n),
            weights,
            np.zeros(n, dtype=np.int64),
            1,
            c.shape[0] + 1,
            clipping_norm=params.clipping_norm,
            max_weight=min(params.max_weight, weighting.max_weight),
            user_clipping_norm=params.user_clipping_norm,
        ).total

    return _finalize(
        store,
        params,
        key,
        (c.shape[0] + 1, params.projection_dim),
        compute,
        budget,
        rng,
        checkpoint,
    )


def public_projection(params: ReleaseParams, encoder_dim: int, encoder_id: str) -> PublicProjection:
    """The round's public projection, refused when its fingerprint differs from the server's:
    another encoder (the fingerprint covers its id) or another projection would put the
    device and the server in different spaces."""
    projection = PublicProjection(
        encoder_dim, params.projection_dim, params.projection_seed, encoder_id
    )
    if projection.fingerprint != params.projection_fingerprint:
        raise ReleaseRefusedError(
            f"the server's projection fingerprint {params.projection_fingerprint!r} differs from "
            f"this device's {projection.fingerprint!r} (encoder {encoder_id!r}, {encoder_dim}-d, "
            f"seed {params.projection_seed}): the run uses another encoder or projection; "
            "refusing to release.",
            RefusalCode.ENCODER,
        )
    return projection


def checked_centroids(
    params: ReleaseParams, centroids: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """The round's public centroids, refused unless finite with shape ``(k >= 1, d)``."""
    c = np.asarray(centroids, dtype=np.float32)
    if (
        c.ndim != 2
        or c.shape[1] != params.projection_dim
        or c.shape[0] < 1
        or not np.isfinite(c).all()
    ):
        raise ReleaseRefusedError(
            f"centroids must be finite with shape (k, {params.projection_dim}). Found {c.shape}."
        )
    return c


def checked_groups(
    params: ReleaseParams, group_centroids: npt.NDArray[np.floating], top_k: int
) -> npt.NDArray[np.float32]:
    """The histogram's broad-interest centroids, refused unless ``(groups, d)`` with
    ``1 <= top_k <= groups``."""
    g = np.asarray(group_centroids, dtype=np.float32)
    if g.ndim != 2 or g.shape[1] != params.projection_dim or not 1 <= top_k <= g.shape[0]:
        raise ReleaseRefusedError(
            f"histogram needs (groups, {params.projection_dim}) centroids and 1 <= k <= groups."
        )
    return g


def release_key(params: ReleaseParams) -> str:
    """The device state key of a release: its task, round and hierarchy version."""
    if params.task is ReleaseTask.LEAF_SUMS:
        return _STATE_RELEASE.format(round=params.server_round, version=params.hierarchy_version)
    return _STATE_AUX.format(
        task=params.task.value, round=params.server_round, version=params.hierarchy_version
    )


_MECHANISM_SUFFIX = ":mechanism"


def mechanism_digest(params: ReleaseParams, shape: tuple[int, ...]) -> str:
    """A digest of every parameter of a release's mechanism (the whole round config and the
    release's shape): a stored release answers only a request with the same digest."""
    import hashlib
    import json

    doc = json.dumps({"config": params.to_record(), "shape": list(shape)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def _finalize(
    store: EventStore,
    params: ReleaseParams,
    key: str,
    shape: tuple[int, ...],
    compute: Callable[[], npt.NDArray[np.float64]],
    budget: PrivacyBudget | None,
    rng: np.random.Generator,
    checkpoint: Callable[[str], None] | None,
) -> ReleaseOutcome:
    """The common tail of every release: replay a stored one, else check the budget, compute,
    clip to the user bound, noise, and commit the ledger entry with the release before it is
    returned for sending."""
    digest = mechanism_digest(params, shape)
    stored = store.get_state(key)
    if stored is not None:
        # a stored release is re-sent only to the very request it answered: every mechanism
        # parameter (mode, noise, cohort, delta, shape, ...) must match; otherwise it is
        # neither re-sent (a secagg share in the clear, a share sized for another cohort) nor
        # released again (a second spend under the same round and version)
        if store.get_state(key + _MECHANISM_SUFFIX) != digest.encode():
            raise ReleaseRefusedError(
                f"this device already released for round {params.server_round} (hierarchy "
                f"version {params.hierarchy_version}, {params.task.value}) under other mechanism "
                "parameters; refusing to re-send or to release again.",
                RefusalCode.REPLAY,
            )
        sums = np.load(io.BytesIO(stored), allow_pickle=False)
        spent = _spent(store, budget) if budget is not None else math.inf
        return ReleaseOutcome(sums.astype(np.float32), spent, reused=True)
    # recorded in the device's own unit (its budget's scope), whatever the round's unit
    entry = params.ledger_entry(budget.scope if budget is not None else params.unit)
    # raises BudgetExceededError before anything is computed or recorded
    epsilon_after = (
        check_budget(store.ledger(), [entry], budget) if budget is not None else math.inf
    )
    noiseless = clip_total(compute(), params.user_clipping_norm)
    if params.discrete:
        # integer noise: the share is what the secure sum adds exactly (common/privacy/discrete.py)
        noisy = integer_share(params, noiseless, rng)
    else:
        noisy = (noiseless + gaussian_noise(noiseless.shape, params.noise_std, rng)).astype(
            np.float32
        )
    buf = io.BytesIO()
    np.save(buf, noisy, allow_pickle=False)
    if checkpoint is not None:
        checkpoint("before_ledger")
    with store.transaction():
        store.append_ledger(entry, in_transaction=True)
        store.set_state(key, buf.getvalue(), in_transaction=True)
        store.set_state(key + _MECHANISM_SUFFIX, digest.encode(), in_transaction=True)
    if checkpoint is not None:
        checkpoint("after_ledger")
    return ReleaseOutcome(noisy, epsilon_after)


def count_release(
    store: EventStore,
    params: ReleaseParams,
    catalogue: Sequence[str],
    *,
    budget: PrivacyBudget | None,
    rng: np.random.Generator,
) -> ReleaseOutcome:
    """Item popularity: how many of this device's events touch each public catalogue item.

    Each event adds 1 to at most one count (event-level sensitivity 1); the vector is clipped
    to the user bound; noise as for the leaf sums.

    Args:
        catalogue: the public item ids, in the server's order.
    """
    _check_task(params, ReleaseTask.ITEM_COUNTS)
    key = release_key(params)
    index = {item: i for i, item in enumerate(catalogue)}

    def compute() -> npt.NDArray[np.float64]:
        items = np.fromiter(
            (index.get(e.item_id or "", -1) for e in store.iter_events()), dtype=np.int64
        )
        return count_sum(
            items,
            np.zeros(len(items), dtype=np.int64),
            1,
            len(catalogue),
            user_clipping_norm=params.user_clipping_norm,
        ).total

    return _finalize(store, params, key, (len(catalogue),), compute, budget, rng, None)


def histogram_release(
    store: EventStore,
    params: ReleaseParams,
    group_centroids: npt.NDArray[np.float32],
    *,
    top_k: int,
    encoder: TextEncoder,
    budget: PrivacyBudget | None,
    rng: np.random.Generator,
    adapter: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None = None,
) -> ReleaseOutcome:
    """Population analytics: this device's top-``k`` broad interests as a k-hot vector of L2
    norm 1 (all-zero without events).

    Any two such vectors differ by at most sqrt(2) in L2, whatever the data: event-level
    sensitivity sqrt(2), user-level sensitivity 1.
    """
    _check_task(params, ReleaseTask.HISTOGRAM)
    projection = public_projection(params, encoder.dim, encoder.model_id)
    g = checked_groups(params, group_centroids, top_k)
    key = release_key(params)

    def compute() -> npt.NDArray[np.float64]:
        events = store.events()
        n = len(events)
        if n:
            vectors = event_vectors(events, store, encoder, projection, adapter)
            groups = nearest_group(vectors, g)
            weights = weights_for_events(events, reference_time=0.0, config=RELEASE_WEIGHTING)
        else:
            groups, weights = np.zeros(0, dtype=np.int64), np.zeros(0)
        return histogram_sum(
            groups,
            np.arange(n),
            weights,
            np.zeros(n, dtype=np.int64),
            1,
            g.shape[0],
            top_k=top_k,
            user_clipping_norm=params.user_clipping_norm,
        ).total

    return _finalize(store, params, key, (g.shape[0],), compute, budget, rng, None)


def nearest_group(
    vectors: npt.NDArray[np.float32], group_centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.int64]:
    """Each vector's nearest broad-interest centroid (the histogram's partition; no residual
    row: every event counts for some group)."""
    out: npt.NDArray[np.int64] = np.argmax(vectors @ group_centroids.T, axis=1).astype(np.int64)
    return out


def _check_task(params: ReleaseParams, task: ReleaseTask) -> None:
    if params.task is not task:
        raise ReleaseRefusedError(
            f"expected a {task.value} round. Found task {params.task.value!r}."
        )


def _spent(store: EventStore, budget: PrivacyBudget) -> float:
    from common.privacy import epsilon_of_entries

    return epsilon_of_entries(store.ledger(), delta=budget.delta, scope=budget.scope)
