"""A finished simulation's metrics: the federated tree against the centralized and catalogue
baselines (against category paths, or flat genres: :mod:`simulations.genres`), the ranking /
classification / drift evaluation of the device profiles, and the adapter and popularity
releases it used (``metrics.json``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.encoder import TextEncoder, encode_cached
from client.release import RELEASE_WEIGHTING
from client.store import EmbeddingCache
from common.adapter import AdapterWeights
from common.config import RunConfig
from common.events import Event
from common.features import weights_for_events
from common.hierarchy import Hierarchy
from common.kmeans import weighted_kmeans
from common.privacy import gaussian_epsilon
from common.projection import PublicProjection
from common.vocabulary import LabelSpace
from server.hierarchy_builder import CutCriterion, TreeConfig
from server.round import RoundSummary
from simulations.datasets.bundle import DatasetBundle
from simulations.evaluation import (
    METRIC_KEYS,
    GroundTruth,
    assign_to_tree,
    catalogue_baseline,
    centralized_baseline,
    clustering_metrics,
    next_event_recall,
    seed_method_baseline,
)
from simulations.genres import GenreTruth, dataset_genres, genre_metrics, genre_summary
from simulations.options import SimulateOptions
from simulations.seeding import load_seeds, seeding_record

__all__ = [
    "RunData",
    "dp_popularity",
    "final_adapter",
    "profile_metrics",
    "round_printer",
    "run_metrics",
]


def final_adapter(run_dir: Path) -> AdapterWeights | None:
    path = run_dir / "adapter.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        w = AdapterWeights(z["a"], z["b"])
    return None if w.is_identity() else w


@dataclass(frozen=True)
class RunData:
    """What a finished simulation's metrics are computed from.

    Attributes:
        opts: the run's options; run: its configuration.
        bundle: the dataset; events / held: the training and held-out events;
        train / test: the same, per user.
        encoder / cache / projection / labels: the text encoder, its embedding cache, the
            public projection and the embedded label space.
        clients: the number of devices; out: the run directory.
    """

    opts: SimulateOptions
    run: RunConfig
    bundle: DatasetBundle
    events: list[Event]
    held: list[Event]
    train: dict[str, list[Event]]
    test: dict[str, list[Event]]
    encoder: TextEncoder
    cache: EmbeddingCache
    projection: PublicProjection
    labels: LabelSpace
    clients: int
    out: Path


def run_metrics(data: RunData, h: Hierarchy, summaries: list[RoundSummary]) -> dict[str, Any]:
    """``metrics.json``'s content: the run's privacy and cost figures, the tree against the
    centralized and catalogue baselines (``genres``: against flat multi-label genres, for a
    dataset that has them), and the profile evaluation."""
    opts, run, bundle, events, held = data.opts, data.run, data.bundle, data.events, data.held
    train, test, encoder, cache = data.train, data.test, data.encoder, data.cache
    projection, labels, clients, out_dir = data.projection, data.labels, data.clients, data.out
    p = run.privacy
    done = [s for s in summaries if s.status == "ok"]
    z = summaries[0].noise_multiplier if summaries else 0.0
    per_round = math.inf if z == 0 else gaussian_epsilon(z, p.delta, p.accountant)
    total = done[-1].epsilon_event_level if done else 0.0
    total_user = done[-1].epsilon_user_level if done else 0.0
    sampled_rounds = sum(s.sampled for s in summaries) or 1
    seeding = seeding_record(out_dir)
    out: dict[str, Any] = {
        "dataset": bundle.name,
        "mode": p.mode.value,
        "no_dp": p.no_dp,
        "unit": p.unit.value,
        "seeding": seeding["seeding"],
        "seeding_detail": seeding,
        "epsilon_user_level_total": total_user,
        "epsilon_event_level_total": total,
        "epsilon_event_level_per_round": per_round,
        "epsilon_budget": p.epsilon,
        "delta": p.delta,
        "noise_multiplier": z,
        "rounds": run.rounds,
        "rounds_completed": len(done),
        "clients": clients,
        "events": len(events),
        "catalogue_items": len(bundle.catalogue),
        "bytes_up_per_client_per_round": round(
            sum(s.bytes_up for s in summaries) / sampled_rounds, 1
        ),
        "bytes_down_per_client_per_round": round(
            sum(s.bytes_down for s in summaries) / sampled_rounds, 1
        ),
        "hierarchy_version": h.version,
        "level1_nodes": len(h.level(1)),
        "level2_nodes": len(h.level(2)),
    }
    raw = encode_cached(encoder, cache, [e.text for e in events])
    vectors = projection(raw)
    adapter = final_adapter(out_dir)
    fed_vectors = projection(adapter.apply(raw)) if adapter is not None else vectors
    if events:
        # published leaves that no evaluated training event is nearest (issue 18: none)
        nearest, _ = assign_to_tree(fed_vectors, h)
        out["leaves_without_events"] = len(h.level(2)) - len(set(nearest))
    if run.adapter.enabled and adapter is not None:
        out["adapter"] = {
            "update_norm_total": round(
                adapter.minus(
                    AdapterWeights.initial(encoder.dim, run.adapter.rank, run.adapter.seed)
                ),
                6,
            ),
            "next_event_recall10": next_event_recall(events, fed_vectors, seed=run.seed),
            "next_event_recall10_without": next_event_recall(events, vectors, seed=run.seed),
        }
    if not opts.evaluate:
        return out
    weights = weights_for_events(
        events, reference_time=0.0, config=replace(RELEASE_WEIGHTING, max_weight=p.max_weight)
    )
    leaves = list(labels.vocabulary.leaves) or list(labels.vocabulary.labels)
    seeds = load_seeds(out_dir)  # catalogue seeding: the baselines start where the run did
    if seeds is None and seeding["seeding"] == "private":
        # private seeding's centralized counterpart: k-means++ on the pooled events
        k = run.clustering.leaves_to_seed(labels.vocabulary)
        rng = np.random.default_rng([run.seed, 7])
        seeds = weighted_kmeans(vectors, weights, min(k, len(vectors)), rng=rng).cluster_centers_
    if seeds is None:
        _, seeds = labels.subset(leaves)
    c = run.clustering
    tree = TreeConfig(
        criterion=CutCriterion(c.cut), level1_k=c.level1_k, label_weight=c.label_weight
    )
    # the centralized baseline sees the same training events as the federated run
    central = centralized_baseline(
        vectors, weights, seeds, labels=labels, fingerprint=projection.fingerprint, tree=tree
    )
    all_events = [*events, *held]
    truth = GroundTruth.from_events(all_events)
    genres = GenreTruth.from_events(all_events, dataset_genres(opts.dataset))
    if truth is not None or genres is not None:
        all_raw = encode_cached(encoder, cache, [e.text for e in all_events])
        all_vec = projection(all_raw)
        all_fed = projection(adapter.apply(all_raw)) if adapter is not None else all_vec
        seed_tree = seed_method_baseline(
            vectors,
            len(h.level(2)),
            len(h.level(1)),
            fingerprint=projection.fingerprint,
            seed=run.seed,
        )
        if truth is not None:
            results = {
                "federated": clustering_metrics(all_fed, h, truth),
                "centralized": clustering_metrics(all_vec, central, truth),
            }
            if bundle.catalogue:
                cat_vecs = projection(encode_cached(encoder, cache, bundle.catalogue))
                catalogue = catalogue_baseline(
                    cat_vecs, seeds, labels=labels, fingerprint=projection.fingerprint, tree=tree
                )
                results["catalogue"] = clustering_metrics(all_vec, catalogue, truth)
            results["seed_method"] = clustering_metrics(all_vec, seed_tree, truth)
            out.update(results)
            for key, base in (("ratio", "centralized"), ("seed_method_ratio", "seed_method")):
                out[key] = {
                    k: (results["federated"][k] / results[base][k])
                    if results[base].get(k)
                    else None
                    for k in METRIC_KEYS
                    if k in results["federated"]
                }
        if genres is not None:
            # flat multi-label genres (MovieLens): the same trees, the same events, fractional NMI
            out["genres"] = genre_summary(
                {
                    "federated": genre_metrics(all_fed, h, genres),
                    "centralized": genre_metrics(all_vec, central, genres),
                    "seed_method": genre_metrics(all_vec, seed_tree, genres),
                },
                genres,
            )
    out.update(
        profile_metrics(bundle, train, test, encoder, cache, h, central, adapter, out_dir, run.seed)
    )
    return out


def profile_metrics(
    bundle: DatasetBundle,
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    encoder: TextEncoder,
    cache: EmbeddingCache,
    h: Hierarchy,
    central: Hierarchy,
    adapter: AdapterWeights | None,
    out_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Ranking, classification and drift of the profiles (see :mod:`simulations.profile_eval`)."""
    from collections import Counter

    from simulations.profile_eval import (
        ProfileSide,
        classification_eval,
        drift_lags,
        node_labels,
        ranking_eval,
    )

    def vec(texts: list[str]) -> npt.NDArray[np.float32]:
        return (
            encode_cached(encoder, cache, texts)
            if texts
            else np.zeros((0, encoder.dim), np.float32)
        )

    train_pop: dict[str, float] = dict(
        Counter(e.item_id for evs in train.values() for e in evs if e.item_id)
    )
    dp_pop, dp_noise = dp_popularity(out_dir)
    fed = ProfileSide("federated", h, adapter, dp_pop, dp_noise, encoder.model_id)
    cen = ProfileSide(
        "centralized",
        central,
        None,
        train_pop if dp_pop is not None else None,
        encoder_id=encoder.model_id,
    )
    out: dict[str, Any] = {}
    if bundle.items and any(test.values()):
        out["ranking"] = ranking_eval(
            train, test, bundle.items, vec, [fed, cen], train_popularity=train_pop, seed=seed
        )
        out["ranking"]["popularity_prior"] = "dp item counts" if dp_pop is not None else "none"
    events = [e for evs in train.values() for e in evs]
    if events and all(e.category for e in events):
        projection = fed.profile([], np.zeros((0, encoder.dim), np.float32)).projection
        raw = vec([e.text for e in events])
        f1, f2 = node_labels(
            h, events, projection(adapter.apply(raw) if adapter is not None else raw)
        )
        c1, c2 = node_labels(central, events, projection(raw))
        out["classification"] = {
            "federated": classification_eval(train, test, vec, fed, f1, f2),
            "centralized": classification_eval(train, test, vec, cen, c1, c2),
        }
        if bundle.truth is not None:
            by_user: dict[str, list[Event]] = {
                u: [*train.get(u, []), *test.get(u, [])] for u in train
            }
            lag = drift_lags(bundle.truth, by_user, vec, fed, f1)
            if lag:
                out["drift"] = {"federated": lag}
    return out


def dp_popularity(run_dir: Path) -> tuple[dict[str, float] | None, float]:
    """The run's DP item counts and the standard deviation of their noise."""
    path = run_dir / "popularity.npz"
    if not path.exists():
        return None, 0.0
    with np.load(path) as z:
        counts = {str(i): float(c) for i, c in zip(z["items"], z["counts"], strict=True)}
        return counts, float(z["noise_std"])


def round_printer(
    run: RunConfig, say: Callable[[str], None], summaries: list[RoundSummary]
) -> Callable[[RoundSummary], None]:
    """Collects each round's summary and prints its progress line."""

    def on_round(s: RoundSummary) -> None:
        summaries.append(s)
        unit = run.privacy.unit
        value = s.epsilon_user_level if unit.value == "user" else s.epsilon_event_level
        eps = "inf" if not math.isfinite(value) else f"{value:.3f}"
        say(
            f"round {s.server_round}/{run.rounds}: {s.status}, {s.usable}/{s.sampled} releases, "
            f"{s.live_leaves} fine / {s.level1_nodes} broad interests, {unit.value}-level "
            f"epsilon {eps}, {s.seconds:.1f}s"
        )

    return on_round
