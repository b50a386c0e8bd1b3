"""The device stores of a run, read for ``fedinterest audit``: one SQLite store per device
(``clients/client-NNNNN.db``, :mod:`client.store`), each read through SQLite's read-only
``mode=ro`` URI, its ledger audited (:func:`simulations.audit_ledger.audit_ledger`), with the
checks a device store allows: a release stored without a ledger entry of its round, a ledger
row deleted (a gap in the ledger's sequence numbers) or unreadable, and a store missing,
unreadable, foreign or not one of the run's."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.shard_store import SHARD_KIND
from common.errors import ConfigError, FedInterestError
from common.privacy import LedgerEntry, Scope
from common.records import ReleaseTask
from simulations.audit_ledger import (
    ADAPTER,
    AuditSettings,
    DeviceAudit,
    Held,
    Population,
    audit_ledger,
    entries_at,
    parameter_flags,
    task_of,
)
from simulations.audit_shards import number_ranges

__all__ = ["audit_device", "device_population"]

#: a simulated device's store: ``client-NNNNN.db``, numbered from 0 (``simulations.simulate``)
_STORE_NAME = re.compile(r"client-(\d+)")


@dataclass
class _StoreContent:
    """What an audit reads from a device store."""

    entries: list[LedgerEntry]
    state_keys: list[str]
    flags: list[str]


def _read_store(path: Path) -> _StoreContent:
    """The ledger, the state keys and the ledger's sequence check of one device store, read
    through a read-only connection (``mode=ro``: nothing is created or written).

    Raises:
        ConfigError: the file cannot be opened, is not SQLite, or is not a fedinterest store.
    """
    shown = str(path)
    if not path.is_file():
        raise ConfigError(f"store {shown!r} does not exist.")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as err:
        raise ConfigError(f"store {shown!r} cannot be opened read-only: {err}.") from None
    flags: list[str] = []
    try:
        tables = {
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        lacking = {"meta", "ledger", "state"} - tables
        if not tables:
            raise ConfigError(f"{shown!r} is an empty database, not a fedinterest store.")
        kind = (
            conn.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
            if "meta" in tables
            else None
        )
        if kind is not None and kind[0] == SHARD_KIND:
            raise ConfigError(
                f"{shown!r} is a batched run's shard store (many users), not a device store: "
                "`fedinterest audit RUN_DIR` audits its users' ledgers."
            )
        if lacking:
            raise ConfigError(
                f"{shown!r} is not a fedinterest store (no {', '.join(sorted(lacking))} table"
                f"{'s' if len(lacking) > 1 else ''})."
            )
        if conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is None:
            raise ConfigError(f"{shown!r} is not a fedinterest store (no schema version).")
        entries: list[LedgerEntry] = []
        seqs: list[int] = []
        for seq, params in conn.execute("SELECT seq, params FROM ledger ORDER BY seq"):
            seqs.append(int(seq))
            try:
                entries.append(LedgerEntry.from_dict(json.loads(params)))
            except (ValueError, TypeError, AttributeError) as err:
                flags.append(f"ledger row {seq} cannot be read: {err}")
        keys = [str(k) for (k,) in conn.execute("SELECT key FROM state")]
        counter = None
        if "sqlite_sequence" in tables:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ledger'").fetchone()
            counter = None if row is None else int(row[0])
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"{shown!r} is not a readable fedinterest store: {err}.") from None
    finally:
        conn.close()
    # the ledger's rows are numbered 1, 2, ... (AUTOINCREMENT; a rolled-back insert rolls its
    # number back too, and nothing deletes ledger rows): a gap, or a counter past the last
    # row, is a deleted entry
    top = max([*seqs, counter or 0])
    deleted = sorted(set(range(1, top + 1)) - set(seqs))
    if deleted:
        flags.append(
            f"{len(deleted)} ledger row{'s' if len(deleted) > 1 else ''} deleted (number"
            f"{'s' if len(deleted) > 1 else ''} {number_ranges(deleted)} of 1-{top} missing)"
        )
    return _StoreContent(entries, keys, flags)


def _stored_release(key: str) -> tuple[str, int] | None:
    """``(task, round)`` of a state key a release or adapter update is stored under
    (``release:R:V``, ``release-TASK:R:V``, ``adapter-update:R``), else ``None``."""
    head, _, rest = key.partition(":")
    if head == "release":
        task = ReleaseTask.LEAF_SUMS.value
    elif head.startswith("release-"):
        task = head[len("release-") :]
    elif head == "adapter-update":
        task = ADAPTER
    else:
        return None
    try:
        return task, int(rest.split(":")[0])
    except ValueError:
        return None


def _unledgered_flags(event_entries: list[LedgerEntry], state_keys: Iterable[str]) -> list[str]:
    """A release, item count, histogram or adapter update a device stored (``state_keys``)
    without a ledger entry of its round."""
    accounted = {(task_of(e), e.server_round) for e in event_entries}
    flags: list[str] = []
    for key in sorted(state_keys):
        found = _stored_release(key)
        if found is None or found in accounted:
            continue
        task, r = found
        if task == ReleaseTask.LEAF_SUMS.value:
            flags.append(f"release of round {r} stored without a ledger entry")
        elif task == ADAPTER:
            flags.append(f"adapter update of round {r} stored without a ledger entry")
        else:
            flags.append(f"{task} release of round {r} stored without a ledger entry")
    return flags


def audit_device(
    store_path: str | Path,
    *,
    delta: float,
    accountant: str = "pld",
    budget_epsilon: float | None = None,
    round_config: dict[int, dict[str, Any]] | None = None,
    sensitivity: float | None = None,
    unit: Scope = Scope.EVENT,
) -> DeviceAudit:
    """Recomputes one device's event-level epsilon from its ledger and checks it.

    The store is opened read-only. Flags: a release, item count, histogram or adapter update
    stored without a ledger entry of its round; deleted or unreadable ledger rows; entries
    that disagree with the announced parameters; a spend over the budget.

    Args:
        store_path: the device store.
        delta: the delta to state epsilon at.
        budget_epsilon: the device's budget (flag when exceeded).
        round_config: per round, what the server announced (``noise_multiplier``), from
            ``rounds.jsonl``; entries that disagree are flagged.
        sensitivity: the announced release sensitivity at ``unit`` (``clipping_norm x
            max_weight`` at event level, the user bound at user level).
        unit: the run's privacy unit: the relation the announced parameters are at.

    Raises:
        ConfigError: the store is missing, cannot be read, or is not a fedinterest store.
    """
    path = Path(store_path)
    content = _read_store(path)
    unit_entries = entries_at(content.entries, unit)
    flags = [
        *content.flags,
        *_unledgered_flags(unit_entries, content.state_keys),
        *parameter_flags(unit_entries, round_config, sensitivity),
    ]
    return audit_ledger(
        path.stem,
        content.entries,
        flags,
        delta=delta,
        accountant=accountant,
        budget_epsilon=budget_epsilon,
    )


def _expected_stores(config: Mapping[str, Any]) -> list[str] | None:
    """The device stores a simulated run has (``client-00000`` ... from ``config.json``'s
    ``clients``), or ``None`` for a deployed run (its devices keep their own stores)."""
    n = config.get("clients")
    if (
        config.get("dataset") == "deployment"
        or str(config.get("engine", "")).startswith("flower-deployment")
        or isinstance(n, bool)
        or not isinstance(n, int)
        or n < 1
    ):
        return None
    return [f"client-{i:05d}" for i in range(n)]


def device_population(d: Path, config: Mapping[str, Any], s: AuditSettings) -> Population:
    """A devices run (or a deployed one): one device store per device, ``client-NNNNN.db``."""
    expected = _expected_stores(config)
    paths = sorted((d / "clients").glob("*.db"))
    devices: list[DeviceAudit] = []
    unreadable: list[str] = []
    store_flags: list[str] = []
    for i, path in enumerate(paths):
        numbered = _STORE_NAME.fullmatch(path.stem)
        budget = s.overrides.get(int(numbered.group(1)) if numbered else i, s.default_budget)
        try:
            devices.append(
                audit_device(
                    path,
                    delta=s.delta,
                    accountant=s.accountant,
                    budget_epsilon=budget,
                    round_config=s.round_config,
                    sensitivity=s.sensitivity,
                    unit=s.unit,
                )
            )
        except FedInterestError as err:
            unreadable.append(path.stem)
            store_flags.append(f"{path.stem}: store cannot be audited: {err}")
    present = {p.stem for p in paths}
    missing = [n for n in expected if n not in present] if expected is not None else []
    unexpected = sorted(present - set(expected)) if expected is not None else []
    if expected is not None and len(missing) == len(expected) > 1:
        store_flags.append(
            f"all {len(expected)} device stores missing (clients/{expected[0]}.db to "
            f"clients/{expected[-1]}.db)"
        )
    else:
        for name in missing:
            store_flags.append(
                f"{name}: device store clients/{name}.db missing (the run had "
                f"{len(expected or [])} devices)"
            )
    for name in unexpected:
        store_flags.append(
            f"{name}: a device store the run did not have (config.json lists "
            f"{len(expected or [])} devices)"
        )
    if expected is None:
        note = (
            "no device stores under clients/ (a deployed run): the event-level figure is the "
            "server's announcement, what a device taking part in every release spends; each "
            "device audits its own ledger with `fedinterest audit --store DEVICE.db`."
        )
    else:
        note = (
            f"no readable device store under clients/ although config.json lists "
            f"{len(expected)} devices (see flags): the event-level figure is the server's "
            "announcement, what a device taking part in every release spends."
        )
    return Population(
        held=[Held(dv, [dv.name]) for dv in devices],
        per_device=[dv.to_dict() for dv in devices],
        over=[dv.name for dv in devices if any(f.startswith("over budget") for f in dv.flags)],
        expected=expected,
        store_flags=store_flags,
        device_flags=[f"{dv.name}: {f}" for dv in devices for f in dv.flags],
        stores={
            "device_stores": {
                "expected": None if expected is None else len(expected),
                "found": len(paths),
                "audited": len(devices),
                "missing": missing,
                "unreadable": unreadable,
                "unexpected": unexpected,
            }
        },
        found=len(paths),
        noun="device",
        missing_note=note,
    )
