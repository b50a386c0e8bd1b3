"""Epsilon from ledger records: closed forms where they exist, else Google's dp-accounting.

A ledger of un-sampled Gaussian releases only (every device's, unless it trains the adapter)
is composed in closed form (:mod:`common.privacy.closed_form`, equal to dp-accounting to
~1e-10 and tested against it), so a device never imports dp-accounting and the scipy it pulls
in; anything else goes through dp-accounting, imported on first use.

Each :class:`~common.privacy.ledger.LedgerEntry` maps to a ``dp_accounting`` ``DpEvent``:

- ``gaussian_sum`` / ``gaussian_count`` / ``gaussian_histogram`` / ``server_gaussian``:
  ``GaussianDpEvent(z)`` self-composed ``steps`` times;
- ``dpsgd``: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` self-composed ``steps`` times;
- ``discrete_gaussian`` (the distributed discrete Gaussian, :mod:`common.privacy.discrete`):
  its Renyi DP is bounded at every order by ``GaussianDpEvent(z)``'s, which is what it is
  composed as, **with the RDP accountant**: a ledger holding one is composed with RDP as a
  whole (a Renyi bound does not imply the Gaussian's privacy-loss distribution, which PLD
  would use).

All records of one scope are composed with the PLD accountant (default) or RDP. Before
composing, un-sampled Gaussian events are merged into one exactly equivalent Gaussian
(``z = (sum_i steps_i z_i^-2)^-1/2``; Dong, Roth and Su 2022, Cor. 3.3), which keeps long
ledgers cheap; likewise identical sampled events (the DP-SGD rounds of one device) become one
event with their steps added up. :func:`epsilon_of_entries` with ``merge_gaussians=False``
composes everything one by one, and the tests check that both agree. A ledger that reduces to one Gaussian gets the exact
analytic epsilon (:func:`gaussian_epsilon`), which PLD approximates from above.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from common.errors import BudgetExceededError, ConfigError
from common.privacy.closed_form import analytic_gaussian_epsilon, gaussian_rdp_epsilon
from common.privacy.ledger import LedgerEntry, Mechanism, Scope

if TYPE_CHECKING:
    import dp_accounting as dpa

__all__ = [
    "Accountant",
    "PrivacyBudget",
    "check_budget",
    "epsilon_of_entries",
    "gaussian_epsilon",
    "to_dp_event",
]


class Accountant(str, enum.Enum):
    PLD = "pld"
    RDP = "rdp"


_GAUSSIAN_KINDS = frozenset(
    {
        Mechanism.DISCRETE_GAUSSIAN,
        Mechanism.GAUSSIAN_SUM,
        Mechanism.GAUSSIAN_COUNT,
        Mechanism.GAUSSIAN_HISTOGRAM,
        Mechanism.SERVER_GAUSSIAN,
    }
)


def _dp_accounting() -> Any:
    # imported on first use: a device whose ledger has closed forms never loads it (nor the
    # scipy.stats and scipy.signal it imports, ~80 MB)
    import dp_accounting

    return dp_accounting


def _new_accountant(kind: Accountant) -> dpa.PrivacyAccountant:
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    factories = {
        Accountant.PLD: lambda: pld_privacy_accountant.PLDAccountant(),
        Accountant.RDP: lambda: rdp_privacy_accountant.RdpAccountant(),
    }
    return factories[kind]()


def to_dp_event(entry: LedgerEntry) -> dpa.DpEvent:
    """The dp-accounting event of one ledger record (unknown kinds raise)."""
    lib = _dp_accounting()
    if entry.mechanism is Mechanism.NON_PRIVATE:
        return lib.NonPrivateDpEvent()
    gaussian = lib.GaussianDpEvent(entry.noise_multiplier)
    if entry.mechanism in _GAUSSIAN_KINDS:
        if entry.sample_rate < 1.0:
            inner: dpa.DpEvent = lib.PoissonSampledDpEvent(entry.sample_rate, gaussian)
        else:
            inner = gaussian
    elif entry.mechanism is Mechanism.DPSGD:
        inner = lib.PoissonSampledDpEvent(entry.sample_rate, gaussian)
    else:  # pragma: no cover - Mechanism is closed; kept so a new kind cannot pass silently
        raise ConfigError(f"no accounting for mechanism {entry.mechanism!r}.")
    return inner if entry.steps == 1 else lib.SelfComposedDpEvent(inner, entry.steps)


@lru_cache(maxsize=4096)
def gaussian_epsilon(noise_multiplier: float, delta: float, accountant: str = "pld") -> float:
    """Epsilon of one Gaussian mechanism with multiplier ``z`` at ``delta``.

    With ``"pld"`` the exact (tight) value (Balle and Wang 2018, Thm. 8;
    :func:`~common.privacy.closed_form.analytic_gaussian_epsilon`, equal to dp-accounting's
    ``get_epsilon_gaussian`` to ~1e-10): the limit the PLD accountant converges to, without
    its discretisation grid, whose size explodes for ``z`` well below 1 (user-level sums).
    With ``"rdp"`` the RDP bound over dp-accounting's default orders
    (:func:`~common.privacy.closed_form.gaussian_rdp_epsilon`, equal to its RDP accountant).
    """
    kind = Accountant(accountant)
    z = float(noise_multiplier)
    if z <= 0:
        return math.inf
    if kind is Accountant.PLD:
        return analytic_gaussian_epsilon(z, float(delta))
    return gaussian_rdp_epsilon(1.0 / (z * z), float(delta))


def _normalised(
    entries: Iterable[LedgerEntry], merge_gaussians: bool
) -> tuple[tuple[str, float, float, int], ...]:
    """A hashable, order-free summary: merged Gaussian plus the sampled events."""
    inv_sq = 0.0
    others: list[tuple[str, float, float, int]] = []
    for e in entries:
        if e.mechanism is Mechanism.NON_PRIVATE:
            return (("non_private", 0.0, 1.0, 1),)
        plain = e.mechanism in _GAUSSIAN_KINDS and e.sample_rate >= 1.0
        if plain and merge_gaussians:
            inv_sq += e.steps / (e.noise_multiplier**2)
        else:
            kind = "sampled" if e.mechanism is Mechanism.DPSGD or not plain else "gaussian"
            others.append((kind, e.noise_multiplier, e.sample_rate, e.steps))
    if merge_gaussians:
        # identical sampled events (a device's DP-SGD rounds) compose as one event with the
        # steps added up: exact, and one PLD self-composition instead of one per round (the
        # budget check's cost no longer grows with the ledger: +0.55 s per round measured)
        steps: dict[tuple[str, float, float], int] = {}
        for kind, z, q, n in others:
            steps[(kind, z, q)] = steps.get((kind, z, q), 0) + n
        others = [(kind, z, q, n) for (kind, z, q), n in steps.items()]
    out = sorted(others)
    if inv_sq > 0:
        out.insert(0, ("gaussian", 1.0 / math.sqrt(inv_sq), 1.0, 1))
    return tuple(out)


@lru_cache(maxsize=8192)
def _epsilon_cached(
    summary: tuple[tuple[str, float, float, int], ...], delta: float, accountant: str
) -> float:
    if not summary:
        return 0.0
    if summary[0][0] == "non_private":
        return math.inf
    if len(summary) == 1 and summary[0][0] == "gaussian" and summary[0][3] == 1:
        return gaussian_epsilon(summary[0][1], delta, accountant)
    if accountant == Accountant.RDP.value and all(s[0] == "gaussian" for s in summary):
        # un-sampled Gaussians only: their RDP adds up in closed form
        return gaussian_rdp_epsilon(sum(n / (z * z) for _, z, _, n in summary), delta)
    lib = _dp_accounting()
    acc = _new_accountant(Accountant(accountant))
    for kind, z, q, steps in summary:
        g = lib.GaussianDpEvent(z)
        ev: dpa.DpEvent = lib.PoissonSampledDpEvent(q, g) if kind == "sampled" else g
        acc.compose(ev, steps)
    return float(acc.get_epsilon(delta))


def epsilon_of_entries(
    entries: Iterable[LedgerEntry],
    *,
    delta: float,
    scope: Scope = Scope.EVENT,
    accountant: Accountant | str = Accountant.PLD,
    merge_gaussians: bool = True,
) -> float:
    """Epsilon at ``delta`` of all records of ``scope``, composed (0.0 for none).

    Raises:
        ConfigError: for a delta outside (0, 1) or an unknown accountant.
    """
    if not 0 < delta < 1:
        raise ConfigError(f"`delta` must be in (0, 1). Found {delta!r}.")
    try:
        kind = Accountant(accountant)
    except ValueError:
        raise ConfigError(f"`accountant` must be 'pld' or 'rdp'. Found {accountant!r}.") from None
    selected = [e for e in entries if e.scope is scope]
    if any(e.mechanism is Mechanism.DISCRETE_GAUSSIAN for e in selected):
        kind = Accountant.RDP  # a Renyi bound only: see the module docstring
    return _epsilon_cached(_normalised(selected, merge_gaussians), float(delta), kind.value)


@dataclass(frozen=True)
class PrivacyBudget:
    """A lifetime budget ``(epsilon, delta)`` for one neighbouring relation."""

    epsilon: float
    delta: float
    scope: Scope = Scope.EVENT

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"`epsilon` must be > 0. Found {self.epsilon!r}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"`delta` must be in (0, 1). Found {self.delta!r}.")


def check_budget(
    spent: Sequence[LedgerEntry],
    new: Sequence[LedgerEntry],
    budget: PrivacyBudget,
    *,
    accountant: Accountant | str = Accountant.PLD,
) -> float:
    """Epsilon after adding ``new`` to ``spent``; raises if it would exceed ``budget``.

    Raises:
        BudgetExceededError: naming the spend, the budget and the records refused.
    """
    after = epsilon_of_entries(
        [*spent, *new], delta=budget.delta, scope=budget.scope, accountant=accountant
    )
    if after > budget.epsilon * (1 + 1e-9):
        before = epsilon_of_entries(
            spent, delta=budget.delta, scope=budget.scope, accountant=accountant
        )
        kinds = ", ".join(sorted({e.mechanism.value for e in new}))
        raise BudgetExceededError(
            f"releasing {kinds} would spend epsilon {after:.4f} > budget {budget.epsilon:.4f} "
            f"(delta {budget.delta:g}, {budget.scope.value} level; spent so far {before:.4f})."
        )
    return after
