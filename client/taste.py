"""The device's taste model: a logistic regression fit **on the device** that tells the items
its user touched from public catalogue items it never touched.

Features of an item: its L2-normalised raw encoder vector and the catalogue's standardised
popularity prior (:func:`common.popularity.standardised_prior`, a post-processing of the DP
item counts). Positives: the distinct items of the device's own events (the catalogue vector
when the item is in the catalogue, else the event's own vector; weighted by recency with the
profile's half-life, so that the model leans towards what the user does now). Negatives:
``negatives`` catalogue items drawn uniformly among those the device never touched. Both
classes carry the same total weight ("balanced"), and the weights are L2-penalised
(``0.5 * l2 * |w|^2``, the intercept free): the objective of scikit-learn's
``LogisticRegression(C=1/l2, class_weight="balanced")``, solved with SciPy's L-BFGS.

Everything the model reads is the device's own history and public (or DP-released) values;
nothing leaves the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.events import Event

__all__ = ["TasteConfig", "TasteModel", "fit_taste"]

_DAY = 86400.0


@dataclass(frozen=True)
class TasteConfig:
    """Taste-model settings (a public rule, the same on every device).

    Attributes:
        l2: L2 penalty of the weights (scikit-learn's ``C`` is ``1 / l2``; 1 is its default).
        negatives: untouched catalogue items drawn as negatives.
        half_life_days: recency weighting of the positives (``None``: all weigh the same).
        min_items: fewer distinct items than this and no model is fit.
    """

    l2: float = 1.0
    negatives: int = 500
    half_life_days: float | None = 30.0
    min_items: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.l2) and self.l2 > 0):
            raise ConfigError(f"`l2` must be > 0. Found {self.l2!r}.")
        for name in ("negatives", "min_items"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"`{name}` must be an int >= 1. Found {v!r}.")
        h = self.half_life_days
        if h is not None and not (math.isfinite(h) and h > 0):
            raise ConfigError(f"`half_life_days` must be > 0 or None. Found {h!r}.")


@dataclass(frozen=True)
class TasteModel:
    """A fitted taste model: ``logit(x) = coef_ . unit(x) + prior_coef_ * prior + intercept_``."""

    coef_: npt.NDArray[np.float64]
    prior_coef_: float
    intercept_: float

    def logits(
        self, raw_vectors: npt.NDArray[np.floating], prior: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float64]:
        """Logits of items (raw encoder vectors, shape ``(n, dim)``; ``prior``: their
        standardised popularity prior, ``None`` for none)."""
        x = _unit(np.asarray(raw_vectors, dtype=np.float64))
        if x.shape[1:] != self.coef_.shape:
            raise ConfigError(
                f"the taste model has dimension {len(self.coef_)}. Found vectors of shape "
                f"{x.shape}."
            )
        out: npt.NDArray[np.float64] = x @ self.coef_ + self.intercept_
        if prior is not None:
            p = np.asarray(prior, dtype=np.float64)
            if p.shape != (len(x),):
                raise ConfigError(
                    f"`prior` must hold one value per item ({len(x)}). Found shape {p.shape}."
                )
            out = out + self.prior_coef_ * p
        return out


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = x / np.where(n > 0, n, 1.0)
    return out


def fit_taste(
    events: Sequence[Event],
    raw_vectors: npt.NDArray[np.floating],
    catalogue_ids: Sequence[str],
    catalogue_raw: npt.NDArray[np.floating],
    *,
    prior: npt.ArrayLike | None = None,
    rng: np.random.Generator,
    config: TasteConfig | None = None,
) -> TasteModel | None:
    """Fits the device's taste model (see the module docstring); ``None`` with fewer than
    ``min_items`` distinct items or no untouched catalogue item.

    Args:
        events / raw_vectors: the device's events and their raw encoder vectors ``(n, dim)``.
        catalogue_ids / catalogue_raw: the public catalogue and its raw vectors ``(m, dim)``.
        prior: the catalogue's standardised popularity prior, shape ``(m,)`` (``None``: none).
        rng: draws the negatives.
    """
    cfg = config or TasteConfig()
    raw = np.asarray(raw_vectors, dtype=np.float64)
    cat = np.asarray(catalogue_raw, dtype=np.float64)
    if len(events) != len(raw):
        raise ConfigError(f"{len(events)} events but {len(raw)} vectors.")
    if len(catalogue_ids) != len(cat):
        raise ConfigError(f"{len(catalogue_ids)} catalogue ids but {len(cat)} catalogue vectors.")
    pri = np.zeros(len(cat)) if prior is None else np.asarray(prior, dtype=np.float64)
    if pri.shape != (len(cat),) or not np.all(np.isfinite(pri)):
        raise ConfigError(
            f"`prior` must hold one finite value per catalogue item ({len(cat)}). "
            f"Found shape {pri.shape}."
        )
    if len(events) == 0:
        return None
    index = {c: i for i, c in enumerate(catalogue_ids)}
    t_last = max(e.timestamp for e in events)
    # one positive per distinct item, weighted by its most recent event
    best: dict[str, tuple[float, int]] = {}
    for i, e in enumerate(events):
        key = e.item_id or f"\0{e.text}"
        w = 1.0
        if cfg.half_life_days is not None:
            w = 0.5 ** ((t_last - e.timestamp) / (cfg.half_life_days * _DAY))
        if key not in best or w > best[key][0]:
            best[key] = (w, i)
    if len(best) < cfg.min_items:
        return None
    pos_x, pos_p, pos_w = [], [], []
    for key, (w, i) in best.items():
        j = index.get(key)
        pos_x.append(cat[j] if j is not None else raw[i])
        pos_p.append(pri[j] if j is not None else 0.0)
        pos_w.append(w)
    pool = rng.choice(len(cat), size=min(len(cat), cfg.negatives + len(best)), replace=False)
    neg = [int(j) for j in pool if catalogue_ids[int(j)] not in best][: cfg.negatives]
    if not neg:
        return None
    x = _unit(np.vstack([np.asarray(pos_x), cat[neg]]))
    x = np.hstack([x, np.concatenate([pos_p, pri[neg]])[:, None]])
    y = np.concatenate([np.ones(len(pos_x)), np.zeros(len(neg))])
    half = 0.5 * len(y)
    wp = np.asarray(pos_w)
    sw = np.concatenate([wp * half / wp.sum(), np.full(len(neg), half / len(neg))])
    theta = _fit_logistic(x, y, sw, cfg.l2)
    return TasteModel(theta[:-2].copy(), float(theta[-2]), float(theta[-1]))


def _fit_logistic(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    sw: npt.NDArray[np.float64],
    l2: float,
) -> npt.NDArray[np.float64]:
    """Weighted L2-penalised logistic regression; returns ``[weights..., intercept]``."""
    from scipy.optimize import minimize
    from scipy.special import expit, log1p

    sign = 2.0 * y - 1.0

    def loss(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        w, b = theta[:-1], theta[-1]
        m = sign * (x @ w + b)
        # log(1 + exp(-m)), stable on both sides
        nll = np.where(m > 0, log1p(np.exp(-np.abs(m))), -m + log1p(np.exp(-np.abs(m))))
        g = -sw * sign * expit(-m)
        grad = np.concatenate([x.T @ g + l2 * w, [g.sum()]])
        return float(sw @ nll + 0.5 * l2 * (w @ w)), grad

    res = minimize(
        loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    out: npt.NDArray[np.float64] = res.x
    return out
