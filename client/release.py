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

Sensitivity (event level, add/remove one event): ``Delta = clipping_norm * max_weight`` in
L2 over the whole ``(k + 1, d)`` release, because one event lands in exactly one row, with a
vector of norm <= ``clipping_norm`` and a weight <= ``max_weight``; the partition comes from
public centroids only. Selection rules that depend on other events (a "most recent N" cap,
quality flags computed from the device's statistics) are deliberately not applied: each
would let one event change other events' contributions.

A repeated request for the same round and hierarchy version gets the same stored noisy
release back (post-processing, no new spend).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from client.encoder import TextEncoder, encode_cached
from client.local_clustering import assign_public
from client.store import EventStore
from common.errors import ConfigError
from common.events import Event
from common.features import WeightingConfig, weights_for_events
from common.privacy import (
    LedgerEntry,
    Mechanism,
    PrivacyBudget,
    Scope,
    check_budget,
    clip_rows,
    clip_total,
    gaussian_noise,
)
from common.projection import PublicProjection
from common.records import TASK_SENSITIVITY, ReleaseMode, ReleaseTask, RoundKeys

__all__ = [
    "RELEASE_WEIGHTING",
    "ReleaseOutcome",
    "ReleaseParams",
    "ReleaseRefusedError",
    "count_release",
    "event_vectors",
    "histogram_release",
    "leaf_sums",
    "release_round",
]

#: Behaviour weights of released events: the default weights without recency decay.
RELEASE_WEIGHTING = WeightingConfig(half_life_days=None)

_STATE_RELEASE = "release:{round}:{version}"
_STATE_AUX = "release-{task}:{round}:{version}"


class ReleaseRefusedError(ConfigError):
    """The round's parameters failed the device's checks; nothing was released."""


@dataclass(frozen=True)
class ReleaseParams:
    """A round's release parameters as the device reads them from the server's config.

    The device re-derives what it can and refuses (fails closed) on anything inconsistent:
    a noise std below what ``noise_multiplier`` and the sensitivity require, a cohort
    assumption under 2 in secagg mode, a projection whose fingerprint differs from its own.
    """

    server_round: int
    hierarchy_version: int
    mode: ReleaseMode
    clipping_norm: float
    max_weight: float
    noise_multiplier: float
    noise_std: float
    min_cohort: int
    user_clipping_norm: float
    residual_threshold: float
    projection_seed: int
    projection_dim: int
    projection_fingerprint: str
    delta: float
    task: ReleaseTask = ReleaseTask.LEAF_SUMS

    @property
    def sensitivity(self) -> float:
        """Event-level L2 sensitivity of this task's release (see :data:`TASK_SENSITIVITY`)."""
        if self.task is ReleaseTask.LEAF_SUMS:
            return self.clipping_norm * self.max_weight
        return TASK_SENSITIVITY[self.task]

    @property
    def required_noise_std(self) -> float:
        full = self.noise_multiplier * self.sensitivity
        return full if self.mode is ReleaseMode.LOCAL else full / math.sqrt(self.min_cohort)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, allow_no_dp: bool = False) -> ReleaseParams:
        """Parses the round config; raises :class:`ReleaseRefusedError` naming the key.

        A round without noise (``noise-multiplier`` 0) is refused unless this device was
        explicitly configured with ``allow_no_dp`` (simulation only).
        """

        def get(key: str, kind: type) -> Any:
            if key not in cfg:
                raise ReleaseRefusedError(f"round config is missing `{key}`.")
            v: Any = cfg[key]
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise ReleaseRefusedError(
                    f"round config `{key}` must be {kind.__name__}. Found {v!r}."
                )
            if isinstance(v, float) and not math.isfinite(v):
                raise ReleaseRefusedError(f"round config `{key}` must be finite. Found {v!r}.")
            return v

        try:
            task = ReleaseTask(cfg.get(RoundKeys.TASK, ReleaseTask.LEAF_SUMS.value))
        except ValueError:
            raise ReleaseRefusedError(
                f"round config `{RoundKeys.TASK}` must be one of {[t.value for t in ReleaseTask]}. "
                f"Found {cfg.get(RoundKeys.TASK)!r}."
            ) from None
        try:
            mode = ReleaseMode(get(RoundKeys.MODE, str))
        except ValueError:
            raise ReleaseRefusedError(
                f"round config `{RoundKeys.MODE}` must be 'secagg' or 'local'. Found {cfg.get(RoundKeys.MODE)!r}."
            ) from None
        p = cls(
            server_round=get(RoundKeys.SERVER_ROUND, int),
            hierarchy_version=get(RoundKeys.HIERARCHY_VERSION, int),
            mode=mode,
            clipping_norm=get(RoundKeys.CLIPPING_NORM, float),
            max_weight=get(RoundKeys.MAX_WEIGHT, float),
            noise_multiplier=get(RoundKeys.NOISE_MULTIPLIER, float),
            noise_std=get(RoundKeys.NOISE_STD, float),
            min_cohort=get(RoundKeys.MIN_COHORT, int),
            user_clipping_norm=get(RoundKeys.USER_CLIPPING_NORM, float),
            residual_threshold=get(RoundKeys.RESIDUAL_THRESHOLD, float),
            projection_seed=get(RoundKeys.PROJECTION_SEED, int),
            projection_dim=get(RoundKeys.PROJECTION_DIM, int),
            projection_fingerprint=get(RoundKeys.PROJECTION_FINGERPRINT, str),
            delta=get(RoundKeys.DELTA, float),
            task=task,
        )
        p.check(allow_no_dp=allow_no_dp)
        return p

    @property
    def non_private(self) -> bool:
        return self.noise_multiplier == 0

    def check(self, *, allow_no_dp: bool = False) -> None:
        """Fail-closed consistency checks (see the class docstring)."""
        if self.non_private and not allow_no_dp:
            raise ReleaseRefusedError(
                "the round asks for a release without noise (noise-multiplier 0); this device "
                "does not allow non-private releases. Refusing to release."
            )
        for name in ("clipping_norm", "max_weight", "user_clipping_norm"):
            if not getattr(self, name) > 0:
                raise ReleaseRefusedError(f"`{name}` must be > 0. Found {getattr(self, name)!r}.")
        if self.noise_multiplier < 0:
            raise ReleaseRefusedError(
                f"`noise_multiplier` must be >= 0. Found {self.noise_multiplier!r}."
            )
        if self.server_round < 1:
            raise ReleaseRefusedError(f"`server_round` must be >= 1. Found {self.server_round}.")
        if not 0 < self.delta < 1:
            raise ReleaseRefusedError(f"`delta` must be in (0, 1). Found {self.delta!r}.")
        if self.mode is ReleaseMode.SECAGG and self.min_cohort < 2:
            raise ReleaseRefusedError(
                f"secagg mode needs `min_cohort` >= 2. Found {self.min_cohort}."
            )
        if self.noise_std < self.required_noise_std * (1 - 1e-9):
            raise ReleaseRefusedError(
                f"`noise_std` {self.noise_std:.6g} is below the {self.required_noise_std:.6g} that "
                f"noise_multiplier {self.noise_multiplier:g} x sensitivity {self.sensitivity:g} requires "
                f"in {self.mode.value} mode; refusing to release."
            )

    def ledger_entry(self) -> LedgerEntry:
        kinds = {
            ReleaseTask.LEAF_SUMS: Mechanism.GAUSSIAN_SUM,
            ReleaseTask.ITEM_COUNTS: Mechanism.GAUSSIAN_COUNT,
            ReleaseTask.HISTOGRAM: Mechanism.GAUSSIAN_HISTOGRAM,
        }
        return LedgerEntry(
            mechanism=Mechanism.NON_PRIVATE if self.non_private else kinds[self.task],
            noise_multiplier=self.noise_multiplier,
            sensitivity=self.sensitivity,
            server_round=self.server_round,
            scope=Scope.EVENT,
            details={
                "task": self.task.value,
                "mode": self.mode.value,
                "min_cohort": self.min_cohort,
                "noise_std": self.noise_std,
                "hierarchy_version": self.hierarchy_version,
                "user_clipping_norm": self.user_clipping_norm,
            },
        )


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
    projection = PublicProjection(encoder.dim, params.projection_dim, params.projection_seed)
    if projection.fingerprint != params.projection_fingerprint:
        raise ReleaseRefusedError(
            f"the server's projection fingerprint {params.projection_fingerprint!r} differs from "
            f"this device's {projection.fingerprint!r} for seed {params.projection_seed}; refusing to release."
        )
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
    key = _STATE_RELEASE.format(round=params.server_round, version=params.hierarchy_version)

    def compute() -> npt.NDArray[np.float32]:
        events = store.events()
        vectors = event_vectors(events, store, encoder, projection, adapter)
        weights = (
            weights_for_events(events, reference_time=0.0, config=weighting)
            if events
            else np.zeros(0)
        )
        assignment = assign_public(vectors, c, residual_threshold=params.residual_threshold)
        return leaf_sums(
            vectors,
            weights,
            assignment,
            c.shape[0] + 1,
            clipping_norm=params.clipping_norm,
            max_weight=min(params.max_weight, weighting.max_weight),
        )

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


def _finalize(
    store: EventStore,
    params: ReleaseParams,
    key: str,
    shape: tuple[int, ...],
    compute: Callable[[], npt.NDArray[np.float32]],
    budget: PrivacyBudget | None,
    rng: np.random.Generator,
    checkpoint: Callable[[str], None] | None,
) -> ReleaseOutcome:
    """The common tail of every release: replay a stored one, else check the budget, compute,
    clip to the user bound, noise, and commit the ledger entry with the release before it is
    returned for sending."""
    stored = store.get_state(key)
    if stored is not None:
        sums = np.load(io.BytesIO(stored), allow_pickle=False)
        if sums.shape == shape:
            spent = _spent(store, budget) if budget is not None else math.inf
            return ReleaseOutcome(sums.astype(np.float32), spent, reused=True)
    entry = params.ledger_entry()
    # raises BudgetExceededError before anything is computed or recorded
    epsilon_after = (
        check_budget(store.ledger(), [entry], budget) if budget is not None else math.inf
    )
    noiseless = clip_total(compute(), params.user_clipping_norm)
    noisy = (noiseless + gaussian_noise(noiseless.shape, params.noise_std, rng)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, noisy, allow_pickle=False)
    if checkpoint is not None:
        checkpoint("before_ledger")
    with store.transaction():
        store.append_ledger(entry, in_transaction=True)
        store.set_state(key, buf.getvalue(), in_transaction=True)
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
    key = _STATE_AUX.format(
        task=params.task.value, round=params.server_round, version=params.hierarchy_version
    )
    index = {item: i for i, item in enumerate(catalogue)}

    def compute() -> npt.NDArray[np.float32]:
        out = np.zeros(len(catalogue), dtype=np.float32)
        for e in store.iter_events():
            i = index.get(e.item_id or "")
            if i is not None:
                out[i] += 1.0
        return out

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
    projection = PublicProjection(encoder.dim, params.projection_dim, params.projection_seed)
    g = np.asarray(group_centroids, dtype=np.float32)
    if g.ndim != 2 or g.shape[1] != params.projection_dim or not 1 <= top_k <= g.shape[0]:
        raise ReleaseRefusedError(
            f"histogram needs (groups, {params.projection_dim}) centroids and 1 <= k <= groups."
        )
    key = _STATE_AUX.format(
        task=params.task.value, round=params.server_round, version=params.hierarchy_version
    )

    def compute() -> npt.NDArray[np.float32]:
        out = np.zeros(g.shape[0], dtype=np.float32)
        events = store.events()
        if not events:
            return out
        vectors = event_vectors(events, store, encoder, projection, adapter)
        weights = weights_for_events(events, reference_time=0.0, config=RELEASE_WEIGHTING)
        mass = np.bincount(np.argmax(vectors @ g.T, axis=1), weights=weights, minlength=g.shape[0])
        top = np.argsort(-mass)[:top_k]
        out[top] = 1.0 / math.sqrt(top_k)
        return out

    return _finalize(store, params, key, (g.shape[0],), compute, budget, rng, None)


def _check_task(params: ReleaseParams, task: ReleaseTask) -> None:
    if params.task is not task:
        raise ReleaseRefusedError(
            f"expected a {task.value} round. Found task {params.task.value!r}."
        )


def _spent(store: EventStore, budget: PrivacyBudget) -> float:
    from common.privacy import epsilon_of_entries

    return epsilon_of_entries(store.ledger(), delta=budget.delta, scope=budget.scope)
