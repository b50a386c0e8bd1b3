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


SECTIONS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "encoder": bench_encoder,
    "ingest": bench_ingest,
}


def _print_table(rows: list[dict[str, Any]]) -> None:
    for section in dict.fromkeys(r["section"] for r in rows):
        print(f"\n== {section} ==")
        sec = [r for r in rows if r["section"] == section]
        keys = [k for k in sec[0] if k not in ("section", "case")]
        print(f"{'case':<62}" + "".join(f"{k:>20}" for k in keys))
        for r in sec:
            cells = "".join(
                f"{r[k]:>20.1f}" if isinstance(r[k], float) else f"{r[k]:>20}" for k in keys
            )
            print(f"{r['case']:<62}{cells}")


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
