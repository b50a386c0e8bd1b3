"""Empirical privacy audit: canaries, a membership attack from the server's view, and a
one-run lower bound on epsilon (Steinke, Nasr and Jagielski 2023, "Privacy auditing with one
(1) training run").

**At user level** (the run's ``unit`` is ``user``, the default) the canaries are **canary
devices**: each chosen device's whole data is replaced by its canary (one event on a canary
text and a canary item added to the public catalogue) when present, and by nothing when
absent: the add/remove-one-device relation the guarantee is about. The attacker also reads the
released item popularity: a present canary device adds its whole clipped count vector to its
canary item's count (1 without noise), an absent one 0; the score is that count, which needs
no regression, so a run of 1,000 devices can hold 500 canaries (the leaf-sum regression below
cannot separate more canaries in a row than the row has coordinates). Without popularity the
leaf-sum score is used. At event level the canaries are events added to their devices, as
before.

1. ``m`` canary devices each get a unique canary text (gibberish no user writes, chosen among
   public candidates so that it lands in the unassigned row, where no real interest is);
   each canary is inserted with probability 1/2, independently (the auditor's secret).
2. The pipeline runs as configured (same mode, epsilon, rounds).
3. The attacker sees what the server sees: each round's public centroids and the DP cohort
   sums. Per round and row it regresses the row sum on the vectors of the canaries assigned
   to that row (plus the row's centroid, which absorbs the real events' contribution) and adds
   each canary's coefficient to its score.
4. It guesses "present" for the top quarter of the scores and "absent" for the bottom
   quarter, and abstains on the middle half (fixed in advance; abstaining on uncertain
   canaries is what makes one-run audits tight).
5. If the pipeline is (epsilon, delta)-DP, the number of correct guesses among ``r`` is
   stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) up to a ``2 m delta`` slack
   (their Theorem 3, simplified); the largest epsilon the observed count rejects at
   confidence 95% is the empirical lower bound.

With noise the bound must stay below the accounted epsilon; without noise (``--no-dp``) it
must be large: the audit catches missing noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import binom

from client.encoder import encode_cached
from client.encoder_registry import make_encoder
from client.local_clustering import assign_public
from client.store import EmbeddingCache
from common.adapter import AdapterWeights
from common.errors import ConfigError
from common.events import Event, EventType
from common.projection import PublicProjection
from common.vocabulary import default_vocabulary
from server.storage import ServerStorage

__all__ = ["EmpiricalResult", "canary_texts", "one_run_lower_bound", "run_empirical_audit"]

_SYLLABLES = (
    "ka",
    "zu",
    "rix",
    "mo",
    "te",
    "vel",
    "qua",
    "nor",
    "fi",
    "lux",
    "dra",
    "pe",
    "sho",
    "gim",
    "tol",
    "bek",
    "yst",
    "orp",
)


def one_run_lower_bound(
    correct: int, guesses: int, canaries: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest epsilon rejected at ``confidence`` by ``correct`` right guesses out of
    ``guesses`` (0.0 when no epsilon is rejected)."""
    if guesses == 0 or correct == 0:
        return 0.0
    beta = 1.0 - confidence
    slack = 2 * canaries * delta

    def tail(eps: float) -> float:
        p = math.exp(eps) / (1 + math.exp(eps))
        return float(binom.sf(correct - 1, guesses, p)) + slack

    if tail(0.0) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while tail(hi) < beta:
        lo, hi = hi, hi * 2
        if hi > 100:
            return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if tail(mid) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def canary_texts(
    m: int,
    *,
    seed: int,
    encoder: Any,
    cache: EmbeddingCache,
    projection: PublicProjection,
    seeds: npt.NDArray[np.float32],
    threshold: float,
    pool: int = 1500,
) -> list[str]:
    """``m`` gibberish canaries whose best cosine to every public seed centroid is below
    ``threshold`` (so they land in the unassigned row), least similar first."""
    rng = np.random.default_rng(seed)

    def word() -> str:
        return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))

    cands = sorted(
        {f"{word()} {word()} {word()} {int(rng.integers(100, 999))} {word()}" for _ in range(pool)}
    )
    vecs = projection(encode_cached(encoder, cache, cands))
    best = (vecs @ seeds.T).max(axis=1)
    order = np.argsort(best)
    chosen = [cands[i] for i in order[:m]]
    if len(chosen) < m:
        raise ConfigError(f"found only {len(chosen)} canary candidates; ask for fewer canaries.")
    return chosen


@dataclass(frozen=True)
class EmpiricalResult:
    """The outcome of one empirical audit.

    Attributes:
        epsilon_max_attainable: the bound this many guesses give when every one is right:
            no run can be shown to violate more than this.
        unit: ``user`` (canary devices) or ``event`` (canary events).
        attack: ``popularity`` or ``leaf sums``: the output the scores came from.
    """

    canaries: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    epsilon_accounted: float
    no_dp: bool
    run_dir: str
    epsilon_max_attainable: float = math.nan
    unit: str = "event"
    attack: str = "leaf sums"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _attack(
    storage: ServerStorage,
    canary_vecs_raw: npt.NDArray[np.float32],
    projection: PublicProjection,
    rounds: int,
    threshold: float,
) -> npt.NDArray[np.float64]:
    """Each canary's membership score from the server's view.

    Per round and row, the row sum is regressed on the vectors of the canaries assigned to it
    (plus the row's centroid for a leaf row: it absorbs the real events); each canary's
    coefficient enters its score weighted by the inverse of its squared standard error, so
    clean rounds count more than noisy ones.
    """
    m = len(canary_vecs_raw)
    num = np.zeros(m)
    den = np.zeros(m)
    for r in range(1, rounds + 1):
        view = storage.get_arrays(f"round:{r}")
        if view is None:
            continue
        adapter_arr = storage.get_arrays(f"adapter:v{r}")
        raw = canary_vecs_raw
        if adapter_arr is not None:
            raw = AdapterWeights.from_arrays(adapter_arr).apply(raw)
        cvec = projection(raw).astype(np.float64)
        centroids = np.asarray(view["centroids"], dtype=np.float32)
        total = np.asarray(view["cohort_sum"], dtype=np.float64)
        rows = assign_public(cvec.astype(np.float32), centroids, residual_threshold=threshold)
        for row in np.unique(rows):
            idx = np.where(rows == row)[0]
            design = cvec[idx].T
            if row < len(centroids):  # a leaf row: its centroid absorbs the real events
                design = np.column_stack([design, centroids[row].astype(np.float64)])
            n_obs, n_par = design.shape
            if n_par >= n_obs:
                continue
            coef, *_ = np.linalg.lstsq(design, total[row], rcond=None)
            resid = total[row] - design @ coef
            sigma2 = max(float(resid @ resid) / (n_obs - n_par), 1e-18)
            cov_diag = np.diag(np.linalg.pinv(design.T @ design))[: len(idx)]
            w = 1.0 / np.maximum(sigma2 * cov_diag, 1e-18)
            num[idx] += w * coef[: len(idx)]
            den[idx] += w
    out: npt.NDArray[np.float64] = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    return out


def run_empirical_audit(
    run_dir: str | Path,
    *,
    no_dp: bool = False,
    canaries: int | None = None,
    seed: int = 12345,
    cache: Path | None = None,
    progress: Any = None,
) -> EmpiricalResult:
    """Re-runs the run in ``run_dir`` (same dataset and privacy settings) with canaries under
    ``run_dir/empirical[-nodp]`` and attacks it; returns the empirical lower bound."""
    from simulations.audit import audit_run
    from simulations.simulate import default_cache_path, options_from_run_dir, simulate

    d = Path(run_dir)
    base = options_from_run_dir(d)
    run = base.run
    if no_dp:
        run = replace(run, privacy=replace(run.privacy, no_dp=True))
    clients = int(base.clients)
    user_level = run.privacy.unit.value == "user"
    # canary devices replace devices' data: keep half the population real
    default = min(2000, max(2, clients // 2)) if user_level else clients
    m = min(canaries or default, clients)
    encoder = make_encoder(base.encoder)
    emb = EmbeddingCache.open(cache or default_cache_path())
    projection = PublicProjection(
        encoder.dim, run.clustering.projection_dim, run.clustering.projection_seed, encoder.model_id
    )
    seeds = projection(
        encode_cached(encoder, emb, [lab.text for lab in default_vocabulary().leaves])
    )
    texts = canary_texts(
        m,
        seed=seed,
        encoder=encoder,
        cache=emb,
        projection=projection,
        seeds=seeds,
        threshold=run.clustering.residual_threshold,
        pool=max(1500, 3 * m),
    )
    rng = np.random.default_rng(seed + 1)
    present = rng.random(m) < 0.5
    devices = sorted(int(i) for i in rng.choice(clients, size=m, replace=False))
    t_end = 1.7e9
    inserted = {
        dev: [
            Event(
                event_id=f"canary-{j}",
                user_id=f"canary-{j}",
                timestamp=t_end,
                event_type=EventType.PURCHASE,
                item_id=f"canary-item-{j}",
                text=texts[j],
            )
        ]
        for j, dev in enumerate(devices)
        if present[j]
    }
    # the canary belongs to the device's user
    out = d / ("empirical-nodp" if no_dp else "empirical")
    opts = replace(base, out=out, run=run, cache=cache, overwrite=True, canaries={}, evaluate=False)
    bundle_users = _users_of(opts)
    fixed = {
        dev: [replace(e, user_id=bundle_users[dev]) for e in evs] for dev, evs in inserted.items()
    }
    if user_level:
        # canary devices: an absent canary's device holds nothing
        fixed = {dev: fixed.get(dev, []) for dev in devices}
    canary_items = tuple(f"canary-item-{j}" for j in range(m))
    simulate(
        replace(
            opts,
            canaries=fixed,
            canary_devices=user_level,
            canary_items=canary_items if user_level else (),
        ),
        progress=progress,
    )
    popularity = _popularity_scores(out, canary_items) if user_level else None
    attack = "popularity" if popularity is not None else "leaf sums"
    if popularity is not None:
        scores = popularity
    else:
        raw = encode_cached(encoder, emb, texts)
        with ServerStorage(out / "server.db") as st:
            scores = _attack(st, raw, projection, run.rounds, run.clustering.residual_threshold)
    emb.close()
    order = np.argsort(-scores)
    k = max(1, m // 4)  # fixed in advance: guess the top and bottom quarters, abstain on the rest
    guess_present, guess_absent = order[:k], order[m - k :]
    correct = int(present[guess_present].sum() + (~present[guess_absent]).sum())
    guesses = len(guess_present) + len(guess_absent)
    bound = one_run_lower_bound(correct, guesses, m, run.privacy.delta)
    ceiling = one_run_lower_bound(guesses, guesses, m, run.privacy.delta)
    report = audit_run(out)
    accounted = (
        report["headline"]["epsilon_user_level"]
        if user_level
        else report["event_level"]["epsilon_max"]
    )
    return EmpiricalResult(
        m,
        guesses,
        correct,
        bound,
        float(accounted),
        no_dp,
        str(out),
        ceiling,
        "user" if user_level else "event",
        attack,
    )


def _popularity_scores(
    run_dir: Path, canary_items: tuple[str, ...]
) -> npt.NDArray[np.float64] | None:
    """Each canary item's released count (``None`` when the run released no popularity)."""
    path = run_dir / "popularity.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        counts = {str(i): float(c) for i, c in zip(z["items"], z["counts"], strict=True)}
    if not all(item in counts for item in canary_items):
        return None
    return np.array([counts[item] for item in canary_items], dtype=np.float64)


def _users_of(opts: Any) -> list[str]:
    """The run's user ids by device index (the same order in both engines)."""
    from simulations.datasets.bundle import load_population

    table, _ = load_population(
        opts.dataset,
        clients=opts.clients,
        seed=opts.run.seed,
        events_per_user=opts.events_per_user,
        max_events_per_client=opts.max_events_per_client,
    )
    return table.users
