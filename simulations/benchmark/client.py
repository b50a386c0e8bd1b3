"""Section ``client``: one device's round at 200 / 1,000 / 5,000 events: embedding the round's
new events, local k-means, the DP release, the adapter's DP-SGD steps; peak RSS of a fresh
device process (:mod:`simulations.benchmark.device_process`) with and without training (torch
and Opacus load only for training)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.fixtures import device_store, fresh_accounting, round_config
from simulations.benchmark.timing import load_average, median_runs

__all__ = ["run"]


def _client_case(
    n: int, d: Path, c: dict[str, Any], runs: int, fresh_process: bool = True
) -> list[dict[str, Any]]:
    """One device size of :func:`bench_client` (``c``: the shared encoder, cache, arrays)."""
    import numpy as np

    from client.adapter import AdapterTrainParams, adapter_round
    from client.encoder import encode_cached
    from client.local_clustering import assign_public, weighted_kmeans
    from client.release import ReleaseParams, event_vectors, leaf_sums, release_round
    from client.store import EventStore

    enc, proj, rng = c["enc"], c["proj"], c["rng"]
    load = load_average()
    path = d / f"dev{n}.db"
    device_store(path, n, enc, c["cache"])
    store = EventStore(path, create=False)
    rounds = iter(range(1, 10**6))
    new = max(1, n // 10)
    events = store.events()
    vectors = event_vectors(events, store, enc, proj)
    weights = np.ones(len(events))

    def embed_new() -> float:
        r = next(rounds)
        texts = [f"new event {r}-{i}: a fresh search for trail shoes" for i in range(new)]
        t0 = time.perf_counter()
        encode_cached(enc, store.embeddings, texts)
        return time.perf_counter() - t0

    def cluster() -> float:
        t0 = time.perf_counter()
        weighted_kmeans(vectors, weights, min(16, len(vectors)), rng=rng)
        return time.perf_counter() - t0

    def release() -> float:
        params = ReleaseParams.from_config(round_config(proj, next(rounds), c["z"]))
        fresh_accounting()
        t0 = time.perf_counter()
        release_round(store, params, c["centroids"], encoder=enc, budget=c["budget"], rng=rng)
        return time.perf_counter() - t0

    def adapter() -> float:
        r = next(rounds)
        fresh_accounting()
        t0 = time.perf_counter()
        adapter_round(
            store,
            AdapterTrainParams(),
            c["w0"],
            c["neg"],
            server_round=r,
            encoder=enc,
            budget=c["budget"],
            seed=r,
        )
        return time.perf_counter() - t0

    def plain() -> float:  # the baseline: non-private leaf sums of the cached vectors
        t0 = time.perf_counter()
        vec = event_vectors(events, store, enc, proj)
        a = assign_public(vec, c["centroids"], residual_threshold=0.2)
        leaf_sums(vec, weights, a, 257, clipping_norm=1.0, max_weight=1.0)
        return time.perf_counter() - t0

    adapter()  # torch + Opacus import once per device process: not part of a round
    t_embed = median_runs(embed_new, runs)
    t_cluster = median_runs(cluster, runs)
    t_release = median_runs(release, runs)
    t_adapter = median_runs(adapter, runs)
    t_plain = median_runs(plain, runs)
    store.close()
    cached_round = t_cluster + t_release + t_adapter
    row = {
        "section": "client",
        "case": f"device round, {n} events ({new} new), 256 leaves x 128, 1 thread",
        "runs": runs,
        "load": load,
        "embed_new_s": t_embed,
        "kmeans_s": t_cluster,
        "release_s": t_release,
        "dpsgd_s": t_adapter,
        "round_cached_s": cached_round,
        "round_with_new_s": cached_round + t_embed,
        "plain_sums_s": t_plain,
        "round_over_plain": cached_round / t_plain,
    }
    if not fresh_process:
        return [row]
    procs = {}
    for train in (False, True):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "simulations.benchmark.device_process",
                str(path),
                str(c["z"]),
                "1" if train else "0",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        procs[train] = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        row,
        {
            "section": "client",
            "case": f"fresh device process, {n} events: release only / release + DP-SGD",
            "runs": 1,
            "load": load,
            "release_only_s": procs[False]["seconds"],
            "release_only_rss_mb": procs[False]["peak_rss_mb"],
            "imports_without_training": ",".join(procs[False]["imported"]) or "-",
            "with_training_s": procs[True]["seconds"],
            "with_training_rss_mb": procs[True]["peak_rss_mb"],
        },
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """One device's round: new-event embedding, local k-means, DP release, DP-SGD steps."""
    import warnings

    import numpy as np

    from client.encoder import EncoderConfig, MiniLMEncoder
    from client.store import EmbeddingCache
    from common.adapter import AdapterWeights
    from common.privacy import PrivacyBudget, noise_multiplier_for_rounds
    from common.projection import PublicProjection, normalize_rows
    from simulations.simulate import default_cache_path

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    enc = MiniLMEncoder(EncoderConfig(num_threads=1))  # a device core
    shared: dict[str, Any] = {
        "enc": enc,
        "cache": EmbeddingCache.open(default_cache_path()),
        "proj": PublicProjection(384, 128, encoder_id=enc.model_id),
        "rng": rng,
        "centroids": normalize_rows(rng.normal(size=(256, 128)).astype(np.float32)),
        "neg": normalize_rows(rng.normal(size=(160, 384)).astype(np.float32)),
        "w0": AdapterWeights.initial(384, 8, 7),
        "z": noise_multiplier_for_rounds(epsilon=2.0, delta=1e-5, rounds=5),
        "budget": PrivacyBudget(1e6, 1e-5),
    }
    shared["enc"].encode(["warm up the model"])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for n in (200, 1000) if quick else (200, 1000, 5000):
            rows += _client_case(n, Path(d), shared, runs=3, fresh_process=n == 1000 or not quick)
    shared["cache"].close()
    return rows
