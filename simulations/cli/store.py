"""``fedinterest ingest``, ``store info`` and ``encode``: the device store's commands.

``ingest`` checks every source (files, standard input, ``--sqlite DB --query SQL``) before the
store is touched; the ``--sqlite`` database is opened read-only and the query runs under
SQLite's authorizer (reading and computing only).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.encoder_registry import DEFAULT_ENCODER
from simulations.cli.base import (
    CliError,
    UsageError,
    add_encoder_flag,
    batch_size,
    emit,
    existing_store,
    positive_int,
    progress_bar,
)

__all__ = ["add_parser", "run"]

_MAX_PRINTED_REJECTIONS = 20
#: the input formats (``--format``), each read by its own reader in :func:`_ingest`
_FORMATS = ("jsonl", "csv", "tsv")


def _ingest_sources(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every input checked before the store is touched: ``(name, format)`` per source."""
    if not args.files and not args.sqlite:
        raise UsageError(
            "nothing to ingest: give FILE (or - for standard input), or --sqlite DB --query SQL."
        )
    if args.sqlite and not args.query:
        raise UsageError(
            "--sqlite needs --query (a SELECT whose column names are the event fields)."
        )
    if args.query and not args.sqlite:
        raise UsageError("--query needs --sqlite DB (the database to run it on).")
    if args.files.count("-") > 1:
        raise UsageError("standard input (-) can be read once per command.")
    sources = []
    for name in args.files:
        if name == "-":
            sources.append((name, args.format or "jsonl"))
            continue
        path = Path(name)
        if path.is_dir():
            raise CliError(f"input {name!r} is a directory; give the event files in it.")
        if not path.is_file():
            raise CliError(f"input file {name!r} does not exist.")
        fmt = args.format or _format_from_suffix(path)
        _check_input_file(path, fmt)
        sources.append((name, fmt))
    if args.sqlite:
        src = Path(args.sqlite)
        if not src.is_file():
            raise CliError(f"--sqlite database {args.sqlite!r} does not exist.")
        _check_select(args.query)
        with contextlib.closing(_open_source_db(src)) as conn:
            try:  # compiled, not run: the authorizer and SQLite's own checks speak now
                conn.execute("EXPLAIN " + args.query).fetchone()
            except sqlite3.Error as err:
                raise _query_error(args.sqlite, err) from err
    return sources


def _open_source_db(path: Path) -> sqlite3.Connection:
    """The --sqlite database, read-only, with the read-only authorizer installed."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # is it SQLite at all?
    except sqlite3.Error as err:
        raise CliError(f"--sqlite database {str(path)!r} cannot be opened: {err}.") from err
    conn.set_authorizer(_sql_authorizer)
    return conn


def _query_error(db: str, err: sqlite3.Error | sqlite3.Warning) -> CliError:
    if isinstance(err, (sqlite3.Warning, sqlite3.ProgrammingError)) and "one statement" in str(err):
        return UsageError(f"--query must be exactly one statement: {err}")
    hint = (
        " (a --query may only read: SELECT, no ATTACH, PRAGMA or writes)"
        if "not authorized" in str(err)
        else ""
    )
    return CliError(f"--query failed on {db!r}: {err}{hint}.")


def _check_input_file(path: Path, fmt: str) -> None:
    """A file that cannot be read as ``fmt`` at all fails before anything is stored."""
    from common.errors import InvalidEventError
    from common.events import read_csv

    with open(path, "rb") as f:
        head = f.read(4096)
    if fmt == "jsonl" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise CliError(
            f"input {str(path)!r} holds a JSON array, not JSON Lines (one event object per "
            f"line); convert it first, e.g. `jq -c '.[]' {path.name} > {path.stem}.jsonl`."
        )
    if fmt in ("csv", "tsv"):
        with open(path, "rb") as f:
            first = next(read_csv(f, delimiter="," if fmt == "csv" else "\t"), None)
        line, bad = first if first is not None else (0, None)
        if line == 1 and isinstance(bad, InvalidEventError) and bad.reason != "invalid_utf8":
            raise CliError(f"input {str(path)!r}: {bad.detail}")


#: SQLite authorizer actions a --query may use: reading and computing, nothing else (no
#: ATTACH, PRAGMA, writes, transactions or schema changes); a denied action fails the query.
_SQL_ALLOWED = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        getattr(sqlite3, "SQLITE_RECURSIVE", 33),
    }
)


def _check_select(query: str) -> None:
    """One ``SELECT`` (or ``WITH ... SELECT``) statement; anything else is refused unrun."""
    body = _strip_sql_comments(query).strip().rstrip(";").strip()
    if not body:
        raise UsageError("--query is empty; give one SELECT statement.")
    first = body.split(None, 1)[0].upper()
    if first not in ("SELECT", "WITH", "VALUES"):
        raise UsageError(
            f"--query must be one SELECT (or WITH ... SELECT) statement. Found {first!r}: "
            f"{_short_sql(query)}."
        )
    if not sqlite3.complete_statement(body + ";"):
        raise UsageError(f"--query must be exactly one statement. Found {_short_sql(query)}.")


def _strip_sql_comments(query: str) -> str:
    import re

    return re.sub(r"--[^\n]*|/\*.*?(\*/|$)", " ", query, flags=re.DOTALL)


def _short_sql(query: str) -> str:
    q = " ".join(query.split())
    return repr(q if len(q) <= 80 else q[:77] + "...")


def _sql_authorizer(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _SQL_ALLOWED else sqlite3.SQLITE_DENY


def _ingest(args: argparse.Namespace) -> int:
    from client.store import EventStore
    from common.events import IngestReport, read_csv, read_jsonl, read_sql, read_stream

    sources = _ingest_sources(args)
    # without --batch-size the store's own default applies (its one source)
    batch: dict[str, Any] = {} if args.batch_size is None else {"batch_size": args.batch_size}
    reports: list[tuple[str, IngestReport]] = []
    with EventStore(args.store) as store:
        for name, fmt in sources:
            if name == "-":
                if fmt == "jsonl":
                    stream: Any = read_stream(sys.stdin.fileno())
                else:
                    stream = read_csv(sys.stdin.buffer, delimiter="," if fmt == "csv" else "\t")
                rep = store.ingest(stream, **batch)
                reports.append(("<stdin>", rep))
                continue
            path = Path(name)
            with (
                open(path, "rb") as f,
                progress_bar(path.stat().st_size, f"ingest {path.name}", args, "B") as bar,
            ):
                source = {
                    "jsonl": lambda f=f: read_jsonl(f),
                    "csv": lambda f=f: read_csv(f),
                    "tsv": lambda f=f: read_csv(f, delimiter="\t"),
                }[fmt]()

                def tick(_: IngestReport, f: Any = f, bar: Any = bar) -> None:
                    if not f.closed:
                        bar.n = f.tell()
                        bar.refresh()

                rep = store.ingest(source, on_batch=tick, **batch)
            reports.append((name, rep))
        if args.sqlite:
            src = _open_source_db(Path(args.sqlite))
            try:
                rep = store.ingest(read_sql(src, args.query), **batch)
            except (sqlite3.Error, sqlite3.Warning) as err:
                raise _query_error(args.sqlite, err) from err
            finally:
                src.close()
            reports.append((f"sqlite:{args.sqlite}", rep))
        total_events = store.count()
    unreadable = [name for name, rep in reports if rep.reasons.get("bad_header")]

    rejected = sum(r.rejected for _, r in reports)
    payload = {
        "store": str(args.store),
        "stored_events": total_events,
        "sources": [{"source": name, **rep.to_dict()} for name, rep in reports],
        "accepted": sum(r.accepted for _, r in reports),
        "duplicates": sum(r.duplicates for _, r in reports),
        "conflicts": sum(r.conflicts for _, r in reports),
        "rejected": rejected,
    }

    def human() -> None:
        for name, rep in reports:
            print(
                f"{name}: read {rep.read}, accepted {rep.accepted}, duplicates {rep.duplicates}, "
                f"rejected {rep.rejected}"
            )
            for r in rep.examples[:_MAX_PRINTED_REJECTIONS]:
                where = f"line {r.line}" if r.line is not None else "record"
                field = f" [{r.field}]" if r.field else ""
                print(f"  {where}: {r.reason}{field}: {r.message}")
            if rep.rejected > _MAX_PRINTED_REJECTIONS:
                print(
                    f"  ... and {rep.rejected - _MAX_PRINTED_REJECTIONS} more (--json lists up to 1000)"
                )
            if rep.conflicts:
                first = rep.conflict_examples[0]
                print(
                    f"  {rep.conflicts} duplicate id(s) with other content than the stored event "
                    f"(the stored one is kept), e.g. line {first['line']}: event_id "
                    f"{first['event_id']!r} differs in {', '.join(first['fields'])}"
                )
            fixes = {k: v for k, v in rep.fixes.items() if v}
            if fixes:
                print(
                    "  repaired/flagged: " + ", ".join(f"{k} {v}" for k, v in sorted(fixes.items()))
                )
        print(f"store {args.store}: {total_events} events")

    emit(args, payload, human)
    if unreadable:
        raise CliError(f"{unreadable[0]}: {_first_reason(reports, 'bad_header')}")
    if args.strict and rejected:
        print(f"fedinterest: error: {rejected} record(s) rejected (--strict).", file=sys.stderr)
        return 1
    return 0


def _first_reason(reports: Sequence[tuple[str, Any]], reason: str) -> str:
    for _, rep in reports:
        for r in rep.examples:
            if r.reason == reason:
                return str(r.message)
    return reason


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    raise UsageError(f"cannot tell the format of {str(path)!r}; pass --format jsonl|csv|tsv.")


def _store_info(args: argparse.Namespace) -> int:
    from client.store import EventStore

    existing_store(args.store)
    with EventStore(args.store, read_only=True) as store:
        info = store.info()
        aggregates = [a.to_dict() for a in store.user_aggregates()] if args.users else None
    if aggregates is not None:
        info["user_aggregates"] = aggregates

    def human() -> None:
        for k in (
            "path",
            "events",
            "users",
            "flagged_events",
            "cached_embeddings",
            "ledger_entries",
        ):
            print(f"{k:>18}: {info[k]}")
        print(
            f"{'events_by_type':>18}: "
            + ", ".join(f"{k} {v}" for k, v in info["events_by_type"].items())
        )
        for a in aggregates or []:
            ctr = "-" if a["click_through_rate"] is None else f"{a['click_through_rate']:.2f}"
            print(
                f"  {a['user_id']}: {a['num_events']} events, {a['events_per_day']:.2f}/day, ctr {ctr}"
            )

    emit(args, info, human)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from client.encoder import EncoderConfig, MiniLMEncoder, encode_cached
    from client.encoder_registry import make_encoder
    from client.store import EventStore

    existing_store(args.store)
    t0 = time.perf_counter()
    with EventStore(args.store, create=False) as store:
        given = {} if args.batch_size is None else {"batch_size": args.batch_size}
        encoder = (
            MiniLMEncoder(
                EncoderConfig(model_dir=args.model_dir, num_threads=args.threads, **given)
            )
            if args.encoder == "minilm"
            else make_encoder(args.encoder, num_threads=args.threads, model_dir=args.model_dir)
        )
        todo = store.texts_without_embedding(encoder.model_id)
        with progress_bar(len(todo), "encode", args, "text") as bar:

            def tick(done: int) -> None:
                bar.n = done
                bar.refresh()

            encode_cached(encoder, store.embeddings, [t for _, t in todo], progress=tick)
        cached = store.embeddings.count(encoder.model_id)
    secs = time.perf_counter() - t0
    payload = {
        "store": str(args.store),
        "model_id": encoder.model_id,
        "encoded": len(todo),
        "cached": cached,
        "seconds": round(secs, 3),
    }
    emit(
        args,
        payload,
        lambda: print(
            f"encoded {len(todo)} new texts in {secs:.1f}s; {cached} cached for {encoder.model_id}"
        ),
    )
    return 0


_COMMANDS = {"ingest": _ingest, "store": _store_info, "encode": _encode}


def run(args: argparse.Namespace) -> int:
    """Runs ``ingest``, ``store info`` or ``encode``."""
    return _COMMANDS[args.command](args)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``ingest``, ``store info`` and ``encode`` (a flag without a value here defaults
    to the store's or the encoder's own default; ``client`` is not imported to build the
    parser: it loads dp-accounting)."""
    ing = sub.add_parser(
        "ingest", parents=parents, help="validate and store events in a device store"
    )
    ing.add_argument(
        "--store", required=True, type=Path, help="the device's SQLite store (created if missing)"
    )
    ing.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=".jsonl/.csv/.tsv file, or - for standard input (JSON Lines)",
    )
    ing.add_argument(
        "--format",
        choices=list(_FORMATS),
        help="input format (default: from the extension)",
    )
    ing.add_argument(
        "--sqlite", metavar="DB", help="read events from this SQLite database with --query"
    )
    ing.add_argument("--query", metavar="SQL", help="SELECT whose column names are event fields")
    ing.add_argument(
        "--batch-size",
        type=batch_size,
        default=None,
        help="events per transaction, 1 to 100,000 (default: the store's, 1000)",
    )
    ing.add_argument("--strict", action="store_true", help="exit 1 if any record is rejected")
    ing.set_defaults(handler=run)

    store = sub.add_parser("store", help="inspect a device store")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = ssub.add_parser("info", parents=parents, help="counts: events, users, cache, ledger")
    info.add_argument("--store", required=True, help="the device's SQLite store")
    info.add_argument("--users", action="store_true", help="also per-user aggregates")
    info.set_defaults(handler=run)

    enc = sub.add_parser("encode", parents=parents, help="embed the store's texts into its cache")
    enc.add_argument("--store", required=True, help="the device's SQLite store")
    add_encoder_flag(enc, default=DEFAULT_ENCODER)
    enc.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="texts per forward pass (default: the encoder's, 64)",
    )
    enc.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads (default: torch's choice)",
    )
    enc.set_defaults(handler=run)
