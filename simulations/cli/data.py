"""``fedinterest data synth|movielens``: datasets written as JSON Lines of events."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from simulations.cli.base import default_of, emit, positive_int, share

__all__ = ["add_parser", "run"]


def _synth(args: argparse.Namespace) -> int:
    from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl

    t0 = time.perf_counter()
    cfg = SyntheticConfig(
        users=args.users,
        seed=args.seed,
        events_per_user=args.events_per_user,
        drift_share=args.drift_share,
    )
    catalogue = None
    if args.catalogue is not None:
        from simulations.datasets.catalogue import load_catalogue

        catalogue = load_catalogue(None if args.catalogue == "kuairec" else args.catalogue)
    ds = generate(cfg, catalogue=catalogue)
    n = write_jsonl(ds.events, args.out)
    if args.truth:
        Path(args.truth).parent.mkdir(parents=True, exist_ok=True)
        Path(args.truth).write_text(
            json.dumps(ds.truth(), indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )
    payload = {
        "out": str(args.out),
        "events": n,
        "users": cfg.users,
        "seed": cfg.seed,
        "drifting_users": sum(u.drift_at is not None for u in ds.users),
        "leaves": len(ds.leaves),
        "catalogue": None
        if catalogue is None
        else {"name": catalogue.name, "items": len(catalogue.items), "dropped": catalogue.dropped},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    emit(
        args,
        payload,
        lambda: print(
            f"wrote {n} events of {cfg.users} users (seed {cfg.seed}, "
            f"{payload['drifting_users']} drifting) to {args.out}"
            + (
                ""
                if catalogue is None
                else f" over catalogue {catalogue.name} ({len(catalogue.items)} items, "
                f"{len(ds.leaves)} leaves; dropped {catalogue.dropped or 'none'})"
            )
        ),
    )
    return 0


def _movielens(args: argparse.Namespace) -> int:
    from simulations.datasets.loaders import load_movielens
    from simulations.datasets.synthetic import write_jsonl

    events, report = load_movielens(args.dir)
    n = write_jsonl(events, args.out)
    payload: dict[str, Any] = {
        "out": str(args.out),
        "events": n,
        "users": len({e.user_id for e in events}),
        **report.to_dict(),
    }
    emit(
        args,
        payload,
        lambda: print(f"wrote {n} MovieLens events of {payload['users']} users to {args.out}"),
    )
    return 0


_COMMANDS = {"synth": _synth, "movielens": _movielens}


def run(args: argparse.Namespace) -> int:
    """Runs ``data synth`` or ``data movielens``."""
    return _COMMANDS[args.data_command](args)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``data synth`` and ``data movielens``."""
    from simulations.datasets.synthetic import SyntheticConfig

    def synth_default(name: str) -> Any:
        return default_of(SyntheticConfig, name)

    data = sub.add_parser("data", help="generate or export datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    synth = dsub.add_parser(
        "synth", parents=parents, help="write the synthetic dataset as JSON Lines"
    )
    synth.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    synth.add_argument(
        "--catalogue",
        default=None,
        help="simulate users over this catalogue instead of the project's taxonomy: a JSONL, "
        "CSV or TSV file with item_id, text, category (a path 'A > B'), or 'kuairec' for "
        "../shared/data/kuairec-catalogue (Chinese captions, 3-level categories)",
    )
    synth.add_argument(
        "--users",
        type=positive_int,
        default=synth_default("users"),
        help=f"number of users (default {synth_default('users')})",
    )
    synth.add_argument(
        "--seed",
        type=int,
        default=synth_default("seed"),
        help=f"random seed (default {synth_default('seed')})",
    )
    synth.add_argument(
        "--events-per-user",
        type=positive_int,
        default=synth_default("events_per_user"),
        help=f"median events per user (default {synth_default('events_per_user')})",
    )
    synth.add_argument(
        "--drift-share",
        type=share,
        default=synth_default("drift_share"),
        help=f"share of users whose interests switch (default {synth_default('drift_share')})",
    )
    synth.add_argument(
        "--truth", type=Path, help="also write the users' ground-truth interests (JSON)"
    )
    synth.set_defaults(handler=run)
    ml = dsub.add_parser(
        "movielens", parents=parents, help="export MovieLens as JSON Lines of events"
    )
    ml.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    ml.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="MovieLens directory (default ../shared/data/movielens-small)",
    )
    ml.set_defaults(handler=run)
