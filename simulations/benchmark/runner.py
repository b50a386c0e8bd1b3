"""The benchmark's command line: run the sections, print one table, write ``bench.json``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.benchmark import (
    adapter,
    bytes_up,
    client,
    encoder,
    encoders,
    ingest,
    scale,
    secagg,
    server,
    simulate,
    synthetic,
)

__all__ = ["SECTIONS", "main"]

#: section name (``--only``) -> its ``run(quick)``, in the order a full run takes them
SECTIONS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "encoder": encoder.run,
    "ingest": ingest.run,
    "adapter": adapter.run,
    "client": client.run,
    "server": server.run,
    "secagg": secagg.run,
    "bytes": bytes_up.run,
    "simulate": simulate.run,
    "synthetic": synthetic.run,
    "scale": scale.run,
    "engines": scale.run_quality,
    "user_level": scale.run_user_level,
    "encoders": encoders.run,
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
    if v is None:
        return f"{'-':>19}"
    if isinstance(v, float):
        return f"{v:>19.3f}" if abs(v) < 100 else f"{v:>19.1f}"
    return f"{v:>19}"


def main(argv: list[str] | None = None) -> int:
    """Runs the sections asked for, prints the table and writes the JSON; returns 0."""
    p = argparse.ArgumentParser(
        prog="python -m simulations.benchmark",
        description="Benchmarks that print one table and write ``bench.json``.",
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
    payload = {
        "quick": args.quick,
        "machine": machine,
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    # the JSON first: a long run's measurements survive a table that fails to print
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    _print_table(rows)
    print(f"\nwrote {args.out} ({payload['seconds']:.0f}s)")
    return 0
