"""Privacy math against dp-accounting called directly; properties with hypothesis."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BudgetExceededError, ConfigError
from common.privacy import (
    LedgerEntry,
    Mechanism,
    PrivacyBudget,
    Scope,
    check_budget,
    clip_rows,
    clip_total,
    epsilon_of_entries,
    gaussian_epsilon,
    noise_multiplier_for_rounds,
    secagg_share_std,
)

DELTA = 1e-5


def _direct(events: list[dpa.DpEvent], accountant: str = "pld") -> float:
    acc = (
        pld_privacy_accountant.PLDAccountant()
        if accountant == "pld"
        else rdp_privacy_accountant.RdpAccountant()
    )
    for e in events:
        acc.compose(e)
    return float(acc.get_epsilon(DELTA))


def test_ledger_epsilon_equals_dp_accounting_directly() -> None:
    """A hand-built sequence (releases + DP-SGD) gives dp-accounting's own epsilon."""
    entries = [
        LedgerEntry(Mechanism.GAUSSIAN_SUM, 4.0, 1.0, server_round=1),
        LedgerEntry(Mechanism.GAUSSIAN_SUM, 6.0, 1.0, server_round=2),
        LedgerEntry(Mechanism.DPSGD, 1.1, 1.0, sample_rate=0.05, steps=40, server_round=2),
        LedgerEntry(Mechanism.GAUSSIAN_HISTOGRAM, 3.0, 1.0, server_round=3),
    ]
    direct_events = [
        dpa.GaussianDpEvent(4.0),
        dpa.GaussianDpEvent(6.0),
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)), 40),
        dpa.GaussianDpEvent(3.0),
    ]
    for acc in ("pld", "rdp"):
        want = _direct(direct_events, acc)
        assert epsilon_of_entries(
            entries, delta=DELTA, accountant=acc, merge_gaussians=False
        ) == pytest.approx(want, rel=1e-9)
        # merging Gaussians into one equivalent Gaussian is exact math; PLD discretisation differs slightly
        assert epsilon_of_entries(entries, delta=DELTA, accountant=acc) == pytest.approx(
            want, rel=0.02
        )


def test_scopes_are_separate_and_unknown_kinds_fail() -> None:
    """Event- and user-level records compose separately; an unknown kind is an error."""
    entries = [
        LedgerEntry(Mechanism.GAUSSIAN_SUM, 2.0, 1.0),
        LedgerEntry(Mechanism.SERVER_GAUSSIAN, 1.0, 1.0, scope=Scope.USER),
    ]
    # a lone Gaussian gets the exact analytic epsilon; PLD matches it to ~1e-9 relative
    assert epsilon_of_entries(entries, delta=DELTA) == pytest.approx(
        _direct([dpa.GaussianDpEvent(2.0)]), rel=1e-7
    )
    assert epsilon_of_entries(entries, delta=DELTA, scope=Scope.USER) == pytest.approx(
        _direct([dpa.GaussianDpEvent(1.0)]), rel=1e-7
    )
    with pytest.raises(ConfigError, match="mechanism"):
        LedgerEntry("laplace_magic", 1.0, 1.0)  # type: ignore[arg-type]
    assert math.isinf(
        epsilon_of_entries([LedgerEntry(Mechanism.NON_PRIVATE, 0.0, 1.0)], delta=DELTA)
    )
    assert epsilon_of_entries([], delta=DELTA) == 0.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.8, 20.0), min_size=1, max_size=8), st.floats(0.8, 20.0))
def test_epsilon_monotone_in_rounds(zs: list[float], extra: float) -> None:
    """Adding a round never lowers epsilon."""
    entries = [
        LedgerEntry(Mechanism.GAUSSIAN_SUM, z, 1.0, server_round=i) for i, z in enumerate(zs)
    ]
    before = epsilon_of_entries(entries, delta=DELTA)
    after = epsilon_of_entries(
        [*entries, LedgerEntry(Mechanism.GAUSSIAN_SUM, extra, 1.0)], delta=DELTA
    )
    assert after >= before - 1e-9


@pytest.mark.parametrize(("epsilon", "rounds"), [(0.5, 5), (2.0, 5), (2.0, 1), (8.0, 10)])
def test_calibration_meets_target(epsilon: float, rounds: int) -> None:
    """`rounds` releases at the calibrated multiplier compose to epsilon, within 1%."""
    z = noise_multiplier_for_rounds(epsilon=epsilon, delta=DELTA, rounds=rounds)
    got = _direct([dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds)])
    assert got <= epsilon * 1.01 and got >= epsilon * 0.97


def test_secagg_share_sums_to_full_noise() -> None:
    """min_cohort shares of variance s^2/n add up to the full s^2."""
    s = secagg_share_std(noise_multiplier=4.0, sensitivity=1.5, min_cohort=16)
    assert s == pytest.approx(4.0 * 1.5 / 4)
    assert 16 * s**2 == pytest.approx((4.0 * 1.5) ** 2)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.integers(1, 16), st.floats(0.01, 10.0), st.floats(1e-3, 1e3))
def test_clipped_norms_within_bound(n: int, d: int, c: float, scale: float) -> None:
    """Every clipped row has norm <= C, and clip_total bounds the whole array."""
    x = np.random.default_rng(n * d).normal(size=(n, d)) * scale
    assert (np.linalg.norm(clip_rows(x, c), axis=1) <= c).all()
    assert float(np.linalg.norm(clip_total(x, c))) <= c


def test_budget_check_fails_closed() -> None:
    """A release that would pass the budget raises and names the spend."""
    budget = PrivacyBudget(1.0, DELTA)
    z = noise_multiplier_for_rounds(epsilon=1.0, delta=DELTA, rounds=2)
    spent = [LedgerEntry(Mechanism.GAUSSIAN_SUM, z, 1.0, server_round=1)]
    assert (
        check_budget(spent, [LedgerEntry(Mechanism.GAUSSIAN_SUM, z, 1.0, server_round=2)], budget)
        <= 1.0
    )
    with pytest.raises(BudgetExceededError, match=r"budget 1\.0000"):
        check_budget(spent * 2, [LedgerEntry(Mechanism.GAUSSIAN_SUM, z, 1.0)], budget)
    with pytest.raises(ConfigError, match="epsilon"):
        PrivacyBudget(0.0, DELTA)


@pytest.mark.parametrize("z", [0.2, 0.7, 1.5, 4.0, 12.0])
def test_exact_gaussian_epsilon_matches_pld(z: float) -> None:
    """The analytic single-Gaussian epsilon agrees with dp-accounting's PLD accountant and is
    never above it (PLD is a pessimistic discretisation of the same curve)."""
    want = _direct([dpa.GaussianDpEvent(z)], "pld")
    got = gaussian_epsilon(z, DELTA)
    assert got == pytest.approx(want, rel=1e-6) and got <= want + 1e-9


def test_tiny_noise_multiplier_is_fast_and_large() -> None:
    """User-level sums have z far below 1: the exact path answers at once, no overflow."""
    import time

    t = time.perf_counter()
    eps = gaussian_epsilon(0.01, DELTA)
    assert time.perf_counter() - t < 1.0 and 1000 < eps < math.inf
    # far smaller (a --no-dp run's analytics once recorded 1e-12): finite, no overflow
    for z in (1e-12, 1e-14):
        assert 1e20 < gaussian_epsilon(z, DELTA) < math.inf


def test_repeated_dpsgd_rounds_merge_exactly_and_cheaply() -> None:
    """Ten identical DP-SGD rounds compose like one event of ten times the steps."""
    import time

    rounds = [
        LedgerEntry(Mechanism.DPSGD, 4.0, 3.0, sample_rate=0.14, steps=10, server_round=r)
        for r in range(1, 11)
    ]
    rounds.append(LedgerEntry(Mechanism.GAUSSIAN_SUM, 4.5, 1.0, server_round=1))
    t0 = time.perf_counter()
    merged = epsilon_of_entries(rounds, delta=DELTA)
    fast = time.perf_counter() - t0
    one_by_one = epsilon_of_entries(rounds, delta=DELTA, merge_gaussians=False)
    assert merged == pytest.approx(one_by_one, rel=0.02)
    for acc in ("pld", "rdp"):
        want = _direct(
            [
                dpa.SelfComposedDpEvent(
                    dpa.PoissonSampledDpEvent(0.14, dpa.GaussianDpEvent(4.0)), 100
                ),
                dpa.GaussianDpEvent(4.5),
            ],
            acc,
        )
        assert epsilon_of_entries(rounds, delta=DELTA, accountant=acc) == pytest.approx(
            want, rel=0.02
        )
    assert fast < 5.0
