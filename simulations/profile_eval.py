"""Evaluation of the dynamic profiles: ranking held-out items, classifying held-out events,
and the drift lag.

- **Temporal split**: per user, the last 20% of events (by time) are held out; the hierarchy
  (federated and centralized) and the profiles only see the first 80%.
- **Ranking**: per user, the distinct held-out catalogue items are ranked among 100 items the
  user never touched (sampled uniformly from the catalogue): AUC, nDCG@10 and recall@10,
  averaged over users, for the federated DP profile, the centralized non-private profile,
  popularity (training counts) and random.
- **Scoring** (both profiles alike): :meth:`client.profile.InterestProfile.score` with the
  device's taste model (:func:`client.taste.fit_taste`: a logistic regression, fit on the
  device, of its own training items against untouched public catalogue items, on the raw
  item vector and the popularity prior), i.e. ``z(taste logits) + level_weight x z(level
  similarity) + recent_weight x z(recent-event similarity)``, where the prior is the
  empirical-Bayes popularity of :mod:`common.popularity` (federated: from the DP item counts
  the run released, with their noise; centralized: the exact counts). Each device first
  calibrates its two weights on its own training history
  (:func:`client.profile.calibrate_scoring`: taste model and profile from the earlier 80% of
  its training events, the latest 20% against public catalogue items), on the device, with
  calibration and taste-model samples drawn apart from the test negatives. A device with too
  few items for a taste model falls back to the profile score without it.
- **Classification**: each held-out event's level-1 and level-2 category is predicted as the
  ground-truth label (majority over training events) of the user's top level-1 node and top
  leaf: accuracy and macro precision/recall/F1.
- **Drift lag** (synthetic): for each user whose interests switch, the number of events after
  the switch until the profile's top level-1 interest is one of the new interests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from client.profile import InterestProfile, ProfileConfig, calibrate_scoring
from client.taste import TasteConfig, fit_taste
from common.adapter import AdapterWeights
from common.events import Event
from common.hierarchy import Hierarchy
from common.metrics import auc, classification_scores, ndcg_at_k, recall_at_k
from common.popularity import standardised_prior

__all__ = [
    "ProfileSide",
    "classification_eval",
    "drift_lags",
    "node_labels",
    "ranking_eval",
    "temporal_split",
]


def temporal_split(
    parts: dict[str, list[Event]], holdout: float = 0.2, min_events: int = 5
) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    """Per user, the last ``holdout`` share of events (time order) is the test set; users with
    fewer than ``min_events`` events keep everything for training."""
    train: dict[str, list[Event]] = {}
    test: dict[str, list[Event]] = {}
    for uid, evs in parts.items():
        evs = sorted(evs, key=lambda e: (e.timestamp, e.event_id))
        n_test = round(holdout * len(evs)) if len(evs) >= min_events else 0
        train[uid] = evs[: len(evs) - n_test]
        test[uid] = evs[len(evs) - n_test :]
    return train, test


@dataclass
class ProfileSide:
    """One profile pipeline: a tree (and adapter), and item popularity counts (with the
    standard deviation of the noise they carry: 0 for exact counts)."""

    name: str
    hierarchy: Hierarchy
    adapter: AdapterWeights | None
    popularity: dict[str, float] | None
    popularity_noise_std: float = 0.0
    encoder_id: str = ""

    def profile(
        self,
        events: Sequence[Event],
        raw: npt.NDArray[np.float32],
        config: ProfileConfig | None = None,
    ) -> InterestProfile:
        p = InterestProfile.for_hierarchy(
            self.hierarchy,
            encoder_dim=int(raw.shape[1]),
            encoder_id=self.encoder_id,
            adapter=self.adapter,
            config=config,
        )
        p.add(events, raw)
        return p

    def prior(self, ids: Sequence[str]) -> npt.NDArray[np.float64] | None:
        """The standardised popularity prior of the catalogue ``ids`` (``None``: no counts)."""
        if self.popularity is None:
            return None
        counts = [self.popularity.get(i, 0.0) for i in ids]
        return standardised_prior(counts, self.popularity_noise_std)


def ranking_eval(
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    items: dict[str, str],
    vectors: Callable[[list[str]], npt.NDArray[np.float32]],
    sides: list[ProfileSide],
    *,
    train_popularity: dict[str, float],
    negatives: int = 100,
    seed: int = 0,
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Mean AUC, nDCG@k and recall@k per method (the sides, ``popularity``, ``random``).

    Args:
        vectors: raw encoder vectors of texts, shape ``(n, dim)``.
    """
    rng = np.random.default_rng(seed)
    calib_rng = np.random.default_rng([seed, 1])
    taste_rng = np.random.default_rng([seed, 2])
    taste_cfg = TasteConfig()
    ids = sorted(items)
    item_index = {i: n for n, i in enumerate(ids)}
    item_raw = vectors([items[i] for i in ids])
    priors = {side.name: side.prior(ids) for side in sides}
    scores: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for uid, held in test.items():
        pos = sorted({e.item_id for e in held if e.item_id in items})
        if not pos or not train.get(uid):
            continue
        touched = {e.item_id for e in train[uid]} | {e.item_id for e in held}
        pool = rng.choice(len(ids), size=min(len(ids), 4 * negatives + len(touched)), replace=False)
        negs = [ids[i] for i in pool if ids[i] not in touched][:negatives]
        cand = pos + negs
        cand_index = [item_index[c] for c in cand]
        rel = np.array([1] * len(pos) + [0] * len(negs), dtype=bool)
        raw = item_raw[cand_index]
        tr_raw = vectors([e.text for e in train[uid]])
        tie = rng.random(len(cand)) * 1e-9
        methods: dict[str, npt.NDArray[np.float64]] = {}
        for side in sides:
            prior = priors[side.name]
            config = calibrate_scoring(
                side.hierarchy,
                train[uid],
                tr_raw,
                ids,
                item_raw,
                prior=prior,
                adapter=side.adapter,
                encoder_id=side.encoder_id,
                rng=calib_rng,
                taste=taste_cfg,
            )
            taste = fit_taste(
                train[uid], tr_raw, ids, item_raw, prior=prior, rng=taste_rng, config=taste_cfg
            )
            methods[side.name] = side.profile(train[uid], tr_raw, config).score(
                raw, prior=None if prior is None else prior[cand_index], taste=taste
            )
        methods["popularity"] = np.asarray(
            [train_popularity.get(c, 0.0) for c in cand], dtype=np.float64
        )
        methods["random"] = rng.random(len(cand))
        for name, s in methods.items():
            s = s + tie
            order = np.argsort(-s)
            scores[name].append((auc(s, rel), ndcg_at_k(rel[order], k), recall_at_k(rel[order], k)))
    out = {}
    for name, vals in scores.items():
        a = np.asarray(vals)
        out[name] = {
            "auc": float(a[:, 0].mean()),
            "ndcg10": float(a[:, 1].mean()),
            "recall10": float(a[:, 2].mean()),
            "users": len(vals),
        }
    return out


def node_labels(
    h: Hierarchy, events: Sequence[Event], projected: npt.NDArray[np.float32]
) -> tuple[dict[str, str], dict[str, str]]:
    """Majority ground-truth label per level-1 node and per leaf (training events assigned by
    nearest leaf)."""
    ids, c = h.centroids(2)
    best = np.argmax(projected @ c.T, axis=1)
    l1: dict[str, Counter[str]] = defaultdict(Counter)
    l2: dict[str, Counter[str]] = defaultdict(Counter)
    for e, b in zip(events, best, strict=True):
        path = e.category_path
        if not path:
            continue
        leaf = ids[int(b)]
        l2[leaf][" > ".join(path[:2])] += 1
        l1[h.nodes[leaf].parent or ""][path[0]] += 1
    return {k: v.most_common(1)[0][0] for k, v in l1.items()}, {
        k: v.most_common(1)[0][0] for k, v in l2.items()
    }


def classification_eval(
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    vectors: Callable[[list[str]], npt.NDArray[np.float32]],
    side: ProfileSide,
    labels1: dict[str, str],
    labels2: dict[str, str],
) -> dict[str, dict[str, float]]:
    """Level-1 and level-2 classification of held-out events from the user's top interests."""
    t1: list[str] = []
    p1: list[str] = []
    t2: list[str] = []
    p2: list[str] = []
    for uid, held in test.items():
        held = [e for e in held if e.category_path]
        if not held or not train.get(uid):
            continue
        prof = side.profile(train[uid], vectors([e.text for e in train[uid]]))
        top1 = prof.top(1, 1)
        top2 = prof.top(2, 1)
        g = labels1.get(top1[0].node_id, "?") if top1 else "?"
        leaf = labels2.get(top2[0].node_id, "?") if top2 else "?"
        for e in held:
            t1.append(e.category_path[0])
            p1.append(g)
            if len(e.category_path) >= 2:
                t2.append(" > ".join(e.category_path[:2]))
                p2.append(leaf)
    out: dict[str, dict[str, float]] = {}
    if t1:
        out["level1"] = classification_scores(t1, p1)
    if t2:
        out["level2"] = classification_scores(t2, p2)
    return out


def drift_lags(
    users: Sequence[Any],
    events_by_user: dict[str, list[Event]],
    vectors: Callable[[list[str]], npt.NDArray[np.float32]],
    side: ProfileSide,
    labels1: dict[str, str],
    config: ProfileConfig | None = None,
) -> dict[str, Any]:
    """Events after the switch until the top level-1 interest is a new interest (synthetic
    users with ``drift_at``); ``median``, ``p90``, and how many never switched in the data."""
    lags: list[int] = []
    censored = 0
    for u in users:
        if getattr(u, "drift_at", None) is None:
            continue
        new_roots = {leaf.split(" > ")[0] for leaf, _ in u.interests_after}
        evs = sorted(events_by_user.get(u.user_id, []), key=lambda e: (e.timestamp, e.event_id))
        raw = vectors([e.text for e in evs])
        prof = side.profile([], raw[:0], config)
        before = [i for i, e in enumerate(evs) if e.timestamp < u.drift_at]
        if before:
            prof.add([evs[i] for i in before], raw[before])
        lag = None
        after = [i for i, e in enumerate(evs) if e.timestamp >= u.drift_at]
        for n, i in enumerate(after, start=1):
            prof.add([evs[i]], raw[i : i + 1])
            top = prof.top(1, 1)
            if top and labels1.get(top[0].node_id) in new_roots:
                lag = n
                break
        if lag is None:
            censored += 1
        else:
            lags.append(lag)
    if not lags and not censored:
        return {}
    arr = np.asarray(lags, dtype=np.float64)
    return {
        "users": len(lags) + censored,
        "switched": len(lags),
        "never_switched": censored,
        "median_events": float(np.median(arr)) if len(arr) else None,
        "p90_events": float(np.percentile(arr, 90)) if len(arr) else None,
    }
