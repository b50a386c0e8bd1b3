"""``fedinterest report``: one self-contained HTML page per run (:mod:`simulations.report`)."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from simulations.cli.base import emit, fmt_eps, positive_int, stderr_lines

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Runs ``report``."""
    from simulations.report import MAX_REPORT_BYTES, write_report

    res = write_report(
        args.run_dir,
        args.out,
        reaudit=args.reaudit,
        utility=not args.no_utility,
        utility_devices=args.utility_devices,
        compress=not args.no_compress,
        progress=stderr_lines(args),
    )
    payload = res.to_dict()
    s = res.summary

    def human() -> None:
        print(
            f"wrote {res.path} ({res.bytes / 1e6:.2f} MB, {res.figures} charts, "
            f"sections: {', '.join(res.sections)}) in {res.seconds:.1f}s"
        )
        print(
            f"  tree v{s['hierarchy_version']}: {s['level1_nodes']} broad / {s['level2_nodes']} fine "
            f"interests over {s['versions']} versions; event-level epsilon "
            f"{fmt_eps(s['epsilon_event_level_max'])}, user-level "
            f"{fmt_eps(s['epsilon_user_level']) if s['epsilon_user_level'] is not None else '-'}, "
            f"audit flags {s['audit_flags']}"
            + (f", empirical audit: {', '.join(s['empirical'])}" if s["empirical"] else "")
        )
        if res.bytes > MAX_REPORT_BYTES:
            print(f"  note: larger than {MAX_REPORT_BYTES / 1e6:.0f} MB", file=sys.stderr)

    emit(args, payload, human)
    return 0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``report``."""
    from simulations.report.build import write_report

    devices = inspect.signature(write_report).parameters["utility_devices"].default
    rep = sub.add_parser(
        "report", parents=parents, help="write RUN_DIR/report.html: tree, epsilon, utility, audit"
    )
    rep.add_argument("run_dir", help="a run directory written by simulate")
    rep.add_argument("--out", type=Path, help="output file (default RUN_DIR/report.html)")
    rep.add_argument(
        "--reaudit", action="store_true", help="recompute audit.json even when it is up to date"
    )
    rep.add_argument(
        "--no-utility",
        action="store_true",
        help="skip the per-version metrics (they read the device stores)",
    )
    rep.add_argument(
        "--utility-devices",
        type=positive_int,
        default=devices,
        help=f"device stores read for the per-version metrics (default {devices}, an even sample)",
    )
    rep.add_argument(
        "--no-compress", action="store_true", help="inline plotly.js uncompressed (bigger file)"
    )
    rep.set_defaults(handler=run)
