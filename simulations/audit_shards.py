"""The ledgers of a batched run's shard stores, read for ``fedinterest audit``.

A batched run (``--engine batched``) keeps its users in a few shard stores
(``clients/shard-NNN.db``, :mod:`client.shard_store`), each with one ledger per user: a row per
user and release pointing at the release's mechanism (one mechanism row per request, shared by
the users who ran it). This module reads each shard store once, through SQLite's read-only
``mode=ro`` URI, and groups the users whose ledgers hold the same entries, so that the audit
(:mod:`simulations.audit`) composes each **distinct** ledger once however many users hold it:

- within a shard, two users hold the same ledger when their mechanism ids are the same, in the
  same order;
- across shards, the same request is a different mechanism row in each shard, with the same
  content except its ``created_at``: mechanisms are identified by their content without it.

A user found in several shard stores gets the ledgers of all of them, composed (the copies
could each have released), and is flagged. What a shard store shows of its own consistency is
flagged here too, naming the file and the value: rows deleted from a user's ledger (a gap in its
sequence numbers), ledger rows pointing at a mechanism the store does not have, an unreadable
mechanism, ledger rows of a user the store does not list, and a stored release counting more
releasing users than the ledger rows of its key. :func:`batched_population` audits a batched
run's users from them, with the run-level cross-checks (shard stores missing, unreadable or
foreign; users missing, duplicated or foreign; the announced parameters, once per mechanism).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.shard_store import SHARD_KIND, SHARD_SCHEMA_VERSION
from common.errors import ConfigError, FedInterestError
from common.privacy import LedgerEntry, Scope
from simulations.audit_ledger import (
    NAMED,
    AuditSettings,
    Held,
    Population,
    audit_ledger,
    entries_at,
    parameter_flags,
)

__all__ = [
    "SHARD_NAME",
    "LedgerGroup",
    "ShardContent",
    "ShardLedgers",
    "batched_population",
    "group_ledgers",
    "number_ranges",
    "read_shard",
    "user_name",
]

#: a batched run's shard store: ``shard-NNN.db``, numbered from 0
#: (:func:`simulations.engines.batched.shard_path`)
SHARD_NAME = re.compile(r"shard-(\d+)")
_TABLES = frozenset({"meta", "users", "mechanisms", "ledger", "releases"})


def user_name(user: int) -> str:
    """How the audit names a batched run's user (its global index, as ``client-NNNNN`` names
    a device of a devices run)."""
    return f"user-{user:05d}"


def number_ranges(numbers: Iterable[int]) -> str:
    """``1, 3-5, 9`` (sorted, consecutive numbers collapsed)."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _some(users: Sequence[int]) -> str:
    """``users 1, 3-5`` or, for many, the first few and how many more."""
    if len(users) <= NAMED:
        return f"user{'s' if len(users) > 1 else ''} {number_ranges(users)}"
    return (
        f"{len(users)} users ({number_ranges(sorted(users)[:NAMED])} and {len(users) - NAMED} more)"
    )


@dataclass
class ShardContent:
    """What the audit reads from one shard store.

    Attributes:
        name: the file's stem (``shard-000``).
        users: the global indices of its users (its ``users`` table and any user its ledger
            has rows for), sorted.
        mechanisms: the readable mechanisms, by id.
        ledgers: per user with ledger rows, the mechanism ids of its ledger in order (rows
            pointing at an unreadable or absent mechanism left out, and flagged).
        flags: what does not add up in the store, each naming the file and the value.
        user_flags: per user, what does not add up in its own ledger.
    """

    name: str
    users: npt.NDArray[np.int64]
    mechanisms: dict[int, LedgerEntry]
    ledgers: dict[int, list[int]]
    flags: list[str] = field(default_factory=list)
    user_flags: dict[int, list[str]] = field(default_factory=dict)


def _connect(path: Path) -> sqlite3.Connection:
    shown = str(path)
    if not path.is_file():
        raise ConfigError(f"shard store {shown!r} does not exist.")
    try:
        return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as err:
        raise ConfigError(f"shard store {shown!r} cannot be opened read-only: {err}.") from None


def _check_kind(conn: sqlite3.Connection, shown: str) -> None:
    """A fedinterest shard store of the schema this version reads, or a :class:`ConfigError`
    saying what the file is instead."""
    tables = {
        str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if not tables:
        raise ConfigError(f"{shown!r} is an empty database, not a fedinterest shard store.")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    if meta.get("kind") != SHARD_KIND:
        if "schema_version" in meta and {"ledger", "state"} <= tables:
            raise ConfigError(
                f"{shown!r} is a device store (one device of a devices run), not a shard store."
            )
        found = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise ConfigError(
            f"{shown!r} is not a fedinterest shard store (meta kind "
            f"{meta.get('kind')!r}; tables {found})."
        )
    if str(meta.get("schema_version")) != str(SHARD_SCHEMA_VERSION):
        raise ConfigError(
            f"{shown!r} has shard schema {meta.get('schema_version')!r}; this version reads "
            f"{SHARD_SCHEMA_VERSION}."
        )
    lacking = _TABLES - tables
    if lacking:
        raise ConfigError(
            f"{shown!r} is not a complete shard store (no {', '.join(sorted(lacking))} table"
            f"{'s' if len(lacking) > 1 else ''})."
        )


def read_shard(path: Path) -> ShardContent:
    """One shard store's users and ledgers, with its consistency checks, read through one
    read-only connection (``mode=ro``: nothing is created or written).

    Raises:
        ConfigError: the file does not exist, cannot be opened, is not SQLite, is not a
            fedinterest shard store, or is of another shard schema.
    """
    shown = str(path)
    where = f"clients/{path.name}"
    conn = _connect(path)
    try:
        _check_kind(conn, shown)
        listed = {int(u) for (u,) in conn.execute("SELECT user FROM users")}
        mechanisms: dict[int, LedgerEntry] = {}
        unreadable: dict[int, str] = {}
        for mid, text in conn.execute("SELECT id, entry FROM mechanisms ORDER BY id"):
            try:
                mechanisms[int(mid)] = LedgerEntry.from_dict(json.loads(text))
            except (ValueError, TypeError, AttributeError) as err:
                unreadable[int(mid)] = f"cannot be read ({err})"
        ledgers: dict[int, list[int]] = {}
        user_flags: dict[int, list[str]] = {}
        absent: dict[int, list[int]] = {}
        rows = conn.execute("SELECT user, seq, mechanism FROM ledger ORDER BY user, seq")
        for user, group in groupby(rows, key=lambda r: int(r[0])):
            seqs: list[int] = []
            ids: list[int] = []
            for _, seq, mech in group:
                seqs.append(int(seq))
                if int(mech) in mechanisms:
                    ids.append(int(mech))
                else:
                    absent.setdefault(int(mech), []).append(user)
            ledgers[user] = ids
            # a user's rows are numbered 1, 2, ... (ShardDevices: each user's next number)
            deleted = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
            if deleted:
                n = len(deleted)
                user_flags.setdefault(user, []).append(
                    f"{n} ledger row{'s' if n > 1 else ''} deleted (number{'s' if n > 1 else ''} "
                    f"{number_ranges(deleted)} of 1-{seqs[-1]} missing)"
                )
        stored = conn.execute("SELECT key, usable FROM releases ORDER BY key").fetchall()
        per_key = dict(
            conn.execute("SELECT release_key, count(*) FROM ledger GROUP BY release_key").fetchall()
        )
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"{shown!r} is not a readable fedinterest shard store: {err}.") from None
    finally:
        conn.close()
    flags = [
        f"{where}: mechanism {mech} {why}; no ledger row points at it"
        for mech, why in sorted(unreadable.items())
        if mech not in absent
    ]
    for mech, users in sorted(absent.items()):
        # the spend of such a row is unknown: the user's epsilon leaves it out, flagged
        why = unreadable.get(mech, "is not in the store")
        n = len(users)
        flags.append(
            f"{where}: mechanism {mech} {why}; {n} ledger row{'s' if n > 1 else ''} of "
            f"{_some(sorted(set(users)))} point at it, left out of their epsilon"
        )
        for user in users:
            user_flags.setdefault(user, []).append(
                f"a ledger row points at mechanism {mech}, which {why}: not counted"
            )
    unlisted = sorted(set(ledgers) - listed)
    if unlisted:
        flags.append(
            f"{where}: ledger rows of {_some(unlisted)} not in its users table "
            "(their ledgers are audited)"
        )
    for key, usable in stored:
        held = int(per_key.get(key, 0))
        if int(usable) > held:
            flags.append(
                f"{where}: release {key!r} stored with {int(usable)} releasing users, the ledger "
                f"rows of that release number {held}"
            )
    everyone = np.array(sorted(listed | set(ledgers)), dtype=np.int64)
    return ShardContent(path.stem, everyone, mechanisms, ledgers, flags, user_flags)


@dataclass
class LedgerGroup:
    """Users of a batched run whose ledgers hold the same entries, in the same order, and who
    have the same budget: one accounting for all of them.

    Attributes:
        entries: the ledger (each entry as the first shard holding it recorded it).
        budget: the users' budget override from ``config.json`` (``None``: the run's default).
        users: their global indices, sorted.
    """

    entries: list[LedgerEntry]
    budget: float | None
    users: list[int]


@dataclass
class ShardLedgers:
    """The users and distinct ledgers of a batched run's readable shard stores.

    Attributes:
        groups: one per distinct ``(ledger, budget)``.
        shards_of: per user, the shard stores (stems) holding it, in file order.
        mechanism_shards: per distinct mechanism (index into ``mechanisms``), the shard stores
            holding it and how many users' ledgers point at it.
        mechanisms: every distinct mechanism the ledgers point at.
    """

    groups: list[LedgerGroup]
    shards_of: dict[int, list[str]]
    mechanisms: list[LedgerEntry]
    mechanism_shards: list[tuple[list[str], int]]


def _content(entry: LedgerEntry) -> str:
    """A mechanism's identity across shards: its record without ``created_at`` (each shard
    commits the same request at its own time)."""
    d = entry.to_dict()
    del d["created_at"]
    return json.dumps(d, sort_keys=True)


def group_ledgers(shards: Sequence[ShardContent], overrides: Mapping[int, float]) -> ShardLedgers:
    """Groups the users of ``shards`` by ledger and budget (``overrides``: per user, the budget
    ``config.json``'s ``device_budgets`` gives it). A user in several shards gets their
    ledgers one after the other, in file order."""
    ids: dict[str, int] = {}
    mechanisms: list[LedgerEntry] = []
    holders: list[list[str]] = []
    ledger_of: dict[int, tuple[int, ...]] = {}
    shards_of: dict[int, list[str]] = {}
    for shard in shards:
        local: dict[int, int] = {}
        for mid, entry in shard.mechanisms.items():
            gid = ids.setdefault(_content(entry), len(ids))
            if gid == len(mechanisms):
                mechanisms.append(entry)
                holders.append([])
            holders[gid].append(shard.name)
            local[mid] = gid
        for user in shard.users.tolist():
            own = tuple(local[m] for m in shard.ledgers.get(user, ()))
            if user in ledger_of:
                ledger_of[user] += own
                shards_of[user].append(shard.name)
            else:
                ledger_of[user] = own
                shards_of[user] = [shard.name]
    members: dict[tuple[tuple[int, ...], float | None], list[int]] = {}
    for user in sorted(ledger_of):
        members.setdefault((ledger_of[user], overrides.get(user)), []).append(user)
    uses = [0] * len(mechanisms)
    for (ledger, _), users in members.items():
        for gid in set(ledger):
            uses[gid] += len(users)
    groups = [
        LedgerGroup([mechanisms[g] for g in ledger], budget, users)
        for (ledger, budget), users in members.items()
    ]
    return ShardLedgers(
        groups,
        shards_of,
        mechanisms,
        [(sorted(set(h)), n) for h, n in zip(holders, uses, strict=True)],
    )


def _who(names: list[str]) -> str:
    """One user's name, or how many and the first few."""
    if len(names) == 1:
        return names[0]
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return f"{len(names)} users ({', '.join(names[:NAMED])}{more})"


def batched_population(d: Path, config: Mapping[str, Any], s: AuditSettings) -> Population:
    """A batched run: its users in ``config.json``'s ``workers`` shard stores
    (``shard-NNN.db``), each read once; one accounting per distinct ledger and budget."""
    n_users, workers = int(config["clients"]), int(config["workers"])
    shard_names = [f"shard-{i:03d}" for i in range(workers)]
    paths = sorted((d / "clients").glob("*.db"))
    shards: list[ShardContent] = []
    unreadable: list[str] = []
    store_flags: list[str] = []
    for path in paths:
        try:
            shards.append(read_shard(path))
        except FedInterestError as err:
            unreadable.append(path.stem)
            store_flags.append(f"{path.stem}: shard store cannot be audited: {err}")
    present = {p.stem for p in paths}
    missing = [n for n in shard_names if n not in present]
    unexpected = sorted(present - set(shard_names))
    if len(missing) == workers > 1:
        store_flags.append(
            f"all {workers} shard stores missing (clients/{shard_names[0]}.db to "
            f"clients/{shard_names[-1]}.db)"
        )
    else:
        for name in missing:
            store_flags.append(
                f"{name}: shard store clients/{name}.db missing (config.json `workers` is "
                f"{workers})"
            )
    for name in unexpected:
        store_flags.append(
            f"{name}: a shard store the run did not have (config.json `workers` is {workers})"
        )
    ledgers = group_ledgers(shards, s.overrides)
    where = ledgers.shards_of
    found = np.fromiter(where, dtype=np.int64, count=len(where))
    lacking = np.setdiff1d(np.arange(n_users, dtype=np.int64), found).tolist()
    foreign = sorted(u for u in where if not 0 <= u < n_users)
    duplicated = sorted(u for u, stems in where.items() if len(stems) > 1)
    if lacking:
        store_flags.append(
            f"{len(lacking)} user{'s' if len(lacking) > 1 else ''} of the run in no readable "
            f"shard store: {number_ranges(lacking)} (config.json `clients` is {n_users})"
        )
    by_shards: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for u in foreign:
        by_shards[tuple(where[u])].append(u)
    for stems, users in by_shards.items():
        files = ", ".join(f"clients/{n}.db" for n in stems)
        store_flags.append(
            f"{files}: {len(users)} user{'s' if len(users) > 1 else ''} the run did not have: "
            f"{number_ranges(users)} (config.json `clients` is {n_users}: users 0-{n_users - 1})"
        )
    by_shards.clear()
    for u in duplicated:
        by_shards[tuple(where[u])].append(u)
    for stems, users in by_shards.items():
        files = ", ".join(f"clients/{n}.db" for n in stems)
        store_flags.append(
            f"user{'s' if len(users) > 1 else ''} {number_ranges(users)} "
            f"{'are each' if len(users) > 1 else 'is'} in {len(stems)} shard stores ({files}): "
            "the ledgers of every copy are composed"
        )
    for shard in shards:
        store_flags.extend(shard.flags)
    # the announced parameters, checked once per distinct mechanism
    for entry, (holders, uses) in zip(ledgers.mechanisms, ledgers.mechanism_shards, strict=True):
        if entry.scope is not Scope.EVENT and entry.scope is not s.unit:
            continue
        files = ", ".join(f"clients/{n}.db" for n in holders)
        for f in parameter_flags(entries_at([entry], s.unit), s.round_config, s.sensitivity):
            store_flags.append(
                f"{files}: {f} (a mechanism in {uses} user ledger{'s' if uses != 1 else ''})"
            )
    user_flags: dict[int, list[str]] = defaultdict(list)
    device_flags: list[str] = []
    for shard in shards:
        for u, found_flags in sorted(shard.user_flags.items()):
            user_flags[u].extend(found_flags)
            device_flags.extend(
                f"{user_name(u)} (clients/{shard.name}.db): {f}" for f in found_flags
            )
    held: list[Held] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    over: list[tuple[int, str]] = []
    for k, group in enumerate(ledgers.groups):
        budget = group.budget if group.budget is not None else s.default_budget
        audit = audit_ledger(
            f"ledger-{k}",
            group.entries,
            [],
            delta=s.delta,
            accountant=s.accountant,
            budget_epsilon=budget,
        )
        names = [user_name(u) for u in group.users]
        held.append(Held(audit, names))
        base = audit.to_dict()
        for u, name in zip(group.users, names, strict=True):
            rows.append(
                (
                    u,
                    {
                        **base,
                        "device": name,
                        "shards": where[u],
                        "flags": [*user_flags.get(u, []), *audit.flags],
                    },
                )
            )
        device_flags.extend(f"{_who(names)}: {f}" for f in audit.flags)
        if any(f.startswith("over budget") for f in audit.flags):
            over.extend(zip(group.users, names, strict=True))
    rows.sort(key=lambda row: row[0])
    return Population(
        held=held,
        per_device=[row for _, row in rows],
        over=[name for _, name in sorted(over)],
        expected=[user_name(u) for u in range(n_users)],
        store_flags=store_flags,
        device_flags=device_flags,
        stores={
            "shard_stores": {
                "expected": workers,
                "found": len(paths),
                "audited": len(shards),
                "missing": missing,
                "unreadable": unreadable,
                "unexpected": unexpected,
            },
            "users": {
                "expected": n_users,
                "found": len(where),
                "missing": lacking,
                "duplicated": duplicated,
                "unexpected": foreign,
            },
        },
        found=len(paths),
        noun="user",
        missing_note=(
            f"no readable shard store under clients/ although config.json lists {n_users} "
            f"users in {workers} shard stores (see flags): the event-level figure is the "
            "server's announcement, what a user taking part in every release spends."
        ),
        extra={"distinct_ledgers": len(held)},
    )
