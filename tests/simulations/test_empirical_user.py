"""The empirical audit at user level (canary devices, the popularity attack): on a batched run
of 200 devices at user-level epsilon 2 it flags a `--no-dp` re-run (the lower bound exceeds the
accounted epsilon), and with the run's noise its bound stays at or below the accounted one."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import PrivacyConfig, RunConfig
from simulations.empirical_audit import one_run_lower_bound, run_empirical_audit
from simulations.options import Engine
from simulations.simulate import SimulateOptions, simulate


@pytest.mark.slow
def test_canary_devices_flag_missing_noise(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    simulate(
        SimulateOptions(
            engine=Engine.BATCHED,
            clients=200,
            out=out,
            run=RunConfig(rounds=2, seed=4, privacy=PrivacyConfig(epsilon=2.0)),
            cache=cache,
            evaluate=False,
        )
    )
    nodp = run_empirical_audit(out, no_dp=True, cache=cache)
    assert (nodp.unit, nodp.attack, nodp.canaries, nodp.guesses) == ("user", "popularity", 100, 50)
    assert nodp.correct == 50
    assert nodp.epsilon_max_attainable == pytest.approx(one_run_lower_bound(50, 50, 100, 1e-6))
    dp = run_empirical_audit(out, cache=cache)
    assert dp.epsilon_accounted == pytest.approx(2.0, abs=0.01)
    # missing noise is caught: above the accounted epsilon of the run with noise
    assert nodp.epsilon_lower_bound > dp.epsilon_accounted
    assert dp.epsilon_lower_bound <= dp.epsilon_accounted
