"""``fedinterest audit``: every device's epsilon recomputed from the ledgers
(:mod:`simulations.audit`), one device store, or the empirical canary audit
(:mod:`simulations.empirical_audit`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import PrivacyConfig
from simulations.cli.base import (
    CliError,
    UsageError,
    emit,
    existing_store,
    fmt_eps,
    open_share,
    positive_float,
    positive_int,
)

__all__ = ["ACCOUNTANTS", "add_parser", "run"]

#: :class:`common.privacy.accounting.Accountant`'s values; that module loads dp-accounting,
#: which the parser (built for every command) must not, so they are listed here and a test
#: checks they match
ACCOUNTANTS = ("pld", "rdp")


def run(args: argparse.Namespace) -> int:
    """Runs ``audit``: a run directory, one device store, or the empirical audit."""
    from simulations.audit import audit_device, audit_run

    if args.store and args.run_dir:
        raise UsageError("give RUN_DIR or --store PATH, not both.")
    if args.store and (args.empirical or args.no_dp):
        raise UsageError("--empirical and --no-dp audit a RUN_DIR, not one --store.")
    if args.no_dp and not args.empirical:
        raise UsageError("--no-dp goes with --empirical (the canary run without noise).")
    if args.store:
        existing_store(args.store)
        delta = args.delta if args.delta is not None else PrivacyConfig().delta
        dev = audit_device(
            args.store,
            delta=delta,
            accountant=args.accountant or PrivacyConfig().accountant,
            budget_epsilon=args.budget,
        )
        payload = dev.to_dict()

        def human_store() -> None:
            print(
                f"device {dev.name}: {len(dev.entries)} ledger entries, event-level epsilon {fmt_eps(dev.epsilon)} (delta {delta:g})"
            )
            for k, v in dev.per_mechanism.items():
                print(f"  {k:<20} epsilon {fmt_eps(v)}")
            for r, v in sorted(dev.per_round.items()):
                print(f"  after round {r:<3} epsilon {fmt_eps(v)}")
            for f in dev.flags:
                print(f"  FLAG: {f}")

        emit(args, payload, human_store)
        _strict(args, dev.flags)
        return 0
    if not args.run_dir:
        raise UsageError("give RUN_DIR, or --store PATH for one device.")
    if args.budget is not None:
        raise UsageError("--budget goes with --store (a run's budgets are in its config.json).")
    if args.empirical:
        return _empirical(args)
    report = audit_run(args.run_dir, delta=args.delta, accountant=args.accountant)

    def human() -> None:
        ev = report["event_level"]
        print(
            f"audit of {args.run_dir} (delta {report['delta']:g}, {report['accountant']} accountant)"
        )
        head = report["headline"]
        print(
            f"  user-level epsilon per device {fmt_eps(head['epsilon_user_level'])} "
            f"(run's {head['unit']}-level target {head['target_epsilon']:g}); event-level "
            f"epsilon implied {fmt_eps(head['epsilon_event_level'])}"
        )
        if ev["devices"]:
            over = (
                f"{ev['devices']} users of a batched run ({ev['distinct_ledgers']} distinct ledger{'s' if ev['distinct_ledgers'] != 1 else ''})"
                if "distinct_ledgers" in ev
                else f"{ev['devices']} devices"
            )
            print(
                f"  event level over {over}: min {fmt_eps(ev['epsilon_min'])}, "
                f"median {fmt_eps(ev['epsilon_median'])}, max {fmt_eps(ev['epsilon_max'])}; "
                f"over budget: {len(ev['over_budget'])}"
            )
        else:
            print(f"  event level (server's announcement): {fmt_eps(ev['epsilon_max'])}")
        for note in report.get("notes", []):
            print(f"  note: {note}")
        print(f"  {'mechanism':<20}{'entries':>9}{'eps max':>11}{'eps median':>12}")
        for k, v in report["mechanisms"].items():
            print(
                f"  {k:<20}{v['entries']:>9}{fmt_eps(v['epsilon_max']):>11}{fmt_eps(v['epsilon_median']):>12}"
            )
        print(f"  {'round':<8}{'devices':>9}{'eps max':>11}{'eps median':>12}")
        for r, v in report["per_round"].items():
            print(
                f"  {r:<8}{v['devices_recorded']:>9}{fmt_eps(v['epsilon_max']):>11}{fmt_eps(v['epsilon_median']):>12}"
            )
        print(f"  user level: {fmt_eps(report['user_level']['epsilon'])}")
        for k, v in report["user_level"]["per_output"].items():
            print(f"    {k}: {fmt_eps(v)}")
        for f in report["flags"]:
            print(f"  FLAG: {f}")
        for g in report["guarantees"]:
            print(f"  - {g}")
        print(f"wrote {args.run_dir}/audit.json")

    emit(args, report, human)
    _strict(args, report["flags"])
    return 0


def _strict(args: argparse.Namespace, flags: Sequence[str]) -> None:
    """``--strict``: any flag fails the command, saying so on stderr."""
    if flags and args.strict:
        more = f" (+{len(flags) - 1} more)" if len(flags) > 1 else ""
        raise CliError(f"the audit flagged {len(flags)} problem(s) (--strict): {flags[0]}{more}.")


def _empirical(args: argparse.Namespace) -> int:
    from simulations.audit import audit_run, record_empirical
    from simulations.empirical_audit import run_empirical_audit

    base = audit_run(args.run_dir)
    say = None if (args.quiet or args.json) else (lambda m: print(m, file=sys.stderr, flush=True))
    res = run_empirical_audit(
        args.run_dir,
        no_dp=args.no_dp,
        canaries=args.canaries,
        cache=Path(args.cache) if args.cache else None,
        progress=say,
    )
    # the run's accounted epsilon at the relation the canaries test
    accounted = (
        base["headline"]["epsilon_user_level"]
        if res.unit == "user"
        else base["event_level"]["epsilon_max"]
    )
    payload = {
        **res.to_dict(),
        "epsilon_accounted_of_run": accounted,
        "exceeds_accounted": res.epsilon_lower_bound > accounted,
    }
    report_path = record_empirical(args.run_dir, "nodp" if args.no_dp else "dp", payload)

    def human() -> None:
        kind = "WITHOUT noise (--no-dp)" if args.no_dp else "with the run's noise"
        what = "canary devices" if res.unit == "user" else "canary events"
        print(
            f"empirical audit {kind}: {res.canaries} {what} (attack on {res.attack}), "
            f"{res.correct}/{res.guesses} membership guesses right"
        )
        print(
            f"  empirical lower bound on epsilon (95%): {res.epsilon_lower_bound:.3f} "
            f"(the most {res.guesses} guesses can show: {res.epsilon_max_attainable:.3f})"
        )
        print(f"  accounted {res.unit}-level epsilon of {args.run_dir}: {fmt_eps(accounted)}")
        if args.no_dp and payload["exceeds_accounted"]:
            print(
                "  the lower bound exceeds the DP run's accounted epsilon: the audit detects missing noise."
            )
        elif not args.no_dp and not payload["exceeds_accounted"]:
            print("  consistent: the lower bound stays below the accounted epsilon.")
        print(f"wrote {report_path}")

    emit(args, payload, human)
    return 0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``audit``."""
    aud = sub.add_parser(
        "audit", parents=parents, help="recompute every device's epsilon from the ledgers"
    )
    aud.add_argument("run_dir", nargs="?", help="a run directory written by simulate")
    aud.add_argument("--store", help="audit one device store instead")
    aud.add_argument(
        "--budget",
        type=positive_float,
        help="with --store: the device's budget (flag if exceeded)",
    )
    aud.add_argument(
        "--delta", type=open_share, default=None, help="delta, in (0, 1) (default: the run's)"
    )
    aud.add_argument(
        "--accountant",
        choices=ACCOUNTANTS,
        default=None,
        help="accountant (default: the run's)",
    )
    aud.add_argument("--strict", action="store_true", help="exit 1 when anything is flagged")
    aud.add_argument(
        "--empirical", action="store_true", help="canary run + one-run membership audit"
    )
    aud.add_argument(
        "--no-dp", action="store_true", help="with --empirical: the canary run without noise"
    )
    aud.add_argument(
        "--canaries",
        type=positive_int,
        default=None,
        help="with --empirical: canaries (default: at user level half the clients, at most "
        "2000, as canary devices; at event level one per client)",
    )
    aud.add_argument("--cache", help="embedding cache file")
    aud.set_defaults(handler=run)
