"""`fedinterest sweep --clients 40,60`: each epsilon at each population (the batched engine),
one run directory per pair, the population in each run's config and in `sweep.json`, the table
with a clients column; run again, every finished run is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main


@pytest.mark.slow
def test_sweep_over_populations(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--epsilons",
        "4",
        "--clients",
        "40,60",
        "--rounds",
        "1",
        "--engine",
        "batched",
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["clients"] == [40, 60] and doc["complete"]
    assert [(r["clients"], r["run_dir"], r["status"]) for r in doc["runs"]] == [
        (40, "n-40-eps-4", "ok"),
        (60, "n-60-eps-4", "ok"),
    ]
    for n in (40, 60):
        cfg = json.loads((out / f"n-{n}-eps-4" / "config.json").read_text())
        assert cfg["clients"] == n
        assert cfg["run"]["privacy"]["unit"] == "user"
    for r in doc["runs"]:
        assert r["unit"] == "user" and r["epsilon_spent"] == pytest.approx(4.0, abs=0.02)
    assert table.splitlines()[0].split()[0] == "clients"
    assert main(argv) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in again["runs"]] == ["reused", "reused"]
