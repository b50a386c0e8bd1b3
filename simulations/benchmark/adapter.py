"""Section ``adapter``: DP-SGD vs plain SGD step time (and, full run only, one device's round
with the adapter, and the adapter's effect on the tree and recall in two simulations)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.fixtures import device_store, round_config
from simulations.benchmark.timing import median_time
from simulations.options import Engine

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """DP-SGD vs non-private step time, one device's round time (release + adapter), and the
    adapter's effect on the tree metrics and on next-event recall@10 (two simulations)."""
    import warnings

    import numpy as np

    from client.adapter import AdapterTrainParams, adapter_round, next_event_pairs, train_adapter
    from client.encoder import MiniLMEncoder, encode_cached
    from client.release import ReleaseParams, release_round
    from client.store import EmbeddingCache, EventStore
    from common.adapter import AdapterWeights
    from common.config import AdapterConfig, PrivacyConfig, RunConfig
    from common.privacy import PrivacyBudget, noise_multiplier_for_rounds
    from common.projection import PublicProjection, normalize_rows
    from common.vocabulary import default_vocabulary
    from simulations.simulate import SimulateOptions, default_cache_path, simulate

    warnings.filterwarnings("ignore")
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    pairs = normalize_rows(rng.normal(size=(400, 384)).astype(np.float32))
    pairs = next_event_pairs(pairs)
    neg = normalize_rows(rng.normal(size=(160, 384)).astype(np.float32))
    w = AdapterWeights.initial(384, 8, 7)
    params = AdapterTrainParams(steps=20, sample_rate=0.08)
    train_adapter(w, pairs, neg, params, seed=0)  # warm imports
    dp = median_time(lambda: train_adapter(w, pairs, neg, params, seed=1), 3)
    plain = median_time(lambda: train_adapter(w, pairs, neg, params, seed=1, private=False), 3)
    rows.append(
        {
            "section": "adapter",
            "case": "20 steps, ~32 examples/step, rank 8: DP-SGD vs plain SGD",
            "dp_ms_per_step": 1000 * dp / 20,
            "plain_ms_per_step": 1000 * plain / 20,
            "overhead_x": dp / plain,
        }
    )

    if quick:  # the device round is in the client section; the simulations take minutes
        return rows
    # one device's round with cached texts: release, then adapter step
    enc = MiniLMEncoder()
    cache = EmbeddingCache.open(default_cache_path())
    proj = PublicProjection(384, 128, encoder_id=enc.model_id)
    vocab = default_vocabulary()
    seeds = proj(encode_cached(enc, cache, [lab.text for lab in vocab.leaves]))
    z = noise_multiplier_for_rounds(epsilon=2.0, delta=1e-5, rounds=5)
    for n_events in (200, 1000) if quick else (200, 1000, 5000):
        with tempfile.TemporaryDirectory() as d:
            device_store(Path(d) / "dev.db", n_events, enc, cache)
            store = EventStore(Path(d) / "dev.db", create=False)
            times_rel, times_ad = [], []
            for r in range(1, 4):
                t0 = time.perf_counter()
                release_round(
                    store,
                    ReleaseParams.from_config(round_config(proj, r, z)),
                    seeds,
                    encoder=enc,
                    budget=PrivacyBudget(100.0, 1e-5),
                    rng=np.random.default_rng(r),
                )
                times_rel.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                adapter_round(
                    store,
                    AdapterTrainParams(),
                    w,
                    neg,
                    server_round=r,
                    encoder=enc,
                    budget=PrivacyBudget(100.0, 1e-5),
                    seed=r,
                )
                times_ad.append(time.perf_counter() - t0)
            store.close()
        rows.append(
            {
                "section": "adapter",
                "case": f"device round, {n_events} cached events: release / adapter (10 steps)",
                "release_s": statistics.median(times_rel),
                "adapter_s": statistics.median(times_ad),
            }
        )

    # effect on the metrics
    clients = 30 if quick else 100
    res = {}
    for enabled in (False, True):
        with tempfile.TemporaryDirectory() as d:
            run = RunConfig(
                rounds=5, privacy=PrivacyConfig(epsilon=2.0), adapter=AdapterConfig(enabled=enabled)
            )
            m = simulate(
                SimulateOptions(
                    engine=Engine.DEVICES, clients=clients, out=Path(d) / "run", run=run
                )
            )
        res[enabled] = m
    for enabled, m in res.items():
        ad = m.get("adapter", {})
        rows.append(
            {
                "section": "adapter",
                "case": f"simulate {clients} clients x 5 rounds, eps 2, adapter {'on' if enabled else 'off'}",
                "nmi_level1": m["federated"]["nmi_level1"],
                "item_nmi_level2": m["federated"]["item_nmi_level2"],
                "dendrogram_purity": m["federated"]["dendrogram_purity"],
                "recall10_adapter": ad.get("next_event_recall10", float("nan")),
                "recall10_without": ad.get("next_event_recall10_without", float("nan")),
                "wall_s": m["wall_seconds"],
            }
        )
    return rows
