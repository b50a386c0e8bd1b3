"""Section ``ingest``: events/s and peak RSS of ``fedinterest ingest`` (a separate process,
:mod:`simulations.benchmark.ingest_process`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """Events/s and peak RSS of `fedinterest ingest` in a fresh process."""
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
            out = subprocess.run(
                [sys.executable, "-m", "simulations.benchmark.ingest_process", str(db), str(src)],
                capture_output=True,
                text=True,
                check=True,
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
