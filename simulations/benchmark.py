"""Benchmarks that print one table and write ``bench.json``.

    python -m simulations.benchmark --quick          # under 5 minutes on 2 cores
    python -m simulations.benchmark                  # the full run (1,000-client simulation)
    python -m simulations.benchmark --only server    # one section (repeatable)

Each figure is the median of several runs (``runs`` says how many), with its ratio to a
baseline measured in the same run; every row carries the 1-minute load average before it was
taken (``load``), because on a shared machine contention, not the code, often dominates.
Sections:

- ``encoder``: texts/s of the MiniLM encoder for short and long texts, cold (model calls) vs
  warm (embedding-cache hits); fp32 vs dynamic int8 quantisation (a faster path, with its
  cosine to fp32; not the default: it is below 0.99).
- ``ingest``: events/s and peak RSS of ``fedinterest ingest`` (a separate process).
- ``adapter``: DP-SGD vs plain SGD step time (and, full run only, the adapter's effect on
  the tree and recall in two simulations).
- ``client``: one device's round at 200 / 1,000 / 5,000 events: embedding the round's new
  events, local k-means, the DP release, the adapter's DP-SGD steps; peak RSS of a fresh
  device process with and without training (torch and Opacus load only for training).
- ``server``: validating and summing 100 / 1,000 / 10,000 local-mode releases of 257 x 128,
  then the DP-Lloyd aggregation and the tree build.
- ``secagg``: SecAgg+ crypto per device and the server's unmasking per device, Flower's
  stock Shamir vs the simulation's (:mod:`simulations.flower_speedups`).
- ``bytes``: upload per device per round at 256 leaves x 128 dims under SecAgg+ and in local
  mode, against FedAvg of the full MiniLM (its parameter count x 4 bytes).
- ``simulate``: end-to-end ``fedinterest simulate`` (a fresh process each, CPU seconds of
  its whole process tree included) for 100 clients x 5 rounds and, full run only, 1,000
  clients x 5 rounds, against the centralized non-private pipeline on the same data; with
  both sizes, a linear model of the round time extrapolated to 100,000 clients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _median_runs(fn: Callable[[], float], runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


class _TreeCPU:
    """CPU seconds (user + system) used by a process and all its descendants (Ray's raylet,
    workers and actors included), sampled from ``/proc`` twice a second. Linux only."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)] = int(fields[1])
            cpu[int(d)] = (int(fields[11]) + int(fields[12])) / self._tick
        tree = {self.pid}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parent.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        for pid in tree:
            if pid in cpu:
                self._seen[pid] = max(self._seen.get(pid, 0.0), cpu[pid])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _TreeCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())


def _vmhwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _texts(n: int, long: bool, seed: int) -> list[str]:
    from simulations.datasets.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=max(20, n // 40), seed=seed))
    base = sorted({e.text for e in ds.events}, key=len)
    if not long:
        short = [t for t in base if len(t) < 60]
        return [f"{short[i % len(short)]} #{i}" for i in range(n)]
    paragraphs = [" ".join(base[(i * 7 + k) % len(base)] for k in range(12)) for i in range(n)]
    return paragraphs


def bench_encoder(quick: bool) -> list[dict[str, Any]]:
    from client.encoder import EncoderConfig, MiniLMEncoder, encode_cached
    from client.store import EmbeddingCache

    threads = min(2, os.cpu_count() or 1)
    enc = MiniLMEncoder(EncoderConfig(num_threads=threads))
    enc.encode(["warm up the model"])
    runs = 3
    rows = []
    load = _load()
    for kind, n in (("short", 256 if quick else 1024), ("long", 32 if quick else 128)):
        texts = _texts(n, kind == "long", seed=11)
        avg_chars = sum(map(len, texts)) / len(texts)
        cold = []
        warm = []
        for r in range(runs):
            with tempfile.TemporaryDirectory() as d:
                cache = EmbeddingCache.open(Path(d) / "c.db")
                batch = [f"{t} [{r}]" for t in texts]  # new texts each run: a real cold cache
                t0 = time.perf_counter()
                encode_cached(enc, cache, batch)
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                encode_cached(enc, cache, batch)
                warm.append(time.perf_counter() - t0)
                cache.close()
        cold_s, warm_s = statistics.median(cold), statistics.median(warm)
        rows.append(
            {
                "section": "encoder",
                "case": f"{kind} texts (~{avg_chars:.0f} chars), fp32, {threads} threads",
                "n": n,
                "runs": runs,
                "load": load,
                "cold_texts_per_s": n / cold_s,
                "warm_texts_per_s": n / warm_s,
                "warm_over_cold": cold_s / warm_s,
            }
        )
    rows.append(_encoder_int8(enc, quick, threads, runs))
    return rows


def _encoder_int8(enc: Any, quick: bool, threads: int, runs: int) -> dict[str, Any]:
    """Dynamic int8 quantisation of MiniLM's Linear layers (torch) against fp32 model calls on
    the same texts; its cosine to fp32 decides whether it could be a default (>= 0.99)."""
    import numpy as np
    import torch

    from client.encoder import EncoderConfig, MiniLMEncoder

    load = _load()
    texts = _texts(64 if quick else 512, False, seed=12)
    q = MiniLMEncoder(EncoderConfig(num_threads=threads))
    q.encode(["warm up"])
    q._model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        q._model, {torch.nn.Linear}, dtype=torch.qint8
    )
    q.encode(["warm up"])
    t_fp = _median_time(lambda: enc.encode(texts), runs)
    t_q = _median_time(lambda: q.encode(texts), runs)
    cos = (np.asarray(enc.encode(texts)) * np.asarray(q.encode(texts))).sum(axis=1)
    return {
        "section": "encoder",
        "case": f"short texts, dynamic int8 (torch) vs fp32 model calls, {threads} threads",
        "n": len(texts),
        "runs": runs,
        "load": load,
        "fp32_texts_per_s": len(texts) / t_fp,
        "int8_texts_per_s": len(texts) / t_q,
        "speedup_x": t_fp / t_q,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "default": bool(cos.min() >= 0.99),
    }


def bench_ingest(quick: bool) -> list[dict[str, Any]]:
    from simulations.datasets.synthetic import SyntheticConfig, generate

    sizes = (10_000, 50_000) if quick else (100_000, 1_000_000)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        base = generate(SyntheticConfig(users=400, seed=21)).events
        for n in sizes:
            src = Path(d) / f"e{n}.jsonl"
            with open(src, "w", encoding="utf-8") as f:
                for i in range(n):
                    e = base[i % len(base)].to_dict()
                    e["event_id"] = f"b{i}"
                    f.write(json.dumps(e) + "\n")
            db = Path(d) / f"e{n}.db"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
            code = (
                "import sys, time; from simulations.cli import main; t=time.perf_counter(); "
                f"rc = main(['ingest', '--store', {str(db)!r}, {str(src)!r}, '-q']); "
                "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
                "print(time.perf_counter()-t, hwm); sys.exit(rc)"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            secs, rss_kb = out.stdout.split()
            rows.append(
                {
                    "section": "ingest",
                    "case": f"{n:,} JSONL lines -> SQLite (batches of 1000, synchronous=FULL)",
                    "n": n,
                    "events_per_s": n / float(secs),
                    "peak_rss_mb": int(rss_kb) / 1024,
                    "file_mb": src.stat().st_size / 2**20,
                }
            )
            src.unlink()
    return rows


def bench_adapter(quick: bool) -> list[dict[str, Any]]:
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
    from common.events import iter_records
    from common.privacy import PrivacyBudget, noise_multiplier_for_rounds
    from common.projection import PublicProjection, normalize_rows
    from common.records import RoundKeys
    from common.vocabulary import default_vocabulary
    from simulations.datasets.synthetic import SyntheticConfig, generate
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
    dp = _median_time(lambda: train_adapter(w, pairs, neg, params, seed=1), 3)
    plain = _median_time(lambda: train_adapter(w, pairs, neg, params, seed=1, private=False), 3)
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
    proj = PublicProjection(384, 128)
    vocab = default_vocabulary()
    seeds = proj(encode_cached(enc, cache, [lab.text for lab in vocab.leaves]))
    z = noise_multiplier_for_rounds(epsilon=2.0, delta=1e-5, rounds=5)
    for n_events in (200, 1000) if quick else (200, 1000, 5000):
        ds = generate(SyntheticConfig(users=max(1, n_events // 60), seed=31, events_per_user=60))
        evs = [dataclasses.replace(e, user_id="one") for e in ds.events[:n_events]]
        with tempfile.TemporaryDirectory() as d:
            store = EventStore(Path(d) / "dev.db")
            store.ingest(iter_records(evs), flag_quality=False)
            texts = sorted({e.text for e in evs})
            vecs = encode_cached(enc, cache, texts)
            from common.events import text_hash

            store.embeddings.put(enc.model_id, [text_hash(t) for t in texts], vecs)
            cfg = {
                RoundKeys.SERVER_ROUND: 1,
                RoundKeys.HIERARCHY_VERSION: 0,
                RoundKeys.MODE: "secagg",
                RoundKeys.CLIPPING_NORM: 1.0,
                RoundKeys.MAX_WEIGHT: 1.0,
                RoundKeys.NOISE_MULTIPLIER: z,
                RoundKeys.NOISE_STD: z / np.sqrt(70),
                RoundKeys.MIN_COHORT: 70,
                RoundKeys.USER_CLIPPING_NORM: 100.0,
                RoundKeys.RESIDUAL_THRESHOLD: 0.2,
                RoundKeys.PROJECTION_SEED: proj.seed,
                RoundKeys.PROJECTION_DIM: 128,
                RoundKeys.PROJECTION_FINGERPRINT: proj.fingerprint,
                RoundKeys.DELTA: 1e-5,
            }
            times_rel, times_ad = [], []
            for r in range(1, 4):
                cfg[RoundKeys.SERVER_ROUND] = r
                t0 = time.perf_counter()
                release_round(
                    store,
                    ReleaseParams.from_config(cfg),
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
            m = simulate(SimulateOptions(clients=clients, out=Path(d) / "run", run=run))
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


# -- client ------------------------------------------------------------------------------------


def _round_config(proj: Any, server_round: int, z: float) -> dict[str, Any]:
    import math

    from common.records import RoundKeys

    return {
        RoundKeys.SERVER_ROUND: server_round,
        RoundKeys.HIERARCHY_VERSION: 0,
        RoundKeys.MODE: "secagg",
        RoundKeys.CLIPPING_NORM: 1.0,
        RoundKeys.MAX_WEIGHT: 1.0,
        RoundKeys.NOISE_MULTIPLIER: z,
        RoundKeys.NOISE_STD: z / math.sqrt(70),
        RoundKeys.MIN_COHORT: 70,
        RoundKeys.USER_CLIPPING_NORM: 100.0,
        RoundKeys.RESIDUAL_THRESHOLD: 0.2,
        RoundKeys.PROJECTION_SEED: proj.seed,
        RoundKeys.PROJECTION_DIM: proj.output_dim,
        RoundKeys.PROJECTION_FINGERPRINT: proj.fingerprint,
        RoundKeys.DELTA: 1e-5,
    }


def _device_store(path: Path, n_events: int, enc: Any, cache: Any) -> None:
    """A device store with ``n_events`` synthetic events of one user, all texts cached."""
    from client.encoder import encode_cached
    from client.store import EventStore
    from common.events import iter_records, text_hash
    from simulations.datasets.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=max(1, n_events // 60), seed=31, events_per_user=60))
    evs = [dataclasses.replace(e, user_id="one") for e in ds.events[:n_events]]
    with EventStore(path) as store:
        store.ingest(iter_records(evs), flag_quality=False)
        texts = sorted({e.text for e in evs})
        vecs = encode_cached(enc, cache, texts)
        store.embeddings.put(enc.model_id, [text_hash(t) for t in texts], vecs)


_DEVICE_CHILD = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from client.encoder import MiniLMEncoder
from client.release import ReleaseParams, release_round
from client.store import EventStore
from common.adapter import AdapterWeights
from common.privacy import PrivacyBudget
from common.projection import PublicProjection, normalize_rows
from simulations.benchmark import _round_config, _vmhwm_mb
store_path, z, train = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
enc = MiniLMEncoder()
proj = PublicProjection(384, 128)
rng = np.random.default_rng(0)
centroids = normalize_rows(rng.normal(size=(256, 128)).astype(np.float32))
with EventStore(store_path, create=False) as store:
    release_round(store, ReleaseParams.from_config(_round_config(proj, 99, z)), centroids,
                  encoder=enc, budget=PrivacyBudget(1e6, 1e-5), rng=rng)
    if train:
        from client.adapter import AdapterTrainParams, adapter_round
        neg = normalize_rows(rng.normal(size=(160, 384)).astype(np.float32))
        adapter_round(store, AdapterTrainParams(), AdapterWeights.initial(384, 8, 7), neg,
                      server_round=99, encoder=enc, budget=PrivacyBudget(1e6, 1e-5), seed=1)
mods = [m for m in ("torch", "opacus", "transformers") if m in sys.modules]
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": _vmhwm_mb(), "imported": mods}))
"""


def _fresh_accounting() -> None:
    """Forget memoised epsilons: every real round composes a ledger it has not seen before
    (otherwise the second device size would reuse the first one's accounting)."""
    from common.privacy import accounting

    accounting._epsilon_cached.cache_clear()


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
    load = _load()
    path = d / f"dev{n}.db"
    _device_store(path, n, enc, c["cache"])
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
        params = ReleaseParams.from_config(_round_config(proj, next(rounds), c["z"]))
        _fresh_accounting()
        t0 = time.perf_counter()
        release_round(store, params, c["centroids"], encoder=enc, budget=c["budget"], rng=rng)
        return time.perf_counter() - t0

    def adapter() -> float:
        r = next(rounds)
        _fresh_accounting()
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
    t_embed = _median_runs(embed_new, runs)
    t_cluster = _median_runs(cluster, runs)
    t_release = _median_runs(release, runs)
    t_adapter = _median_runs(adapter, runs)
    t_plain = _median_runs(plain, runs)
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
            [sys.executable, "-c", _DEVICE_CHILD, str(path), str(c["z"]), "1" if train else "0"],
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


def bench_client(quick: bool) -> list[dict[str, Any]]:
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
    shared: dict[str, Any] = {
        "enc": MiniLMEncoder(EncoderConfig(num_threads=1)),  # a device core
        "cache": EmbeddingCache.open(default_cache_path()),
        "proj": PublicProjection(384, 128),
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


# -- server ------------------------------------------------------------------------------------


def bench_server(quick: bool) -> list[dict[str, Any]]:
    """Validating and summing N local-mode releases, then aggregation and the tree."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    from client.encoder import MiniLMEncoder
    from client.store import EmbeddingCache
    from common.projection import PublicProjection, normalize_rows
    from common.records import REPLY_ARRAYS, REPLY_META, SUMS, ReplyKeys, ReplyStatus
    from common.vocabulary import default_vocabulary
    from server.aggregation import AggregationConfig, aggregate_round, initial_state
    from server.hierarchy_builder import build_hierarchy
    from server.strategy import _noise_norm_bound, validate_local_reply
    from simulations.simulate import default_cache_path, embed_labels

    enc = MiniLMEncoder()
    cache = EmbeddingCache.open(default_cache_path())
    proj = PublicProjection(384, 128)
    labels = embed_labels(default_vocabulary(), enc, cache, proj)
    cache.close()
    _, seed_vecs = labels.subset(list(labels.vocabulary.leaves))
    rng = np.random.default_rng(5)
    extra = normalize_rows(
        seed_vecs[rng.integers(0, len(seed_vecs), 256 - len(seed_vecs))]
        + 0.3 * rng.normal(size=(256 - len(seed_vecs), 128)).astype(np.float32)
    )
    seeds = np.concatenate([seed_vecs, extra])  # 256 public leaves
    state = initial_state(seeds)
    std = 0.5
    shape = (257, 128)
    pool: list[Message] = []
    for _ in range(64):  # distinct device releases, cycled
        x = np.zeros(shape, np.float32)
        leaves = rng.integers(0, 256, 5)
        x[leaves] = seeds[leaves] * rng.uniform(5, 30, (5, 1))
        x += rng.normal(0, std, shape).astype(np.float32)
        pool.append(
            Message(  # type: ignore[call-overload]
                RecordDict(
                    {
                        REPLY_ARRAYS: ArrayRecord({SUMS: Array(x)}),
                        REPLY_META: ConfigRecord(
                            {
                                ReplyKeys.STATUS: ReplyStatus.OK.value,
                                ReplyKeys.SERVER_ROUND: 1,
                                ReplyKeys.HIERARCHY_VERSION: 0,
                            }
                        ),
                    }
                ),
                metadata=Metadata(
                    run_id=1,
                    message_id=f"m{len(pool)}",
                    src_node_id=len(pool) + 2,
                    dst_node_id=1,
                    reply_to_message_id="",
                    group_id="1",
                    created_at=0.0,
                    ttl=3600.0,
                    message_type="train.interests",
                ),
            )
        )
    bound = 100.0 + _noise_norm_bound(std, shape[0] * shape[1])
    rows = []
    for n in (100, 1000, 10_000):
        load = _load()
        runs = 3

        def validate_sum(n: int = n) -> tuple[float, Any]:
            t0 = time.perf_counter()
            total = np.zeros(shape)
            for i in range(n):
                x = validate_local_reply(
                    pool[i % len(pool)],
                    expected_shape=shape,
                    norm_bound=bound,
                    server_round=1,
                    version=0,
                )
                assert x is not None
                total += x
            return time.perf_counter() - t0, total

        def plain(n: int = n) -> float:
            t0 = time.perf_counter()
            total = np.zeros(shape, np.float32)
            for i in range(n):
                total += pool[i % len(pool)].content.array_records[REPLY_ARRAYS][SUMS].numpy()
            return time.perf_counter() - t0

        def aggregate_and_tree(total: Any, n: int = n) -> float:
            t0 = time.perf_counter()
            new, _ = aggregate_round(
                state, total, noise_var=n * std**2, config=AggregationConfig(), server_round=1
            )
            live = np.arange(new.num_leaves)[: max(4, new.num_leaves)]
            build_hierarchy(
                [new.ids[i] for i in live],
                new.centroids[live],
                np.ones(len(live)),
                version=1,
                server_round=1,
                projection_fingerprint=proj.fingerprint,
                labels=labels,
                previous=None,
                merged_leaves={},
            )
            return time.perf_counter() - t0

        vs = [validate_sum() for _ in range(runs)]
        t_validate = statistics.median(t for t, _ in vs)
        t_agg = _median_runs(partial(aggregate_and_tree, vs[0][1]), runs)
        t_plain = _median_runs(plain, runs)
        rows.append(
            {
                "section": "server",
                "case": f"{n:,} local-mode releases of 257 x 128: validate + sum, DP-Lloyd + tree",
                "runs": runs,
                "load": load,
                "validate_sum_s": t_validate,
                "aggregate_tree_s": t_agg,
                "total_s": t_validate + t_agg,
                "plain_sum_s": t_plain,
                "total_over_plain": (t_validate + t_agg) / t_plain,
            }
        )
    return rows


# -- secagg ------------------------------------------------------------------------------------


def bench_secagg(quick: bool) -> list[dict[str, Any]]:
    """SecAgg+ crypto of one device per round and the server's unmasking per device, with
    Flower's stock Shamir (pycryptodome) vs the simulation's speed-ups."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    from server.secagg import DEFAULT_NUM_SHARES, DEFAULT_RECONSTRUCTION_THRESHOLD
    from simulations.flower_speedups import flower_speedups

    sk, _pk = generate_key_pairs()
    skb = private_key_to_bytes(sk)
    pubs = [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(64)]
    shape = [(1,), (257, 128)]
    runs = 3
    rows = []
    for k in (DEFAULT_NUM_SHARES,) if quick else (11, 21, 31):
        t = max(2, round(DEFAULT_RECONSTRUCTION_THRESHOLD * k))
        load = _load()

        def device(fast: bool, k: int = k, t: int = t) -> float:
            t0 = time.perf_counter()
            create_shares(os.urandom(32), t, k)
            create_shares(skb, t, k)
            for j in range(k - 1):  # stage 1: shares out; stage 2: pairwise masks
                key = generate_shared_key(bytes_to_private_key(skb), bytes_to_public_key(pubs[j]))
                encrypt(key, b"x" * 400)
                key = generate_shared_key(bytes_to_private_key(skb), bytes_to_public_key(pubs[j]))
                pseudo_rand_gen(key, 1 << 32, shape)
            pseudo_rand_gen(os.urandom(32), 1 << 32, shape)
            return time.perf_counter() - t0

        shares = create_shares(os.urandom(32), t, k)

        def server(shares: list[bytes] = shares) -> float:
            t0 = time.perf_counter()
            combine_shares(shares)
            pseudo_rand_gen(os.urandom(32), 1 << 32, shape)
            return time.perf_counter() - t0

        stock_dev = _median_runs(lambda: device(False), runs)
        stock_srv = _median_runs(server, runs)
        with flower_speedups():
            fast_dev = _median_runs(lambda: device(True), runs)
            fast_srv = _median_runs(server, runs)
        rows.append(
            {
                "section": "secagg",
                "case": f"SecAgg+ per device per round, {k} shares, threshold {t}, 257 x 128",
                "runs": runs,
                "load": load,
                "device_stock_ms": 1000 * stock_dev,
                "device_fast_ms": 1000 * fast_dev,
                "server_stock_ms": 1000 * stock_srv,
                "server_fast_ms": 1000 * fast_srv,
                "server_speedup_x": stock_srv / fast_srv,
            }
        )
    return rows


# -- simulations in a fresh process -------------------------------------------------------------


def _simulate_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one simulation (called in a subprocess by :func:`_run_simulation`)."""
    from common.config import AnalyticsConfig, PrivacyConfig, RunConfig
    from simulations.simulate import SimulateOptions, simulate

    run = RunConfig(
        rounds=int(spec["rounds"]),
        privacy=PrivacyConfig(mode=spec.get("mode", "secagg")),
        analytics=AnalyticsConfig(popularity=bool(spec.get("popularity", True))),
    )
    taxonomy = Path(spec["taxonomy"]) if spec.get("taxonomy") else None
    m = simulate(
        SimulateOptions(
            clients=int(spec["clients"]),
            out=Path(spec["out"]),
            run=run,
            overwrite=True,
            taxonomy=taxonomy,
            evaluate=bool(spec.get("evaluate", True)),
        )
    )
    with open(Path(spec["out"]) / "rounds.jsonl", encoding="utf-8") as f:
        rounds = [json.loads(line) for line in f]
    keep = ("wall_seconds", "timing", "rounds_completed", "clients", "events")
    out = {k: m[k] for k in keep if k in m}
    out["rounds"] = [
        {k: r[k] for k in ("server_round", "seconds", "sampled", "bytes_up", "bytes_down")}
        for r in rounds
    ]
    if "federated" in m:
        out["nmi_level1"] = m["federated"].get("nmi_level1")
        out["ratio_nmi_level1"] = (m.get("ratio") or {}).get("nmi_level1")
    return out


def _run_simulation(spec: dict[str, Any]) -> dict[str, Any]:
    """One simulation in a fresh process; adds its wall and whole-tree CPU seconds."""
    code = (
        "import json, sys; from simulations.benchmark import _simulate_child; "
        "print(json.dumps(_simulate_child(json.loads(sys.argv[1]))))"
    )
    load = _load()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _TreeCPU(proc.pid) as cpu:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"simulation {spec} failed:\n{err[-3000:]}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    res["cpu_s"] = cpu.seconds
    res["load_before"] = load
    res["load_after"] = _load()
    return res


def _taxonomy_256(path: Path) -> None:
    """A label space with 256 leaves: the default vocabulary plus numbered variants."""
    from common.vocabulary import DEFAULT_VOCABULARY

    pairs = [(root, leaf) for root, leaves in DEFAULT_VOCABULARY.items() for leaf in leaves]
    i = 0
    while len(pairs) < 256:
        root, leaf = pairs[i % len(pairs)]
        pairs.append((root, f"{leaf} (variant {i // len(DEFAULT_VOCABULARY) + 2})"))
        i += 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("category\n")
        for root, leaf in pairs[:256]:
            f.write(f"{root}>{leaf}\n")


def _minilm_parameters() -> int:
    """Parameter count of the bundled MiniLM, read from its safetensors header."""
    import struct

    from client.encoder import default_model_dir

    total = 0
    for f in sorted(default_model_dir().glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total


def bench_bytes(quick: bool) -> list[dict[str, Any]]:
    """Upload per device per round at 256 leaves x 128 dims, measured on the wire (Flower's
    serialised message content) in a real simulation, SecAgg+ and local mode."""
    params = _minilm_parameters()
    fedavg = params * 4
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tax = Path(d) / "tax256.tsv"
        _taxonomy_256(tax)
        for mode in ("secagg",) if quick else ("secagg", "local"):
            res = _run_simulation(
                {
                    "clients": 24,  # more than the shares per device
                    "rounds": 1,
                    "mode": mode,
                    "popularity": False,
                    "evaluate": False,
                    "taxonomy": str(tax),
                    "out": str(Path(d) / mode),
                }
            )
            r = res["rounds"][0]
            up = r["bytes_up"] / r["sampled"]
            payload = 257 * 128 * 4
            rows.append(
                {
                    "section": "bytes",
                    "case": f"{mode}: 24 devices, 256 leaves x 128 dims, one tree round",
                    "runs": 1,
                    "load": res["load_before"],
                    "up_bytes_per_device": up,
                    "down_bytes_per_device": r["bytes_down"] / r["sampled"],
                    "payload_float32_bytes": payload,
                    "overhead_bytes": up - payload,
                    "fedavg_minilm_bytes": fedavg,
                    "fedavg_over_ours": fedavg / up,
                }
            )
    return rows


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
    proj = PublicProjection(384, run.clustering.projection_dim, run.clustering.projection_seed)

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
    out = _median_runs(once, runs)
    cache.close()
    return out


def bench_simulate(quick: bool) -> list[dict[str, Any]]:
    """End-to-end ``simulate`` (secagg, eps 2, 5 rounds) for 100 and (full) 1,000 clients."""
    sizes = ((100, 1),) if quick else ((100, 3), (1000, 1))
    rows = []
    per_round: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for clients, runs in sizes:
            results = [
                _run_simulation(
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
                "load": _load(),
                "a_s": a,
                "b_ms_per_client": 1000 * b,
                "round_100k_s": a + b * 100_000,
                "five_rounds_100k_h": 5 * (a + b * 100_000) / 3600,
            }
        )
    return rows


SECTIONS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "encoder": bench_encoder,
    "ingest": bench_ingest,
    "adapter": bench_adapter,
    "client": bench_client,
    "server": bench_server,
    "secagg": bench_secagg,
    "bytes": bench_bytes,
    "simulate": bench_simulate,
}


def _print_table(rows: list[dict[str, Any]]) -> None:
    for section in dict.fromkeys(r["section"] for r in rows):
        print(f"\n== {section} ==")
        sec = [r for r in rows if r["section"] == section]
        for keys in dict.fromkeys(tuple(k for k in r if k not in ("section", "case")) for r in sec):
            print(f"{'case':<70}" + "".join(f"{k:>19}" for k in keys))
            for r in sec:
                if tuple(k for k in r if k not in ("section", "case")) != keys:
                    continue
                cells = "".join(_cell(r[k]) for k in keys)
                print(f"{r['case']:<70}{cells}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:>19.3f}" if abs(v) < 100 else f"{v:>19.1f}"
    return f"{v:>19}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simulations.benchmark", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    p.add_argument(
        "--only", choices=sorted(SECTIONS), action="append", help="run only these sections"
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench.json"), help="where to write the JSON (bench.json)"
    )
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.only or list(SECTIONS):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(SECTIONS[name](args.quick))
    machine = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "max_rss_mb_of_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    _print_table(rows)
    payload = {
        "quick": args.quick,
        "machine": machine,
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({payload['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
