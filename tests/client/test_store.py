"""The device store on real SQLite files: idempotent ingest, crash safety, cache, state."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from client.store import EventStore
from common.errors import StoreError
from common.events import (
    FLUSH,
    EventFlag,
    iter_records,
    read_csv,
    read_jsonl,
    read_sql,
    read_stream,
)
from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl


def synth_file(path: Path, users: int = 30, seed: int = 3) -> list[dict[str, object]]:
    ds = generate(SyntheticConfig(users=users, seed=seed))
    write_jsonl(ds.events, path)
    return [e.to_dict() for e in ds.events]


def acceptance_file(path: Path) -> None:
    """997 good rows, 1 malformed JSON line, 1 row missing user_id, 1 timestamp in 2999."""
    rows = [json.dumps(r) for r in synth_file(path.with_suffix(".src.jsonl"), users=20)[:997]]
    missing = json.loads(rows[0])
    del missing["user_id"]
    missing["event_id"] = "no-user"
    future = json.loads(rows[1])
    future["timestamp"] = "2999-06-01T00:00:00Z"
    future["event_id"] = "future"
    lines = [
        *rows[:300],
        '{"user_id": "u1", "text": ',
        *rows[300:600],
        json.dumps(missing),
        *rows[600:],
        json.dumps(future),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_ingest_acceptance_997_of_1000(tmp_path: Path) -> None:
    """1 malformed, 1 missing user_id, 1 future row: 997 stored, 3 reported by line; re-ingest adds 0."""
    src = tmp_path / "mixed.jsonl"
    acceptance_file(src)
    with EventStore(tmp_path / "d.db") as store:
        rep = store.ingest(read_jsonl(src), batch_size=100)
        assert (rep.read, rep.accepted, rep.rejected, rep.duplicates) == (1000, 997, 3, 0)
        assert [(r.line, r.reason, r.field) for r in rep.examples] == [
            (301, "bad_json", None),
            (602, "missing", "user_id"),
            (1000, "future_timestamp", "timestamp"),
        ]
        assert store.count() == 997
        again = store.ingest(read_jsonl(src))
        assert (again.accepted, again.duplicates, again.rejected) == (0, 997, 3)
        assert store.count() == 997


def test_store_is_wal_and_reopens(tmp_path: Path) -> None:
    """The file is in WAL mode and keeps its events across connections."""
    path = tmp_path / "d.db"
    with EventStore(path) as store:
        store.ingest(read_jsonl(_write(tmp_path, synth_file(tmp_path / "s.jsonl", users=3))))
        n = store.count()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with EventStore(path, create=False) as store:
        assert store.count() == n > 0
        evs = store.events()
        assert [e.timestamp for e in evs] == sorted(e.timestamp for e in evs)


def _write(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def test_missing_store_and_foreign_file_errors(tmp_path: Path) -> None:
    """Opening a missing store without create, or a non-database file, fails clearly."""
    with pytest.raises(StoreError, match="does not exist"):
        EventStore(tmp_path / "nope.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"not a fedinterest store|cannot open"):
        EventStore(junk)


def test_a_shard_store_is_refused_untouched(tmp_path: Path) -> None:
    """A batched run's shard store has a schema version too; opened as a device store it used
    to get the device tables added to it. It is refused, byte for byte unchanged, with or
    without create."""
    from client.shard_store import ShardStore

    path = tmp_path / "shard-000.db"
    ShardStore(path, create=True).close()
    before = path.read_bytes()
    for create in (False, True):
        with pytest.raises(StoreError, match="not a device store"):
            EventStore(path, create=create)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer schema is refused, not misread."""
    path = tmp_path / "d.db"
    EventStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        EventStore(path)


def test_sigkill_mid_ingest_then_rerun_stores_each_row_once(tmp_path: Path) -> None:
    """SIGKILL during `fedinterest ingest`, then re-run: every good row stored exactly once."""
    rows = synth_file(tmp_path / "base.jsonl", users=120, seed=5)
    # repeat with fresh ids to make the file long enough to kill mid-way
    big = []
    for k in range(3):
        for r in rows:
            big.append({**r, "event_id": f"{r['event_id']}-{k}"})
    src = _write(tmp_path, big)
    db = tmp_path / "d.db"
    cmd = [
        sys.executable,
        "-m",
        "simulations.cli",
        "ingest",
        "--store",
        str(db),
        str(src),
        "--batch-size",
        "50",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2])
    killed_at = None
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                n = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                c.close()
            except sqlite3.Error:
                n = 0
            if n >= 2000:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
        time.sleep(0.02)
    proc.wait(30)
    assert killed_at is not None, "ingest finished before it could be killed; make the file longer"
    with EventStore(db) as store:
        partial = store.count()
        assert 0 < partial < len(big)
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rerun = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], check=False)
    assert rerun.returncode == 0
    with EventStore(db) as store:
        assert store.count() == len(big)
        ids = [r[0] for r in store.connection.execute("SELECT event_id FROM events")]
        assert len(ids) == len(set(ids)) == len(big)


def test_stream_events_are_committed_as_they_arrive(tmp_path: Path) -> None:
    """Events written to a pipe are visible to another connection before the pipe closes."""
    db = tmp_path / "d.db"
    rows = synth_file(tmp_path / "s.jsonl", users=2)
    r, w = os.pipe()
    EventStore(db).close()
    result: dict[str, object] = {}

    def run() -> None:
        with EventStore(db) as store:
            result["report"] = store.ingest(read_stream(r), batch_size=1000, flag_quality=False)

    t = threading.Thread(target=run)
    t.start()
    os.write(w, (json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n").encode())
    seen = 0
    for _ in range(200):
        c = sqlite3.connect(db)
        seen = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        c.close()
        if seen == 2:
            break
        time.sleep(0.025)
    assert seen == 2, "stream events were not committed while the stream stayed open"
    os.write(w, (json.dumps(rows[2]) + "\n").encode())
    os.close(w)
    t.join(10)
    os.close(r)
    assert result["report"].accepted == 3  # type: ignore[attr-defined]


def test_ingest_python_iterables_csv_and_sql(tmp_path: Path) -> None:
    """The SDK ingests Event objects, dicts, CSV files and SQL queries alike."""
    ds = generate(SyntheticConfig(users=4, seed=9))
    with EventStore(tmp_path / "d.db") as store:
        rep = store.ingest(iter_records(ds.events[:10]))
        assert rep.accepted == 10
        rep = store.ingest(
            iter_records([e.to_dict() for e in ds.events[10:20]] + [{"user_id": "x"}])
        )
        assert (rep.accepted, rep.rejected, rep.examples[0].line) == (10, 1, 11)
        csv_path = tmp_path / "e.csv"
        fields = ["event_id", "user_id", "timestamp", "event_type", "item_id", "text", "category"]
        lines = [",".join(fields)] + [
            ",".join(json.dumps(str(e.to_dict()[f] or "")) for f in fields)
            for e in ds.events[20:30]
        ]
        csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert store.ingest(read_csv(csv_path)).accepted == 10
        src = sqlite3.connect(tmp_path / "src.db")
        src.execute("CREATE TABLE t (user_id, timestamp, event_type, item_id, text)")
        src.executemany(
            "INSERT INTO t VALUES (?,?,?,?,?)",
            [
                (e.user_id, e.timestamp, e.event_type.value, e.item_id, e.text)
                for e in ds.events[30:45]
            ],
        )
        assert store.ingest(read_sql(src, "SELECT * FROM t")).accepted == 15
        assert store.count() == 45


def test_flush_sentinel_commits_partial_batches(tmp_path: Path) -> None:
    """FLUSH commits what is pending even below the batch size."""
    ds = generate(SyntheticConfig(users=2, seed=1))
    counts = []
    with EventStore(tmp_path / "d.db") as store:
        items = [(1, ds.events[0]), FLUSH, (2, ds.events[1]), (3, ds.events[2]), FLUSH]
        store.ingest(items, batch_size=100, on_batch=lambda rep: counts.append(rep.accepted))
    assert counts == [1, 3]


def test_quality_flags_outliers_and_bots(tmp_path: Path) -> None:
    """Dwell outliers and bot-like users are flagged, never dropped."""
    base = 1.7e9
    rows = [
        {
            "user_id": "human",
            "timestamp": base + i * 3600,
            "event_type": "view",
            "item_id": f"i{i}",
            "text": f"article {i}",
            "dwell_seconds": 20 + (i % 7),
        }
        for i in range(40)
    ]
    rows.append(
        {
            "user_id": "human",
            "timestamp": base + 99,
            "event_type": "view",
            "item_id": "x",
            "text": "long read",
            "dwell_seconds": 9000,
        }
    )
    rows += [
        {
            "user_id": "bot",
            "timestamp": base + i * 0.2,
            "event_type": "click",
            "item_id": f"b{i}",
            "text": f"spam {i}",
        }
        for i in range(700)
    ]
    with EventStore(tmp_path / "d.db") as store:
        rep = store.ingest(iter_records(rows), now=base + 1e6)
        assert rep.accepted == len(rows)
        assert rep.fixes["flagged_bot_events"] == 700
        assert rep.fixes["flagged_dwell_outlier"] >= 1
        flagged = store.events(user_id="human", exclude_flags=0)
        assert any(e.flags & EventFlag.DWELL_OUTLIER and e.dwell_seconds == 9000 for e in flagged)
        assert store.count(user_id="bot") == 700
        assert len(store.events(exclude_flags=EventFlag.BOT_USER)) == 41


def test_embedding_cache_roundtrip_and_missing_texts(tmp_path: Path) -> None:
    """Vectors round-trip as float32; texts without a cached vector are listed once."""
    ds = generate(SyntheticConfig(users=2, seed=2))
    with EventStore(tmp_path / "d.db") as store:
        store.ingest(iter_records(ds.events))
        todo = store.texts_without_embedding("m1")
        assert len(todo) == len({e.text for e in ds.events})
        vecs = np.random.default_rng(0).normal(size=(len(todo), 8)).astype(np.float32)
        store.embeddings.put("m1", [h for h, _ in todo], vecs)
        assert store.texts_without_embedding("m1") == []
        assert len(store.texts_without_embedding("m2")) == len(todo)
        got = store.embeddings.get("m1", [todo[3][0], "absent"])
        assert list(got) == [todo[3][0]] and np.array_equal(got[todo[3][0]], vecs[3])
        with pytest.raises(StoreError, match="finite"):
            store.embeddings.put("m1", ["h"], np.array([[np.nan]], dtype=np.float32))


def test_state_survives_reopen(tmp_path: Path) -> None:
    """Client state written in one session is there in the next."""
    with EventStore(tmp_path / "d.db") as store:
        store.set_json_state("hierarchy", {"version": 3})
        store.set_state("blob", b"\x00\x01")
    with EventStore(tmp_path / "d.db") as store:
        assert store.get_json_state("hierarchy") == {"version": 3}
        assert store.get_state("blob") == b"\x00\x01" and store.get_state("none") is None
        assert store.info()["ledger_entries"] == 0


def test_sql_outlier_flags_match_numpy_reference(tmp_path: Path) -> None:
    """The store's SQL median/MAD flags equal common.events.robust_outliers per event type."""
    from common.events import robust_outliers

    ds = generate(SyntheticConfig(users=40, seed=8))
    with EventStore(tmp_path / "d.db") as store:
        store.ingest(iter_records(ds.events))
        rows = store.connection.execute(
            "SELECT event_type, dwell, value, flags FROM events"
        ).fetchall()
    for etype in {r[0] for r in rows}:
        sub = [r for r in rows if r[0] == etype]
        for col, flag in ((1, EventFlag.DWELL_OUTLIER), (2, EventFlag.VALUE_OUTLIER)):
            ref = robust_outliers([np.nan if r[col] is None else r[col] for r in sub])
            got = np.array([bool(r[3] & flag) for r in sub])
            assert np.array_equal(ref, got), (etype, col)
