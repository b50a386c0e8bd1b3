"""Server aggregation: noisy cohort sums -> global leaves (a DP-Lloyd step with memory).

Pure functions over frozen state (``step(state, inputs) -> (new_state, diagnostics)``).

Each round the server receives, per public leaf ``k``, the cohort's noisy weighted sum
``S_k`` (plus the unassigned row) and knows the noise variance per coordinate ``v`` that sum
carries. It keeps a decayed accumulation ``A_k <- gamma A_k + S_k`` with variance
``V_k <- gamma^2 V_k + v`` (post-processing of DP outputs: free), and:

- estimates each leaf's mass from the bias-corrected norm: ``|A_k|^2 - d V_k`` estimates
  ``|signal|^2`` (noise adds ``d V_k`` in expectation), so no counts need to be released
  (releasing only sums cut the noise by sqrt(2) at epsilon <= 1 in measurements);
- calls a leaf *live* when that signal energy is significant: ``(|A_k|^2 - d V_k) /
  (sqrt(2 d) V_k) >= live_z`` (a z-score against the noise energy's spread);
- moves live centroids to ``A_k / |A_k|`` (spherical Lloyd step); dormant ones stay put;
- merges live leaves whose centroids come closer than ``merge_cosine``;
- seeds a new leaf from the unassigned row when *its* signal is significant
  (``new_leaf_z``) and not already explained by a leaf: this is how new interests enter,
  through the same DP release (the unassigned row is part of every device's release);
- optionally splits heavy leaves along a public random direction (bisecting k-means); a
  split that does not separate is merged back by the merge rule.

Leaf ids are stable: a slot keeps its id while it lives; merges keep the survivor's id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from common.config import ClusteringConfig
from common.errors import ConfigError, InvalidReleaseError
from common.projection import normalize_rows

__all__ = [
    "AggregationConfig",
    "LeafState",
    "RoundDiagnostics",
    "aggregate_round",
    "initial_state",
    "leaf_statistics",
    "listed_leaves",
    "null_listing_z",
    "robust_mean",
]


@dataclass(frozen=True)
class AggregationConfig:
    """Server-side rules (all post-processing; none costs privacy).

    Attributes:
        memory: decay ``gamma`` of the accumulated sums (0 = last round only).
        prior_strength: a live leaf moves to ``normalize(A + s * sqrt(d V) * c_old)``: the old
            centroid weighs ``s`` noise norms, so noisy sums move leaves less.
        live_z: significance (z-score of signal energy over noise) for a leaf to be live.
        new_leaf_z: significance for the unassigned row to seed a new leaf.
        merge_cosine: live leaves closer than this are merged.
        split_mass: leaves whose estimated mass per round exceeds this are split (None: off).
        max_leaves: cap on public leaves (upload size grows with it).
        prune_after: non-seed slots dormant this many rounds are removed.
    """

    # the run's values live in common.config.ClusteringConfig (one source per default)
    memory: float = ClusteringConfig.memory
    live_z: float = ClusteringConfig.live_z
    prior_strength: float = ClusteringConfig.prior_strength
    new_leaf_z: float = ClusteringConfig.new_leaf_z
    merge_cosine: float = ClusteringConfig.merge_cosine
    split_mass: float | None = ClusteringConfig.split_mass
    max_leaves: int = ClusteringConfig.max_leaves
    prune_after: int = 2

    @classmethod
    def from_clustering(cls, c: ClusteringConfig) -> AggregationConfig:
        """The aggregation rules of a run's :class:`ClusteringConfig`."""
        names = ("memory", "live_z", "prior_strength", "new_leaf_z", "merge_cosine")
        return cls(
            **{n: getattr(c, n) for n in names},
            split_mass=c.split_mass,
            max_leaves=c.max_leaves,
        )

    def __post_init__(self) -> None:
        if not 0 <= self.memory <= 1:
            raise ConfigError(f"`memory` must be in [0, 1]. Found {self.memory!r}.")
        if not (self.live_z > 0 and self.new_leaf_z > 0):
            raise ConfigError(
                f"`live_z` and `new_leaf_z` must be > 0. Found {self.live_z!r}, {self.new_leaf_z!r}."
            )
        if not 0 < self.merge_cosine <= 1:
            raise ConfigError(f"`merge_cosine` must be in (0, 1]. Found {self.merge_cosine!r}.")
        if self.split_mass is not None and not self.split_mass > 0:
            raise ConfigError(f"`split_mass` must be > 0 or None. Found {self.split_mass!r}.")
        if not (isinstance(self.max_leaves, int) and self.max_leaves >= 2):
            raise ConfigError(f"`max_leaves` must be an int >= 2. Found {self.max_leaves!r}.")


@dataclass(frozen=True)
class LeafState:
    """The server's public leaves and what it has accumulated about them.

    Attributes:
        server_round: the last aggregated round (0 before the first).
        ids: stable leaf ids, shape ``(k,)``.
        centroids: public unit centroids, shape ``(k, d)``; what devices assign to.
        acc: decayed accumulated noisy sums, shape ``(k, d)``.
        acc_var: noise variance per coordinate of ``acc``, shape ``(k,)``.
        weight_norm: ``sum_t gamma^(r - t)`` over the rounds each slot accumulated, ``(k,)``.
        seed: whether the slot came from the public vocabulary (never pruned), ``(k,)``.
        dormant_rounds: consecutive rounds each slot was not live, ``(k,)``.
        residual_acc / residual_var / residual_norm: the same for the unassigned row.
        next_id: counter for new ids.
    """

    server_round: int
    ids: tuple[str, ...]
    centroids: npt.NDArray[np.float32] = field(repr=False)
    acc: npt.NDArray[np.float64] = field(repr=False)
    acc_var: npt.NDArray[np.float64] = field(repr=False)
    weight_norm: npt.NDArray[np.float64] = field(repr=False)
    seed: npt.NDArray[np.bool_] = field(repr=False)
    dormant_rounds: npt.NDArray[np.int64] = field(repr=False)
    residual_acc: npt.NDArray[np.float64] = field(repr=False)
    residual_var: float = 0.0
    residual_norm: float = 0.0
    next_id: int = 0

    @property
    def num_leaves(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def to_arrays(self) -> dict[str, Any]:
        """Everything needed to checkpoint and restore the state (see :meth:`from_arrays`)."""
        return {
            "server_round": self.server_round,
            "ids": list(self.ids),
            "centroids": self.centroids,
            "acc": self.acc,
            "acc_var": self.acc_var,
            "weight_norm": self.weight_norm,
            "seed": self.seed,
            "dormant_rounds": self.dormant_rounds,
            "residual_acc": self.residual_acc,
            "residual_var": self.residual_var,
            "residual_norm": self.residual_norm,
            "next_id": self.next_id,
        }

    @classmethod
    def from_arrays(cls, d: dict[str, Any]) -> LeafState:
        return cls(
            server_round=int(d["server_round"]),
            ids=tuple(str(i) for i in d["ids"]),
            centroids=np.asarray(d["centroids"], dtype=np.float32),
            acc=np.asarray(d["acc"], dtype=np.float64),
            acc_var=np.asarray(d["acc_var"], dtype=np.float64),
            weight_norm=np.asarray(d["weight_norm"], dtype=np.float64),
            seed=np.asarray(d["seed"], dtype=bool),
            dormant_rounds=np.asarray(d["dormant_rounds"], dtype=np.int64),
            residual_acc=np.asarray(d["residual_acc"], dtype=np.float64),
            residual_var=float(d["residual_var"]),
            residual_norm=float(d["residual_norm"]),
            next_id=int(d["next_id"]),
        )


@dataclass(frozen=True)
class RoundDiagnostics:
    """What one aggregation did."""

    server_round: int
    live: int
    dormant: int
    merged: dict[str, str]
    new_leaves: tuple[str, ...]
    split: tuple[str, ...]
    pruned: tuple[str, ...]
    residual_z: float
    noise_var: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_round": self.server_round,
            "live_leaves": self.live,
            "dormant_leaves": self.dormant,
            "merged": self.merged,
            "new_leaves": list(self.new_leaves),
            "split": list(self.split),
            "pruned": list(self.pruned),
            "residual_z": round(self.residual_z, 3),
            "noise_var": self.noise_var,
        }


def _leaf_id(i: int) -> str:
    return f"leaf-{i:04d}"


def initial_state(seeds: npt.NDArray[np.floating]) -> LeafState:
    """Cold start: one public leaf per seed vector (e.g. the embedded label vocabulary).

    Args:
        seeds: shape ``(k, d)``.
    """
    c = normalize_rows(np.asarray(seeds, dtype=np.float32))
    if c.ndim != 2 or c.shape[0] < 1:
        raise ConfigError(f"`seeds` must have shape (k >= 1, d). Found {c.shape}.")
    k, d = c.shape
    return LeafState(
        server_round=0,
        ids=tuple(_leaf_id(i) for i in range(k)),
        centroids=c,
        acc=np.zeros((k, d)),
        acc_var=np.zeros(k),
        weight_norm=np.zeros(k),
        seed=np.ones(k, dtype=bool),
        dormant_rounds=np.zeros(k, dtype=np.int64),
        residual_acc=np.zeros(d),
        next_id=k,
    )


def null_listing_z(dim: int, rate: float) -> float:
    """The ``z`` of :func:`leaf_statistics` that a leaf with no data exceeds with probability
    ``rate``. With no data, a leaf's accumulated sum is Gaussian noise of known variance per
    coordinate, so ``|acc|^2 / var`` is chi-square with ``dim`` degrees of freedom and
    ``z = (chi2 - dim) / sqrt(2 dim)``; the threshold is that law's ``1 - rate`` quantile
    (about 1.64 at ``dim`` 128 and 5%, above the normal approximation's 1.645 for small
    ``dim``: the chi-square's right tail is heavier)."""
    from scipy.stats import chi2

    if not (isinstance(dim, int) and dim >= 1 and 0 < rate < 1):
        raise ConfigError(f"need dim >= 1 and rate in (0, 1). Found {dim!r}, {rate!r}.")
    return float((chi2.isf(rate, dim) - dim) / math.sqrt(2 * dim))


def listed_leaves(z: npt.NDArray[np.float64], dim: int, rate: float) -> npt.NDArray[np.int64]:
    """The leaves to publish: Holm's step-down test at family-wise error rate ``rate`` over
    the leaves' null p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statist. 6: the probability that *any* leaf without data is listed
    is at most ``rate``, under any dependence between the tests). A leaf's p-value is the
    chi-square tail of its energy under "no data" (:func:`null_listing_z`'s law): with no
    data the accumulated sum is Gaussian noise of known variance per coordinate.

    Family-wise rather than false-discovery control (Benjamini-Hochberg, tried first): BH at
    5% lets about 5% of the *listed* leaves be empty, and on MovieLens at event level that
    was 1-2 published leaves of 27 with no event nearest them (their own rounds' energies
    were pure noise, p ~ 3e-3). Holm's level ``rate / m`` dropped exactly those; at user
    level it lists 0-5 fewer of ~160 leaves than BH (measured, docs/federated.md)."""
    from scipy.stats import chi2

    p = chi2.sf(dim + np.asarray(z, dtype=np.float64) * math.sqrt(2 * dim), dim)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(p, kind="stable")
    # step-down: the i-th smallest p-value (from 0) is compared with rate / (m - i), and
    # testing stops at the first that fails
    failed = np.flatnonzero(p[order] > rate / (m - np.arange(m)))
    stop = int(failed[0]) if len(failed) else m
    return np.sort(order[:stop]).astype(np.int64)


def leaf_statistics(state: LeafState) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(mass, z)`` per leaf: estimated weighted events per round and the significance of
    the leaf's signal energy, both from the bias-corrected norm of the accumulated sum."""
    d = state.dim
    energy = (state.acc**2).sum(axis=1) - d * state.acc_var
    spread = math.sqrt(2 * d) * np.maximum(state.acc_var, 1e-300)
    z = np.where(state.acc_var > 0, energy / spread, np.where(energy > 0, np.inf, 0.0))
    mass = np.sqrt(np.maximum(energy, 0.0)) / np.maximum(state.weight_norm, 1e-12)
    return mass, z


def aggregate_round(
    state: LeafState,
    cohort_sum: npt.NDArray[np.floating],
    *,
    noise_var: float,
    config: AggregationConfig | None = None,
    rng: np.random.Generator | None = None,
    server_round: int | None = None,
) -> tuple[LeafState, RoundDiagnostics]:
    """One DP-Lloyd step from the cohort's noisy sums.

    Args:
        state: the leaves the round's devices assigned to.
        cohort_sum: shape ``(k + 1, d)``: per-leaf noisy sums, then the unassigned row.
        noise_var: the noise variance per coordinate in ``cohort_sum`` (known from the
            calibration and the cohort size).
        config: the rules.
        rng: public randomness for split directions.
        server_round: the round these sums come from (default: the state's round + 1; a
            skipped round leaves a gap).

    Returns:
        ``(new_state, diagnostics)``.
    """
    cfg = config if config is not None else AggregationConfig()
    k, d = state.num_leaves, state.dim
    s = np.asarray(cohort_sum, dtype=np.float64)
    if s.shape != (k + 1, d):
        raise InvalidReleaseError(f"cohort sum must have shape ({k + 1}, {d}). Found {s.shape}.")
    if not np.isfinite(s).all():
        raise InvalidReleaseError("cohort sum has NaN or Inf values.")
    if not (math.isfinite(noise_var) and noise_var >= 0):
        raise ConfigError(f"`noise_var` must be finite and >= 0. Found {noise_var!r}.")
    g = cfg.memory
    acc = g * state.acc + s[:k]
    acc_var = g * g * state.acc_var + noise_var
    weight_norm = g * state.weight_norm + 1.0
    racc = g * state.residual_acc + s[k]
    rvar = g * g * state.residual_var + noise_var
    rnorm = g * state.residual_norm + 1.0
    st = replace(
        state,
        server_round=server_round if server_round is not None else state.server_round + 1,
        acc=acc,
        acc_var=acc_var,
        weight_norm=weight_norm,
        residual_acc=racc,
        residual_var=rvar,
        residual_norm=rnorm,
    )
    mass, z = leaf_statistics(st)
    live = z >= cfg.live_z
    centroids = st.centroids.copy()
    if live.any():
        # Shrink toward the previous centroid with the weight of the noise norm: a sum that
        # barely clears the noise moves its leaf only part of the way (James-Stein flavour).
        prior = cfg.prior_strength * np.sqrt(d * acc_var[live])[:, None] * centroids[live]
        centroids[live] = normalize_rows(acc[live] + prior)
    dormant = np.where(live, 0, st.dormant_rounds + 1)
    ids = list(st.ids)
    seed = st.seed.copy()

    # merge live leaves that converged onto each other (heaviest survives)
    merged: dict[str, str] = {}
    alive = np.ones(k, dtype=bool)
    order = [int(i) for i in np.argsort(-mass) if live[i]]
    for a_pos, i in enumerate(order):
        if not alive[i]:
            continue
        absorbed = False
        for j in order[a_pos + 1 :]:
            if alive[j] and float(centroids[i] @ centroids[j]) >= cfg.merge_cosine:
                acc[i] += acc[j]
                acc_var[i] += acc_var[j]
                weight_norm[i] = max(weight_norm[i], weight_norm[j])
                alive[j] = False
                merged[ids[j]] = ids[i]
                absorbed = True
        if absorbed:
            centroids[i] = normalize_rows(acc[i][None, :])[0]

    # prune long-dormant slots that were not public seeds
    prune = (~live) & (~seed) & (dormant >= cfg.prune_after)
    pruned = tuple(ids[i] for i in np.where(prune & alive)[0])
    alive &= ~prune

    keep = np.where(alive)[0]
    new_ids = [ids[i] for i in keep]
    new_c = [centroids[i] for i in keep]
    new_acc = [acc[i] for i in keep]
    new_var = [acc_var[i] for i in keep]
    new_norm = [weight_norm[i] for i in keep]
    new_seed = [bool(seed[i]) for i in keep]
    new_dormant = [int(dormant[i]) for i in keep]
    next_id = st.next_id

    # new interest from the unassigned bucket
    new_leaves: list[str] = []
    renergy = float((racc**2).sum() - d * rvar)
    rz = renergy / (math.sqrt(2 * d) * rvar) if rvar > 0 else (math.inf if renergy > 0 else 0.0)
    if rz >= cfg.new_leaf_z and len(new_ids) < cfg.max_leaves:
        direction = normalize_rows(racc[None, :])[0]
        sims = np.asarray(new_c) @ direction if new_c else np.zeros(0)
        if sims.size == 0 or float(sims.max()) < cfg.merge_cosine:
            nid = _leaf_id(next_id)
            next_id += 1
            new_ids.append(nid)
            new_c.append(direction)
            new_acc.append(racc.copy())
            new_var.append(rvar)
            new_norm.append(rnorm)
            new_seed.append(False)
            new_dormant.append(0)
            new_leaves.append(nid)
            racc = np.zeros(d)
            rvar = 0.0
            rnorm = 0.0

    # optional split of heavy leaves along a public random direction
    split: list[str] = []
    if cfg.split_mass is not None:
        r = rng if rng is not None else np.random.default_rng(st.server_round)
        stats_mass = {ids[i]: float(mass[i]) for i in range(k)}
        for pos in range(len(new_ids)):
            if len(new_ids) >= cfg.max_leaves:
                break
            lid = new_ids[pos]
            if stats_mass.get(lid, 0.0) < cfg.split_mass:
                continue
            c = new_c[pos]
            u = r.normal(size=d)
            u -= (u @ c) * c
            u /= np.linalg.norm(u)
            child = normalize_rows((c + 0.35 * u)[None, :])[0]
            nid = _leaf_id(next_id)
            next_id += 1
            new_ids.append(nid)
            new_c.append(child)
            new_acc.append(np.zeros(d))
            new_var.append(0.0)
            new_norm.append(0.0)
            new_seed.append(False)
            new_dormant.append(0)
            split.append(lid)

    out = LeafState(
        server_round=st.server_round,
        ids=tuple(new_ids),
        centroids=np.stack(new_c).astype(np.float32),
        acc=np.stack(new_acc),
        acc_var=np.asarray(new_var, dtype=np.float64),
        weight_norm=np.asarray(new_norm, dtype=np.float64),
        seed=np.asarray(new_seed, dtype=bool),
        dormant_rounds=np.asarray(new_dormant, dtype=np.int64),
        residual_acc=racc,
        residual_var=rvar,
        residual_norm=rnorm,
        next_id=next_id,
    )
    n_live = int(live[alive].sum()) + len(new_leaves)
    diag = RoundDiagnostics(
        server_round=out.server_round,
        live=n_live,
        dormant=len(new_ids) - n_live,
        merged=merged,
        new_leaves=tuple(new_leaves),
        split=tuple(split),
        pruned=pruned,
        residual_z=float(rz),
        noise_var=float(noise_var),
    )
    return out, diag


def robust_mean(
    x: npt.NDArray[np.floating], mode: str, trim: float = 0.1
) -> npt.NDArray[np.float64]:
    """Coordinate-wise ``trimmed`` mean (``trim`` cut at each end) or ``median`` over axis 0;
    ``none`` is the plain mean. One device can move it by at most its rank's share, not by its
    own magnitude (poisoning bound)."""
    a = np.asarray(x, dtype=np.float64)
    if mode == "median":
        out: npt.NDArray[np.float64] = np.median(a, axis=0)
        return out
    if mode == "trimmed":
        from scipy.stats import trim_mean

        return np.asarray(trim_mean(a, trim, axis=0), dtype=np.float64)
    if mode == "none":
        mean: npt.NDArray[np.float64] = a.mean(axis=0)
        return mean
    raise ConfigError(f"`robust` must be none, trimmed or median. Found {mode!r}.")
