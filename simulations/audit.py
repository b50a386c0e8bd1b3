"""``fedinterest audit``: every privacy claim recomputed from the ledgers alone.

For a run directory: each device's event-level epsilon (its ledger composed with
dp-accounting, PLD by default), min/median/max over devices, per mechanism and per round; the
server's user-level ledger per output; and flags for anything that does not add up:

- a release (or adapter update) a device stored without a ledger entry for that round;
- a ledger entry whose parameters disagree with the round's config (noise multiplier,
  sensitivity);
- a device over its budget.

``audit.json`` keys (stable): ``event_level.{epsilon_max, epsilon_median, epsilon_min,
devices, over_budget}``, ``user_level.{epsilon, per_output}``, ``delta``, ``accountant``,
``mechanisms``, ``per_round``, ``budget``, ``flags``, ``guarantees``, and ``empirical`` when an
empirical audit ran.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.store import EventStore
from common.errors import ConfigError
from common.privacy import LedgerEntry, Mechanism, Scope, epsilon_of_entries
from server.storage import ServerStorage
from server.strategy import json_safe

__all__ = ["DeviceAudit", "audit_device", "audit_run", "guarantees"]


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

    Args:
        store_path: the device store.
        delta: the delta to state epsilon at.
        budget_epsilon: the device's budget (flag when exceeded).
        round_config: per round, what the server announced (``noise_multiplier``), from
            ``rounds.jsonl``; entries that disagree are flagged.
        sensitivity: the announced release sensitivity (``clipping_norm x max_weight``).
    """
    path = Path(store_path)
    if not path.is_file():
        raise ConfigError(f"store {str(path)!r} does not exist.")
    with EventStore(path, create=False) as store:
        entries = store.ledger()
        keys = [k for (k,) in store.connection.execute("SELECT key FROM state")]
    flags: list[str] = []
    event_entries = [e for e in entries if e.scope is Scope.EVENT]
    sums_by_round = {
        e.server_round
        for e in event_entries
        if e.mechanism in (Mechanism.GAUSSIAN_SUM, Mechanism.NON_PRIVATE)
    }
    sgd_by_round = {e.server_round for e in event_entries if e.mechanism is Mechanism.DPSGD}
    for key in keys:
        if key.startswith("release:"):
            r = int(key.split(":")[1])
            if r not in sums_by_round:
                flags.append(f"release of round {r} stored without a ledger entry")
        elif key.startswith("adapter-update:"):
            r = int(key.split(":")[1])
            if r not in sgd_by_round:
                flags.append(f"adapter update of round {r} stored without a ledger entry")
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


def audit_run(
    run_dir: str | Path, *, delta: float | None = None, accountant: str | None = None
) -> dict[str, Any]:
    """Audits a run directory (``clients/*.db``, ``server.db``, ``config.json``,
    ``rounds.jsonl``) and writes ``audit.json``; returns its content."""
    d = Path(run_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(d)!r} is not a run directory (no config.json).")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    priv = config["run"]["privacy"]
    dlt = float(delta if delta is not None else priv["delta"])
    acc = accountant or priv.get("accountant", "pld")
    rounds = []
    if (d / "rounds.jsonl").is_file():
        rounds = [
            json.loads(line)
            for line in (d / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    round_cfg = {int(r["server_round"]): r for r in rounds}
    default_budget = config.get("device_budget_epsilon")
    overrides = {int(k): float(v) for k, v in (config.get("device_budgets") or {}).items()}
    sensitivity = float(priv["clipping_norm"]) * float(priv["max_weight"])
    devices = []
    for i, path in enumerate(sorted((d / "clients").glob("*.db"))):
        budget = overrides.get(i, default_budget)
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
    if not devices and not (d / "server.db").is_file():
        raise ConfigError(f"{str(d)!r} has no device stores under clients/ and no server.db.")
    if not devices:
        # a deployed run: the devices keep their ledgers; the server can state what it announced
        announced = [float(r.get("epsilon_event_level", 0.0)) for r in rounds]
        eps = [max(announced, default=0.0)]
        notes = [
            "no device stores under clients/ (a deployed run): the event-level figure is the "
            "server's announcement, what a device taking part in every release spends; each "
            "device audits its own ledger with `fedinterest audit --store DEVICE.db`."
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
    flags = [f"{dv.name}: {f}" for dv in devices for f in dv.flags]
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
    }
    previous = d / "audit.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if "empirical" in old:
            report["empirical"] = old["empirical"]
    (d / "audit.json").write_text(
        json.dumps(json_safe(report), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return report
