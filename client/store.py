"""The device store: one SQLite file (WAL) per device.

Tables:
    ``events``      every accepted event, unique by ``event_id`` (inserts are idempotent);
    ``embeddings``  the embedding cache, keyed by ``(model_id, text_hash)``;
    ``ledger``      the privacy ledger: one row per mechanism run on this device;
    ``state``       small client state that must survive rounds (hierarchy version, adapter...);
    ``meta``        schema version and device metadata.

Ingestion is streamed in transactional batches: a crash loses at most the batch in flight,
and re-running the same input stores nothing twice (the primary key is the event id, which
is derived from the content when the source has none).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.errors import InvalidEventError, StoreError
from common.events import (
    FLUSH,
    MIN_OUTLIER_SAMPLE,
    CleaningConfig,
    Event,
    EventFlag,
    EventType,
    IngestReport,
    RawItem,
    Rejection,
    bot_like,
    outlier_cutoff,
    parse_event,
    text_hash,
)
from common.features import UserAggregates, user_aggregates
from common.privacy.ledger import LedgerEntry

__all__ = ["MAX_INGEST_BATCH", "SCHEMA_VERSION", "EmbeddingCache", "EventStore"]

SCHEMA_VERSION: Final[int] = 1
#: the most events one ingest transaction holds in memory (a resource limit)
MAX_INGEST_BATCH: Final[int] = 100_000

_EMBEDDINGS_DDL = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_id  TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    dim       INTEGER NOT NULL,
    vector    BLOB NOT NULL,
    PRIMARY KEY (model_id, text_hash)
) WITHOUT ROWID;
"""

_DDL = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    ts          REAL NOT NULL,
    event_type  TEXT NOT NULL,
    item_id     TEXT,
    text        TEXT NOT NULL,
    text_hash   TEXT NOT NULL,
    category    TEXT,
    dwell       REAL,
    value       REAL,
    flags       INTEGER NOT NULL DEFAULT 0,
    ingested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts);
CREATE INDEX IF NOT EXISTS events_text_hash ON events (text_hash);
CREATE TABLE IF NOT EXISTS ledger (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    server_round INTEGER,
    mechanism    TEXT NOT NULL,
    params       TEXT NOT NULL,
    created_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL, updated_at REAL NOT NULL);
"""
    + _EMBEDDINGS_DDL
)

_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, user_id, ts, event_type, item_id, text, text_hash, "
    "category, dwell, value, flags, ingested_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_COLUMNS = "event_id, user_id, ts, event_type, item_id, text, category, dwell, value, flags"
_QUALITY_FLAGS = int(EventFlag.DWELL_OUTLIER | EventFlag.VALUE_OUTLIER | EventFlag.BOT_USER)
_SQL_CHUNK = 500


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch or ledger entry survives a power cut, not only a process kill.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open store {str(path)!r}: {err}.") from err
    return conn


def _connect_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that cannot write: SQLite's ``mode=ro`` URI (no schema, no WAL switch)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open store {str(path)!r} read-only: {err}.") from err
    return conn


def _check_cache_file(path: Path, timeout: float) -> None:
    """An existing cache file must be a standalone cache or a device store (read-only check)."""
    conn = _connect_read_only(path, timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise StoreError(f"embedding cache {str(path)!r} is not a SQLite database: {err}.") from err
    finally:
        conn.close()
    if tables and "embeddings" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise StoreError(
            f"embedding cache {str(path)!r} is another program's database (tables {shown}); "
            "refusing to add a cache to it. Give a new file or an existing cache."
        )


def _store_schema_version(path: Path, timeout: float) -> int | None:
    """The schema version of an existing fedinterest store, ``None`` for an empty database
    (a file with no tables, e.g. 0 bytes); :class:`StoreError` for anything else (not SQLite,
    or another program's database). Reads only: the file is not changed."""
    if path.is_dir():
        raise StoreError(f"store {str(path)!r} is a directory, not a SQLite file.")
    if path.stat().st_size == 0:
        return None
    conn = _connect_read_only(path, timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        row = (
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if "meta" in tables
            else None
        )
        kind = (
            conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
            if "meta" in tables
            else None
        )
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{str(path)!r} is not a fedinterest store: {err}.") from err
    finally:
        conn.close()
    if kind is not None:
        # a batched run's shard store (client.shard_store) has a schema version too: opened
        # as a device store, it would get the device tables added to it
        raise StoreError(
            f"{str(path)!r} is a {kind[0]!r} database (many users of a batched run), not a "
            "device store; `fedinterest audit RUN_DIR` and `fedinterest report RUN_DIR` read "
            "a batched run's shard stores."
        )
    if row is None:
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{str(path)!r} is not a fedinterest store: a SQLite database with other tables "
            f"({shown}) and no fedinterest schema; refusing to touch it."
        )
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreError(
            f"{str(path)!r} is not a fedinterest store: `schema_version` is {row[0]!r}."
        ) from None


class EmbeddingCache:
    """Embedding cache keyed by ``(model_id, text_hash)``, float32 vectors.

    Lives inside a device store, or alone in its own SQLite file (:meth:`open`), e.g. one
    cache shared by all virtual clients of a simulation so each distinct text is encoded once.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 30.0) -> EmbeddingCache:
        """Opens (creating if needed) a standalone cache file."""
        p = Path(path)
        if p.is_dir():
            raise StoreError(f"embedding cache {str(p)!r} is a directory, not a SQLite file.")
        if p.exists() and p.stat().st_size > 0:
            _check_cache_file(p, timeout)  # another program's database is never touched
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(p, timeout)
        conn.executescript(_EMBEDDINGS_DDL)
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def get(self, model_id: str, hashes: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Cached vectors for the given text hashes (missing ones are absent)."""
        out: dict[str, npt.NDArray[np.float32]] = {}
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), _SQL_CHUNK):
            chunk = unique[i : i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT text_hash, dim, vector FROM embeddings WHERE model_id = ? AND text_hash IN ({marks})",
                (model_id, *chunk),
            )
            for h, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.size != dim:
                    raise StoreError(
                        f"embedding cache entry {h!r} has {vec.size} values, expected {dim}."
                    )
                out[h] = vec
        return out

    def put(self, model_id: str, hashes: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Stores ``vectors`` (shape ``(len(hashes), dim)``) in one transaction."""
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] != len(hashes):
            raise StoreError(
                f"`vectors` must have shape ({len(hashes)}, dim). Found {tuple(v.shape)}."
            )
        if not np.isfinite(v).all():
            raise StoreError("`vectors` must be finite; refusing to cache NaN/Inf embeddings.")
        dim = int(v.shape[1])
        with _Transaction(self._conn):
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings (model_id, text_hash, dim, vector) VALUES (?,?,?,?)",
                ((model_id, h, dim, row.tobytes()) for h, row in zip(hashes, v, strict=True)),
            )

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
        return int(
            self._conn.execute(
                "SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (model_id,)
            ).fetchone()[0]
        )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


#: what makes two events with one id the same event (flags and ingest time aside)
_CONTENT_FIELDS: Final[tuple[str, ...]] = (
    "user_id",
    "timestamp",
    "event_type",
    "item_id",
    "text",
    "category",
    "dwell_seconds",
    "value",
)
_CONTENT_COLUMNS: Final[tuple[str, ...]] = (
    "user_id",
    "ts",
    "event_type",
    "item_id",
    "text",
    "category",
    "dwell",
    "value",
)


def _content(e: Event) -> tuple[Any, ...]:
    return (
        e.user_id,
        e.timestamp,
        e.event_type.value,
        e.item_id,
        e.text,
        e.category,
        e.dwell_seconds,
        e.value,
    )


def _event_record(e: Event) -> dict[str, Any]:
    """The raw fields of an in-memory Event, for re-validation on ingest."""
    return {
        "event_id": e.event_id,
        "user_id": e.user_id,
        "timestamp": e.timestamp,
        "event_type": e.event_type.value,
        "item_id": e.item_id,
        "text": e.text,
        "category": e.category,
        "dwell_seconds": e.dwell_seconds,
        "value": e.value,
    }


def _row_to_event(row: Sequence[Any]) -> Event:
    event_id, user_id, ts, etype, item_id, text, category, dwell, value, flags = row
    return Event(
        event_id=event_id,
        user_id=user_id,
        timestamp=float(ts),
        event_type=EventType(etype),
        item_id=item_id,
        text=text,
        category=category,
        dwell_seconds=dwell,
        value=value,
        flags=int(flags),
    )


class EventStore:
    """One device's SQLite store.

    Args:
        path: the database file (created with its parent directory if missing).
        create: when False, a missing file (or an empty database) is an error instead of
            being created.
        read_only: open through SQLite's ``mode=ro`` URI: nothing is created or written, not
            even the WAL switch (``store info``, audits, reports).
        timeout: seconds to wait for a lock held by another process (e.g. a running node
            while ``fedinterest ingest`` writes).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        read_only: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not self.path.exists():
            if not create or read_only:
                raise StoreError(f"store {str(self.path)!r} does not exist.")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            version: int | None = None
        else:
            # checked through a read-only connection first: another program's database (or
            # any other file) is refused before a byte of it changes
            version = _store_schema_version(self.path, timeout)
            if version is None and (read_only or not create):
                raise StoreError(
                    f"{str(self.path)!r} is an empty database, not a fedinterest store "
                    "(`fedinterest ingest --store` creates one)."
                )
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"store {str(self.path)!r} has schema version {version}; this fedinterest reads "
                f"up to {SCHEMA_VERSION}. Upgrade fedinterest."
            )
        if read_only:
            self._conn = _connect_read_only(self.path, timeout)
        else:
            self._conn = _connect(self.path, timeout)
            self._init_schema()
        self.embeddings = EmbeddingCache(self._conn)

    # -- lifecycle --------------------------------------------------------------------------

    def _init_schema(self) -> None:
        try:
            self._conn.executescript(_DDL)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a fedinterest store: {err}.") from err
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            with _Transaction(self._conn):
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,)
                )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (for modules that keep their own tables, e.g. the ledger)."""
        return self._conn

    def transaction(self) -> _Transaction:
        """A write transaction (``BEGIN IMMEDIATE``) on the store, rolled back on error."""
        return _Transaction(self._conn)

    # -- ingestion ----------------------------------------------------------------------------

    def ingest(
        self,
        items: Iterable[RawItem | object],
        *,
        batch_size: int = 1000,
        config: CleaningConfig | None = None,
        now: float | None = None,
        flag_quality: bool = True,
        on_batch: Callable[[IngestReport], None] | None = None,
    ) -> IngestReport:
        """Validates and stores events, committing every ``batch_size`` valid events and at
        every :data:`~common.events.FLUSH` the source yields.

        Args:
            items: ``(line, record)`` pairs from a reader in :mod:`common.events` (or
                :func:`~common.events.iter_records`); a record is a mapping, an :class:`Event`, or an
                :class:`InvalidEventError` the reader produced for a malformed line.
            batch_size: valid events per transaction.
            config: cleaning limits.
            now: reference time for the future-timestamp check (defaults to the clock).
            flag_quality: after the last batch, refresh the outlier and bot flags.
            on_batch: called with the running report after each commit.

        Returns:
            The :class:`IngestReport`: accepted, duplicates, rejected with line and reason.
        """
        if not 1 <= batch_size <= MAX_INGEST_BATCH:
            raise StoreError(
                f"`batch_size` must be in [1, {MAX_INGEST_BATCH}] (events held in memory per "
                f"transaction). Found {batch_size!r}."
            )
        report = IngestReport()
        batch: list[Event] = []
        lines: list[int | None] = []
        for item in items:
            if item is FLUSH:
                if batch:
                    self._commit(batch, lines, report)
                    batch, lines = [], []
                    if on_batch is not None:
                        on_batch(report)
                continue
            line, record = item  # type: ignore[misc]
            report.read += 1
            if isinstance(record, InvalidEventError):
                report.reject(_rejection(record, line))
                continue
            try:
                raw = _event_record(record) if isinstance(record, Event) else record
                event = parse_event(raw, config=config, now=now, fixes=report.fixes)
            except InvalidEventError as err:
                report.reject(_rejection(err, line))
                continue
            batch.append(event)
            lines.append(line)
            if len(batch) >= batch_size:
                self._commit(batch, lines, report)
                batch, lines = [], []
                if on_batch is not None:
                    on_batch(report)
        if batch:
            self._commit(batch, lines, report)
            if on_batch is not None:
                on_batch(report)
        if flag_quality and report.accepted:
            for name, n in self.refresh_quality_flags().items():
                report.fixes[name] = n
        return report

    def _commit(self, batch: list[Event], lines: list[int | None], report: IngestReport) -> None:
        now = time.time()
        rows = [
            (
                e.event_id,
                e.user_id,
                e.timestamp,
                e.event_type.value,
                e.item_id,
                e.text,
                text_hash(e.text),
                e.category,
                e.dwell_seconds,
                e.value,
                e.flags,
                now,
            )
            for e in batch
        ]
        with _Transaction(self._conn) as conn:
            before = conn.total_changes
            stored = self._stored_content([e.event_id for e in batch])
            conn.executemany(_INSERT, rows)
            inserted = conn.total_changes - before
        report.accepted += inserted
        report.duplicates += len(batch) - inserted
        seen: dict[str, tuple[Any, ...]] = {}
        for e, line in zip(batch, lines, strict=True):
            mine = _content(e)
            # an id already stored, or repeated within this batch: same id, other content?
            other = stored.get(e.event_id, seen.get(e.event_id))
            if other is not None:
                differ = [f for f, a, b in zip(_CONTENT_FIELDS, mine, other, strict=True) if a != b]
                if differ:
                    report.conflict(line, e.event_id, differ)
            else:
                seen[e.event_id] = mine

    def _stored_content(self, event_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(event_ids))
        for i in range(0, len(unique), _SQL_CHUNK):
            chunk = unique[i : i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT event_id, {', '.join(_CONTENT_COLUMNS)} FROM events "
                f"WHERE event_id IN ({marks})",
                chunk,
            ):
                out[row[0]] = tuple(row[1:])
        return out

    def refresh_quality_flags(self) -> dict[str, int]:
        """Recomputes the outlier and bot flags over the whole store, in SQL (memory stays
        bounded whatever the store's size).

        Dwell and value outliers use the modified z-score (median/MAD,
        :func:`~common.events.outlier_cutoff`) within each event type (a price and a rating
        are not comparable); a user is bot-like by :func:`~common.events.bot_like`. Flags mark
        events; nothing is dropped.

        Returns:
            counts: ``flagged_dwell_outlier``, ``flagged_value_outlier``, ``flagged_bot_events``.
        """
        counts = {"flagged_dwell_outlier": 0, "flagged_value_outlier": 0, "flagged_bot_events": 0}
        conn = self._conn
        bots = [
            u
            for (u,) in conn.execute("SELECT DISTINCT user_id FROM events").fetchall()
            if bot_like(
                np.fromiter(
                    (t for (t,) in conn.execute("SELECT ts FROM events WHERE user_id = ?", (u,))),
                    dtype=np.float64,
                )
            )
        ]
        types = [t for (t,) in conn.execute("SELECT DISTINCT event_type FROM events").fetchall()]
        with _Transaction(conn):
            conn.execute(f"UPDATE events SET flags = flags & ~{_QUALITY_FLAGS}")
            for column, flag, key in (
                ("dwell", EventFlag.DWELL_OUTLIER, "flagged_dwell_outlier"),
                ("value", EventFlag.VALUE_OUTLIER, "flagged_value_outlier"),
            ):
                for etype in types:
                    bounds = self._robust_bounds(etype, column)
                    if bounds is None:
                        continue
                    med, cutoff = bounds
                    cur = conn.execute(
                        f"UPDATE events SET flags = flags | ? WHERE event_type = ? AND {column} IS NOT NULL "
                        f"AND abs({column} - ?) > ?",
                        (int(flag), etype, med, cutoff),
                    )
                    counts[key] += cur.rowcount
            for u in bots:
                cur = conn.execute(
                    "UPDATE events SET flags = flags | ? WHERE user_id = ?",
                    (int(EventFlag.BOT_USER), u),
                )
                counts["flagged_bot_events"] += cur.rowcount
        return counts

    def _median(
        self, expr: str, etype: str, column: str, params: tuple[object, ...], n: int
    ) -> float:
        sql = (
            f"SELECT {expr} AS x FROM events WHERE event_type = ? AND {column} IS NOT NULL "
            "ORDER BY x LIMIT ? OFFSET ?"
        )
        rows = self._conn.execute(sql, (*params, etype, 2 - n % 2, (n - 1) // 2)).fetchall()
        return float(sum(r[0] for r in rows) / len(rows))

    def _robust_bounds(self, etype: str, column: str) -> tuple[float, float] | None:
        """(median, cutoff on |x - median|) of ``column`` within one event type, or None."""
        n = int(
            self._conn.execute(
                f"SELECT COUNT(*) FROM events WHERE event_type = ? AND {column} IS NOT NULL",
                (etype,),
            ).fetchone()[0]
        )
        if n < MIN_OUTLIER_SAMPLE:
            return None
        med = self._median(column, etype, column, (), n)
        mad = self._median(f"abs({column} - ?)", etype, column, (med,), n)
        mean_ad = float(
            self._conn.execute(
                f"SELECT AVG(abs({column} - ?)) FROM events WHERE event_type = ? AND {column} IS NOT NULL",
                (med, etype),
            ).fetchone()[0]
        )
        cutoff = outlier_cutoff(mad, mean_ad)
        return None if cutoff is None else (med, cutoff)

    # -- reading ------------------------------------------------------------------------------

    def count(self, *, user_id: str | None = None) -> int:
        """Number of stored events (of one user, if given)."""
        if user_id is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return int(
            self._conn.execute(
                "SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
        )

    def users(self) -> list[str]:
        """The distinct user ids in the store, sorted."""
        return [
            u for (u,) in self._conn.execute("SELECT DISTINCT user_id FROM events ORDER BY user_id")
        ]

    def iter_events(
        self,
        *,
        user_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        exclude_flags: int = 0,
        chunk: int = 1000,
    ) -> Iterator[Event]:
        """Events ordered by (timestamp, insertion), streamed ``chunk`` rows at a time.

        Args:
            user_id: only this user's events.
            since / until: unix-seconds bounds, ``since <= ts < until``.
            exclude_flags: skip events having any of these :class:`EventFlag` bits.
        """
        where: list[str] = []
        params: list[object] = []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        if exclude_flags:
            where.append("(flags & ?) = 0")
            params.append(int(exclude_flags))
        sql = f"SELECT {_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, seq"
        cur = self._conn.execute(sql, params)
        try:
            while True:
                rows = cur.fetchmany(chunk)
                if not rows:
                    return
                for row in rows:
                    yield _row_to_event(row)
        finally:
            cur.close()

    def events(self, **kwargs: Any) -> list[Event]:
        """:meth:`iter_events` as a list."""
        return list(self.iter_events(**kwargs))

    def user_aggregates(self) -> list[UserAggregates]:
        """Per-user behaviour aggregates (events per day, type mix, click-through)."""
        out = []
        for u in self.users():
            rows = self._conn.execute(
                "SELECT event_type, ts FROM events WHERE user_id = ?", (u,)
            ).fetchall()
            out.append(user_aggregates(u, [r[0] for r in rows], [r[1] for r in rows]))
        return out

    def texts_without_embedding(self, model_id: str) -> list[tuple[str, str]]:
        """Distinct ``(text_hash, text)`` of stored events whose embedding is not cached."""
        rows = self._conn.execute(
            "SELECT DISTINCT e.text_hash, e.text FROM events e LEFT JOIN embeddings m "
            "ON m.model_id = ? AND m.text_hash = e.text_hash WHERE m.text_hash IS NULL",
            (model_id,),
        ).fetchall()
        seen: set[str] = set()
        out = []
        for h, t in rows:
            if h not in seen:
                seen.add(h)
                out.append((h, t))
        return out

    # -- privacy ledger ---------------------------------------------------------------------

    def append_ledger(self, entry: LedgerEntry, *, in_transaction: bool = False) -> int:
        """Appends one ledger record; returns its sequence number.

        With ``in_transaction=True`` the caller holds a :meth:`transaction` (so the record and
        whatever it accounts for commit together, or neither does).
        """
        sql = "INSERT INTO ledger (server_round, mechanism, params, created_at) VALUES (?,?,?,?)"
        args = (entry.server_round, entry.mechanism.value, entry.to_json(), entry.created_at)
        if in_transaction:
            cur = self._conn.execute(sql, args)
        else:
            with _Transaction(self._conn) as conn:
                cur = conn.execute(sql, args)
        return int(cur.lastrowid or 0)

    def ledger(self) -> list[LedgerEntry]:
        """Every ledger record, in the order written."""
        rows = self._conn.execute("SELECT params FROM ledger ORDER BY seq").fetchall()
        return [LedgerEntry.from_dict(json.loads(r[0])) for r in rows]

    # -- small persistent state -------------------------------------------------------------

    def get_state(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_state(self, key: str, value: bytes, *, in_transaction: bool = False) -> None:
        sql = "INSERT OR REPLACE INTO state (key, value, updated_at) VALUES (?,?,?)"
        if in_transaction:
            self._conn.execute(sql, (key, value, time.time()))
            return
        with _Transaction(self._conn) as conn:
            conn.execute(sql, (key, value, time.time()))

    def get_json_state(self, key: str) -> Any:
        raw = self.get_state(key)
        return None if raw is None else json.loads(raw.decode("utf-8"))

    def set_json_state(self, key: str, value: Any) -> None:
        self.set_state(key, json.dumps(value, sort_keys=True).encode("utf-8"))

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def info(self) -> dict[str, Any]:
        """Counts for humans and scripts: events, users, cached embeddings, ledger entries."""
        ledger = int(self._conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
        span = self._conn.execute("SELECT MIN(ts), MAX(ts) FROM events").fetchone()
        by_type = dict(
            self._conn.execute(
                "SELECT event_type, COUNT(*) FROM events GROUP BY event_type ORDER BY event_type"
            ).fetchall()
        )
        flagged = int(
            self._conn.execute(
                f"SELECT COUNT(*) FROM events WHERE (flags & {_QUALITY_FLAGS}) != 0"
            ).fetchone()[0]
        )
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "events": self.count(),
            "users": len(self.users()),
            "events_by_type": by_type,
            "flagged_events": flagged,
            "first_timestamp": span[0],
            "last_timestamp": span[1],
            "cached_embeddings": self.embeddings.count(),
            "ledger_entries": ledger,
        }


def _rejection(err: InvalidEventError, line: int | None) -> Rejection:
    return Rejection(
        line=line if line is not None else err.line,
        reason=err.reason,
        field=err.field,
        message=err.detail,
    )
