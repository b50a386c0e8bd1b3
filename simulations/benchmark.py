"""Benchmarks that print one table and write ``bench.json``.

    python -m simulations.benchmark --quick          # a few minutes
    python -m simulations.benchmark                  # the full run
    python -m simulations.benchmark --only encoder   # one section

Each figure is the median of several runs. Sections:

- ``encoder``: texts/s of the MiniLM encoder for short and long texts, cold (model calls) vs
  warm (embedding-cache hits).
- ``ingest``: events/s and peak RSS of ``fedinterest ingest`` (a separate process) for two file
  sizes; flat RSS across sizes is the constant-memory check.
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
                "cold_texts_per_s": n / cold_s,
                "warm_texts_per_s": n / warm_s,
                "warm_over_cold": cold_s / warm_s,
            }
        )
    return rows


def bench_ingest(quick: bool) -> list[dict[str, Any]]:
    from simulations.datasets.synthetic import SyntheticConfig, generate

    sizes = (20_000, 100_000) if quick else (100_000, 1_000_000)
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


SECTIONS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "encoder": bench_encoder,
    "ingest": bench_ingest,
    "adapter": bench_adapter,
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
