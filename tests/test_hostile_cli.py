"""Hostile input at the command line, as a user or an attacker would type it.

One table of cases over every command: malformed, truncated, wrong-type, binary, non-UTF-8,
wrong-schema and foreign files; hostile SQL; hostile flags. Each case asserts the exit code
(0 / 1 error / 2 usage), a one-line message on stderr that names the field or the file and
the value, no traceback, and that no file outside the case's own output changed (checksums
of the whole workspace before and after). The property test at the end feeds random bytes and
random flag combinations to each command (docs/robustness.md lists the cases).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.cli import main

ROOT = Path(__file__).resolve().parents[1]

GOOD_EVENTS = [
    {
        "user_id": f"u{i % 3}",
        "timestamp": 1_700_000_000 + 60 * i,
        "event_type": "view",
        "item_id": f"i{i}",
        "text": f"an item about topic {i % 5}",
    }
    for i in range(12)
]


def _jsonl(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace every case reads: good, foreign, broken and hostile files."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "good.jsonl").write_text(_jsonl(GOOD_EVENTS), encoding="utf-8")
    (d / "good.csv").write_text(
        "user_id,timestamp,event_type,item_id,text\nu1,1700000000,view,i1,hello world\n",
        encoding="utf-8",
    )
    (d / "wrong_header.csv").write_text("uid,ts,kind,item,body\nu1,1,view,i,x\n", encoding="utf-8")
    (d / "tabs_as.csv").write_text(
        "user_id\ttimestamp\tevent_type\titem_id\ttext\nu\t1700000000\tview\ti\tx\n",
        encoding="utf-8",
    )
    (d / "array.json").write_text(json.dumps(GOOD_EVENTS), encoding="utf-8")
    (d / "events.txt").write_text(_jsonl(GOOD_EVENTS), encoding="utf-8")
    rng = np.random.default_rng(7)
    (d / "garbage.bin").write_bytes(rng.bytes(4096))
    (d / "garbage.jsonl").write_bytes(rng.bytes(4096))
    (d / "latin1.txt").write_bytes("first\nCaf\xe9 cr\xe8me\n".encode("latin-1"))
    (d / "empty.txt").write_bytes(b"")
    (d / "truncated.json").write_text('{"run": {"rounds": 5', encoding="utf-8")
    (d / "adir").mkdir()
    (d / "adir" / "inside.txt").write_text("keep me\n", encoding="utf-8")
    foreign = sqlite3.connect(d / "foreign.db")
    foreign.execute("CREATE TABLE people (name TEXT, age INT)")
    foreign.execute("INSERT INTO people VALUES ('ann', 41)")
    foreign.commit()
    foreign.close()
    src = sqlite3.connect(d / "source.db")
    src.execute("CREATE TABLE t (u, ts, k, i, x)")
    src.execute("INSERT INTO t VALUES ('v', 1700000000, 'click', 'a', 'hello')")
    src.commit()
    src.close()
    (d / "zero.db").write_bytes(b"")
    assert main(["ingest", "--store", str(d / "store.db"), str(d / "good.jsonl"), "-q"]) == 0
    assert main(["ingest", "--store", str(d / "future.db"), str(d / "good.jsonl"), "-q"]) == 0
    fut = sqlite3.connect(d / "future.db")
    fut.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    fut.commit()
    fut.close()
    np.savez(d / "adapter_like.npz", a=np.zeros((2, 4)), b=np.zeros((4, 2)))
    np.savez(d / "bad_adapter.npz", a=np.zeros((2, 4)), b=np.zeros((3, 3)))
    np.savez(d / "pop_mismatch.npz", items=np.array(["a", "b"]), counts=np.array([1.0]))
    np.savez(d / "pop_nan.npz", items=np.array(["a", "b"]), counts=np.array([1.0, np.nan]))
    np.save(d / "single.npy", np.zeros(3))
    (d / "pop_wrong_schema.jsonl").write_text('{"nodes": [{"name": 1}]}\n', encoding="utf-8")
    (d / "cands_bad_json.jsonl").write_text('{"item_id": "a", "text": \n', encoding="utf-8")
    (d / "cands_no_text.jsonl").write_text('{"item_id": "a"}\n', encoding="utf-8")
    for name in ("garbage_run", "wrong_schema_run", "empty_run"):
        (d / name).mkdir()
    for f in ("config.json", "metrics.json", "rounds.jsonl", "hierarchy.json", "server.db"):
        (d / "garbage_run" / f).write_bytes(rng.bytes(512))
    (d / "wrong_schema_run" / "config.json").write_text(
        json.dumps({"run": {"rounds": "five"}, "dataset": 3, "clients": "many"}), encoding="utf-8"
    )
    for f in ("server.db", "labels.npz"):
        (d / "wrong_schema_run" / f).write_bytes(b"")
    (d / "wrong_schema_run" / "clients").mkdir()
    (d / "bad_config_run").mkdir()
    (d / "bad_config_run" / "config.json").write_text("{not json", encoding="utf-8")
    for f in ("server.db", "labels.npz"):
        (d / "bad_config_run" / f).write_bytes(b"")
    (d / "bad_config_run" / "clients").mkdir()
    (d / "user_dir").mkdir()
    (d / "user_dir" / "notes.txt").write_text("a user's notes\n", encoding="utf-8")
    return d


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Checksum of every file below ``root`` (SQLite's -wal/-shm side files aside: a read-only
    connection may create them empty; the database file itself must not change)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file() and not p.name.endswith(("-wal", "-shm")):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


@dataclass(frozen=True)
class Case:
    """One hostile command line. ``{ws}`` is the workspace, ``{out}`` a fresh output path."""

    id: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...] = ()
    stdin: bytes | None = None
    absent: tuple[str, ...] = ()  # paths (under ws or out) that must not exist afterwards
    warns: tuple[str, ...] = ()
    extra: Callable[[Path, Path, str], None] | None = field(default=None, compare=False)


def C(id: str, *argv: str, code: int = 1, says: tuple[str, ...] = (), **kw: object) -> Case:  # noqa: N802
    return Case(id, argv, code, says, **kw)  # type: ignore[arg-type]


def _json_error(_ws: Path, _out: Path, err: str) -> None:
    doc = json.loads(err.strip().splitlines()[-1])
    assert doc["error"]["exit_code"] in (1, 2) and doc["error"]["message"]


# fmt: off
CASES: list[Case] = [
    # ---- the command line itself ----------------------------------------------------------
    C("no-command", code=2, says=("required",)),
    C("unknown-command", "frobnicate", code=2, says=("frobnicate",)),
    C("unknown-flag", "store", "info", "--store", "{ws}/store.db", "--bogus", code=2,
      says=("--bogus",)),
    C("json-usage-error", "ingest", "--store", "{out}/s.db", "--json", code=2,
      extra=_json_error),
    C("json-error", "store", "info", "--store", "{ws}/nope.db", "--json", code=1,
      extra=_json_error),
    # ---- ingest ---------------------------------------------------------------------------
    C("ingest-missing-file", "ingest", "--store", "{out}/s.db", "{ws}/missing.jsonl",
      says=("missing.jsonl", "does not exist"), absent=("{out}/s.db",)),
    C("ingest-directory", "ingest", "--store", "{out}/s.db", "{ws}/adir",
      says=("adir", "is a directory"), absent=("{out}/s.db",)),
    C("ingest-unknown-suffix", "ingest", "--store", "{out}/s.db", "{ws}/events.txt", code=2,
      says=("events.txt", "--format"), absent=("{out}/s.db",)),
    C("ingest-nothing", "ingest", "--store", "{out}/s.db", code=2, says=("nothing to ingest",)),
    C("ingest-sqlite-no-query", "ingest", "--store", "{out}/s.db", "--sqlite",
      "{ws}/source.db", code=2, says=("--query",)),
    C("ingest-query-no-sqlite", "ingest", "--store", "{out}/s.db", "--query", "SELECT 1",
      code=2, says=("--sqlite",)),
    C("ingest-sqlite-missing", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/no.db",
      "--query", "SELECT 1", says=("no.db", "does not exist")),
    C("ingest-sqlite-garbage", "ingest", "--store", "{out}/s.db", "--sqlite",
      "{ws}/garbage.bin", "--query", "SELECT 1", says=("garbage.bin", "not a database"),
      absent=("{out}/s.db",)),
    C("sql-vacuum-into", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "VACUUM INTO '{out}/copy.db'", code=2, says=("SELECT", "VACUUM"),
      absent=("{out}/copy.db", "{out}/s.db")),
    C("sql-attach", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "ATTACH '{out}/new.db' AS n", code=2, says=("ATTACH",),
      absent=("{out}/new.db",)),
    C("sql-two-statements", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "SELECT * FROM t; DROP TABLE t", code=2, says=("one statement",)),
    C("sql-cte-delete", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "WITH a AS (SELECT 1) DELETE FROM t", says=("not authorized",)),
    C("sql-pragma-function", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "SELECT * FROM pragma_table_info('t')", says=("not authorized",)),
    C("sql-comment-hides-write", "ingest", "--store", "{out}/s.db", "--sqlite",
      "{ws}/source.db", "--query", "/* SELECT */ DELETE FROM t", code=2, says=("DELETE",)),
    C("sql-load-extension", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "SELECT load_extension('x')", says=("not authorized",)),
    C("sql-unknown-column", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "SELECT nope FROM t", says=("no such column: nope",)),
    C("sql-unterminated", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query", "SELECT 'abc", code=2, says=("one statement",)),
    C("sql-ok-readonly", "ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db",
      "--query",
      "SELECT u AS user_id, ts AS timestamp, k AS event_type, i AS item_id, x AS text FROM t",
      code=0),
    C("csv-wrong-header", "ingest", "--store", "{out}/s.db", "{ws}/wrong_header.csv",
      says=("wrong_header.csv", "missing user_id", "uid"), absent=("{out}/s.db",)),
    C("tsv-read-as-csv", "ingest", "--store", "{out}/s.db", "{ws}/tabs_as.csv",
      says=("header", "--format"), absent=("{out}/s.db",)),
    C("csv-valid", "ingest", "--store", "{out}/s.db", "{ws}/good.csv", code=0,
      says=("accepted 1",)),
    C("json-array", "ingest", "--store", "{out}/s.db", "{ws}/array.json",
      says=("array.json", "JSON array"), absent=("{out}/s.db",)),
    C("batch-size-zero", "ingest", "--store", "{out}/s.db", "{ws}/good.jsonl",
      "--batch-size", "0", code=2, says=("--batch-size", "'0'")),
    C("batch-size-text", "ingest", "--store", "{out}/s.db", "{ws}/good.jsonl",
      "--batch-size", "many", code=2, says=("--batch-size", "'many'")),
    C("batch-size-huge", "ingest", "--store", "{out}/s.db", "{ws}/good.jsonl",
      "--batch-size", "1000000000", code=2, says=("--batch-size", "100000"),
      absent=("{out}/s.db",)),
    C("ingest-into-foreign-db", "ingest", "--store", "{ws}/foreign.db", "{ws}/good.jsonl",
      says=("foreign.db", "not a fedinterest store", "people")),
    C("ingest-into-garbage", "ingest", "--store", "{ws}/garbage.bin", "{ws}/good.jsonl",
      says=("garbage.bin", "not a fedinterest store")),
    C("ingest-into-directory", "ingest", "--store", "{ws}/adir", "{ws}/good.jsonl",
      says=("adir", "directory")),
    C("ingest-future-schema", "ingest", "--store", "{ws}/future.db", "{ws}/good.jsonl",
      says=("schema version 99",)),
    C("ingest-binary-jsonl", "ingest", "--store", "{out}/s.db", "{ws}/garbage.jsonl", code=0,
      says=("rejected",)),
    C("ingest-binary-strict", "ingest", "--store", "{out}/s.db", "{ws}/garbage.jsonl",
      "--strict", "-q", says=("--strict",)),
    C("ingest-empty-file", "ingest", "--store", "{out}/s.db", "{ws}/empty.txt", "--format",
      "jsonl", code=0, says=("read 0",)),
    C("stdin-huge-line", "ingest", "--store", "{out}/s.db", "-", "--json", code=0,
      stdin=(json.dumps({**GOOD_EVENTS[0], "text": "x" * (1 << 21)}) + "\n").encode(),
      says=("line_too_long",)),
    C("stdin-csv-format", "ingest", "--store", "{out}/s.db", "-", "--format", "csv", code=0,
      stdin=b"user_id,timestamp,event_type,item_id,text\nu1,1700000000,view,i1,hello\n",
      says=("accepted 1",)),
    C("stdin-csv-bad-header", "ingest", "--store", "{out}/s.db", "-", "--format", "csv",
      stdin=b"a,b\n1,2\n", says=("<stdin>", "missing user_id")),
    C("stdin-twice", "ingest", "--store", "{out}/s.db", "-", "-", code=2, stdin=b"",
      says=("once",)),
    C("stdin-non-utf8", "ingest", "--store", "{out}/s.db", "-", "--strict", "-q",
      stdin=b'{"user_id": "\xff\xfe"}\n', says=("--strict",)),
    # ---- store info / encode ----------------------------------------------------------------
    C("info-missing", "store", "info", "--store", "{ws}/nope.db",
      says=("nope.db", "does not exist"), absent=("{ws}/nope.db",)),
    C("info-directory", "store", "info", "--store", "{ws}/adir", says=("adir", "directory")),
    C("info-foreign", "store", "info", "--store", "{ws}/foreign.db",
      says=("foreign.db", "not a fedinterest store")),
    C("info-garbage", "store", "info", "--store", "{ws}/garbage.bin",
      says=("garbage.bin", "not a fedinterest store")),
    C("info-zero-bytes", "store", "info", "--store", "{ws}/zero.db",
      says=("zero.db", "empty database")),
    C("info-future-schema", "store", "info", "--store", "{ws}/future.db",
      says=("schema version 99",)),
    C("info-no-store-flag", "store", "info", code=2, says=("--store",)),
    C("info-ok", "store", "info", "--store", "{ws}/store.db", "--json", code=0,
      says=('"events": 12',)),
    C("encode-foreign", "encode", "--store", "{ws}/foreign.db",
      says=("foreign.db", "not a fedinterest store")),
    C("encode-garbage", "encode", "--store", "{ws}/garbage.bin", says=("garbage.bin",)),
    C("encode-missing", "encode", "--store", "{ws}/nope.db", says=("does not exist",)),
    C("encode-batch-zero", "encode", "--store", "{ws}/store.db", "--batch-size", "0", code=2,
      says=("--batch-size",)),
    C("encode-threads-negative", "encode", "--store", "{ws}/store.db", "--threads", "-1",
      code=2, says=("--threads", "'-1'")),
    # ---- profile / recommend ----------------------------------------------------------------
    C("profile-foreign", "profile", "--store", "{ws}/foreign.db",
      says=("not a fedinterest store",)),
    C("profile-garbage-store", "profile", "--store", "{ws}/garbage.bin",
      says=("not a fedinterest store",)),
    C("profile-hierarchy-garbage", "profile", "--store", "{ws}/store.db", "--hierarchy",
      "{ws}/garbage.bin", says=("garbage.bin",)),
    C("profile-hierarchy-missing", "profile", "--store", "{ws}/store.db", "--hierarchy",
      "{ws}/nope.json", says=("--hierarchy", "nope.json", "does not exist")),
    C("profile-hierarchy-wrong-schema", "profile", "--store", "{ws}/store.db", "--hierarchy",
      "{ws}/truncated.json", says=("truncated.json",)),
    C("profile-no-hierarchy-yet", "profile", "--store", "{ws}/store.db",
      says=("no hierarchy", "--hierarchy")),
    C("profile-adapter-garbage", "profile", "--store", "{ws}/store.db", "--adapter",
      "{ws}/garbage.bin", says=("--adapter", "npz")),
    C("profile-adapter-wrong-npz", "profile", "--store", "{ws}/store.db", "--adapter",
      "{ws}/pop_nan.npz", says=("--adapter", "lacks the array(s) a, b")),
    C("profile-adapter-bad-shapes", "profile", "--store", "{ws}/store.db", "--adapter",
      "{ws}/bad_adapter.npz", says=("--adapter", "shapes")),
    C("profile-adapter-npy", "profile", "--store", "{ws}/store.db", "--adapter",
      "{ws}/single.npy", says=("--adapter", ".npz")),
    C("profile-population-garbage", "profile", "--store", "{ws}/store.db", "--population",
      "{ws}/garbage.bin", says=("population file", "garbage.bin")),
    C("profile-population-schema", "profile", "--store", "{ws}/store.db", "--population",
      "{ws}/pop_wrong_schema.jsonl", says=("pop_wrong_schema.jsonl", "count")),
    C("profile-population-empty", "profile", "--store", "{ws}/store.db", "--population",
      "{ws}/empty.txt", says=("empty",)),
    C("profile-top-zero", "profile", "--store", "{ws}/store.db", "--top", "0", code=2,
      says=("--top", "'0'")),
    C("profile-min-population-nan", "profile", "--store", "{ws}/store.db",
      "--min-population", "nan", code=2, says=("--min-population",)),
    C("recommend-cands-latin1", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/latin1.txt", says=("--candidates", "line 2", "not UTF-8")),
    C("recommend-cands-empty", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/empty.txt", says=("no candidates",)),
    C("recommend-cands-bad-json", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/cands_bad_json.jsonl", says=("line 1", "malformed JSON")),
    C("recommend-cands-no-text", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/cands_no_text.jsonl", says=("line 1", "`text`")),
    C("recommend-cands-directory", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/adir", says=("--candidates", "directory")),
    C("recommend-cands-binary", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/garbage.bin", says=("--candidates", "not UTF-8")),
    C("recommend-popularity-garbage", "recommend", "--store", "{ws}/store.db",
      "--candidates", "{ws}/events.txt", "--popularity", "{ws}/garbage.bin",
      says=("--popularity", "garbage.bin", "npz")),
    C("recommend-popularity-other-npz", "recommend", "--store", "{ws}/store.db",
      "--candidates", "{ws}/events.txt", "--popularity", "{ws}/adapter_like.npz",
      says=("--popularity", "lacks the array(s) items, counts")),
    C("recommend-popularity-mismatch", "recommend", "--store", "{ws}/store.db",
      "--candidates", "{ws}/events.txt", "--popularity", "{ws}/pop_mismatch.npz",
      says=("--popularity", "one length")),
    C("recommend-popularity-nan", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/events.txt", "--popularity", "{ws}/pop_nan.npz", says=("--popularity", "finite")),
    C("recommend-popularity-npy", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/events.txt", "--popularity", "{ws}/single.npy", says=("--popularity", ".npz")),
    C("recommend-adapter-garbage", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/events.txt", "--adapter", "{ws}/garbage.bin", says=("--adapter",)),
    C("recommend-top-zero", "recommend", "--store", "{ws}/store.db", "--candidates",
      "{ws}/events.txt", "--top", "0", code=2, says=("--top",)),
    C("recommend-no-candidates-flag", "recommend", "--store", "{ws}/store.db", code=2,
      says=("--candidates",)),
    C("recommend-foreign-store", "recommend", "--store", "{ws}/foreign.db", "--candidates",
      "{ws}/events.txt", says=("not a fedinterest store",)),
    # ---- simulate ----------------------------------------------------------------------------
    C("sim-bad-dataset", "simulate", "--out", "{out}/run", "--dataset", "nonsense",
      says=("--dataset", "nonsense"), absent=("{out}/run",)),
    C("sim-overwrite-user-dir", "simulate", "--out", "{ws}/user_dir", "--overwrite",
      "--dataset", "nonsense", says=("user_dir", "not a fedinterest run directory")),
    C("sim-overwrite-user-dir-good-dataset", "simulate", "--out", "{ws}/user_dir",
      "--overwrite", says=("user_dir", "not a fedinterest run directory")),
    C("sim-overwrite-cwd", "simulate", "--out", ".", "--overwrite", "--dataset", "x",
      says=("working directory",)),
    C("sim-overwrite-parent", "simulate", "--out", "..", "--overwrite",
      says=("working directory",)),
    C("sim-overwrite-root", "simulate", "--out", "/", "--overwrite", says=("'/'",)),
    C("sim-not-empty", "simulate", "--out", "{ws}/user_dir", says=("not empty", "--overwrite")),
    C("sim-out-is-file", "simulate", "--out", "{ws}/good.jsonl",
      says=("--out", "good.jsonl", "is a file")),
    C("sim-out-under-file", "simulate", "--out", "{ws}/good.jsonl/run",
      says=("--out", "good.jsonl")),
    C("sim-taxonomy-binary", "simulate", "--out", "{out}/run", "--taxonomy",
      "{ws}/garbage.bin", says=("taxonomy", "garbage.bin", "UTF-8"), absent=("{out}/run",)),
    C("sim-taxonomy-missing", "simulate", "--out", "{out}/run", "--taxonomy", "{ws}/no.tsv",
      says=("no.tsv", "does not exist"), absent=("{out}/run",)),
    C("sim-taxonomy-directory", "simulate", "--out", "{out}/run", "--taxonomy", "{ws}/adir",
      says=("adir", "directory"), absent=("{out}/run",)),
    C("sim-taxonomy-no-columns", "simulate", "--out", "{out}/run", "--taxonomy",
      "{ws}/good.csv", says=("good.csv", "'path'"), absent=("{out}/run",)),
    C("sim-cache-foreign-db", "simulate", "--out", "{out}/run", "--cache", "{ws}/foreign.db",
      says=("embedding cache", "foreign.db", "people"), absent=("{out}/run",)),
    C("sim-cache-garbage", "simulate", "--out", "{out}/run", "--cache", "{ws}/garbage.bin",
      says=("embedding cache", "garbage.bin"), absent=("{out}/run",)),
    C("labels-cache-foreign-db", "labels", "--out", "{out}/l.npz", "--cache",
      "{ws}/foreign.db", says=("embedding cache", "foreign.db"), absent=("{out}/l.npz",)),
    C("sim-dropout-one", "simulate", "--out", "{out}/run", "--dropout", "1", code=2,
      says=("--dropout", "'1'")),
    C("sim-delta-zero", "simulate", "--out", "{out}/run", "--delta", "0", code=2,
      says=("--delta", "'0'")),
    C("sim-delta-above-one", "simulate", "--out", "{out}/run", "--delta", "1.5", code=2,
      says=("--delta",)),
    C("sim-delta-large-warns", "simulate", "--out", "{out}/run", "--delta", "0.5",
      "--dataset", "nonsense", says=("--dataset",), warns=("--delta 0.5", "1/population")),
    C("sim-fraction-zero", "simulate", "--out", "{out}/run", "--fraction", "0", code=2,
      says=("--fraction", "(0, 1]")),
    C("sim-epsilon-negative", "simulate", "--out", "{out}/run", "--epsilon", "-1", code=2,
      says=("--epsilon",)),
    C("sim-epsilon-nan", "simulate", "--out", "{out}/run", "--epsilon", "nan", code=2,
      says=("--epsilon", "'nan'")),
    C("sim-epsilon-inf", "simulate", "--out", "{out}/run", "--epsilon", "inf", code=2,
      says=("--epsilon",)),
    C("sim-rounds-zero", "simulate", "--out", "{out}/run", "--rounds", "0", code=2,
      says=("--rounds",)),
    C("sim-clients-text", "simulate", "--out", "{out}/run", "--clients", "lots", code=2,
      says=("--clients", "'lots'")),
    C("sim-mode-bogus", "simulate", "--out", "{out}/run", "--mode", "bogus", code=2,
      says=("--mode", "bogus")),
    C("sim-tree-z-nan", "simulate", "--out", "{out}/run", "--tree-z", "nan", code=2,
      says=("--tree-z",)),
    C("sim-events-missing", "simulate", "--out", "{out}/run", "--dataset",
      "events:{ws}/nope.jsonl", says=("nope.jsonl",), absent=("{out}/run",)),
    C("sim-events-garbage", "simulate", "--out", "{out}/run", "--dataset",
      "events:{ws}/garbage.jsonl", says=("0 users",), absent=("{out}/run",)),
    C("sim-events-empty-spec", "simulate", "--out", "{out}/run", "--dataset", "events:",
      says=("events:FILE",), absent=("{out}/run",)),
    C("sim-mind-no-dir", "simulate", "--out", "{out}/run", "--dataset", "mind:",
      says=("mind:DIR",), absent=("{out}/run",)),
    C("sim-resume-missing", "simulate", "--resume", "{ws}/nope_run",
      says=("nope_run", "config.json")),
    C("sim-resume-corrupt-config", "simulate", "--resume", "{ws}/bad_config_run",
      says=("config.json", "not a JSON run config")),
    C("sim-resume-wrong-schema", "simulate", "--resume", "{ws}/wrong_schema_run",
      says=("config.json",)),
    C("sim-resume-ignored-flags", "simulate", "--resume", "{ws}/bad_config_run", "--rounds",
      "10", "--epsilon", "50", "--out", "{out}/elsewhere", code=2,
      says=("--resume", "--rounds 10", "--epsilon 50.0", "--out")),
    C("sim-resume-user-dir", "simulate", "--resume", "{ws}/user_dir",
      says=("user_dir", "config.json")),
    # ---- audit ---------------------------------------------------------------------------------
    C("audit-missing-run", "audit", "{ws}/nope_run", says=("nope_run",)),
    C("audit-file-as-run", "audit", "{ws}/good.jsonl", says=("good.jsonl",)),
    C("audit-garbage-run", "audit", "{ws}/garbage_run", says=("garbage_run",)),
    C("audit-wrong-schema-run", "audit", "{ws}/wrong_schema_run", says=("wrong_schema_run",)),
    C("audit-neither", "audit", code=2, says=("RUN_DIR", "--store")),
    C("audit-both", "audit", "{ws}/garbage_run", "--store", "{ws}/store.db", code=2,
      says=("not both",)),
    C("audit-store-foreign", "audit", "--store", "{ws}/foreign.db",
      says=("not a fedinterest store",)),
    C("audit-store-garbage", "audit", "--store", "{ws}/garbage.bin",
      says=("garbage.bin", "fedinterest store")),
    C("audit-store-missing", "audit", "--store", "{ws}/nope.db", says=("does not exist",)),
    C("audit-store-ok", "audit", "--store", "{ws}/store.db", "--json", code=0,
      says=('"entries": 0',)),
    C("audit-nodp-alone", "audit", "{ws}/garbage_run", "--no-dp", code=2,
      says=("--empirical",)),
    C("audit-accountant-bogus", "audit", "{ws}/garbage_run", "--accountant", "magic", code=2,
      says=("--accountant", "magic")),
    C("audit-delta-two", "audit", "{ws}/garbage_run", "--delta", "2", code=2,
      says=("--delta", "'2'")),
    C("audit-budget-without-store", "audit", "{ws}/garbage_run", "--budget", "1", code=2,
      says=("--budget", "--store")),
    # ---- report / labels / data / sweep --------------------------------------------------------
    C("report-missing-run", "report", "{ws}/nope_run", says=("nope_run",)),
    C("report-empty-run", "report", "{ws}/empty_run", says=("empty_run",)),
    C("report-garbage-run", "report", "{ws}/garbage_run", says=("garbage_run",)),
    C("report-file-as-run", "report", "{ws}/good.jsonl", says=("good.jsonl",)),
    C("labels-taxonomy-binary", "labels", "--out", "{out}/l.npz", "--taxonomy",
      "{ws}/garbage.bin", says=("garbage.bin", "UTF-8"), absent=("{out}/l.npz",)),
    C("labels-dim-zero", "labels", "--out", "{out}/l.npz", "--dim", "0", code=2,
      says=("--dim",)),
    C("synth-users-zero", "data", "synth", "--out", "{out}/s.jsonl", "--users", "0", code=2,
      says=("--users", "'0'")),
    C("synth-drift-two", "data", "synth", "--out", "{out}/s.jsonl", "--drift-share", "2",
      code=2, says=("--drift-share",)),
    C("synth-out-directory", "data", "synth", "--out", "{ws}/adir", says=("adir",)),
    C("movielens-missing-dir", "data", "movielens", "--out", "{out}/m.jsonl", "--dir",
      "{ws}/nope_dir", says=("nope_dir",), absent=("{out}/m.jsonl",)),
    C("sweep-bad-dataset", "sweep", "--out", "{out}/sw", "--epsilons", "1,2", "--dataset",
      "nonsense",
      says=("--dataset", "nonsense"), absent=("{out}/sw/sweep.json",)),
]
# fmt: on


def _fill(s: str, ws: Path, out: Path) -> str:
    return s.replace("{ws}", str(ws)).replace("{out}", str(out))


def run_cli(
    argv: list[str], stdin: bytes | None, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """``main`` in-process, as the console script calls it; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    if stdin is not None:
        src = tmp / "stdin.bin"
        src.write_bytes(stdin)
        fh = open(src, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        monkeypatch.setattr(sys, "stdin", fh)
    try:
        try:
            code = main(argv)
        except SystemExit as exit_:  # --help / --version only
            code = int(exit_.code or 0)
    finally:
        if stdin is not None:
            fh.close()
        monkeypatch.undo()
    return code, out.getvalue(), err.getvalue()


def test_the_table_has_at_least_80_cases() -> None:
    """The suite covers every command with at least 80 hostile cases."""
    commands = {c.argv[0] for c in CASES if c.argv}
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
    assert {"ingest", "store", "encode", "profile", "recommend", "simulate", "audit"} <= commands
    assert {"report", "labels", "data", "sweep"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(
    case: Case, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit code, one clear line on stderr naming the field/value, nothing lost or written."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [_fill(a, ws, out) for a in case.argv]
    before = snapshot(ws)
    monkeypatch.chdir(ws / "adir")
    code, stdout, stderr = run_cli(argv, case.stdin, tmp_path, monkeypatch)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert code == case.code, (code, stderr, stdout)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if case.code != 0:
        errors = [ln for ln in lines if ln.startswith(("fedinterest: error:", '{"error"'))]
        assert len(errors) == 1, stderr
        for s in case.says:
            assert _fill(s, ws, out) in errors[0], (s, errors[0])
    else:
        assert not any(ln.startswith("fedinterest: error:") for ln in lines), stderr
        for s in case.says:
            assert s in stdout + stderr, (s, stdout, stderr)
    for w in case.warns:
        assert any(w in ln for ln in lines if "warning" in ln), (w, stderr)
    assert snapshot(ws) == before, "a file outside the command's output changed"
    for p in case.absent:
        assert not Path(_fill(p, ws, out)).exists(), f"{p} was written"
    if case.extra is not None:
        case.extra(ws, out, stderr)


def test_read_commands_never_write_a_foreign_database(ws: Path, tmp_path: Path) -> None:
    """store info / encode / profile / recommend / audit on another program's SQLite file:
    refused, and the file's bytes and journal mode are unchanged (no schema, no WAL)."""
    db = tmp_path / "theirs.db"
    db.write_bytes((ws / "foreign.db").read_bytes())
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for argv in (
        ["store", "info", "--store", str(db)],
        ["encode", "--store", str(db)],
        ["profile", "--store", str(db)],
        ["recommend", "--store", str(db), "--candidates", str(ws / "events.txt")],
        ["audit", "--store", str(db)],
        ["ingest", "--store", str(db), str(ws / "good.jsonl")],
    ):
        assert main(argv) == 1
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest, argv
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["people"]
    conn.close()


def test_store_info_opens_read_only(ws: Path, tmp_path: Path) -> None:
    """A read command works on a store in a read-only directory, and changes no byte."""
    d = tmp_path / "ro"
    d.mkdir()
    db = d / "store.db"
    db.write_bytes((ws / "store.db").read_bytes())
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    assert main(["store", "info", "--store", str(db), "-q"]) == 0
    assert main(["audit", "--store", str(db), "-q"]) == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_csv_ingest_reports_and_continues_to_the_next_file(ws: Path, tmp_path: Path) -> None:
    """A CSV, then a TSV, then JSONL on one command line: every file ingested, one report
    each (the CSV reader used to close the file under the progress bar)."""
    tsv = tmp_path / "e.tsv"
    tsv.write_text(
        "user_id\ttimestamp\tevent_type\titem_id\ttext\nu2\t1700000100\tclick\ti2\tbye\n",
        encoding="utf-8",
    )
    db = tmp_path / "s.db"
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "ingest", "--store", str(db),
         str(ws / "good.csv"), str(tsv), str(ws / "good.jsonl"), "--json"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [s["accepted"] for s in doc["sources"]] == [1, 1, 12]
    assert doc["stored_events"] == 14 and "Traceback" not in out.stderr


def test_duplicate_id_with_other_content_is_reported(ws: Path, tmp_path: Path) -> None:
    """Same event id, different text: counted as a duplicate and reported as a conflict
    naming the line and the fields; the stored event is kept."""
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(_jsonl([{**GOOD_EVENTS[0], "event_id": "e1"}]), encoding="utf-8")
    b.write_text(
        _jsonl([{**GOOD_EVENTS[1], "event_id": "e2"}, {**GOOD_EVENTS[0], "event_id": "e1",
                                                        "text": "changed"}]),
        encoding="utf-8",
    )  # fmt: skip
    db = tmp_path / "s.db"
    assert main(["ingest", "--store", str(db), str(a), "-q"]) == 0
    buf = io.StringIO()
    old = sys.stdout
    sys.stdout = buf
    try:
        assert main(["ingest", "--store", str(db), str(b), "--json"]) == 0
    finally:
        sys.stdout = old
    doc = json.loads(buf.getvalue())
    src = doc["sources"][0]
    assert src["duplicates"] == 1 and src["conflicts"] == 1 and doc["conflicts"] == 1
    assert src["conflict_examples"] == [{"line": 2, "event_id": "e1", "fields": ["text"]}]
    conn = sqlite3.connect(db)
    assert (
        conn.execute("SELECT text FROM events WHERE event_id = 'e1'").fetchone()[0]
        == (GOOD_EVENTS[0]["text"])
    )
    conn.close()


def test_broken_pipe_is_quiet(ws: Path) -> None:
    """`fedinterest ... | head -c1`: the reader goes away; no error, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "store", "info", "--store",
         str(ws / "store.db"), "--users", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "error" not in err.lower(), err
    assert proc.returncode in (0, 1)


def test_no_traceback_from_the_console_script(ws: Path, tmp_path: Path) -> None:
    """Run as a user runs it (a subprocess): hostile files give one line and exit 1."""
    for argv in (
        ["ingest", "--store", str(tmp_path / "s.db"), str(ws / "good.csv")],
        ["report", str(ws / "garbage_run")],
        ["simulate", "--resume", str(ws / "bad_config_run")],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "simulations.cli", *argv],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode in (0, 1)
        if out.returncode:
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# ---------------------------------------------------------------------------------------------
# property test: random bytes and random flag combinations, every command
# ---------------------------------------------------------------------------------------------

#: the commands and flags the property test combines. Inputs that would start real work (a
#: simulation on valid data, the encoder on a valid store) are kept out: every file the
#: command reads is the random one, so runs stay fast; the table above covers the valid paths.
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "ingest": (
        ["ingest", "--store", "{out}/s.db", "{rand}"],
        ["--format", "--batch-size", "--strict", "--json", "-q", "--sqlite", "--query"],
    ),
    "ingest-sql": (
        ["ingest", "--store", "{out}/s.db", "--sqlite", "{ws}/source.db", "--query", "{text}"],
        ["--batch-size", "--json"],
    ),
    "store-info": (["store", "info", "--store", "{rand}"], ["--users", "--json", "-q"]),
    "encode": (["encode", "--store", "{rand}"], ["--batch-size", "--threads", "--json"]),
    "profile": (
        ["profile", "--store", "{rand}"],
        [
            "--hierarchy",
            "--adapter",
            "--population",
            "--top",
            "--projection-seed",
            "--min-population",
            "--json",
        ],
    ),
    "recommend": (
        ["recommend", "--store", "{ws}/store.db", "--candidates", "{rand}"],
        ["--popularity", "--adapter", "--top", "--hierarchy", "--json"],
    ),
    "simulate": (
        ["simulate", "--out", "{out}/run", "--dataset", "events:{rand}"],
        [
            "--rounds",
            "--epsilon",
            "--delta",
            "--mode",
            "--fraction",
            "--seed",
            "--taxonomy",
            "--tree-z",
            "--dropout",
            "--robust",
            "--overwrite",
            "--no-dp",
            "--top-k",
            "--clients",
            "--min-cohort-fraction",
            "--json",
            "--resume",
        ],
    ),
    "audit": (
        ["audit", "{randdir}"],
        ["--delta", "--accountant", "--strict", "--json", "--store", "--budget"],
    ),
    "report": (["report", "{randdir}"], ["--out", "--no-utility", "--json", "--reaudit"]),
    "labels": (
        ["labels", "--out", "{out}/l.npz", "--taxonomy", "{rand}"],
        ["--dim", "--projection-seed", "--json"],
    ),
    "sweep": (
        ["sweep", "--out", "{out}/sw", "--epsilons", "1", "--dataset", "events:{rand}"],
        ["--epsilons", "--rounds", "--delta", "--mode", "--json", "--overwrite"],
    ),
}
HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        ["0", "-1", "1", "0.5", "1e-300", "1e308", "nan", "inf", "-inf", "", " ", "abc",
         "99999999999999999999", "secagg", "local", "pld", "rdp", "none", "median",
         "{rand}", "{randdir}", "{ws}/foreign.db", "{ws}/adir", "{ws}/nope", "{ws}/store.db",
         "{ws}/garbage_run", "\x00", "../..", "/", "1,2,x"]
    ),
    st.text(max_size=12),
)  # fmt: skip
PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_bytes_and_flags_never_crash(command: str, ws: Path, tmp_path: Path) -> None:
    """Random file contents and random flag combinations: exit code in {0, 1, 2}, no
    traceback, and no file outside the command's output changed."""
    base, flags = COMMANDS[command]

    @PROPERTY
    @given(
        data=st.binary(max_size=2048),
        chosen=st.lists(st.tuples(st.sampled_from(flags), HOSTILE_VALUES), max_size=4),
        text=st.text(max_size=40),
    )
    def check(data: bytes, chosen: list[tuple[str, str]], text: str) -> None:
        box = tmp_path / "box"
        if box.exists():
            import shutil

            shutil.rmtree(box)
        out = box / "out"
        out.mkdir(parents=True)
        rand = box / "random.jsonl"
        rand.write_bytes(data)
        randdir = box / "randrun"
        randdir.mkdir()
        for name in ("config.json", "metrics.json", "rounds.jsonl", "hierarchy.json"):
            (randdir / name).write_bytes(data[: len(data) // 2] if name != "config.json" else data)

        def fill(s: str) -> str:
            return (
                s.replace("{randdir}", str(randdir))
                .replace("{rand}", str(rand))
                .replace("{ws}", str(ws))
                .replace("{out}", str(out))
                .replace("{text}", text)
            )

        argv = [fill(a) for a in base]
        for flag, value in chosen:
            argv.append(flag)
            if flag not in _SWITCHES:
                argv.append(fill(value))
        before = snapshot(ws)
        inputs = snapshot(box, skip=out)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(out)
            code, _stdout, stderr = run_cli(argv, None, box, mp)
        assert code in (0, 1, 2), (argv, code, stderr)
        assert "Traceback" not in stderr and "internal error" not in stderr, (argv, stderr)
        assert snapshot(ws) == before, argv
        assert snapshot(box, skip=out) == inputs, argv

    check()


_SWITCHES = {
    "--strict", "--json", "-q", "--users", "--overwrite", "--no-dp", "--no-utility",
    "--reaudit",
}  # fmt: skip


@pytest.mark.slow
def test_recommend_on_an_empty_store_warns(tmp_path: Path) -> None:
    """A store with no events: recommend still ranks (exit 0) but says on stderr that every
    candidate scores alike, instead of printing zeros without a word."""
    from client.encoder_registry import make_encoder
    from common.hierarchy import Hierarchy, Node
    from common.projection import DEFAULT_OUTPUT_DIM, DEFAULT_SEED, PublicProjection

    proj = PublicProjection(384, DEFAULT_OUTPUT_DIM, DEFAULT_SEED, make_encoder("minilm").model_id)
    rng = np.random.default_rng(0)
    c = rng.normal(size=(3, DEFAULT_OUTPUT_DIM)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    nodes = {
        "n1": Node("n1", 2, "g1", (), c[0], 0.5, (("A > a", 1.0),)),
        "n2": Node("n2", 2, "g1", (), c[1], 0.5, (("A > b", 1.0),)),
        "g1": Node("g1", 1, "root", ("n1", "n2"), c[2], 1.0, (("A", 1.0),)),
        "root": Node("root", 0, None, ("g1",), c[2], 1.0),
    }
    h = Hierarchy(
        version=1, dim=DEFAULT_OUTPUT_DIM, projection_fingerprint=proj.fingerprint, nodes=nodes
    )
    h.save(tmp_path / "hierarchy.json")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    db = tmp_path / "s.db"
    assert main(["ingest", "--store", str(db), str(empty), "-q"]) == 0
    cands = tmp_path / "c.txt"
    cands.write_text("a film about space\na cookbook\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        code, stdout, stderr = run_cli(
            ["recommend", "--store", str(db), "--hierarchy", str(tmp_path / "hierarchy.json"),
             "--candidates", str(cands)],
            None, tmp_path, mp,
        )  # fmt: skip
    assert code == 0 and "holds no events" in stderr and "warning" in stderr
    assert len(stdout.strip().splitlines()) == 2


def markdown_table() -> str:
    """The table in docs/robustness.md: every case, its exit code and the message it gives
    (``python -m tests.test_hostile_cli``; WS is the workspace of hostile files, OUT a fresh
    output directory)."""
    import tempfile

    rows = ["| case | command | exit | message (stderr) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)

        class _Factory:
            def mktemp(self, name: str) -> Path:
                p = root / name
                p.mkdir()
                return p

        w = ws.__wrapped__(_Factory())  # type: ignore[attr-defined]
        for case in CASES:
            out = root / "out" / case.id
            out.mkdir(parents=True)
            argv = [_fill(a, w, out) for a in case.argv]
            mp.chdir(w / "adir")
            code, _o, err = run_cli(argv, case.stdin, out, mp)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            msg = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "")
            if case.warns:
                msg = " / ".join(ln for ln in lines if "warning" in ln) + " / " + msg
            if code == 0:
                msg = "(exit 0) " + (msg or "report on stdout")

            def tidy(s: str, out: Path = out) -> str:
                s = s.replace(str(out), "OUT").replace(str(w), "WS").replace("|", "\\|")
                return s if len(s) <= 300 else s[:297] + "..."

            shown = " ".join(a if " " not in a else repr(a) for a in case.argv)
            cmd = tidy(shown.replace("{ws}", "WS").replace("{out}", "OUT"))
            if case.stdin is not None:
                cmd += " < (stdin)"
            rows.append(f"| {case.id} | `{cmd}` | {code} | {tidy(msg)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
