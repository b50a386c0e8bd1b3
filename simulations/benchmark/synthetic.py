"""Section ``synthetic``: seconds, peak RSS and distinct texts of the synthetic generator's
column path (:func:`~simulations.datasets.synthetic.generate_table`, default config, a fresh
process each: :mod:`simulations.benchmark.synthetic_process`) at 1,000 and 10,000 users
(quick) or 10,000 and 100,000 users (full run; target: 100,000 users in under ~20 s and
~1 GB)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from simulations.benchmark.timing import load_average

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per population size."""
    rows = []
    for users in (1_000, 10_000) if quick else (10_000, 100_000):
        load = load_average()
        out = subprocess.run(
            [sys.executable, "-m", "simulations.benchmark.synthetic_process", str(users)],
            capture_output=True,
            text=True,
            check=True,
        )
        secs, rss_kb, events, texts = out.stdout.split()
        rows.append(
            {
                "section": "synthetic",
                "case": f"generate_table, {users:,} users x 60 median events",
                "events": int(events),
                "seconds": float(secs),
                "peak_rss_mb": int(rss_kb) / 1024,
                "distinct_texts": int(texts),
                "load": load,
            }
        )
    return rows
