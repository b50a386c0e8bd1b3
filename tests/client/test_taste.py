"""The device's taste model: a balanced, L2-penalised logistic regression on its own items."""

from __future__ import annotations

import numpy as np
import pytest

from client.profile import ProfileConfig, calibrate_scoring
from client.taste import TasteConfig, TasteModel, _fit_logistic, fit_taste
from common.errors import ConfigError
from common.events import Event, EventType
from tests.client.test_profile import PROJ, directions, events_near, profile, tree

DAY = 86400.0


def _catalogue(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """40 items near direction 0 (the user's taste) and 160 spread over three others."""
    d = directions(4)
    rng = np.random.default_rng(seed)
    centres = [d[0]] * 40 + [d[1 + k % 3] for k in range(160)]
    raw = np.vstack([c + 0.05 * rng.normal(size=c.shape) for c in centres]).astype(np.float32)
    return [f"c{i}" for i in range(len(raw))], raw


def _history(ids: list[str], raw: np.ndarray, picks: list[int]) -> tuple[list[Event], np.ndarray]:
    evs = [
        Event(f"e{n}", "u", 1.7e9 + n * DAY, EventType.CLICK, ids[i], f"t{i}")
        for n, i in enumerate(picks)
    ]
    return evs, raw[picks]


def test_logistic_fit_matches_the_optimality_conditions() -> None:
    """The fit zeroes the gradient of the weighted, L2-penalised log-loss (intercept free)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=200) > 0.3).astype(float)
    sw = rng.uniform(0.5, 2.0, size=200)
    theta = _fit_logistic(x, y, sw, 2.0)
    p = 1.0 / (1.0 + np.exp(-(x @ theta[:-1] + theta[-1])))
    grad_w = x.T @ (sw * (p - y)) + 2.0 * theta[:-1]
    grad_b = float(sw @ (p - y))
    assert np.abs(grad_w).max() < 1e-3 and abs(grad_b) < 1e-3


def test_taste_ranks_the_users_kind_of_item_first() -> None:
    """Fit on items near direction 0, the model scores unseen items of that kind above others."""
    ids, raw = _catalogue()
    evs, vecs = _history(ids, raw, list(range(20)))
    model = fit_taste(evs, vecs, ids, raw, rng=np.random.default_rng(0))
    assert isinstance(model, TasteModel)
    s = model.logits(raw[20:])
    assert s[:20].min() > s[20:].max()


def test_prior_weight_follows_the_devices_items() -> None:
    """When the device's items are the popular ones, the prior's coefficient comes out > 0;
    when they are the unpopular ones, < 0."""
    ids, raw = _catalogue()
    same = np.repeat(raw[:1], len(raw), axis=0)  # content tells nothing apart
    prior = np.where(np.arange(len(ids)) % 2 == 0, 1.0, -1.0)
    evs, vecs = _history(ids, same, list(range(0, 40, 2)))
    up = fit_taste(evs, vecs, ids, same, prior=prior, rng=np.random.default_rng(0))
    evs, vecs = _history(ids, same, list(range(1, 40, 2)))
    down = fit_taste(evs, vecs, ids, same, prior=prior, rng=np.random.default_rng(0))
    assert up is not None and down is not None
    assert up.prior_coef_ > 0 > down.prior_coef_


def test_too_little_history_and_bad_inputs() -> None:
    """Fewer distinct items than `min_items`: no model; mismatched inputs are refused."""
    ids, raw = _catalogue()
    evs, vecs = _history(ids, raw, [0, 0, 1])
    assert fit_taste(evs, vecs, ids, raw, rng=np.random.default_rng(0)) is None
    assert fit_taste([], raw[:0], ids, raw, rng=np.random.default_rng(0)) is None
    with pytest.raises(ConfigError, match="vectors"):
        fit_taste(evs, vecs[:2], ids, raw, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="prior"):
        fit_taste(evs, vecs, ids, raw, prior=np.zeros(3), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="l2"):
        TasteConfig(l2=0.0)
    with pytest.raises(ConfigError, match="negatives"):
        TasteConfig(negatives=0)


def test_score_with_taste_and_taste_calibration() -> None:
    """With a taste model the profile score ranks the user's kind of item first, and the
    calibration on the device's own history picks weights from the taste grids."""
    d = directions(4)
    h = tree({"a": ("g1", d[0]), "b": ("g1", d[1]), "c": ("g2", d[2]), "e": ("g2", d[3])})
    ids, raw = _catalogue()
    evs, vecs = _history(ids, raw, list(range(25)))
    cfg = calibrate_scoring(
        h,
        evs,
        vecs,
        ids,
        raw,
        projection_seed=PROJ.seed,
        rng=np.random.default_rng(0),
        taste=TasteConfig(),
    )
    assert cfg.level_weight in (0.0, 0.25) and cfg.recent_weight in (0.0, 0.25, 0.5)
    assert cfg.popularity_weight == ProfileConfig().popularity_weight
    model = fit_taste(evs, vecs, ids, raw, rng=np.random.default_rng(1))
    p = profile(h, cfg)
    p.add(evs, vecs)
    s = p.score(raw[25:], taste=model)
    assert s[:15].min() > s[15:].max()
    # without a taste model, zero level and recent weights leave the weighted prior alone
    e, v = events_near(d[0], 5, 1.7e9, seed=3)
    q = profile(h, ProfileConfig(level_weight=0.0, recent_weight=0.0, popularity_weight=2.0))
    q.add(e, v)
    prior = np.array([0.5, -1.0, 2.0])
    assert np.allclose(q.score(raw[:3], prior=prior), 2.0 * prior)
