"""One ledger's audit, shared by a run's device stores (:mod:`simulations.audit_devices`) and
a batched run's shard stores (:mod:`simulations.audit_shards`): its event-level epsilon composed
with dp-accounting (in total, per mechanism, after each round), its budget, and its entries
against the parameters the server announced; and what a run's stores yield for
:func:`simulations.audit.audit_run` (:class:`Population`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from common.privacy import LedgerEntry, Mechanism, Scope, epsilon_of_entries
from common.records import ReleaseTask

__all__ = [
    "ADAPTER",
    "NAMED",
    "AuditSettings",
    "DeviceAudit",
    "Held",
    "Population",
    "audit_ledger",
    "entries_at",
    "parameter_flags",
    "task_of",
]


@dataclass
class DeviceAudit:
    """One device's recomputed spend (``epsilon``: event level; ``epsilon_user``: user level,
    with ``per_output_user`` per release task)."""

    name: str
    entries: list[LedgerEntry]
    epsilon: float
    per_mechanism: dict[str, float]
    per_round: dict[int, float]
    flags: list[str] = field(default_factory=list)
    epsilon_user: float = math.inf
    per_output_user: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.name,
            "entries": len(self.entries),
            "epsilon": self.epsilon,
            "epsilon_user": self.epsilon_user,
            "per_mechanism": self.per_mechanism,
            "per_round": {str(k): v for k, v in sorted(self.per_round.items())},
            "flags": self.flags,
        }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


#: what a device's ledger entry accounts for: the release task (``ReleaseTask`` values) or the
#: adapter's DP-SGD step
ADAPTER = "adapter"

_TASK_OF_MECHANISM: dict[Mechanism, str] = {
    Mechanism.GAUSSIAN_SUM: ReleaseTask.LEAF_SUMS.value,
    Mechanism.GAUSSIAN_COUNT: ReleaseTask.ITEM_COUNTS.value,
    Mechanism.GAUSSIAN_HISTOGRAM: ReleaseTask.HISTOGRAM.value,
    Mechanism.DPSGD: ADAPTER,
}

#: at most this many devices named in one flag
NAMED = 10


def task_of(entry: LedgerEntry) -> str:
    """The task a device's ledger entry accounts for (a non-private or integer-noise release
    names its task in ``details``; one without a task is a leaf-sum release)."""
    if entry.mechanism in (Mechanism.NON_PRIVATE, Mechanism.DISCRETE_GAUSSIAN):
        return str(entry.details.get("task", ReleaseTask.LEAF_SUMS.value))
    return _TASK_OF_MECHANISM.get(entry.mechanism, str(entry.mechanism.value))


def entries_at(entries: Iterable[LedgerEntry], scope: Scope) -> list[LedgerEntry]:
    """A device's ledger seen at ``scope``: entries recorded at it as they are; an entry
    recorded at the other relation by the multiplier it carries for this one
    (``details[f"{scope}_noise_multiplier"]``, :meth:`common.round_config.RoundConfig.ledger_entry`);
    one without (the adapter's DP-SGD at user level: no per-device bound) as non-private."""
    out: list[LedgerEntry] = []
    for e in entries:
        if e.scope is scope:
            out.append(e)
            continue
        z = e.details.get(f"{scope.value}_noise_multiplier")
        if e.mechanism is Mechanism.NON_PRIVATE or z is None or float(z) <= 0:
            out.append(replace(e, mechanism=Mechanism.NON_PRIVATE, scope=scope))
        else:
            out.append(replace(e, noise_multiplier=float(z), scope=scope))
    return out


#: Where each auxiliary task's announcement sits in a round record's ``analytics``.
_ANALYTICS_KEY = {
    ReleaseTask.ITEM_COUNTS.value: "popularity",
    ReleaseTask.HISTOGRAM.value: "histogram",
}


def _announced(record: Mapping[str, Any], task: str) -> Mapping[str, Any]:
    """What the server announced for ``task`` in one round record (``{}``: not recorded)."""
    if task == ReleaseTask.LEAF_SUMS.value:
        return {
            "noise_multiplier": record.get("noise_multiplier"),
            "noise_std": record.get("noise_std"),
        }
    aux = (record.get("analytics") or {}).get(_ANALYTICS_KEY.get(task, ""), {})
    if not isinstance(aux, Mapping):
        return {}
    return {
        "noise_multiplier": aux.get("noise_multiplier"),
        "noise_std": aux.get("device_noise_std"),
    }


def parameter_flags(
    unit_entries: Iterable[LedgerEntry],
    round_config: dict[int, dict[str, Any]] | None,
    sensitivity: float | None,
) -> list[str]:
    """Release entries (leaf sums, item counts, histograms; continuous or integer noise), at
    the run's unit, whose noise multiplier or device noise std disagree with what the server
    announced for that task and round (``round_config``: per round, ``rounds.jsonl``'s
    record), and leaf-sum entries whose sensitivity disagrees with the announced one
    (continuous noise; an integer release's is in integer units)."""
    flags: list[str] = []
    for e in unit_entries:
        task = task_of(e)
        if e.mechanism is Mechanism.NON_PRIVATE or task == ADAPTER:
            continue
        what = "" if task == ReleaseTask.LEAF_SUMS.value else f" {task}"
        if round_config and e.server_round in round_config:
            said = _announced(round_config[e.server_round], task)
            want = said.get("noise_multiplier")
            if want is not None and not _close(e.noise_multiplier, float(want)):
                flags.append(
                    f"round {e.server_round}{what}: ledger noise multiplier {e.noise_multiplier:.6g} != announced {float(want):.6g}"
                )
            std, got = said.get("noise_std"), e.details.get("noise_std")
            if std is not None and got is not None and not _close(float(got), float(std)):
                flags.append(
                    f"round {e.server_round}{what}: ledger noise std {float(got):.6g} != announced {float(std):.6g}"
                )
        if (
            e.mechanism is Mechanism.GAUSSIAN_SUM
            and sensitivity is not None
            and not _close(e.sensitivity, sensitivity)
        ):
            flags.append(
                f"round {e.server_round}: ledger sensitivity {e.sensitivity:g} != announced {sensitivity:g}"
            )
    return flags


def audit_ledger(
    name: str,
    entries: list[LedgerEntry],
    flags: list[str],
    *,
    delta: float,
    accountant: str,
    budget_epsilon: float | None,
) -> DeviceAudit:
    """The accounting of one ledger: its event-level epsilon, per mechanism and after each
    round, its user-level epsilon in all and per release task, and ``flags`` with an
    over-budget flag added when the ledger's own unit exceeds ``budget_epsilon``."""
    event_entries = entries_at(entries, Scope.EVENT)
    user_entries = entries_at(entries, Scope.USER)
    eps_user = epsilon_of_entries(
        user_entries, delta=delta, accountant=accountant, scope=Scope.USER
    )
    per_output_user = {
        task: epsilon_of_entries(
            [e for e in user_entries if task_of(e) == task],
            delta=delta,
            accountant=accountant,
            scope=Scope.USER,
        )
        for task in sorted({task_of(e) for e in user_entries})
    }
    own = Scope.USER if entries and all(e.scope is Scope.USER for e in entries) else Scope.EVENT
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
    flags = list(flags)
    spent = eps_user if own is Scope.USER else eps
    if budget_epsilon is not None and spent > budget_epsilon * (1 + 1e-9):
        flags.append(f"over budget: {own.value}-level epsilon {spent:.4f} > {budget_epsilon:.4f}")
    return DeviceAudit(name, entries, eps, per_mech, per_round, flags, eps_user, per_output_user)


@dataclass
class Held:
    """One audited ledger and the devices holding it: a device store's own ledger, or the
    users of a batched run whose ledgers and budgets are the same (one accounting for all)."""

    audit: DeviceAudit
    names: list[str]


@dataclass
class Population:
    """The audited ledgers of a run's stores and what the stores showed.

    Attributes:
        held: the distinct ledgers, with the devices (users) holding each.
        per_device: ``event_level.per_device``'s rows, one per audited device (user).
        over: the devices (users) over their budget.
        expected: the devices (users) of a simulated run, by name; ``None`` for a deployed run.
        store_flags: the stores' flags (missing, unreadable, foreign; a batched run's users
            missing, duplicated or foreign, its stores' own checks), before the round checks.
        device_flags: the flags of the devices' (users') own ledgers, after them.
        stores: ``crosscheck``'s entries besides ``rounds``.
        found: store files under ``clients/``.
        noun: what a ledger belongs to in flags and notes: ``device`` or ``user``.
        missing_note: the note when no ledger could be read although the run has stores.
        extra: ``event_level``'s entries of this kind of run.
    """

    held: list[Held]
    per_device: list[dict[str, Any]]
    over: list[str]
    expected: list[str] | None
    store_flags: list[str]
    device_flags: list[str]
    stores: dict[str, Any]
    found: int
    noun: str
    missing_note: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditSettings:
    """What the audit of a run's ledgers reads from ``config.json`` and ``rounds.jsonl``."""

    delta: float
    accountant: str
    round_config: dict[int, dict[str, Any]]
    sensitivity: float
    default_budget: float | None
    overrides: dict[int, float]
    unit: Scope = Scope.EVENT
