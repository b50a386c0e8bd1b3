"""The ``fedinterest`` command line.

Each subcommand imports what it needs when it runs, so a device that only ingests never
imports torch. Exit codes: 0 success, 1 failure (one line on stderr: ``fedinterest: error:
...``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from common.errors import FedInterestError

__all__ = ["main"]

_MAX_PRINTED_REJECTIONS = 20


class CliError(FedInterestError):
    """A failure to report on one line and exit 1."""

    exit_code = 1


class UsageError(CliError):
    """The command line itself is wrong (a flag, a missing argument): exit 2."""

    exit_code = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised to :func:`main`'s boundary instead of printed and
    exited on the spot: one line (or JSON with ``--json``), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _progress(total: int | None, desc: str, args: argparse.Namespace, unit: str = "it") -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=True if getattr(args, "quiet", False) or getattr(args, "json", False) else None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif not getattr(args, "quiet", False):
        human()


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl

    t0 = time.perf_counter()
    cfg = SyntheticConfig(
        users=args.users,
        seed=args.seed,
        events_per_user=args.events_per_user,
        drift_share=args.drift_share,
    )
    ds = generate(cfg)
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
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _emit(
        args,
        payload,
        lambda: print(
            f"wrote {n} events of {cfg.users} users (seed {cfg.seed}, "
            f"{payload['drifting_users']} drifting) to {args.out}"
        ),
    )
    return 0


def _cmd_data_movielens(args: argparse.Namespace) -> int:
    from simulations.datasets.loaders import load_movielens
    from simulations.datasets.synthetic import write_jsonl

    events, report = load_movielens(args.dir)
    n = write_jsonl(events, args.out)
    payload = {
        "out": str(args.out),
        "events": n,
        "users": len({e.user_id for e in events}),
        **report.to_dict(),
    }
    _emit(
        args,
        payload,
        lambda: print(f"wrote {n} MovieLens events of {payload['users']} users to {args.out}"),
    )
    return 0


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------


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


def _cmd_ingest(args: argparse.Namespace) -> int:
    from client.store import EventStore
    from common.events import IngestReport, read_csv, read_jsonl, read_sql, read_stream

    sources = _ingest_sources(args)
    reports: list[tuple[str, IngestReport]] = []
    with EventStore(args.store) as store:
        for name, fmt in sources:
            if name == "-":
                if fmt == "jsonl":
                    stream: Any = read_stream(sys.stdin.fileno())
                else:
                    stream = read_csv(sys.stdin.buffer, delimiter="," if fmt == "csv" else "\t")
                rep = store.ingest(stream, batch_size=args.batch_size)
                reports.append(("<stdin>", rep))
                continue
            path = Path(name)
            with (
                open(path, "rb") as f,
                _progress(path.stat().st_size, f"ingest {path.name}", args, "B") as bar,
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

                rep = store.ingest(source, batch_size=args.batch_size, on_batch=tick)
            reports.append((name, rep))
        if args.sqlite:
            src = _open_source_db(Path(args.sqlite))
            try:
                rep = store.ingest(read_sql(src, args.query), batch_size=args.batch_size)
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

    _emit(args, payload, human)
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


# --------------------------------------------------------------------------------------------
# store / encode
# --------------------------------------------------------------------------------------------


def _existing_store(path: str) -> None:
    if Path(path).is_dir():
        raise CliError(f"--store {path!r} is a directory, not a device store.")
    if not Path(path).is_file():
        raise CliError(f"store {path!r} does not exist.")


def _cmd_store_info(args: argparse.Namespace) -> int:
    from client.store import EventStore

    _existing_store(args.store)
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

    _emit(args, info, human)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from client.encoder import EncoderConfig, MiniLMEncoder, encode_cached
    from client.store import EventStore

    _existing_store(args.store)
    t0 = time.perf_counter()
    with EventStore(args.store, create=False) as store:
        encoder = MiniLMEncoder(
            EncoderConfig(
                model_dir=args.model_dir, batch_size=args.batch_size, num_threads=args.threads
            )
        )
        todo = store.texts_without_embedding(encoder.model_id)
        with _progress(len(todo), "encode", args, "text") as bar:

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
    _emit(
        args,
        payload,
        lambda: print(
            f"encoded {len(todo)} new texts in {secs:.1f}s; {cached} cached for {encoder.model_id}"
        ),
    )
    return 0


# --------------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    from common.config import (
        AdapterConfig,
        AnalyticsConfig,
        ClusteringConfig,
        PrivacyConfig,
        RunConfig,
    )
    from simulations.faults import dropout_mod
    from simulations.simulate import SimulateOptions, options_from_run_dir, simulate

    mods = [dropout_mod(args.dropout, args.seed)] if args.dropout else []
    if args.resume:
        _refuse_flags_with_resume(args)
        opts = options_from_run_dir(
            args.resume,
            resume=True,
            cache=Path(args.cache) if args.cache else None,
            verbose=args.verbose,
            client_mods=tuple(mods),
        )
        args.out = args.resume
    else:
        run = RunConfig(
            rounds=args.rounds,
            fraction=args.fraction,
            seed=args.seed,
            robust=args.robust,
            round_attempts=args.round_attempts,
            privacy=PrivacyConfig(
                epsilon=args.epsilon,
                delta=args.delta,
                mode=args.mode,
                no_dp=args.no_dp,
                min_cohort_fraction=args.min_cohort_fraction,
            ),
            clustering=ClusteringConfig(tree_z=args.tree_z),
            adapter=AdapterConfig(enabled=args.adapter),
            analytics=AnalyticsConfig(
                popularity=not args.no_popularity,
                histogram=args.histogram,
                top_k=args.top_k,
                popularity_noise_factor=args.popularity_noise_factor,
            ),
        )
        opts = SimulateOptions(
            dataset=args.dataset,
            clients=args.clients,
            out=Path(args.out),
            run=run,
            events_per_user=args.events_per_user,
            cache=Path(args.cache) if args.cache else None,
            taxonomy=Path(args.taxonomy) if args.taxonomy else None,
            overwrite=args.overwrite,
            verbose=args.verbose,
            client_mods=tuple(mods),
        )
    if args.no_dp:
        print(
            "WARNING: --no-dp releases every device's leaf sums WITHOUT noise. Epsilon is infinite.",
            file=sys.stderr,
        )
    _warn_large_delta(opts.run.privacy.delta, opts.clients)
    quiet = args.quiet or args.json
    metrics = simulate(
        opts, progress=None if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    if args.json:
        from server.strategy import json_safe

        json.dump(json_safe(metrics), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif not args.quiet:
        _print_run_summary(Path(args.out), metrics)
    return 0


#: flags that --resume may take: the rest of the run's settings come from its config.json
_RESUME_FLAGS = frozenset({"resume", "cache", "verbose", "quiet", "json", "dropout", "func"})


def _refuse_flags_with_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues a run with its own settings; a flag that would change them is a
    usage error, never silently ignored."""
    defaults = vars(build_parser().parse_args(["simulate"]))
    given = sorted(
        k for k, v in vars(args).items() if k not in _RESUME_FLAGS and v != defaults.get(k, v)
    )
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)!r}" for k in given)
        raise UsageError(
            f"--resume continues {args.resume!r} with the settings in its config.json; it takes "
            f"no run settings. Found {flags}."
        )


def _warn_large_delta(delta: float, population: int) -> None:
    """Delta is the chance the epsilon guarantee fails outright; above 1/population a
    mechanism may publish some user's data whole and still meet it (Dwork & Roth 2014, 2.3)."""
    if delta > 1.0 / max(population, 1):
        print(
            f"fedinterest: warning: --delta {delta:g} is above 1/population "
            f"(1/{population} = {1.0 / max(population, 1):.2g}): the guarantee allows a "
            "release that exposes a user outright with that probability; use delta well "
            "below 1/population (e.g. 1e-5 or smaller).",
            file=sys.stderr,
        )


def _print_run_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    from common.hierarchy import Hierarchy

    h = Hierarchy.load(run_dir / "hierarchy.json")
    leaves = h.level(2)
    print(f"\ninterest tree v{h.version}: {len(h.level(1))} broad and {len(leaves)} fine interests")
    for node in h.level(1):
        kids = ", ".join(h.nodes[c].label for c in node.children[:6])
        more = f" +{len(node.children) - 6}" if len(node.children) > 6 else ""
        print(f"  {node.label:<22} {100 * node.weight:5.1f}%  {kids}{more}")
    if "federated" in metrics:
        cols = [c for c in ("federated", "centralized", "catalogue") if c in metrics]
        print("\n" + f"{'metric':<20}" + "".join(f"{c:>13}" for c in cols) + f"{'fed/central':>13}")
        for key in metrics["federated"]:
            row = "".join(f"{metrics[c].get(key, float('nan')):>13.3f}" for c in cols)
            ratio = metrics["ratio"].get(key)
            print(f"{key:<20}{row}{(ratio if ratio is not None else float('nan')):>13.3f}")
    else:
        print("\n(no ground-truth categories in this dataset: clustering metrics omitted)")
    ranking = metrics.get("ranking") or {}
    sides = [c for c in ("federated", "centralized", "popularity", "random") if c in ranking]
    if sides:
        users = ranking[sides[0]]["users"]
        print(
            f"\neach user's held-out items ranked among 100 items it never touched ({users} users)"
        )
        print(f"{'ranking':<20}" + "".join(f"{c:>13}" for c in sides))
        for key, name in (("auc", "AUC"), ("ndcg10", "nDCG@10"), ("recall10", "recall@10")):
            print(f"{name:<20}" + "".join(f"{ranking[c][key]:>13.3f}" for c in sides))
    eps = metrics["epsilon_event_level_total"]
    eps_s = eps if isinstance(eps, str) else f"{eps:.3f}"
    print(
        f"\nmode {metrics['mode']}, event-level epsilon {eps_s} (delta {metrics['delta']:g}) over "
        f"{metrics['rounds_completed']}/{metrics['rounds']} rounds, {metrics['clients']} clients, "
        f"{metrics['bytes_up_per_client_per_round'] / 1024:.1f} KiB up per client per round, "
        f"{metrics['wall_seconds']:.0f}s"
    )
    print(f"wrote {run_dir}/hierarchy.json, metrics.json, rounds.jsonl")


def _fmt_eps(v: Any) -> str:
    if isinstance(v, str):
        return v
    return "inf" if v == float("inf") else f"{v:.4f}"


def _cmd_audit(args: argparse.Namespace) -> int:
    from simulations.audit import audit_device, audit_run

    if args.store and args.run_dir:
        raise UsageError("give RUN_DIR or --store PATH, not both.")
    if args.store and (args.empirical or args.no_dp):
        raise UsageError("--empirical and --no-dp audit a RUN_DIR, not one --store.")
    if args.no_dp and not args.empirical:
        raise UsageError("--no-dp goes with --empirical (the canary run without noise).")
    if args.store:
        _existing_store(args.store)
        dev = audit_device(
            args.store,
            delta=args.delta or 1e-5,
            accountant=args.accountant or "pld",
            budget_epsilon=args.budget,
        )
        payload = dev.to_dict()

        def human_store() -> None:
            print(
                f"device {dev.name}: {len(dev.entries)} ledger entries, event-level epsilon {_fmt_eps(dev.epsilon)} (delta {args.delta or 1e-5:g})"
            )
            for k, v in dev.per_mechanism.items():
                print(f"  {k:<20} epsilon {_fmt_eps(v)}")
            for r, v in sorted(dev.per_round.items()):
                print(f"  after round {r:<3} epsilon {_fmt_eps(v)}")
            for f in dev.flags:
                print(f"  FLAG: {f}")

        _emit(args, payload, human_store)
        _strict_audit(args, dev.flags)
        return 0
    if not args.run_dir:
        raise UsageError("give RUN_DIR, or --store PATH for one device.")
    if args.budget is not None:
        raise UsageError("--budget goes with --store (a run's budgets are in its config.json).")
    if args.empirical:
        return _audit_empirical(args)
    report = audit_run(args.run_dir, delta=args.delta, accountant=args.accountant)

    def human() -> None:
        ev = report["event_level"]
        print(
            f"audit of {args.run_dir} (delta {report['delta']:g}, {report['accountant']} accountant)"
        )
        if ev["devices"]:
            print(
                f"  event level over {ev['devices']} devices: min {_fmt_eps(ev['epsilon_min'])}, "
                f"median {_fmt_eps(ev['epsilon_median'])}, max {_fmt_eps(ev['epsilon_max'])}; "
                f"over budget: {len(ev['over_budget'])}"
            )
        else:
            print(f"  event level (server's announcement): {_fmt_eps(ev['epsilon_max'])}")
        for note in report.get("notes", []):
            print(f"  note: {note}")
        print(f"  {'mechanism':<20}{'entries':>9}{'eps max':>11}{'eps median':>12}")
        for k, v in report["mechanisms"].items():
            print(
                f"  {k:<20}{v['entries']:>9}{_fmt_eps(v['epsilon_max']):>11}{_fmt_eps(v['epsilon_median']):>12}"
            )
        print(f"  {'round':<8}{'devices':>9}{'eps max':>11}{'eps median':>12}")
        for r, v in report["per_round"].items():
            print(
                f"  {r:<8}{v['devices_recorded']:>9}{_fmt_eps(v['epsilon_max']):>11}{_fmt_eps(v['epsilon_median']):>12}"
            )
        print(f"  user level: {_fmt_eps(report['user_level']['epsilon'])}")
        for k, v in report["user_level"]["per_output"].items():
            print(f"    {k}: {_fmt_eps(v)}")
        for f in report["flags"]:
            print(f"  FLAG: {f}")
        for g in report["guarantees"]:
            print(f"  - {g}")
        print(f"wrote {args.run_dir}/audit.json")

    _emit(args, report, human)
    _strict_audit(args, report["flags"])
    return 0


def _strict_audit(args: argparse.Namespace, flags: Sequence[str]) -> None:
    """``--strict``: any flag fails the command, saying so on stderr."""
    if flags and args.strict:
        more = f" (+{len(flags) - 1} more)" if len(flags) > 1 else ""
        raise CliError(f"the audit flagged {len(flags)} problem(s) (--strict): {flags[0]}{more}.")


def _audit_empirical(args: argparse.Namespace) -> int:
    import json as _json

    from simulations.audit import audit_run
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
    payload = {
        **res.to_dict(),
        "epsilon_accounted_of_run": base["event_level"]["epsilon_max"],
        "exceeds_accounted": res.epsilon_lower_bound > base["event_level"]["epsilon_max"],
    }
    report_path = Path(args.run_dir) / "audit.json"
    report = _json.loads(report_path.read_text(encoding="utf-8"))
    report.setdefault("empirical", {})["nodp" if args.no_dp else "dp"] = payload
    report_path.write_text(
        _json.dumps(report, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )

    def human() -> None:
        kind = "WITHOUT noise (--no-dp)" if args.no_dp else "with the run's noise"
        print(
            f"empirical audit {kind}: {res.canaries} canaries, {res.correct}/{res.guesses} membership guesses right"
        )
        print(f"  empirical lower bound on epsilon (95%): {res.epsilon_lower_bound:.3f}")
        print(
            f"  accounted epsilon of {args.run_dir}: {_fmt_eps(base['event_level']['epsilon_max'])}"
        )
        if args.no_dp and payload["exceeds_accounted"]:
            print(
                "  the lower bound exceeds the DP run's accounted epsilon: the audit detects missing noise."
            )
        elif not args.no_dp and not payload["exceeds_accounted"]:
            print("  consistent: the lower bound stays below the accounted epsilon.")
        print(f"wrote {report_path}")

    _emit(args, payload, human)
    return 0


_HIERARCHY_STATE = "hierarchy"


def _device_context(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """(store, hierarchy, encoder, adapter) for the profile commands. A --hierarchy file is
    also saved in the store, so later calls work offline without it. Every input is checked
    before the store is written."""
    from client.app import ADAPTER_STATE_KEY
    from client.encoder import EncoderConfig, MiniLMEncoder
    from client.store import EventStore
    from common.hierarchy import Hierarchy

    _existing_store(args.store)
    h = None
    if args.hierarchy:
        try:
            h = Hierarchy.load(_input_file(args.hierarchy, "--hierarchy"))
        except FedInterestError as err:
            if isinstance(err, CliError):
                raise
            raise CliError(f"--hierarchy {args.hierarchy!r}: {err}") from err
    adapter = (
        _load_adapter(_input_file(args.adapter, "--adapter"), "--adapter") if args.adapter else None
    )
    store = EventStore(args.store, create=False)
    try:
        if h is not None:
            store.set_state(_HIERARCHY_STATE, h.to_json().encode("utf-8"))
        else:
            raw = store.get_state(_HIERARCHY_STATE)
            if raw is None:
                raise CliError(
                    "no hierarchy: pass --hierarchy RUN_DIR/hierarchy.json once (it is kept in "
                    "the store)."
                )
            h = Hierarchy.from_json(raw)
        if adapter is None:
            packed = store.get_state(ADAPTER_STATE_KEY)
            if packed is not None:
                import io

                adapter = _load_adapter(io.BytesIO(packed), "the store's adapter")
        encoder = MiniLMEncoder(EncoderConfig(model_dir=args.model_dir))
    except BaseException:
        store.close()
        raise
    if adapter is not None and adapter.is_identity():
        adapter = None
    if store.count() == 0:
        print(
            f"fedinterest: warning: store {args.store!r} holds no events: the profile is empty "
            "and every candidate scores alike.",
            file=sys.stderr,
        )
    return store, h, encoder, adapter


def _input_file(path: str, flag: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path!r} is a directory; give a file.")
    if not p.is_file():
        raise CliError(f"{flag} file {path!r} does not exist.")
    return p


def _load_npz(source: Any, what: str, keys: Sequence[str]) -> dict[str, Any]:
    """The named arrays of an ``.npz`` (no pickles), or a :class:`CliError` naming ``what``."""
    import zipfile

    import numpy as np

    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CliError(f"{what} must be an .npz archive. Found a single .npy array.")
        with loaded as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise CliError(
                    f"{what} lacks the array(s) {', '.join(missing)}. Found "
                    f"{', '.join(z.files) or 'none'} (is it the right file?)."
                )
            return {k: z[k] for k in z.files}
    except CliError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise CliError(f"{what} is not a readable .npz archive: {err}.") from err


def _load_adapter(source: Any, what: str) -> Any:
    from common.adapter import AdapterWeights

    z = _load_npz(source, what, ("a", "b"))
    try:
        return AdapterWeights(z["a"].astype("float32"), z["b"].astype("float32"))
    except (ValueError, TypeError) as err:
        raise CliError(f"{what}: {err}") from err


def _load_popularity(path: Path) -> tuple[list[str], Any, float]:
    """``(items, counts, noise_std)`` of a run's ``popularity.npz``, checked."""
    import numpy as np

    z = _load_npz(path, f"--popularity {str(path)!r}", ("items", "counts"))
    items, counts = z["items"], z["counts"]
    if items.ndim != 1 or counts.shape != items.shape:
        raise CliError(
            f"--popularity {str(path)!r}: `items` and `counts` must be two arrays of one length. "
            f"Found shapes {items.shape} and {counts.shape}."
        )
    if not np.issubdtype(counts.dtype, np.number) or not np.isfinite(counts).all():
        raise CliError(f"--popularity {str(path)!r}: `counts` must be finite numbers.")
    noise = z.get("noise_std", np.array(0.0))
    try:
        noise_std = float(noise)
    except (TypeError, ValueError):
        noise_std = float("nan")
    if not (noise_std >= 0 and np.isfinite(noise_std)):
        raise CliError(
            f"--popularity {str(path)!r}: `noise_std` must be a number >= 0. Found {noise!r}."
        )
    return [str(i) for i in items], counts.astype(np.float64), noise_std


def _cmd_profile(args: argparse.Namespace) -> int:
    from client.profile import device_profile, segments
    from common.projection import DEFAULT_SEED

    pop = _population_from_analytics(args.population) if args.population else None
    store, h, encoder, adapter = _device_context(args)
    try:
        prof = device_profile(
            store,
            h,
            encoder=encoder,
            adapter=adapter,
            projection_seed=args.projection_seed or DEFAULT_SEED,
        )
    finally:
        store.close()
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
        payload["segments"] = segments(prof, pop, min_population=args.min_population)

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

    _emit(args, payload, human)
    return 0


def _population_from_analytics(path: str) -> dict[str, float]:
    p = Path(path)
    if not p.is_file():
        raise CliError(
            f"population file {path!r} does not exist (RUN_DIR/analytics.jsonl of a run with --histogram)."
        )
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as err:
        raise CliError(f"population file {path!r} is not UTF-8 text: {err}.") from err
    if not lines:
        raise CliError(f"population file {path!r} is empty.")
    where = f"population file {path!r}, line {len(lines)}"
    try:
        last = json.loads(lines[-1])
        nodes = last["nodes"]
        out = {str(n["id"]): float(n["count"]) for n in nodes}
    except ValueError as err:
        raise CliError(f"{where}: not a JSON analytics record ({err}).") from err
    except (KeyError, TypeError) as err:
        raise CliError(
            f'{where}: expected {{"nodes": [{{"id": ..., "count": ...}}]}} '
            f"(RUN_DIR/analytics.jsonl). Missing or wrong field: {err}."
        ) from err
    return out


def _cmd_recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from client.encoder import encode_cached
    from client.profile import device_profile
    from common.projection import DEFAULT_SEED

    cands = _read_candidates(args.candidates)
    popularity = (
        _load_popularity(_input_file(args.popularity, "--popularity")) if args.popularity else None
    )
    store, h, encoder, adapter = _device_context(args)
    try:
        prof = device_profile(
            store,
            h,
            encoder=encoder,
            adapter=adapter,
            projection_seed=args.projection_seed or DEFAULT_SEED,
        )
        raw = encode_cached(encoder, store.embeddings, [t for _, t in cands])
    finally:
        store.close()
    prior = None
    if popularity is not None:
        from common.popularity import standardised_prior

        items, raw_counts, noise = popularity
        # one extra entry: an item outside the catalogue, observed at count 0
        counts = np.append(raw_counts, 0.0)
        std_prior = standardised_prior(counts, noise)
        where = {item: n for n, item in enumerate(items)}
        prior = std_prior[[where.get(i, len(items)) for i, _ in cands]]
    scores = prof.score(raw, prior=prior)
    order = np.argsort(-scores)[: args.top]
    ranked = [
        {"rank": r + 1, "item_id": cands[i][0], "text": cands[i][1], "score": float(scores[i])}
        for r, i in enumerate(order)
    ]
    payload = {
        "store": args.store,
        "hierarchy_version": h.version,
        "candidates": len(cands),
        "ranked": ranked,
    }

    def human() -> None:
        for row in ranked:
            print(f"{row['rank']:>3}. {row['score']:+.3f}  {row['item_id']}  {row['text'][:90]}")

    _emit(args, payload, human)
    return 0


def _read_candidates(path: str) -> list[tuple[str, str]]:
    """JSON Lines with ``item_id`` and ``text`` (or plain lines: the text, numbered)."""
    p = _input_file(path, "--candidates")
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


def _cmd_labels(args: argparse.Namespace) -> int:
    from client.encoder import EncoderConfig, MiniLMEncoder
    from client.store import EmbeddingCache
    from common.projection import DEFAULT_SEED, PublicProjection
    from common.vocabulary import default_vocabulary, load_taxonomy_tsv
    from simulations.simulate import default_cache_path, embed_labels

    vocab = load_taxonomy_tsv(args.taxonomy) if args.taxonomy else default_vocabulary()
    encoder = MiniLMEncoder(EncoderConfig(model_dir=args.model_dir))
    seed = args.projection_seed if args.projection_seed is not None else DEFAULT_SEED
    projection = PublicProjection(encoder.dim, args.dim, seed)
    cache = EmbeddingCache.open(args.cache or default_cache_path())
    labels = embed_labels(vocab, encoder, cache, projection)
    cache.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    labels.save(args.out)
    payload = {
        "out": str(args.out),
        "labels": len(vocab.labels),
        "roots": len(vocab.roots),
        "vocabulary": vocab.name,
        "encoder_id": labels.encoder_id,
        "projection_fingerprint": labels.projection_fingerprint,
    }
    _emit(
        args,
        payload,
        lambda: print(
            f"wrote {payload['labels']} labels ({payload['roots']} roots, {vocab.name}) embedded with "
            f"{labels.encoder_id}, projection {labels.projection_fingerprint}, to {args.out}"
        ),
    )
    return 0


# --------------------------------------------------------------------------------------------
# report / sweep
# --------------------------------------------------------------------------------------------


def _stderr_lines(args: argparse.Namespace, prefix: str = "") -> Callable[[str], None] | None:
    if args.quiet or args.json:
        return None
    return lambda m: print(f"{prefix}{m}", file=sys.stderr, flush=True)


def _cmd_report(args: argparse.Namespace) -> int:
    from simulations.report import MAX_REPORT_BYTES, write_report

    res = write_report(
        args.run_dir,
        args.out,
        reaudit=args.reaudit,
        utility=not args.no_utility,
        utility_devices=args.utility_devices,
        compress=not args.no_compress,
        progress=_stderr_lines(args),
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
            f"{_fmt_eps(s['epsilon_event_level_max'])}, user-level "
            f"{_fmt_eps(s['epsilon_user_level']) if s['epsilon_user_level'] is not None else '-'}, "
            f"audit flags {s['audit_flags']}"
            + (f", empirical audit: {', '.join(s['empirical'])}" if s["empirical"] else "")
        )
        if res.bytes > MAX_REPORT_BYTES:
            print(f"  note: larger than {MAX_REPORT_BYTES / 1e6:.0f} MB", file=sys.stderr)

    _emit(args, payload, human)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simulations.sweep import format_table, options_from_args, run_sweep

    opts = options_from_args(args)
    doc = run_sweep(
        opts, progress=_stderr_lines(args), simulate_progress=_stderr_lines(args, "    ")
    )
    failed = [r for r in doc["runs"] if r["status"] == "failed"]

    def human() -> None:
        print(format_table(doc))
        print(
            f"wrote {opts.out}/sweep.json and {opts.out}/report.html "
            f"({len(doc['runs']) - len(failed)}/{len(doc['runs'])} runs, {doc['seconds']:.0f}s)"
        )

    _emit(args, doc, human)
    if failed:
        print(
            f"fedinterest: error: {len(failed)} run(s) failed: "
            + "; ".join(f"epsilon {r['epsilon']:g}: {r['error']}" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _output_flags() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    return p


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}")
    return v


def _batch_size(s: str) -> int:
    from client.store import MAX_INGEST_BATCH

    v = _positive_int(s)
    if v > MAX_INGEST_BATCH:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_INGEST_BATCH} (events held in memory), found {s!r}"
        )
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {s!r}")
    return v


def _finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {s!r}")
    return v


def _open_share(s: str) -> float:
    """A probability strictly between 0 and 1 (delta)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), found {s!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), found {s!r}")
    return v


def _fraction(s: str) -> float:
    """A share of a population that must sample somebody: (0, 1]."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {s!r}")
    return v


def _rate(s: str) -> float:
    """A per-device probability that leaves somebody: [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), found {s!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), found {s!r}")
    return v


def _share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {s!r}")
    return v


def add_run_settings(p: argparse.ArgumentParser) -> None:
    """The run settings ``simulate`` and ``sweep`` share (dataset, population, privacy mode,
    tree and analytics settings)."""
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic (default), movielens, mind:DIR or events:FILE.jsonl",
    )
    p.add_argument(
        "--clients",
        type=_positive_int,
        default=100,
        help="virtual clients, one per user (default 100)",
    )
    p.add_argument("--rounds", type=_positive_int, default=5, help="federated rounds (default 5)")
    p.add_argument(
        "--delta", type=_open_share, default=1e-5, help="delta, in (0, 1) (default 1e-5)"
    )
    p.add_argument(
        "--mode",
        choices=["secagg", "local"],
        default="secagg",
        help="secagg (default) or local noise",
    )
    p.add_argument(
        "--fraction",
        type=_fraction,
        default=1.0,
        help="share of clients sampled per round, in (0, 1] (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for data, sampling and splits (DP noise is never seeded)",
    )
    p.add_argument(
        "--events-per-user",
        type=_positive_int,
        default=60,
        help="synthetic: median events per user",
    )
    p.add_argument(
        "--cache", help="shared embedding cache file (default ~/.cache/fedinterest/embeddings.db)"
    )
    p.add_argument(
        "--taxonomy",
        help="label space TSV (e.g. ../shared/taxonomies/chrome-topics/taxonomy_v2.tsv)",
    )
    p.add_argument(
        "--adapter",
        action="store_true",
        help="train the low-rank adapter with DP-SGD (its spend counts in --epsilon)",
    )
    p.add_argument(
        "--no-popularity",
        action="store_true",
        help="skip the DP item-popularity release of the last round",
    )
    p.add_argument(
        "--tree-z",
        type=_finite_float,
        default=0.0,
        help="significance a leaf needs to be listed in the published tree (default 0: a"
        " positive estimated mass; 1-2 list fewer, surer leaves)",
    )
    p.add_argument(
        "--popularity-noise-factor",
        type=_positive_float,
        default=1.0,
        help="noise of the popularity release as a multiple of a tree round's (>= 1; default 1:"
        " it costs one round's budget; 3 costs 1/9 of a round for 3x the noise on the counts)",
    )
    p.add_argument(
        "--min-cohort-fraction",
        type=_fraction,
        default=0.7,
        help="secagg: share of sampled devices the noise shares are calibrated for (default 0.7)",
    )
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def build_parser() -> argparse.ArgumentParser:
    out = _output_flags()
    parser = _Parser(
        prog="fedinterest",
        description="Federated, differentially private interest hierarchies from behaviour logs.",
    )
    parser.add_argument("--version", action="version", version=f"fedinterest {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="generate or export datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    synth = dsub.add_parser(
        "synth", parents=[out], help="write the synthetic dataset as JSON Lines"
    )
    synth.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    synth.add_argument(
        "--users", type=_positive_int, default=100, help="number of users (default 100)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--events-per-user",
        type=_positive_int,
        default=60,
        help="median events per user (default 60)",
    )
    synth.add_argument(
        "--drift-share",
        type=_share,
        default=0.2,
        help="share of users whose interests switch (default 0.2)",
    )
    synth.add_argument(
        "--truth", type=Path, help="also write the users' ground-truth interests (JSON)"
    )
    synth.set_defaults(func=_cmd_data_synth)
    ml = dsub.add_parser(
        "movielens", parents=[out], help="export MovieLens as JSON Lines of events"
    )
    ml.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    ml.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="MovieLens directory (default ../shared/data/movielens-small)",
    )
    ml.set_defaults(func=_cmd_data_movielens)

    ing = sub.add_parser(
        "ingest", parents=[out], help="validate and store events in a device store"
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
        choices=["jsonl", "csv", "tsv"],
        help="input format (default: from the extension)",
    )
    ing.add_argument(
        "--sqlite", metavar="DB", help="read events from this SQLite database with --query"
    )
    ing.add_argument("--query", metavar="SQL", help="SELECT whose column names are event fields")
    ing.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1000,
        help="events per transaction, 1 to 100,000 (default 1000)",
    )
    ing.add_argument("--strict", action="store_true", help="exit 1 if any record is rejected")
    ing.set_defaults(func=_cmd_ingest)

    store = sub.add_parser("store", help="inspect a device store")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = ssub.add_parser("info", parents=[out], help="counts: events, users, cache, ledger")
    info.add_argument("--store", required=True, help="the device's SQLite store")
    info.add_argument("--users", action="store_true", help="also per-user aggregates")
    info.set_defaults(func=_cmd_store_info)

    sim = sub.add_parser(
        "simulate", parents=[out], help="run the federated pipeline on Flower's simulation engine"
    )
    add_run_settings(sim)
    sim.add_argument(
        "--epsilon",
        type=_positive_float,
        default=2.0,
        help="total event-level epsilon of the run (default 2)",
    )
    sim.add_argument("--out", default="run", help="run directory (default ./run)")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sim.add_argument("--no-dp", action="store_true", help="INSECURE: release without noise")
    sim.add_argument(
        "--histogram",
        action="store_true",
        help="population analytics: DP counts of devices per broad interest, each round",
    )
    sim.add_argument(
        "--top-k",
        type=_positive_int,
        default=1,
        help="interests per device in the histogram (default 1)",
    )
    sim.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a crashed run from its last completed round"
    )
    sim.add_argument(
        "--robust",
        choices=["none", "trimmed", "median"],
        default="none",
        help="robust aggregation (local mode releases, adapter)",
    )
    sim.add_argument(
        "--round-attempts",
        type=_positive_int,
        default=2,
        help="tries per round when too few devices answer (default 2)",
    )
    sim.add_argument(
        "--dropout",
        type=_rate,
        default=0.0,
        help="fault injection: each device drops out of each round with this probability, in"
        " [0, 1)",
    )
    sim.set_defaults(func=_cmd_simulate)

    device_flags = _Parser(add_help=False)
    device_flags.add_argument("--store", required=True, help="the device's SQLite store")
    device_flags.add_argument(
        "--hierarchy", help="hierarchy.json (kept in the store for later calls)"
    )
    device_flags.add_argument(
        "--adapter", help="adapter.npz (default: the one the device last received)"
    )
    device_flags.add_argument(
        "--model-dir", default=None, help="local Hugging Face model directory"
    )
    device_flags.add_argument(
        "--projection-seed", type=int, default=None, help="the run's projection seed"
    )
    prof = sub.add_parser(
        "profile",
        parents=[out, device_flags],
        help="the device's interests, strengths, explanations, drift",
    )
    prof.add_argument(
        "--top", type=_positive_int, default=5, help="interests per level (default 5)"
    )
    prof.add_argument(
        "--population", help="RUN_DIR/analytics.jsonl: DP population sizes for segments"
    )
    prof.add_argument(
        "--min-population",
        type=_positive_float,
        default=50.0,
        help="smallest segment (default 50 devices)",
    )
    prof.set_defaults(func=_cmd_profile)
    rec = sub.add_parser(
        "recommend", parents=[out, device_flags], help="rank candidate items for the device's user"
    )
    rec.add_argument(
        "--candidates",
        required=True,
        help="JSON Lines with item_id and text (or one text per line)",
    )
    rec.add_argument("--popularity", help="RUN_DIR/popularity.npz: the DP item popularity prior")
    rec.add_argument("--top", type=_positive_int, default=20, help="how many to print (default 20)")
    rec.set_defaults(func=_cmd_recommend)

    aud = sub.add_parser(
        "audit", parents=[out], help="recompute every device's epsilon from the ledgers"
    )
    aud.add_argument("run_dir", nargs="?", help="a run directory written by simulate")
    aud.add_argument("--store", help="audit one device store instead")
    aud.add_argument(
        "--budget",
        type=_positive_float,
        help="with --store: the device's budget (flag if exceeded)",
    )
    aud.add_argument(
        "--delta", type=_open_share, default=None, help="delta, in (0, 1) (default: the run's)"
    )
    aud.add_argument(
        "--accountant", choices=["pld", "rdp"], default=None, help="accountant (default: the run's)"
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
        type=_positive_int,
        default=None,
        help="with --empirical: canaries (default: one per client)",
    )
    aud.add_argument("--cache", help="embedding cache file")
    aud.set_defaults(func=_cmd_audit)

    rep = sub.add_parser(
        "report", parents=[out], help="write RUN_DIR/report.html: tree, epsilon, utility, audit"
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
        type=_positive_int,
        default=300,
        help="device stores read for the per-version metrics (default 300, an even sample)",
    )
    rep.add_argument(
        "--no-compress", action="store_true", help="inline plotly.js uncompressed (bigger file)"
    )
    rep.set_defaults(func=_cmd_report)

    from simulations.sweep import add_arguments as _sweep_arguments

    swp = sub.add_parser(
        "sweep", parents=[out], help="simulate once per epsilon; utility against epsilon"
    )
    _sweep_arguments(swp)
    swp.set_defaults(func=_cmd_sweep)

    lab = sub.add_parser(
        "labels", parents=[out], help="embed a label vocabulary for the server (labels.npz)"
    )
    lab.add_argument("--out", required=True, help="output .npz file")
    lab.add_argument("--taxonomy", help="label space TSV (default: the project's vocabulary)")
    lab.add_argument(
        "--dim", type=_positive_int, default=128, help="projection dimension (default 128)"
    )
    lab.add_argument(
        "--projection-seed", type=int, default=None, help="projection seed (default: the project's)"
    )
    lab.add_argument(
        "--model-dir",
        default=None,
        help="local Hugging Face model directory (default: bundled MiniLM)",
    )
    lab.add_argument("--cache", help="embedding cache file")
    lab.set_defaults(func=_cmd_labels)

    enc = sub.add_parser("encode", parents=[out], help="embed the store's texts into its cache")
    enc.add_argument("--store", required=True, help="the device's SQLite store")
    enc.add_argument(
        "--model-dir",
        default=None,
        help="local Hugging Face model directory (default: bundled MiniLM)",
    )
    enc.add_argument("--batch-size", type=_positive_int, default=64)
    enc.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads (default: torch's choice)",
    )
    enc.set_defaults(func=_cmd_encode)

    # deployment on Flower's Deployment Engine: `fedinterest server ...`, `fedinterest node ...`
    from simulations.deploy_cli import add_deploy_parsers

    add_deploy_parsers(sub, out)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fedinterest")
    except Exception:
        return "unknown"


def _report_error(message: str, code: int, kind: str, as_json: bool) -> int:
    """The CLI's one way to fail: one line on stderr (``--json``: one JSON object)."""
    message = " ".join(message.split())  # one line, whatever the exception text held
    if as_json:
        doc = {"error": {"message": message, "type": kind, "exit_code": code}}
        sys.stderr.write(json.dumps(doc, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"fedinterest: error: {message}\n")
    sys.stderr.flush()
    return code


def _os_error_message(err: OSError) -> str:
    what = err.strerror or str(err)
    if err.filename is not None:
        return f"{what}: {str(err.filename)!r}."
    return f"{what}."


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code: 0 success, 1 error, 2 usage (130 interrupted).

    This is the one error boundary: no traceback reaches a user. An unexpected exception is
    reported on one line as an internal error; ``FEDINTEREST_DEBUG=1`` re-raises it.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in words
    try:
        args = build_parser().parse_args(words)
        return int(args.func(args))
    except CliError as err:
        return _report_error(str(err), err.exit_code, type(err).__name__, as_json)
    except FedInterestError as err:
        return _report_error(str(err), 1, type(err).__name__, as_json)
    except BrokenPipeError:
        # the reader went away (`| head`): nothing to say, and nothing more to print
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        return _report_error(_os_error_message(err), 1, type(err).__name__, as_json)
    except KeyboardInterrupt:
        print("fedinterest: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("FEDINTEREST_DEBUG"):
            raise
        return _report_error(
            f"internal error ({type(err).__name__}: {err}); please report it, with the "
            "command; FEDINTEREST_DEBUG=1 shows the traceback.",
            1,
            "InternalError",
            as_json,
        )


if __name__ == "__main__":
    sys.exit(main())
