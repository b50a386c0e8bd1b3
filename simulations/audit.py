"""``fedinterest audit``: every privacy claim recomputed from the ledgers alone.

For a run directory: each device's event-level epsilon (its ledger composed with
dp-accounting, PLD by default), min/median/max over devices, per mechanism and per round; the
server's user-level ledger per output; and flags for anything that does not add up:

- a release (or adapter update) a device stored without a ledger entry for that round;
- a ledger entry whose parameters disagree with the round's config (noise multiplier,
  sensitivity);
- a device over its budget;
- a ledger row deleted from a device (a gap in the ledger's sequence numbers);
- a device store missing (a simulated run has ``config.json``'s ``clients`` stores, named
  ``client-NNNNN.db`` from 0), unreadable, not a fedinterest store, or not one of the run's;
- a round whose server record (``server.db``'s round records and round views, and
  ``rounds.jsonl``) counts more releases (leaf sums, item counts, histogram, adapter updates)
  than the device ledgers hold entries for that round: each release the server took in was
  committed to its device's ledger before it was sent.

``audit.json`` keys (stable): ``event_level.{epsilon_max, epsilon_median, epsilon_min,
devices, over_budget}``, ``user_level.{epsilon, per_output}``, ``delta``, ``accountant``,
``mechanisms``, ``per_round``, ``budget``, ``flags``, ``guarantees``, ``crosscheck`` (device
stores expected and found; per round, what the server counted and what the ledgers hold), and
``empirical`` when an empirical audit ran.

Device stores are read through SQLite's read-only ``mode=ro`` URI: an audit changes no store.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, FedInterestError
from common.jsonio import json_safe
from common.privacy import LedgerEntry, Mechanism, Scope, epsilon_of_entries
from common.records import ReleaseTask
from server.storage import ServerStorage
from simulations.files import atomic_write_json

__all__ = ["DeviceAudit", "audit_device", "audit_run", "guarantees", "record_empirical"]


@dataclass
class DeviceAudit:
    """One device's recomputed spend."""

    name: str
    entries: list[LedgerEntry]
    epsilon: float
    per_mechanism: dict[str, float]
    per_round: dict[int, float]
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.name,
            "entries": len(self.entries),
            "epsilon": self.epsilon,
            "per_mechanism": self.per_mechanism,
            "per_round": {str(k): v for k, v in sorted(self.per_round.items())},
            "flags": self.flags,
        }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


#: what a device's ledger entry accounts for: the release task (``ReleaseTask`` values) or the
#: adapter's DP-SGD step
_ADAPTER = "adapter"
_TASK_OF_MECHANISM: dict[Mechanism, str] = {
    Mechanism.GAUSSIAN_SUM: ReleaseTask.LEAF_SUMS.value,
    Mechanism.GAUSSIAN_COUNT: ReleaseTask.ITEM_COUNTS.value,
    Mechanism.GAUSSIAN_HISTOGRAM: ReleaseTask.HISTOGRAM.value,
    Mechanism.DPSGD: _ADAPTER,
}
#: how a flag names what the server counted, per task
_COUNTED = {
    ReleaseTask.LEAF_SUMS.value: "releases",
    ReleaseTask.ITEM_COUNTS.value: "item-counts releases",
    ReleaseTask.HISTOGRAM.value: "histogram releases",
    _ADAPTER: "adapter updates",
}
#: at most this many devices named in one flag
_NAMED = 10
#: a simulated device's store: ``client-NNNNN.db``, numbered from 0 (``simulations.simulate``)
_STORE_NAME = re.compile(r"client-(\d+)")


def _task_of(entry: LedgerEntry) -> str:
    """The task a device's ledger entry accounts for (a non-private release names its task
    in ``details``; one without a task is a leaf-sum release)."""
    if entry.mechanism is Mechanism.NON_PRIVATE:
        return str(entry.details.get("task", ReleaseTask.LEAF_SUMS.value))
    return _TASK_OF_MECHANISM.get(entry.mechanism, str(entry.mechanism.value))


@dataclass
class _StoreContent:
    """What an audit reads from a device store."""

    entries: list[LedgerEntry]
    state_keys: list[str]
    flags: list[str]


def _ranges(numbers: Iterable[int]) -> str:
    """``1, 3-5, 9`` (sorted, consecutive numbers collapsed)."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


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
            f"{'s' if len(deleted) > 1 else ''} {_ranges(deleted)} of 1-{top} missing)"
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
        task = _ADAPTER
    else:
        return None
    try:
        return task, int(rest.split(":")[0])
    except ValueError:
        return None


def audit_device(
    store_path: str | Path,
    *,
    delta: float,
    accountant: str = "pld",
    budget_epsilon: float | None = None,
    round_config: dict[int, dict[str, Any]] | None = None,
    sensitivity: float | None = None,
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
        sensitivity: the announced release sensitivity (``clipping_norm x max_weight``).

    Raises:
        ConfigError: the store is missing, cannot be read, or is not a fedinterest store.
    """
    path = Path(store_path)
    content = _read_store(path)
    entries = content.entries
    flags = list(content.flags)
    event_entries = [e for e in entries if e.scope is Scope.EVENT]
    accounted = {(_task_of(e), e.server_round) for e in event_entries}
    for key in sorted(content.state_keys):
        found = _stored_release(key)
        if found is None or found in accounted:
            continue
        task, r = found
        if task == ReleaseTask.LEAF_SUMS.value:
            flags.append(f"release of round {r} stored without a ledger entry")
        elif task == _ADAPTER:
            flags.append(f"adapter update of round {r} stored without a ledger entry")
        else:
            flags.append(f"{task} release of round {r} stored without a ledger entry")
    for e in event_entries:
        if (
            e.mechanism is Mechanism.GAUSSIAN_SUM
            and round_config
            and e.server_round in round_config
        ):
            want = round_config[e.server_round].get("noise_multiplier")
            if want is not None and not _close(e.noise_multiplier, float(want)):
                flags.append(
                    f"round {e.server_round}: ledger noise multiplier {e.noise_multiplier:.6g} != announced {float(want):.6g}"
                )
        if (
            e.mechanism is Mechanism.GAUSSIAN_SUM
            and sensitivity is not None
            and not _close(e.sensitivity, sensitivity)
        ):
            flags.append(
                f"round {e.server_round}: ledger sensitivity {e.sensitivity:g} != announced {sensitivity:g}"
            )
    eps = epsilon_of_entries(event_entries, delta=delta, accountant=accountant)
    per_mech: dict[str, float] = {}
    for kind in sorted({e.mechanism for e in event_entries}, key=lambda m: m.value):
        per_mech[kind.value] = epsilon_of_entries(
            [e for e in event_entries if e.mechanism is kind], delta=delta, accountant=accountant
        )
    rounds = sorted({e.server_round for e in event_entries if e.server_round is not None})
    per_round = {
        r: epsilon_of_entries(
            [e for e in event_entries if e.server_round is not None and e.server_round <= r],
            delta=delta,
            accountant=accountant,
        )
        for r in rounds
    }
    if budget_epsilon is not None and eps > budget_epsilon * (1 + 1e-9):
        flags.append(f"over budget: epsilon {eps:.4f} > {budget_epsilon:.4f}")
    return DeviceAudit(path.stem, entries, eps, per_mech, per_round, flags)


def _count(value: Any) -> int:
    """A non-negative count from a round record (anything else counts 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(0, int(value)) if math.isfinite(value) else 0


def _server_counts(records: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, int]]:
    """Per round and task, the most releases the server's records say it took in.

    Every attempt of a round counts: each release it took in was committed to its device's
    ledger (for that round) before it left the device, so the ledgers hold at least as many
    devices with an entry of that round as any one record counts."""
    out: dict[int, dict[str, int]] = defaultdict(dict)

    def put(r: int, task: str, n: int) -> None:
        if n > 0:
            out[r][task] = max(out[r].get(task, 0), n)

    for rec in records:
        try:
            r = int(rec["server_round"])
        except (KeyError, TypeError, ValueError):
            continue
        statuses = rec.get("statuses") if isinstance(rec.get("statuses"), Mapping) else {}
        put(
            r,
            ReleaseTask.LEAF_SUMS.value,
            max(_count(rec.get("usable")), _count((statuses or {}).get("ok"))),
        )
        analytics = rec.get("analytics") if isinstance(rec.get("analytics"), Mapping) else {}
        for name, task in (
            ("popularity", ReleaseTask.ITEM_COUNTS),
            ("histogram", ReleaseTask.HISTOGRAM),
        ):
            step = (analytics or {}).get(name)
            if isinstance(step, Mapping):
                st = step.get("statuses") if isinstance(step.get("statuses"), Mapping) else {}
                put(r, task.value, max(_count(step.get("usable")), _count((st or {}).get("ok"))))
        adapter = rec.get("adapter")
        if isinstance(adapter, Mapping):
            st = adapter.get("statuses") if isinstance(adapter.get("statuses"), Mapping) else {}
            put(r, _ADAPTER, max(_count(adapter.get("usable")), _count((st or {}).get("ok"))))
    return dict(out)


def _server_records(d: Path, jsonl_rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's round records: ``rounds.jsonl`` (every attempt), ``server.db``'s round
    table (the last attempt) and its round views (``usable`` of each completed round)."""
    records = list(jsonl_rounds)
    if not (d / "server.db").is_file():
        return records
    with ServerStorage(d / "server.db") as st:
        stored = st.rounds()
        records += stored
        for r in sorted({int(x["server_round"]) for x in stored if "server_round" in x}):
            view = st.get_arrays(f"round:{r}")
            if view is not None and "usable" in view:
                records.append({"server_round": r, "usable": view["usable"]})
    return records


def guarantees(config: dict[str, Any], event_max: float, user: dict[str, Any]) -> list[str]:
    """Plain statements of what holds, for which output, under which assumption."""
    run = config.get("run", {})
    p = run.get("privacy", {})
    mode = p.get("mode", "secagg")
    mode = mode.get("value", mode) if isinstance(mode, dict) else mode
    delta = p.get("delta")
    out = [
        f"Event level (add/remove one event of one device): every device's releases compose to at most "
        f"epsilon {event_max:.4g} at delta {delta:g}, counting every mechanism in its ledger."
    ]
    if p.get("no_dp"):
        out.append("NO differential privacy: the run released without noise (--no-dp).")
    if str(mode).endswith("secagg"):
        frac = p.get("min_cohort_fraction")
        out.append(
            "Leaf sums were summed under SecAgg+; each device added a share of the noise, calibrated so that "
            f"at least ceil({frac} x sampled) devices carry the full noise. The event-level guarantee against the "
            "server assumes an honest-but-curious server and at least that many honest devices per cohort "
            "(devices that reveal their noise shares to the server remove them from the sum); rounds with fewer "
            "survivors were aborted before unmasking."
        )
    else:
        out.append(
            "Local mode: each device added the full noise itself; the guarantee needs no trust in the server or in other devices."
        )
    for name, eps in user.get("per_output", {}).items():
        out.append(
            f"User level, {name}: epsilon {eps if isinstance(eps, str) else f'{eps:.4g}'} at delta {delta:g}."
        )
    if any("adapter" in n for n in user.get("per_output", {})) is False and run.get(
        "adapter", {}
    ).get("enabled"):
        out.append("The adapter ran without server-side noise: no user-level guarantee for it.")
    return out


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


def _crosscheck_rounds(
    records: Iterable[Mapping[str, Any]], devices: list[DeviceAudit], expected: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Per round and task, the releases the server counted against the device ledgers holding
    an entry of that round; ``(per-round table, flags)``. When every device of the run took
    part, the devices without an entry are named."""
    server = _server_counts(records)
    holders: dict[tuple[int, str], set[str]] = defaultdict(set)
    for dv in devices:
        for e in dv.entries:
            if e.scope is Scope.EVENT and e.server_round is not None:
                holders[(e.server_round, _task_of(e))].add(dv.name)
    table: dict[str, Any] = {}
    flags: list[str] = []
    order = list(_COUNTED)
    for r in sorted(server):
        row: dict[str, Any] = {}
        for task in sorted(
            server[r], key=lambda t: (order.index(t) if t in order else len(order), t)
        ):
            n = server[r][task]
            have = holders.get((r, task), set())
            row[task] = {"server": n, "ledgers": len(have)}
            if len(have) >= n:
                continue
            what = _COUNTED.get(task, f"{task} releases")
            flag = f"round {r}: server counted {n} {what}, device ledgers hold {len(have)}"
            if n >= len(expected):
                lacking = [name for name in expected if name not in have]
                shown = ", ".join(lacking[:_NAMED])
                more = f" and {len(lacking) - _NAMED} more" if len(lacking) > _NAMED else ""
                flag += f" (every device took part; no entry in {shown}{more})"
            flags.append(flag)
        table[str(r)] = row
    return table, flags


def _check_run_config(config: Any, path: Path) -> None:
    """The fields of ``config.json`` the audit reads, with their types, or a
    :class:`ConfigError` naming the file, the field and the value."""

    def bad(field: str, want: str, found: Any) -> ConfigError:
        return ConfigError(f"{str(path)!r}: `{field}` must be {want}. Found {str(found)[:80]!r}.")

    if not isinstance(config, dict):
        raise bad("(top level)", "an object", config)
    run = config.get("run")
    if not isinstance(run, dict):
        raise bad("run", "an object", run)
    priv = run.get("privacy")
    if not isinstance(priv, dict):
        raise bad("run.privacy", "an object", priv)
    for key in ("delta", "clipping_norm", "max_weight"):
        v = priv.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(f"run.privacy.{key}", "a number", v)
    if not isinstance(priv.get("accountant", "pld"), str):
        raise bad("run.privacy.accountant", "a string", priv.get("accountant"))
    budgets = config.get("device_budgets") or {}
    if not isinstance(budgets, dict) or not all(
        isinstance(v, (int, float)) and str(k).isdigit() for k, v in budgets.items()
    ):
        raise bad("device_budgets", "an object of device index -> epsilon", budgets)
    budget = config.get("device_budget_epsilon")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
        raise bad("device_budget_epsilon", "a number or null", budget)
    clients = config.get("clients")
    if clients is not None and (isinstance(clients, bool) or not isinstance(clients, int)):
        raise bad("clients", "an integer", clients)


def audit_run(
    run_dir: str | Path, *, delta: float | None = None, accountant: str | None = None
) -> dict[str, Any]:
    """Audits a run directory (``clients/*.db``, ``server.db``, ``config.json``,
    ``rounds.jsonl``) and writes ``audit.json``; returns its content."""
    d = Path(run_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(d)!r} is not a run directory (no config.json).")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as err:  # UnicodeDecodeError included
        raise ConfigError(f"{str(cfg_path)!r} is not a JSON run config: {err}.") from None
    _check_run_config(config, cfg_path)
    priv = config["run"]["privacy"]
    dlt = float(delta if delta is not None else priv["delta"])
    acc = accountant or priv.get("accountant", "pld")
    rounds = []
    if (d / "rounds.jsonl").is_file():
        try:
            rounds = [
                json.loads(line)
                for line in (d / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        except ValueError as err:
            raise ConfigError(f"{str(d / 'rounds.jsonl')!r} is not JSON lines: {err}.") from None
    for n, r in enumerate(rounds, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("server_round"), int):
            raise ConfigError(
                f"{str(d / 'rounds.jsonl')!r}: line {n} must be an object with an integer "
                f"`server_round`. Found {str(r)[:80]!r}."
            )
    round_cfg = {int(r["server_round"]): r for r in rounds}
    default_budget = config.get("device_budget_epsilon")
    overrides = {int(k): float(v) for k, v in (config.get("device_budgets") or {}).items()}
    sensitivity = float(priv["clipping_norm"]) * float(priv["max_weight"])
    expected = _expected_stores(config)
    paths = sorted((d / "clients").glob("*.db"))
    devices: list[DeviceAudit] = []
    unreadable: list[str] = []
    store_flags: list[str] = []
    for i, path in enumerate(paths):
        numbered = _STORE_NAME.fullmatch(path.stem)
        budget = overrides.get(int(numbered.group(1)) if numbered else i, default_budget)
        try:
            devices.append(
                audit_device(
                    path,
                    delta=dlt,
                    accountant=acc,
                    budget_epsilon=budget,
                    round_config=round_cfg,
                    sensitivity=sensitivity,
                )
            )
        except FedInterestError as err:
            unreadable.append(path.stem)
            store_flags.append(f"{path.stem}: store cannot be audited: {err}")
    if not paths and not (d / "server.db").is_file():
        raise ConfigError(f"{str(d)!r} has no device stores under clients/ and no server.db.")
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
    participation: dict[str, Any] = {}
    round_flags: list[str] = []
    if expected is not None:
        # a simulated run holds every device's store: what the server took in each round
        # must be in the ledgers (a deployed run's devices keep their own)
        known = set(expected)
        participation, round_flags = _crosscheck_rounds(
            _server_records(d, rounds), [dv for dv in devices if dv.name in known], expected
        )
    if not devices:
        # the devices' ledgers are not here; the server can state what it announced
        announced = [float(r.get("epsilon_event_level", 0.0)) for r in rounds]
        eps = [max(announced, default=0.0)]
        if expected is None:
            notes = [
                "no device stores under clients/ (a deployed run): the event-level figure is the "
                "server's announcement, what a device taking part in every release spends; each "
                "device audits its own ledger with `fedinterest audit --store DEVICE.db`."
            ]
        else:
            notes = [
                f"no readable device store under clients/ although config.json lists "
                f"{len(expected)} devices (see flags): the event-level figure is the server's "
                "announcement, what a device taking part in every release spends."
            ]
    else:
        eps = [dv.epsilon for dv in devices]
        notes = []
    finite = [e for e in eps if math.isfinite(e)]
    mechanisms: dict[str, dict[str, Any]] = defaultdict(dict)
    for kind in sorted({k for dv in devices for k in dv.per_mechanism}):
        vals = [dv.per_mechanism.get(kind, 0.0) for dv in devices]
        count = sum(1 for dv in devices for e in dv.entries if e.mechanism.value == kind)
        mechanisms[kind] = {
            "entries": count,
            "epsilon_max": max(vals),
            "epsilon_median": statistics.median(vals),
        }
    per_round: dict[str, Any] = {}
    for r in sorted({r for dv in devices for r in dv.per_round}):
        vals = [dv.per_round[r] for dv in devices if r in dv.per_round]
        per_round[str(r)] = {
            "devices_recorded": len(vals),
            "epsilon_max": max(vals),
            "epsilon_median": statistics.median(vals),
            "announced_noise_multiplier": round_cfg.get(r, {}).get("noise_multiplier"),
        }
    user: dict[str, Any] = {"epsilon": 0.0, "per_output": {}}
    if (d / "server.db").is_file():
        with ServerStorage(d / "server.db") as st:
            server_entries = [e for e in st.ledger() if e.scope is Scope.USER]
        outputs = sorted({str(e.details.get("output", e.mechanism.value)) for e in server_entries})
        for name in outputs:
            mine = [
                e for e in server_entries if str(e.details.get("output", e.mechanism.value)) == name
            ]
            user["per_output"][name] = epsilon_of_entries(
                mine, delta=dlt, scope=Scope.USER, accountant=acc
            )
        user["epsilon"] = epsilon_of_entries(
            server_entries, delta=dlt, scope=Scope.USER, accountant=acc
        )
    flags = [*store_flags, *round_flags, *(f"{dv.name}: {f}" for dv in devices for f in dv.flags)]
    over = [dv.name for dv in devices if any(f.startswith("over budget") for f in dv.flags)]
    event_max = max(eps)
    report: dict[str, Any] = {
        "source": "device ledgers" if devices else "server announcements",
        "notes": notes,
        "run_dir": str(d),
        "delta": dlt,
        "accountant": acc,
        "event_level": {
            "epsilon_max": event_max,
            "epsilon_median": statistics.median(eps),
            "epsilon_min": min(eps),
            "epsilon_mean_finite": (sum(finite) / len(finite)) if finite else None,
            "devices": len(devices),
            "over_budget": over,
            "per_device": [dv.to_dict() for dv in devices],
        },
        "user_level": user,
        "mechanisms": dict(mechanisms),
        "per_round": per_round,
        "budget": {
            "run_epsilon": priv["epsilon"],
            "device_epsilon": default_budget,
            "device_overrides": {str(k): v for k, v in overrides.items()},
            "server_user_epsilon": config["run"].get("adapter", {}).get("server_user_epsilon"),
        },
        "flags": flags,
        "guarantees": guarantees(config, event_max, json_safe(user)),
        "crosscheck": {
            "device_stores": {
                "expected": None if expected is None else len(expected),
                "found": len(paths),
                "audited": len(devices),
                "missing": missing,
                "unreadable": unreadable,
                "unexpected": unexpected,
            },
            "rounds": participation,
        },
    }
    previous = d / "audit.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if "empirical" in old:
            report["empirical"] = old["empirical"]
    atomic_write_json(d / "audit.json", report, indent=1, sort_keys=True)
    return report


def record_empirical(run_dir: str | Path, kind: str, result: Mapping[str, Any]) -> Path:
    """Adds an empirical audit's ``result`` to ``RUN_DIR/audit.json`` under
    ``empirical.<kind>`` (``dp`` or ``nodp``); returns the file's path."""
    path = Path(run_dir) / "audit.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report.setdefault("empirical", {})[kind] = dict(result)
    atomic_write_json(path, report, indent=1, sort_keys=True, default=str)
    return path
