"""The dynamic user profile over the global tree, on the device.

For one hierarchy version, each event is softly assigned to the leaves (softmax of cosine
similarity over the leaf centroids, in the hierarchy's space: encoder -> public adapter ->
public projection), weighted by its behaviour weight (type x dwell x rating) and decayed with
the event's age. Level-1 mass is the sum of its leaves'. Everything is computed
**incrementally**: the decayed sums are kept at a reference time (the latest event seen), so a
new event updates the profile without touching history, and the result equals a full
recomputation (tested).

Two windows run side by side: the long one (half-life 30 days) is the profile; the short one
(7 days) is compared with it for **drift** (Jensen-Shannon divergence per level).

When a new hierarchy version arrives, :func:`migrate` recomputes the profile from the cached
vectors (exact: renamed, split, merged and new nodes all come out right, and each event's
unit of soft mass is preserved), or, without vectors, carries mass over through the stable
node ids (merged ids to their survivor, gone or split leaves by centroid similarity).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from client.taste import TasteConfig, TasteModel, fit_taste
from common.adapter import AdapterWeights
from common.errors import ConfigError
from common.events import Event
from common.features import WeightingConfig, weights_for_events
from common.hierarchy import Hierarchy
from common.projection import PublicProjection

__all__ = [
    "DriftReport",
    "Interest",
    "InterestProfile",
    "ProfileConfig",
    "calibrate_scoring",
    "device_profile",
    "js_divergence",
    "migrate",
    "segments",
]

_LN2 = math.log(2.0)
_DAY = 86400.0
PROFILE_WEIGHTING = WeightingConfig(half_life_days=None)


def _z(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Standardised within the array (all zeros when constant)."""
    sd = float(x.std()) if len(x) else 0.0
    out: npt.NDArray[np.float64] = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    return out


@dataclass(frozen=True)
class ProfileConfig:
    """Profile settings.

    Attributes:
        half_life_days: decay of the profile (the long window).
        short_half_life_days: decay of the short window used for drift.
        temperature: softmax temperature of the soft assignment over cosine similarities.
        drift_threshold: Jensen-Shannon divergence (base 2, in [0, 1]) above which a level
            counts as drifting.
        explanations: contributing events kept per leaf.
        recent_events: how many recent event vectors recommendation scoring keeps.
        recent_top_k: the recent-event similarity of a candidate is the mean of its ``k``
            highest cosines to those events.
        level_weight: weight of the hierarchical (level) similarity in :meth:`score`, relative
            to the recent-event similarity (both standardised within the candidates).
        popularity_weight: weight of the standardised popularity prior in :meth:`score`.
        recent_weight: weight of the recent-event similarity in :meth:`score`.
    """

    half_life_days: float = 30.0
    short_half_life_days: float = 7.0
    temperature: float = 0.05
    drift_threshold: float = 0.1
    explanations: int = 3
    recent_events: int = 50
    recent_top_k: int = 3
    level_weight: float = 0.25
    popularity_weight: float = 1.0
    recent_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("half_life_days", "short_half_life_days", "temperature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"`{name}` must be > 0. Found {v!r}.")
        for name in ("explanations", "recent_events", "recent_top_k"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"`{name}` must be an int >= 1. Found {v!r}.")
        for name in ("level_weight", "popularity_weight", "recent_weight"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"`{name}` must be a number >= 0. Found {v!r}.")
        if not 0 < self.drift_threshold <= 1:
            raise ConfigError(
                f"`drift_threshold` must be in (0, 1]. Found {self.drift_threshold!r}."
            )


@dataclass(frozen=True)
class Interest:
    """One node of the user's profile."""

    node_id: str
    label: str
    level: int
    strength: float
    explanations: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "label": self.label,
            "level": self.level,
            "strength": round(self.strength, 6),
            "explanations": list(self.explanations),
        }


@dataclass(frozen=True)
class DriftReport:
    """Short vs long window, per level."""

    divergence: dict[int, float]
    drifting: dict[int, bool]
    rising: dict[int, list[tuple[str, float]]]
    falling: dict[int, list[tuple[str, float]]]
    since: dict[int, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "divergence": {str(k): round(v, 6) for k, v in self.divergence.items()},
            "drifting": {str(k): v for k, v in self.drifting.items()},
            "rising": {str(k): [[n, round(d, 6)] for n, d in v] for k, v in self.rising.items()},
            "falling": {str(k): [[n, round(d, 6)] for n, d in v] for k, v in self.falling.items()},
            "since": {str(k): v for k, v in self.since.items()},
        }


def js_divergence(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64]) -> float:
    """Jensen-Shannon divergence in bits (0 = equal, 1 = disjoint) of two mass vectors
    (normalised here): the square of scipy's Jensen-Shannon distance in base 2."""
    from scipy.spatial.distance import jensenshannon

    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    return max(0.0, min(1.0, float(jensenshannon(p, q, base=2.0)) ** 2))


@dataclass
class InterestProfile:
    """One user's decayed interest mass over one hierarchy version's leaves.

    Build with :meth:`for_hierarchy`, then :meth:`add` events (any order) with their raw
    encoder vectors; read with :meth:`distribution`, :meth:`top`, :meth:`drift`,
    :meth:`score`.
    """

    hierarchy: Hierarchy
    projection: PublicProjection
    adapter: AdapterWeights | None = None
    config: ProfileConfig = field(default_factory=ProfileConfig)
    t_ref: float = -math.inf
    mass: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)
    mass_short: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)
    events: int = 0
    _explain: list[list[tuple[float, str, str]]] = field(default_factory=list, repr=False)
    _recent: list[tuple[float, npt.NDArray[np.float32]]] = field(default_factory=list, repr=False)
    _drift_since: dict[int, float | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hierarchy.projection_fingerprint != self.projection.fingerprint:
            raise ConfigError(
                f"the hierarchy lives in projection {self.hierarchy.projection_fingerprint!r}, "
                f"not {self.projection.fingerprint!r} (encoder {self.projection.encoder_id!r}, "
                f"seed {self.projection.seed}): use the run's encoder (--encoder) and projection "
                "seed."
            )
        self.leaf_ids, self.leaf_c = self.hierarchy.centroids(2)
        if not self.leaf_ids:
            raise ConfigError("the hierarchy has no leaves.")
        n = len(self.leaf_ids)
        if self.mass.shape != (n,):
            self.mass = np.zeros(n)
        if self.mass_short.shape != (n,):
            self.mass_short = np.zeros(n)
        if not self._explain:
            self._explain = [[] for _ in range(n)]
        groups = [self.hierarchy.nodes[x].parent or "" for x in self.leaf_ids]
        self.group_ids = list(dict.fromkeys(groups))
        position = {g: i for i, g in enumerate(self.group_ids)}
        self._group_index = np.array([position[g] for g in groups])
        self._group_c = np.stack([self.hierarchy.nodes[g].centroid for g in self.group_ids]).astype(
            np.float32
        )

    @classmethod
    def for_hierarchy(
        cls,
        hierarchy: Hierarchy,
        *,
        encoder_dim: int = 384,
        encoder_id: str = "",
        projection_seed: int | None = None,
        adapter: AdapterWeights | None = None,
        config: ProfileConfig | None = None,
    ) -> InterestProfile:
        """An empty profile for ``hierarchy`` (its projection is rebuilt from the seed and
        checked against the hierarchy's fingerprint)."""
        from common.projection import DEFAULT_SEED

        proj = PublicProjection(
            encoder_dim,
            hierarchy.dim,
            projection_seed if projection_seed is not None else DEFAULT_SEED,
            encoder_id,
        )
        return cls(hierarchy, proj, adapter, config or ProfileConfig())

    # -- updates --------------------------------------------------------------------------------

    def _space(self, raw: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        x = np.asarray(raw, dtype=np.float32)
        if self.adapter is not None and not self.adapter.is_identity():
            x = self.adapter.apply(x)
        return self.projection(x)

    def soft_assign(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Soft leaf membership of projected vectors, shape ``(n, leaves)``, rows sum to 1."""
        sims = np.asarray(vectors, dtype=np.float64) @ self.leaf_c.T.astype(np.float64)
        logits = sims / self.config.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        out: npt.NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
        return out

    def add(self, events: Sequence[Event], raw_vectors: npt.NDArray[np.floating]) -> None:
        """Adds events (any time order) with their raw encoder vectors, shape ``(n, dim)``."""
        if len(events) == 0:
            return
        if len(events) != len(raw_vectors):
            raise ConfigError(f"{len(events)} events but {len(raw_vectors)} vectors.")
        vecs = self._space(raw_vectors)
        p = self.soft_assign(vecs)
        w = weights_for_events(list(events), reference_time=0.0, config=PROFILE_WEIGHTING)
        ts = np.array([e.timestamp for e in events], dtype=np.float64)
        t_new = max(self.t_ref, float(ts.max()))
        if self.t_ref > -math.inf and t_new > self.t_ref:
            self.mass *= 0.5 ** ((t_new - self.t_ref) / (self.config.half_life_days * _DAY))
            self.mass_short *= 0.5 ** (
                (t_new - self.t_ref) / (self.config.short_half_life_days * _DAY)
            )
        self.t_ref = t_new
        decay = 0.5 ** ((t_new - ts) / (self.config.half_life_days * _DAY))
        decay_s = 0.5 ** ((t_new - ts) / (self.config.short_half_life_days * _DAY))
        self.mass += (p * (w * decay)[:, None]).sum(axis=0)
        self.mass_short += (p * (w * decay_s)[:, None]).sum(axis=0)
        self.events += len(events)
        # explanations: a time-invariant key (log contribution at time 0) ranks contributions
        h = self.config.half_life_days * _DAY
        best = np.argmax(p, axis=1)
        for i, e in enumerate(events):
            leaf = int(best[i])
            key = math.log(max(float(w[i] * p[i, leaf]), 1e-300)) + ts[i] * _LN2 / h
            heap = self._explain[leaf]
            item = (key, e.event_id, e.text[:120])
            if len(heap) < self.config.explanations:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        for i in np.argsort(ts)[-self.config.recent_events :]:
            self._recent.append((float(ts[i]), vecs[i]))
        self._recent.sort(key=lambda tv: tv[0])
        del self._recent[: -self.config.recent_events]
        self._update_drift_since()

    # -- reading -------------------------------------------------------------------------------

    def _level_mass(
        self, level: int, mass: npt.NDArray[np.float64]
    ) -> tuple[list[str], npt.NDArray[np.float64]]:
        if level == 2:
            return list(self.leaf_ids), mass
        if level == 1:
            g = np.zeros(len(self.group_ids))
            np.add.at(g, self._group_index, mass)
            return list(self.group_ids), g
        raise ConfigError(f"`level` must be 1 or 2. Found {level!r}.")

    def distribution(self, level: int = 1, *, short: bool = False) -> dict[str, float]:
        """Shares per node of a level (sum 1; empty when no event was added)."""
        ids, m = self._level_mass(level, self.mass_short if short else self.mass)
        total = float(m.sum())
        if total <= 0:
            return {}
        return {i: float(v) / total for i, v in zip(ids, m, strict=True)}

    def top(self, level: int = 1, k: int = 5) -> list[Interest]:
        """The ``k`` strongest interests of a level, with their strongest contributing events."""
        dist = self.distribution(level)
        out = []
        for nid, share in sorted(dist.items(), key=lambda kv: -kv[1])[:k]:
            node = self.hierarchy.nodes[nid]
            leaves = [nid] if level == 2 else list(node.children)
            items: list[tuple[float, str, str]] = []
            for leaf in leaves:
                if leaf in self.leaf_ids:
                    items.extend(self._explain[self.leaf_ids.index(leaf)])
            items.sort(reverse=True)
            out.append(
                Interest(
                    nid,
                    node.label,
                    level,
                    share,
                    tuple(t for _, _, t in items[: self.config.explanations]),
                )
            )
        return out

    def _update_drift_since(self) -> None:
        for level in (1, 2):
            _ids, long = self._level_mass(level, self.mass)
            _, short = self._level_mass(level, self.mass_short)
            d = js_divergence(short, long)
            if d >= self.config.drift_threshold:
                if self._drift_since.get(level) is None:
                    self._drift_since[level] = self.t_ref
            else:
                self._drift_since[level] = None

    def drift(self, k: int = 3) -> DriftReport:
        """Short window vs long window per level: divergence, drifting or not, the interests
        that rose and fell most, and since when (event time) the level has been drifting."""
        div: dict[int, float] = {}
        drifting: dict[int, bool] = {}
        rising: dict[int, list[tuple[str, float]]] = {}
        falling: dict[int, list[tuple[str, float]]] = {}
        for level in (1, 2):
            ids, long = self._level_mass(level, self.mass)
            _, short = self._level_mass(level, self.mass_short)
            div[level] = js_divergence(short, long)
            drifting[level] = div[level] >= self.config.drift_threshold
            if long.sum() > 0 and short.sum() > 0:
                delta = short / short.sum() - long / long.sum()
                order = np.argsort(delta)
                rising[level] = [(ids[i], float(delta[i])) for i in order[::-1][:k] if delta[i] > 0]
                falling[level] = [(ids[i], float(delta[i])) for i in order[:k] if delta[i] < 0]
            else:
                rising[level], falling[level] = [], []
        since = {lv: self._drift_since.get(lv) for lv in (1, 2)}
        return DriftReport(div, drifting, rising, falling, since)

    def score_components(
        self, raw_vectors: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The two similarity terms of candidates (raw encoder vectors, shape ``(n, dim)``):

        - levels: ``0.3 sum_g P1(g) cos(x, c_g) + 0.7 sum_l P2(l) cos(x, c_l)`` (the user's
          interest distribution at both levels of the tree);
        - recent: the mean of the ``recent_top_k`` highest cosines of ``x`` to the user's
          ``recent_events`` latest events.
        """
        x = self._space(raw_vectors).astype(np.float64)
        levels = np.zeros(len(x))
        for level, a in zip((1, 2), (0.3, 0.7), strict=True):
            _, m = self._level_mass(level, self.mass)
            if m.sum() <= 0:
                continue
            c = self.leaf_c if level == 2 else self._group_c
            levels += a * (x @ c.T.astype(np.float64)) @ (m / m.sum())
        recent = np.zeros(len(x))
        if self._recent:
            r = np.stack([v for _, v in self._recent]).astype(np.float64)
            k = min(self.config.recent_top_k, len(r))
            recent = np.sort(x @ r.T, axis=1)[:, -k:].mean(axis=1)
        return levels, recent

    def score(
        self,
        raw_vectors: npt.NDArray[np.floating],
        *,
        prior: npt.ArrayLike | None = None,
        taste: TasteModel | None = None,
    ) -> npt.NDArray[np.float64]:
        """Recommendation scores of candidate items (raw encoder vectors, shape ``(n, dim)``).

        Without a taste model: ``level_weight * z(levels) + recent_weight * z(recent)
        [+ popularity_weight * prior]``; with the device's taste model
        (:func:`client.taste.fit_taste`): ``z(taste logits) + level_weight * z(levels) +
        recent_weight * z(recent)``, the prior entering through the taste model. The terms of
        :meth:`score_components` are standardised (``z``) within the candidates, and
        ``prior`` is the candidates' popularity prior already standardised over the catalogue
        (:func:`common.popularity.standardised_prior`). Higher is better.
        """
        levels, recent = self.score_components(raw_vectors)
        cfg = self.config
        out = cfg.level_weight * _z(levels) + cfg.recent_weight * _z(recent)
        p = None
        if prior is not None:
            p = np.asarray(prior, dtype=np.float64)
            if p.shape != out.shape or not np.all(np.isfinite(p)):
                raise ConfigError(
                    f"`prior` must hold one finite value per candidate ({len(out)}). "
                    f"Found shape {p.shape}."
                )
        if taste is not None:
            return out + _z(taste.logits(raw_vectors, p))
        if p is not None:
            out = out + cfg.popularity_weight * p
        return out

    # -- persistence -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "version": self.hierarchy.version,
            "t_ref": self.t_ref,
            "mass": self.mass.tolist(),
            "mass_short": self.mass_short.tolist(),
            "events": self.events,
            "leaf_ids": list(self.leaf_ids),
            "explain": [[list(t) for t in h] for h in self._explain],
            "drift_since": {str(k): v for k, v in self._drift_since.items()},
            "recent": [[t, v.astype(np.float32).tolist()] for t, v in self._recent],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.hierarchy.version or state.get("leaf_ids") != list(
            self.leaf_ids
        ):
            raise ConfigError("the saved profile belongs to another hierarchy version; migrate it.")
        self.t_ref = float(state["t_ref"])
        self.mass = np.asarray(state["mass"], dtype=np.float64)
        self.mass_short = np.asarray(state["mass_short"], dtype=np.float64)
        self.events = int(state["events"])
        self._explain = [[(float(t[0]), str(t[1]), str(t[2])) for t in h] for h in state["explain"]]
        self._drift_since = {int(k): v for k, v in state.get("drift_since", {}).items()}
        self._recent = [
            (float(t), np.asarray(v, dtype=np.float32)) for t, v in state.get("recent", [])
        ]


def calibrate_scoring(
    hierarchy: Hierarchy,
    events: Sequence[Event],
    raw_vectors: npt.NDArray[np.floating],
    catalogue_ids: Sequence[str],
    catalogue_raw: npt.NDArray[np.floating],
    *,
    prior: npt.ArrayLike | None = None,
    adapter: AdapterWeights | None = None,
    config: ProfileConfig | None = None,
    projection_seed: int | None = None,
    encoder_id: str = "",
    rng: np.random.Generator,
    holdout: float = 0.2,
    negatives: int = 100,
    level_grid: Sequence[float] = (0.0, 0.5, 1.0),
    popularity_grid: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    taste: TasteConfig | None = None,
    taste_level_grid: Sequence[float] = (0.0, 0.25),
    taste_recent_grid: Sequence[float] = (0.0, 0.25, 0.5),
) -> ProfileConfig:
    """Chooses the scoring weights for this device, **on the device** from its own history
    (nothing leaves it): the latest ``holdout`` share of its events is set aside, a profile
    (and, with ``taste``, a taste model) is built from the rest, and each weight pair of the
    grids ranks the set-aside new items among ``negatives`` public catalogue items the device
    never touched; the pair with the best AUC wins. With too little history (fewer than 3 + 1
    events, or no new catalogue item set aside) the configuration comes back unchanged.

    Without ``taste``: ``level_weight`` x ``popularity_weight`` over ``level_grid`` x
    ``popularity_grid`` (ties: the pair nearest the configured defaults). With ``taste``
    (:meth:`InterestProfile.score` with a taste model): ``level_weight`` x ``recent_weight``
    over ``taste_level_grid`` x ``taste_recent_grid`` added to the taste logits (ties: the
    smallest weights, i.e. the taste model alone); if no taste model can be fit on the
    earlier part, the grids without ``taste`` are used.

    Args:
        catalogue_ids / catalogue_raw: the public catalogue and its raw encoder vectors.
        prior: the catalogue's standardised popularity prior, aligned with ``catalogue_ids``
            (``None``: no prior; the popularity weight stays as configured).
    """
    import dataclasses

    from common.metrics import auc

    cfg = config or ProfileConfig()
    if len(events) != len(raw_vectors):
        raise ConfigError(f"{len(events)} events but {len(raw_vectors)} vectors.")
    if len(catalogue_ids) != len(catalogue_raw):
        raise ConfigError(
            f"{len(catalogue_ids)} catalogue ids but {len(catalogue_raw)} catalogue vectors."
        )
    pri = None if prior is None else np.asarray(prior, dtype=np.float64)
    if pri is not None and pri.shape != (len(catalogue_ids),):
        raise ConfigError(
            f"`prior` must hold one value per catalogue item ({len(catalogue_ids)}). "
            f"Found shape {pri.shape}."
        )
    order = sorted(range(len(events)), key=lambda i: (events[i].timestamp, events[i].event_id))
    n_val = round(holdout * len(order))
    if n_val < 1 or len(order) - n_val < 3:
        return cfg
    fit, val = order[:-n_val], order[-n_val:]
    seen = {events[i].item_id or "" for i in fit}
    index = {c: i for i, c in enumerate(catalogue_ids)}
    pos = sorted({events[i].item_id or "" for i in val} & index.keys() - seen)
    if not pos:
        return cfg
    touched = seen | {events[i].item_id or "" for i in val}
    pool = rng.choice(
        len(catalogue_ids),
        size=min(len(catalogue_ids), 4 * negatives + len(touched)),
        replace=False,
    )
    neg = [int(i) for i in pool if catalogue_ids[int(i)] not in touched][:negatives]
    if not neg:
        return cfg
    cand = [index[c] for c in pos] + neg
    rel = np.array([True] * len(pos) + [False] * len(neg))
    prof = InterestProfile.for_hierarchy(
        hierarchy,
        encoder_dim=int(np.asarray(raw_vectors).shape[1]),
        encoder_id=encoder_id,
        projection_seed=projection_seed,
        adapter=adapter,
        config=cfg,
    )
    raw = np.asarray(raw_vectors)
    fit_events = [events[i] for i in fit]
    prof.add(fit_events, raw[fit])
    cand_raw = np.asarray(catalogue_raw)[cand]
    levels, recent = prof.score_components(cand_raw)
    zl, zr = _z(levels), _z(recent)
    pc = pri[cand] if pri is not None else None
    model = None
    if taste is not None:
        model = fit_taste(
            fit_events, raw[fit], catalogue_ids, catalogue_raw, prior=pri, rng=rng, config=taste
        )
    if model is not None:
        zt = _z(model.logits(cand_raw, pc))
        found = max(
            ((auc(zt + a * zl + b * zr, rel), -(a + b), a, b) for a in taste_level_grid
             for b in taste_recent_grid),
        )  # fmt: skip
        return dataclasses.replace(cfg, level_weight=found[2], recent_weight=found[3])
    best: tuple[float, float, float, float] | None = None
    for a in level_grid:
        for w in popularity_grid if pc is not None else (cfg.popularity_weight,):
            s = a * zl + cfg.recent_weight * zr + (w * pc if pc is not None else 0.0)
            key = (auc(s, rel), -abs(a - cfg.level_weight) - abs(w - cfg.popularity_weight))
            if best is None or key > best[:2]:
                best = (*key, a, w)
    if best is None:
        return cfg
    return dataclasses.replace(cfg, level_weight=best[2], popularity_weight=best[3])


def migrate(
    old: InterestProfile,
    new_hierarchy: Hierarchy,
    *,
    events: Sequence[Event] | None = None,
    raw_vectors: npt.NDArray[np.floating] | None = None,
    adapter: AdapterWeights | None = None,
) -> InterestProfile:
    """The profile on a new hierarchy version.

    With the device's events and cached vectors, the profile is recomputed (exact). Without
    them, mass is carried over through the stable node ids: a leaf kept keeps its mass, a
    merged leaf's mass goes to its survivor (``new_hierarchy.merged``), and a leaf that is
    gone or was split is spread over the new leaves by soft assignment of its old centroid.
    Total mass is preserved either way.
    """
    new = InterestProfile(
        new_hierarchy, old.projection, adapter if adapter is not None else old.adapter, old.config
    )
    if events is not None and raw_vectors is not None:
        new.add(events, raw_vectors)
        return new
    index = {lid: i for i, lid in enumerate(new.leaf_ids)}
    for i, lid in enumerate(old.leaf_ids):
        for src, dst in ((old.mass, new.mass), (old.mass_short, new.mass_short)):
            m = float(src[i])
            if m == 0:
                continue
            target = new_hierarchy.merged.get(lid, lid)
            if target in index and lid in index:
                # kept (possibly also the parent of a split): spread by similarity among the kept
                # leaf and leaves born close to it
                p = new.soft_assign(old.leaf_c[i : i + 1].astype(np.float32))[0]
                keep = p[index[lid]]
                dst[index[lid]] += m * keep
                dst += m * (1 - keep) * _renorm_excluding(p, index[lid])
            elif target in index:
                dst[index[target]] += m
            else:
                dst += m * new.soft_assign(old.leaf_c[i : i + 1].astype(np.float32))[0]
    new.t_ref = old.t_ref
    new.events = old.events
    return new


def _renorm_excluding(p: npt.NDArray[np.float64], i: int) -> npt.NDArray[np.float64]:
    q = p.copy()
    q[i] = 0.0
    s = q.sum()
    return q / s if s > 0 else q


_STATE_PROFILE = "profile"
_STATE_PROFILE_SEQ = "profile-seq"


def device_profile(
    store: Any,
    hierarchy: Hierarchy,
    *,
    encoder: Any,
    adapter: AdapterWeights | None = None,
    projection_seed: int | None = None,
    config: ProfileConfig | None = None,
) -> InterestProfile:
    """The device's profile, kept in its store and updated **incrementally**: only events
    ingested since the last call are added; a new hierarchy version triggers a migration
    (recomputation from the cached vectors)."""
    from client.encoder import encode_cached

    prof = InterestProfile.for_hierarchy(
        hierarchy,
        encoder_dim=encoder.dim,
        encoder_id=encoder.model_id,
        projection_seed=projection_seed,
        adapter=adapter,
        config=config,
    )
    saved = store.get_json_state(_STATE_PROFILE)
    last_seq = int(store.get_json_state(_STATE_PROFILE_SEQ) or 0)
    if (
        saved is not None
        and saved.get("version") == hierarchy.version
        and saved.get("leaf_ids") == list(prof.leaf_ids)
    ):
        prof.load_state(saved)
    else:
        last_seq = 0  # another version (or none yet): recompute from the cached vectors
    rows = store.connection.execute(
        "SELECT seq, event_id FROM events WHERE seq > ? ORDER BY seq", (last_seq,)
    ).fetchall()
    if rows:
        wanted = {eid for _, eid in rows}
        new_events = [e for e in store.iter_events() if e.event_id in wanted]
        prof.add(new_events, encode_cached(encoder, store.embeddings, [e.text for e in new_events]))
        last_seq = int(rows[-1][0])
    store.set_json_state(_STATE_PROFILE, prof.to_state())
    store.set_json_state(_STATE_PROFILE_SEQ, last_seq)
    return prof


def segments(
    prof: InterestProfile,
    population: dict[str, float],
    *,
    min_population: float = 50.0,
    min_share: float = 0.15,
) -> list[dict[str, Any]]:
    """Targeting segments: the user's broad interests holding at least ``min_share`` of the
    profile, restricted to nodes whose DP population size (``population``: level-1 id ->
    estimated devices, from the server's population histogram) is at least
    ``min_population``. A segment smaller than that is never offered."""
    out = []
    for nid, share in sorted(prof.distribution(1).items(), key=lambda kv: -kv[1]):
        size = population.get(nid)
        if share >= min_share and size is not None and size >= min_population:
            out.append(
                {
                    "segment": nid,
                    "label": prof.hierarchy.nodes[nid].label,
                    "share": share,
                    "population": size,
                }
            )
    return out
