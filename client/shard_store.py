"""A shard store: one SQLite file holding many simulated devices (the batched engine).

A device store (:mod:`client.store`) is one SQLite file per device. At 100,000 simulated
devices that is 100,000 files to create, open and fsync each round; the batched engine keeps
one file per worker instead, holding

- its users' events as columns (``arrays``: the :class:`~common.event_table.EventTable`
  columns of its users, numpy ``.npy`` blobs), their texts' cached embeddings (one row per
  distinct text, shared by every user of the shard) and their item ids;
- ``users``: the global index, id and lifetime budget of each user;
- **one ledger per user** (``ledger``: a row per user and release, pointing at the release's
  mechanism in ``mechanisms``; one mechanism row per request, shared by the users who ran it)
  so an audit can state each user's epsilon exactly as for a device store;
- ``releases``: each request's summed noisy release and its members, so that a repeated
  request is answered with the stored sum (post-processing, no new spend), as a device
  answers with its stored release.

The ledger rows and the release of a request commit in one transaction, before the sum is
returned for sending (as :func:`client.release.release_round` does for one device).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import StoreError
from common.privacy import LedgerEntry

__all__ = ["SHARD_KIND", "SHARD_SCHEMA_VERSION", "ShardData", "ShardStore", "StoredRelease"]

SHARD_SCHEMA_VERSION = 2
#: ``meta.kind`` of a shard store (a device store has no ``kind``): what tells the two apart
SHARD_KIND = "fedinterest-shard"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrays (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user INTEGER PRIMARY KEY,          -- the user's global index in the run
    local INTEGER NOT NULL UNIQUE,     -- its row in this shard's columns
    name TEXT NOT NULL,
    budget_epsilon REAL                -- NULL: no budget (a run without DP)
);
CREATE TABLE IF NOT EXISTS mechanisms (id INTEGER PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    user INTEGER NOT NULL REFERENCES users(user),
    seq INTEGER NOT NULL,
    mechanism INTEGER NOT NULL REFERENCES mechanisms(id),
    release_key TEXT NOT NULL,
    PRIMARY KEY (user, seq)
);
CREATE INDEX IF NOT EXISTS ledger_key ON ledger (release_key);
CREATE TABLE IF NOT EXISTS releases (
    key TEXT PRIMARY KEY,
    mechanism TEXT NOT NULL,           -- digest of every mechanism parameter of the request
    members BLOB NOT NULL,
    total BLOB NOT NULL,
    usable INTEGER NOT NULL,
    statuses TEXT NOT NULL
);
"""

#: The event columns a shard keeps (see :class:`ShardData`).
_COLUMNS = ("user", "timestamp", "event_type", "text", "item", "dwell", "value")


def _to_blob(a: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_blob(b: bytes) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = np.load(io.BytesIO(b), allow_pickle=False)
    return out


@dataclass(frozen=True)
class ShardData:
    """A shard's devices and their events, as the release code reads them.

    Attributes:
        users: global user index of each local user, ``(U,)`` int64, increasing.
        names: the users' ids.
        budgets: each user's lifetime epsilon (NaN: none), ``(U,)``.
        user / timestamp / event_type / text / item / dwell / value: event columns; ``user``
            is the local user index, ``text`` indexes ``text_hashes``, ``item`` ``item_ids``.
        text_hashes: the shard's distinct texts (hashes); embeddings: their cached vectors.
        item_ids: the shard's distinct item ids.
        model_id: the encoder the embeddings came from.
    """

    users: npt.NDArray[np.int64]
    names: list[str]
    budgets: npt.NDArray[np.float64]
    user: npt.NDArray[np.int32]
    timestamp: npt.NDArray[np.float64]
    event_type: npt.NDArray[np.int8]
    text: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    dwell: npt.NDArray[np.float32]
    value: npt.NDArray[np.float32]
    text_hashes: list[str]
    embeddings: npt.NDArray[np.float32]
    item_ids: list[str]
    model_id: str


@dataclass(frozen=True)
class StoredRelease:
    """A request's stored answer: the digest of its mechanism parameters, its members, noisy
    sum, usable count and statuses."""

    mechanism: str
    members: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]
    usable: int
    statuses: dict[str, int]


class ShardStore:
    """One shard's SQLite file (see the module docstring).

    Args:
        path: the file.
        create: create it (and its schema) when absent; otherwise a missing file is an error.
        read_only: open without write access (audits, reports).
    """

    def __init__(self, path: str | Path, *, create: bool = False, read_only: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists() and (read_only or not create):
            raise StoreError(f"shard store {str(self.path)!r} does not exist.")
        uri = f"file:{self.path}?mode=ro" if read_only else f"file:{self.path}"
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60.0)
        if not read_only:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            if create:
                self._conn.executescript(_SCHEMA)
                self._set_meta_if_absent("kind", SHARD_KIND)
                self._set_meta_if_absent("schema_version", str(SHARD_SCHEMA_VERSION))
        self._check_kind()

    def _set_meta_if_absent(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _check_kind(self) -> None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
            ver = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise StoreError(
                f"{str(self.path)!r} is not a fedinterest shard store: {err}."
            ) from None
        if row is None or row[0] != SHARD_KIND:
            self._conn.close()
            raise StoreError(f"{str(self.path)!r} is not a fedinterest shard store.")
        if ver is None or int(ver[0]) != SHARD_SCHEMA_VERSION:
            self._conn.close()
            raise StoreError(
                f"{str(self.path)!r} has shard schema {None if ver is None else ver[0]}; "
                f"this version reads {SHARD_SCHEMA_VERSION}."
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ShardStore:
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

    # -- preparation (the simulation writes a shard once) -----------------------------------

    def write(self, data: ShardData) -> None:
        """Writes the shard's users, events and embeddings (replacing any there)."""
        n = len(data.user)
        for name in _COLUMNS:
            if len(getattr(data, name)) != n:
                raise StoreError(
                    f"shard column `{name}` has {len(getattr(data, name))} rows, not {n}."
                )
        if data.embeddings.shape[0] != len(data.text_hashes):
            raise StoreError("one embedding per text hash is needed.")
        with self.transaction() as conn:
            conn.execute("DELETE FROM arrays")
            conn.execute("DELETE FROM users")
            arrays = {name: getattr(data, name) for name in _COLUMNS}
            arrays["embeddings"] = data.embeddings.astype(np.float32)
            conn.executemany(
                "INSERT INTO arrays (name, data) VALUES (?, ?)",
                [(k, _to_blob(v)) for k, v in arrays.items()],
            )
            conn.executemany(
                "INSERT INTO users (user, local, name, budget_epsilon) VALUES (?, ?, ?, ?)",
                [
                    (int(g), i, name, None if not np.isfinite(b) else float(b))
                    for i, (g, name, b) in enumerate(
                        zip(data.users, data.names, data.budgets, strict=True)
                    )
                ],
            )
            meta = {
                "text_hashes": json.dumps(data.text_hashes),
                "item_ids": json.dumps(data.item_ids),
                "model_id": data.model_id,
            }
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items())
            )

    def read(self) -> ShardData:
        """The shard's users, events and embeddings."""
        arrays = {
            name: _from_blob(blob)
            for name, blob in self._conn.execute("SELECT name, data FROM arrays")
        }
        missing = [c for c in (*_COLUMNS, "embeddings") if c not in arrays]
        if missing:
            raise StoreError(f"shard store {str(self.path)!r} lacks columns {missing}.")
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        rows = self._conn.execute(
            "SELECT user, name, budget_epsilon FROM users ORDER BY local"
        ).fetchall()
        return ShardData(
            users=np.array([r[0] for r in rows], dtype=np.int64),
            names=[r[1] for r in rows],
            budgets=np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
            **{name: arrays[name] for name in _COLUMNS},
            text_hashes=json.loads(meta.get("text_hashes", "[]")),
            embeddings=arrays["embeddings"],
            item_ids=json.loads(meta.get("item_ids", "[]")),
            model_id=meta.get("model_id", ""),
        )

    # -- ledgers ----------------------------------------------------------------------------

    def mechanisms(self) -> dict[int, LedgerEntry]:
        """Every mechanism a request of this shard ran, by id."""
        return {
            int(i): LedgerEntry.from_dict(json.loads(e))
            for i, e in self._conn.execute("SELECT id, entry FROM mechanisms")
        }

    def latest_mechanism(self) -> int:
        """The id of the newest mechanism (0: none yet): changes whenever a request commits."""
        row = self._conn.execute("SELECT max(id) FROM mechanisms").fetchone()
        return int(row[0] or 0)

    def ledger_ids(self) -> dict[int, list[int]]:
        """Per user (global index), the mechanism ids of its ledger, in order (users without
        a release are absent)."""
        out: dict[int, list[int]] = {}
        for user, mech in self._conn.execute(
            "SELECT user, mechanism FROM ledger ORDER BY user, seq"
        ):
            out.setdefault(int(user), []).append(int(mech))
        return out

    def user_ledger(self, user: int) -> list[LedgerEntry]:
        """One user's ledger, in order."""
        mech = self.mechanisms()
        return [
            mech[int(m)]
            for (m,) in self._conn.execute(
                "SELECT mechanism FROM ledger WHERE user = ? ORDER BY seq", (int(user),)
            )
        ]

    def released_users(self, key: str) -> set[int]:
        """The users with a ledger row for the release ``key``."""
        return {
            int(u)
            for (u,) in self._conn.execute("SELECT user FROM ledger WHERE release_key = ?", (key,))
        }

    def stored_release(self, key: str) -> StoredRelease | None:
        row = self._conn.execute(
            "SELECT mechanism, members, total, usable, statuses FROM releases WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return StoredRelease(
            str(row[0]), _from_blob(row[1]), _from_blob(row[2]), int(row[3]), json.loads(row[4])
        )

    def record_release(
        self,
        key: str,
        entry: LedgerEntry,
        users: Sequence[int],
        seqs: Sequence[int],
        release: StoredRelease,
    ) -> int:
        """In one transaction: the mechanism, one ledger row per releasing user (at ``seqs``,
        each user's next sequence number) and the request's stored release. Returns the
        mechanism's id."""
        with self.transaction() as conn:
            cur = conn.execute("INSERT INTO mechanisms (entry) VALUES (?)", (entry.to_json(),))
            mech = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO ledger (user, seq, mechanism, release_key) VALUES (?, ?, ?, ?)",
                [(int(u), int(s), mech, key) for u, s in zip(users, seqs, strict=True)],
            )
            conn.execute(
                "INSERT OR REPLACE INTO releases (key, mechanism, members, total, usable, statuses) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    release.mechanism,
                    _to_blob(release.members.astype(np.int64)),
                    _to_blob(release.total.astype(np.float64)),
                    release.usable,
                    json.dumps(release.statuses, sort_keys=True),
                ),
            )
        return mech
