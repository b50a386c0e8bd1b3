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

A batched run (``config.json``'s ``engine`` is ``batched``) keeps its users in
``config.json``'s ``workers`` shard stores (``clients/shard-NNN.db``), one ledger per user: each
user is audited as a device is (named ``user-NNNNN`` by its index), each shard store read once
and each distinct ledger composed once however many users hold it
(:mod:`simulations.audit_shards`). Its cross-checks are the shard stores' counterparts: a shard
store missing, unreadable, foreign or not one of the run's; a user of the run in no shard
store, in several (the ledgers of every copy are composed), or not one of the run's
(``config.json``'s ``clients`` users, indices from 0); rows deleted from a user's ledger; a
stored release counting more releasing users than its ledger rows; a mechanism whose
parameters disagree with the round's config (flagged once per mechanism, naming the files).

``audit.json`` keys (stable): ``engine``, ``event_level.{epsilon_max, epsilon_median,
epsilon_min, devices, over_budget, per_device}`` (a batched run: one row per user, with its
``shards``, and ``distinct_ledgers``), ``user_level.{epsilon, per_output}``, ``delta``,
``accountant``, ``mechanisms``, ``per_round``, ``budget``, ``flags``, ``guarantees``,
``crosscheck`` (``device_stores`` expected and found, or for a batched run ``shard_stores``
and ``users``; per round, what the server counted and what the ledgers hold), and
``empirical`` when an empirical audit ran.

Stores are read through SQLite's read-only ``mode=ro`` URI: an audit changes no store. The
device stores are read by :mod:`simulations.audit_devices`, the shard stores by
:mod:`simulations.audit_shards`; both audit each ledger with :mod:`simulations.audit_ledger`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common.config import DEFAULT_USER_CLIPPING_NORM
from common.errors import ConfigError
from common.jsonio import json_safe
from common.privacy import Scope, epsilon_of_entries
from common.records import ReleaseTask
from server.storage import ServerStorage
from simulations.audit_devices import audit_device, device_population
from simulations.audit_ledger import ADAPTER, NAMED, AuditSettings, DeviceAudit, Held, task_of
from simulations.audit_shards import batched_population
from simulations.files import atomic_write_json
from simulations.options import Engine

__all__ = ["DeviceAudit", "audit_device", "audit_run", "guarantees", "record_empirical"]

#: how a flag names what the server counted, per task
_COUNTED = {
    ReleaseTask.LEAF_SUMS.value: "releases",
    ReleaseTask.ITEM_COUNTS.value: "item-counts releases",
    ReleaseTask.HISTOGRAM.value: "histogram releases",
    ADAPTER: "adapter updates",
}


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
            put(r, ADAPTER, max(_count(adapter.get("usable")), _count((st or {}).get("ok"))))
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
    batched = config.get("engine") == Engine.BATCHED.value
    if str(mode).endswith("secagg"):
        frac = p.get("min_cohort_fraction")
        how = " (simulated by an exact sum: batched engine)" if batched else ""
        out.append(
            f"Leaf sums were summed under SecAgg+{how}; each device added a share of the noise, calibrated so that "
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
    if batched:
        out.append(
            "Batched engine (a simulation): each user's releases, budget checks and ledger are "
            "a device's, computed for many users at once in shard stores; the secure sum is "
            "simulated as an exact sum (no SecAgg+ masking, no dropouts between its stages)."
        )
    return out


def _crosscheck_rounds(
    records: Iterable[Mapping[str, Any]], held: list[Held], expected: list[str], noun: str
) -> tuple[dict[str, Any], list[str]]:
    """Per round and task, the releases the server counted against the ledgers of the run's
    devices (``expected``; ``noun``: ``device`` or ``user``) holding an entry of that round;
    ``(per-round table, flags)``. When every device of the run took part, the devices without
    an entry are named."""
    server = _server_counts(records)
    known = set(expected)
    holders: dict[tuple[int, str], set[str]] = defaultdict(set)
    for h in held:
        names = [n for n in h.names if n in known]
        if not names:
            continue
        keys = {
            (e.server_round, task_of(e))
            for e in h.audit.entries
            if e.server_round is not None  # a device's own entries, at its unit
        }
        for key in keys:
            holders[key].update(names)
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
            flag = f"round {r}: server counted {n} {what}, {noun} ledgers hold {len(have)}"
            if n >= len(expected):
                lacking = [name for name in expected if name not in have]
                shown = ", ".join(lacking[:NAMED])
                more = f" and {len(lacking) - NAMED} more" if len(lacking) > NAMED else ""
                flag += f" (every {noun} took part; no entry in {shown}{more})"
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
    if config.get("engine") == Engine.BATCHED.value:
        # the batched engine's users and shard stores are what its audit checks against
        for key in ("clients", "workers"):
            v = config.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(key, "an integer >= 1 in a batched run", v)


def audit_run(
    run_dir: str | Path, *, delta: float | None = None, accountant: str | None = None
) -> dict[str, Any]:
    """Audits a run directory (``clients/*.db``, ``server.db``, ``config.json``,
    ``rounds.jsonl``) and writes ``audit.json``; returns its content.

    A devices run has one device store per device (``client-NNNNN.db``); a batched run
    (``config.json``'s ``engine`` is ``batched``) a few shard stores (``shard-NNN.db``) holding
    one ledger per user, each user audited as a device is (:mod:`simulations.audit_shards`)."""
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
    unit = Scope(priv.get("unit", Scope.EVENT.value))
    user_bound = priv.get("user_clipping_norm")
    settings = AuditSettings(
        dlt,
        acc,
        round_cfg,
        (
            float(user_bound if user_bound is not None else DEFAULT_USER_CLIPPING_NORM[unit])
            if unit is Scope.USER
            else float(priv["clipping_norm"]) * float(priv["max_weight"])
        ),
        default_budget,
        overrides,
        unit,
    )
    engine = str(config.get("engine") or "devices")
    batched = engine == Engine.BATCHED.value
    pop = (
        batched_population(d, config, settings)
        if batched
        else device_population(d, config, settings)
    )
    if not pop.found and not (d / "server.db").is_file():
        raise ConfigError(
            f"{str(d)!r} has no {'shard' if batched else 'device'} stores under clients/ and "
            "no server.db."
        )
    held = pop.held
    participation: dict[str, Any] = {}
    round_flags: list[str] = []
    if pop.expected is not None:
        # a simulated run holds every device's ledger: what the server took in each round
        # must be in the ledgers (a deployed run's devices keep their own)
        participation, round_flags = _crosscheck_rounds(
            _server_records(d, rounds), held, pop.expected, pop.noun
        )
    if not held:
        # the devices' ledgers are not here; the server can state what it announced
        announced = [float(r.get("epsilon_event_level", 0.0)) for r in rounds]
        eps = [max(announced, default=0.0)]
        notes = [pop.missing_note]
    else:
        eps = [h.audit.epsilon for h in held for _ in h.names]
        notes = []
    finite = [e for e in eps if math.isfinite(e)]
    mechanisms: dict[str, dict[str, Any]] = defaultdict(dict)
    for kind in sorted({k for h in held for k in h.audit.per_mechanism}):
        vals = [h.audit.per_mechanism.get(kind, 0.0) for h in held for _ in h.names]
        count = sum(
            len(h.names) * sum(1 for e in h.audit.entries if e.mechanism.value == kind)
            for h in held
        )
        mechanisms[kind] = {
            "entries": count,
            "epsilon_max": max(vals),
            "epsilon_median": statistics.median(vals),
        }
    per_round: dict[str, Any] = {}
    for r in sorted({r for h in held for r in h.audit.per_round}):
        vals = [h.audit.per_round[r] for h in held if r in h.audit.per_round for _ in h.names]
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
    if held:
        # the devices' own ledgers at user level (each device, whatever unit it kept)
        u_eps = [h.audit.epsilon_user for h in held for _ in h.names]
        user["devices_epsilon_max"] = max(u_eps)
        user["devices_epsilon_median"] = statistics.median(u_eps)
        user["devices_per_output_max"] = {
            task: max(h.audit.per_output_user.get(task, 0.0) for h in held)
            for task in sorted({t for h in held for t in h.audit.per_output_user})
        }
    flags = [*pop.store_flags, *round_flags, *pop.device_flags]
    event_max = max(eps)
    report: dict[str, Any] = {
        "source": f"{pop.noun} ledgers" if held else "server announcements",
        "engine": engine,
        "notes": notes,
        "run_dir": str(d),
        "delta": dlt,
        "accountant": acc,
        "event_level": {
            "epsilon_max": event_max,
            "epsilon_median": statistics.median(eps),
            "epsilon_min": min(eps),
            "epsilon_mean_finite": (sum(finite) / len(finite)) if finite else None,
            "devices": len(pop.per_device),
            "over_budget": pop.over,
            "per_device": pop.per_device,
            **pop.extra,
        },
        "user_level": user,
        "headline": {
            "unit": unit.value,
            "target_epsilon": priv["epsilon"],
            "epsilon_user_level": user.get("devices_epsilon_max", user["epsilon"]),
            "epsilon_event_level": event_max,
            "per_output_user_level": user.get("devices_per_output_max", user["per_output"]),
        },
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
        "crosscheck": {**pop.stores, "rounds": participation},
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
