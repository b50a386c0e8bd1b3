"""Section ``simulate``: end-to-end ``fedinterest simulate`` (a fresh process each, CPU seconds of
its whole process tree included) for 100 clients x 5 rounds and, full run only, 1,000 clients x
5 rounds, against the centralized non-private pipeline on the same data; with both sizes, a
linear model of the round time extrapolated to 100,000 clients."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.simulation_process import run_simulation
from simulations.benchmark.timing import load_average, median_runs

__all__ = ["run"]


def _centralized_seconds(clients: int, rounds: int, runs: int) -> float:
    """The centralized non-private pipeline on the same data as ``simulate``: every training
    event pooled (vectors from the shared cache), weighted k-means from the public seeds, the
    same tree builder."""
    from dataclasses import replace

    from client.encoder import MiniLMEncoder, encode_cached
    from client.release import RELEASE_WEIGHTING
    from client.store import EmbeddingCache
    from common.config import RunConfig
    from common.features import weights_for_events
    from common.projection import PublicProjection
    from common.vocabulary import default_vocabulary
    from server.hierarchy_builder import CutCriterion, TreeConfig
    from simulations.datasets.loaders import partition_by_user
    from simulations.evaluation import centralized_baseline
    from simulations.profile_eval import temporal_split
    from simulations.simulate import default_cache_path, embed_labels, load_bundle

    run = RunConfig(rounds=rounds)
    enc = MiniLMEncoder()
    cache = EmbeddingCache.open(default_cache_path())
    proj = PublicProjection(
        enc.dim, run.clustering.projection_dim, run.clustering.projection_seed, enc.model_id
    )

    def once() -> float:
        t0 = time.perf_counter()
        bundle = load_bundle("synthetic", clients=clients, seed=run.seed)
        train, _ = temporal_split(partition_by_user(bundle.events, max_events_per_client=5000))
        events = [e for evs in train.values() for e in evs]
        labels = embed_labels(default_vocabulary(), enc, cache, proj)
        vectors = proj(encode_cached(enc, cache, [e.text for e in events]))
        weights = weights_for_events(
            events, reference_time=0.0, config=replace(RELEASE_WEIGHTING, max_weight=1.0)
        )
        _, seeds = labels.subset(list(labels.vocabulary.leaves))
        c = run.clustering
        centralized_baseline(
            vectors,
            weights,
            seeds,
            labels=labels,
            fingerprint=proj.fingerprint,
            tree=TreeConfig(criterion=CutCriterion(c.cut), label_weight=c.label_weight),
        )
        return time.perf_counter() - t0

    once()  # the texts are cached by the simulations before; this also warms imports
    out = median_runs(once, runs)
    cache.close()
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """End-to-end ``simulate`` (secagg, eps 2, 5 rounds) for 100 and (full) 1,000 clients."""
    sizes = ((100, 1),) if quick else ((100, 3), (1000, 1))
    rows = []
    per_round: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for clients, runs in sizes:
            results = [
                run_simulation(
                    {"clients": clients, "rounds": 5, "out": str(Path(d) / f"s{clients}-{r}")}
                )
                for r in range(runs)
            ]
            med = sorted(results, key=lambda r: r["wall_seconds"])[len(results) // 2]
            central = _centralized_seconds(clients, 5, 3)
            round_s = statistics.median(r["seconds"] for r in med["rounds"])
            per_round[clients] = statistics.median(
                r["seconds"] for r in med["rounds"][1:-1] or med["rounds"]
            )
            t = med["timing"]
            sampled = sum(r["sampled"] for r in med["rounds"]) or 1
            rows.append(
                {
                    "section": "simulate",
                    "case": f"simulate {clients} clients x 5 rounds (secagg, eps 2), fresh process",
                    "runs": runs,
                    "load": med["load_before"],
                    "wall_s": med["process_wall_s"],
                    "federated_s": t["federated_seconds"],
                    "round_median_s": round_s,
                    "evaluate_s": t.get("evaluate_seconds", float("nan")),
                    "prepare_s": t.get("prepare_seconds", float("nan")),
                    "encode_s": t["encode_seconds"],
                    "cpu_s": med["cpu_s"],
                    "up_kb_per_client_round": sum(r["bytes_up"] for r in med["rounds"])
                    / sampled
                    / 1024,
                    "central_s": central,
                    "wall_over_central": med["process_wall_s"] / central,
                }
            )
    if len(per_round) >= 2:
        (n1, t1), (n2, t2) = sorted(per_round.items())[:2]
        b = (t2 - t1) / (n2 - n1)
        a = t1 - b * n1
        rows.append(
            {
                "section": "simulate",
                "case": "model: round_s = a + b x clients (middle rounds), extrapolated",
                "runs": 1,
                "load": load_average(),
                "a_s": a,
                "b_ms_per_client": 1000 * b,
                "round_100k_s": a + b * 100_000,
                "five_rounds_100k_h": 5 * (a + b * 100_000) / 3600,
            }
        )
    return rows
