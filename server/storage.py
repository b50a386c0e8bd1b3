"""The server's SQLite file (WAL): hierarchy versions, run state checkpoints, server ledger.

Tables:
    ``versions``  one row per hierarchy version (the JSON, the round, the time);
    ``state``     named blobs: the latest aggregation state (a checkpoint after each round);
    ``ledger``    the server's own mechanisms (user-level: client sampling, server noise);
    ``rounds``    one JSON line per completed round (what ``rounds.jsonl`` mirrors).

A round's version, state and round record are written in one transaction: a crash leaves
either all of them or none.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import StoreError
from common.hierarchy import Hierarchy
from common.privacy.ledger import LedgerEntry

__all__ = ["ServerStorage"]

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, server_round INTEGER NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, server_round INTEGER, mechanism TEXT NOT NULL,
    params TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (server_round INTEGER PRIMARY KEY, body TEXT NOT NULL);
"""


class ServerStorage:
    """The server's run database."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_DDL)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open server storage {str(self.path)!r}: {err}.") from err

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ServerStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- versions -----------------------------------------------------------------------------

    def put_version(self, h: Hierarchy, *, conn: sqlite3.Connection | None = None) -> None:
        c = conn or self._conn
        c.execute(
            "INSERT OR REPLACE INTO versions (version, server_round, body, created_at) VALUES (?,?,?,?)",
            (h.version, h.server_round, h.to_json(), h.created_at),
        )

    def latest_version(self) -> Hierarchy | None:
        row = self._conn.execute(
            "SELECT body FROM versions ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return None if row is None else Hierarchy.from_json(row[0])

    def version(self, version: int) -> Hierarchy | None:
        row = self._conn.execute(
            "SELECT body FROM versions WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else Hierarchy.from_json(row[0])

    def versions(self) -> list[int]:
        return [
            int(v) for (v,) in self._conn.execute("SELECT version FROM versions ORDER BY version")
        ]

    # -- state ----------------------------------------------------------------------------------

    def put_arrays(
        self, key: str, arrays: dict[str, Any], *, conn: sqlite3.Connection | None = None
    ) -> None:
        """Stores a dict of arrays and scalars (``.npz`` in a blob)."""
        buf = io.BytesIO()
        packed = {k: np.asarray(v) for k, v in arrays.items()}
        np.savez_compressed(buf, **packed)  # type: ignore[arg-type]
        c = conn or self._conn
        c.execute(
            "INSERT OR REPLACE INTO state (key, value, updated_at) VALUES (?,?,?)",
            (key, buf.getvalue(), time.time()),
        )

    def get_arrays(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        with np.load(io.BytesIO(row[0]), allow_pickle=False) as z:
            return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}

    def put_json(self, key: str, value: Any, *, conn: sqlite3.Connection | None = None) -> None:
        c = conn or self._conn
        c.execute(
            "INSERT OR REPLACE INTO state (key, value, updated_at) VALUES (?,?,?)",
            (key, json.dumps(value, sort_keys=True).encode(), time.time()),
        )

    def get_json(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(bytes(row[0]).decode())

    # -- rounds and ledger ----------------------------------------------------------------------

    def put_round(
        self, server_round: int, record: dict[str, Any], *, conn: sqlite3.Connection | None = None
    ) -> None:
        c = conn or self._conn
        c.execute(
            "INSERT OR REPLACE INTO rounds (server_round, body) VALUES (?,?)",
            (server_round, json.dumps(record, sort_keys=True, default=float)),
        )

    def rounds(self) -> list[dict[str, Any]]:
        return [
            json.loads(b)
            for (b,) in self._conn.execute("SELECT body FROM rounds ORDER BY server_round")
        ]

    def append_ledger(self, entry: LedgerEntry, *, conn: sqlite3.Connection | None = None) -> None:
        c = conn or self._conn
        c.execute(
            "INSERT INTO ledger (server_round, mechanism, params, created_at) VALUES (?,?,?,?)",
            (entry.server_round, entry.mechanism.value, entry.to_json(), entry.created_at),
        )

    def ledger(self) -> list[LedgerEntry]:
        return [
            LedgerEntry.from_dict(json.loads(p))
            for (p,) in self._conn.execute("SELECT params FROM ledger ORDER BY seq")
        ]
