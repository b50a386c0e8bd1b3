"""The device's closed-form accounting against dp-accounting and SciPy (independent
implementations): the analytic Gaussian (Balle and Wang 2018, Thm. 8) against
``dp_accounting.get_epsilon_gaussian``, the Gaussian RDP route against dp-accounting's RDP
accountant, ``log Phi`` against ``scipy.special.log_ndtr``."""

from __future__ import annotations

import itertools
import math
import sys

import dp_accounting as dpa
import numpy as np
import pytest
from scipy.special import log_ndtr as scipy_log_ndtr

from common.privacy.closed_form import (
    RDP_ORDERS,
    analytic_gaussian_epsilon,
    gaussian_rdp_epsilon,
    log_ndtr,
)

ZS = [0.02, 0.05, 0.1, 0.3, 0.7, 1.0, 1.7, 3.0, 5.47, 10.0, 30.0, 100.0]
DELTAS = [1e-3, 1e-5, 1e-6, 1e-9, 1e-12]


@pytest.mark.parametrize("z", ZS)
def test_analytic_gaussian_matches_dp_accounting(z: float) -> None:
    for delta in DELTAS:
        ours = analytic_gaussian_epsilon(z, delta)
        ref = float(dpa.get_epsilon_gaussian(z, delta))
        assert ours == pytest.approx(ref, rel=1e-8, abs=1e-10), (z, delta)


@pytest.mark.parametrize("z", ZS)
def test_gaussian_rdp_matches_dp_accounting(z: float) -> None:
    for steps in (1, 3, 17):
        acc = dpa.rdp.RdpAccountant()
        acc.compose(dpa.GaussianDpEvent(z), steps)
        for delta in DELTAS:
            ours = gaussian_rdp_epsilon(steps / z**2, delta)
            assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-12, abs=1e-12)


def test_orders_are_dp_accountings_defaults() -> None:
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    assert list(RDP_ORDERS) == [float(a) for a in DEFAULT_RDP_ORDERS]


def test_log_ndtr_in_both_tails() -> None:
    for x in [-1e3, -200.0, -38.0, -20.5, -20.0, -19.9, -5.0, 0.0, 3.0, 8.0]:
        assert log_ndtr(x) == pytest.approx(float(scipy_log_ndtr(x)), rel=1e-9, abs=1e-15)


def test_edges_and_bad_input() -> None:
    assert analytic_gaussian_epsilon(0.0, 1e-6) == math.inf
    assert analytic_gaussian_epsilon(math.inf, 1e-6) == 0.0
    assert analytic_gaussian_epsilon(1e4, 0.5) == 0.0  # delta alone covers eps = 0
    assert gaussian_rdp_epsilon(0.0, 1e-6) == 0.0
    assert gaussian_rdp_epsilon(math.inf, 1e-6) == math.inf
    for bad in (0.0, 1.0, -1e-6, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            analytic_gaussian_epsilon(1.0, bad)
        with pytest.raises(ValueError, match="delta"):
            gaussian_rdp_epsilon(1.0, bad)
    with pytest.raises(ValueError, match="`z`"):
        analytic_gaussian_epsilon(-1.0, 1e-6)


def test_epsilon_decreases_with_noise_and_delta() -> None:
    eps = [analytic_gaussian_epsilon(z, 1e-6) for z in ZS]
    assert all(a > b for a, b in itertools.pairwise(eps))
    eps_d = [analytic_gaussian_epsilon(1.0, d) for d in sorted(DELTAS)]
    assert all(a > b for a, b in itertools.pairwise(eps_d))


def test_a_device_ledger_never_imports_dp_accounting() -> None:
    """A device's accounting of un-sampled Gaussian releases runs in closed form: in a fresh
    interpreter, composing such a ledger leaves dp_accounting and scipy.stats unimported."""
    import subprocess

    code = (
        "import sys\n"
        "from common.privacy import LedgerEntry, Mechanism, Scope, epsilon_of_entries\n"
        "e = [LedgerEntry(Mechanism.GAUSSIAN_SUM, 5.0, 1.0, server_round=r, scope=Scope.USER)"
        " for r in range(5)]\n"
        "d = [LedgerEntry(Mechanism.DISCRETE_GAUSSIAN, 5.0, 1.0, server_round=r, scope=Scope.USER)"
        " for r in range(5)]\n"
        "a = epsilon_of_entries(e, delta=1e-6, scope=Scope.USER)\n"
        "b = epsilon_of_entries(d, delta=1e-6, scope=Scope.USER)\n"
        "print(a, b, [m for m in ('dp_accounting', 'scipy.stats') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[-1] == "[]", out
    z = 5.0 / math.sqrt(5)
    assert float(out[0]) == pytest.approx(float(dpa.get_epsilon_gaussian(z, 1e-6)), rel=1e-8)
    acc = dpa.rdp.RdpAccountant()
    acc.compose(dpa.GaussianDpEvent(5.0), 5)
    assert float(out[1]) == pytest.approx(acc.get_epsilon(1e-6), rel=1e-12)
    assert np.isfinite(float(out[0]))
