"""``fedinterest profile`` and ``fedinterest recommend``: the device's interests and its
ranking of candidate items. The device-side work is :mod:`client.device_context`; this
module reads the flags and prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from simulations.cli.base import (
    CliError,
    Parser,
    add_encoder_flag,
    emit,
    existing_store,
    input_file,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from client.device_context import DeviceContext

__all__ = ["add_parser", "run"]


@contextlib.contextmanager
def _as_cli_errors() -> Iterator[None]:
    """A device input the command was given and cannot use: one line, exit 1."""
    from client.device_context import DeviceInputError

    try:
        yield
    except DeviceInputError as err:
        raise CliError(str(err)) from err


def _context(args: argparse.Namespace) -> DeviceContext:
    """The device context of the flags: every input file is checked before the store is
    written (a --hierarchy file is also kept in the store, so later calls work without it)."""
    from client.device_context import load_adapter, open_device_context
    from common.errors import FedInterestError
    from common.hierarchy import Hierarchy

    existing_store(args.store)
    h = None
    if args.hierarchy:
        try:
            h = Hierarchy.load(input_file(args.hierarchy, "--hierarchy"))
        except FedInterestError as err:
            if isinstance(err, CliError):
                raise
            raise CliError(f"--hierarchy {args.hierarchy!r}: {err}") from err
    with _as_cli_errors():
        adapter = (
            load_adapter(input_file(args.adapter, "--adapter"), "--adapter")
            if args.adapter
            else None
        )
        ctx = open_device_context(
            args.store,
            hierarchy=h,
            adapter=adapter,
            model_dir=args.model_dir,
            encoder=args.encoder,
        )
    if ctx.store.count() == 0:
        print(
            f"fedinterest: warning: store {args.store!r} holds no events: the profile is empty "
            "and every candidate scores alike.",
            file=sys.stderr,
        )
    return ctx


def _projection_seed(args: argparse.Namespace) -> int:
    from common.projection import DEFAULT_SEED

    return int(args.projection_seed or DEFAULT_SEED)


def _profile(args: argparse.Namespace) -> int:
    from client.device_context import population_from_analytics
    from client.profile import device_profile, segments

    with _as_cli_errors():
        pop = population_from_analytics(args.population) if args.population else None
    with _context(args) as ctx:
        h = ctx.hierarchy
        prof = device_profile(
            ctx.store,
            h,
            encoder=ctx.encoder,
            adapter=ctx.adapter,
            projection_seed=_projection_seed(args),
        )
    drift = prof.drift()
    level1 = prof.top(1, args.top)
    payload: dict[str, Any] = {
        "store": args.store,
        "hierarchy_version": h.version,
        "events": prof.events,
        "interests": [
            {
                **g.to_dict(),
                "children": [
                    c.to_dict()
                    for c in prof.top(2, len(prof.leaf_ids))
                    if h.nodes[c.node_id].parent == g.node_id
                ][: args.top],
            }
            for g in level1
        ],
        "drift": drift.to_dict(),
    }
    if pop is not None:
        given = {} if args.min_population is None else {"min_population": args.min_population}
        payload["segments"] = segments(prof, pop, **given)

    def human() -> None:
        print(f"profile of {args.store} on hierarchy v{h.version} ({prof.events} events)")
        for g in payload["interests"]:
            print(f"  {g['label']:<24} {100 * g['strength']:5.1f}%")
            for c in g["children"]:
                print(
                    f"    {c['label']:<22} {100 * c['strength']:5.1f}%  e.g. "
                    + " | ".join(c["explanations"][:2])
                )
        for level in (1, 2):
            flag = "DRIFTING" if drift.drifting[level] else "stable"
            rise = ", ".join(h.nodes[n].label for n, _ in drift.rising[level])
            fall = ", ".join(h.nodes[n].label for n, _ in drift.falling[level])
            print(
                f"  drift level {level}: JS {drift.divergence[level]:.3f} ({flag}); rising: {rise or '-'}; falling: {fall or '-'}"
            )
        for seg in payload.get("segments", []):
            print(
                f"  segment {seg['label']} (share {100 * seg['share']:.0f}%, population ~{seg['population']:.0f})"
            )

    emit(args, payload, human)
    return 0


def _recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from client.device_context import load_popularity, rank_candidates

    cands = _read_candidates(args.candidates)
    popularity = None
    if args.popularity:
        path = input_file(args.popularity, "--popularity")
        with _as_cli_errors():
            popularity = load_popularity(path, f"--popularity {str(path)!r}")
    with _context(args) as ctx:
        scores, _ = rank_candidates(
            ctx, cands, projection_seed=_projection_seed(args), popularity=popularity
        )
        version = ctx.hierarchy.version
    order = np.argsort(-scores)[: args.top]
    ranked = [
        {"rank": r + 1, "item_id": cands[i][0], "text": cands[i][1], "score": float(scores[i])}
        for r, i in enumerate(order)
    ]
    payload = {
        "store": args.store,
        "hierarchy_version": version,
        "candidates": len(cands),
        "ranked": ranked,
    }

    def human() -> None:
        for row in ranked:
            print(f"{row['rank']:>3}. {row['score']:+.3f}  {row['item_id']}  {row['text'][:90]}")

    emit(args, payload, human)
    return 0


def _read_candidates(path: str) -> list[tuple[str, str]]:
    """JSON Lines with ``item_id`` and ``text`` (or plain lines: the text, numbered)."""
    p = input_file(path, "--candidates")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad_line = p.read_bytes()[: err.start].count(b"\n") + 1
        raise CliError(
            f"--candidates {path!r}: line {bad_line} is not UTF-8 "
            f"(byte {err.object[err.start]:#04x})."
        ) from err
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                d = json.loads(line)
            except ValueError as err:
                raise CliError(f"{path}: line {n}: malformed JSON: {err}.") from None
            if (
                not isinstance(d, dict)
                or not isinstance(d.get("text"), str)
                or not d["text"].strip()
            ):
                raise CliError(f"{path}: line {n}: a candidate needs a non-empty `text`.")
            out.append((str(d.get("item_id", n)), d["text"]))
        else:
            out.append((str(n), line.strip()))
    if not out:
        raise CliError(f"candidates file {path!r} has no candidates.")
    return out


_COMMANDS = {"profile": _profile, "recommend": _recommend}


def run(args: argparse.Namespace) -> int:
    """Runs ``profile`` or ``recommend``."""
    return _COMMANDS[args.command](args)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``profile`` and ``recommend`` (they share the device flags). ``client`` is not
    imported to build the parser (it loads dp-accounting): ``--min-population`` without a
    value is :func:`client.profile.segments`'s own default."""
    device_flags = Parser(add_help=False)
    device_flags.add_argument("--store", required=True, help="the device's SQLite store")
    device_flags.add_argument(
        "--hierarchy", help="hierarchy.json (kept in the store for later calls)"
    )
    device_flags.add_argument(
        "--adapter", help="adapter.npz (default: the one the device last received)"
    )
    add_encoder_flag(device_flags)
    device_flags.add_argument(
        "--projection-seed", type=int, default=None, help="the run's projection seed"
    )
    prof = sub.add_parser(
        "profile",
        parents=[*parents, device_flags],
        help="the device's interests, strengths, explanations, drift",
    )
    prof.add_argument("--top", type=positive_int, default=5, help="interests per level (default 5)")
    prof.add_argument(
        "--population", help="RUN_DIR/analytics.jsonl: DP population sizes for segments"
    )
    prof.add_argument(
        "--min-population",
        type=positive_float,
        default=None,
        help="smallest segment (default 50 devices)",
    )
    prof.set_defaults(handler=run)
    rec = sub.add_parser(
        "recommend",
        parents=[*parents, device_flags],
        help="rank candidate items for the device's user",
    )
    rec.add_argument(
        "--candidates",
        required=True,
        help="JSON Lines with item_id and text (or one text per line)",
    )
    rec.add_argument("--popularity", help="RUN_DIR/popularity.npz: the DP item popularity prior")
    rec.add_argument("--top", type=positive_int, default=20, help="how many to print (default 20)")
    rec.set_defaults(handler=run)
