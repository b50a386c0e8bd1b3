"""One simulation in a fresh process, with the CPU seconds of its whole process tree (Ray's
workers included): :func:`run_simulation` starts

    python -m simulations.benchmark.simulation_process SPEC_JSON

which runs :func:`simulate_child` and prints its result as one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.timing import TreeCPU, load_average

__all__ = ["main", "run_simulation", "simulate_child"]


def simulate_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one simulation (in the fresh process :func:`run_simulation` starts)."""
    from client.encoder_registry import DEFAULT_ENCODER
    from common.config import AnalyticsConfig, PrivacyConfig, RunConfig
    from simulations.options import DEFAULT_EVAL_USERS, Engine
    from simulations.simulate import SimulateOptions, simulate

    run = RunConfig(
        rounds=int(spec["rounds"]),
        seed=int(spec.get("seed", 0)),
        privacy=PrivacyConfig(
            mode=spec.get("mode", "secagg"),
            **{k: spec[k] for k in ("epsilon", "unit", "delta", "no_dp") if k in spec},
        ),
        analytics=AnalyticsConfig(popularity=bool(spec.get("popularity", True))),
    )
    taxonomy = Path(spec["taxonomy"]) if spec.get("taxonomy") else None
    m = simulate(
        SimulateOptions(
            dataset=str(spec.get("dataset", "synthetic")),
            encoder=str(spec.get("encoder", DEFAULT_ENCODER)),
            clients=int(spec["clients"]),
            out=Path(spec["out"]),
            run=run,
            overwrite=True,
            taxonomy=taxonomy,
            evaluate=bool(spec.get("evaluate", True)),
            engine=Engine(spec.get("engine", Engine.DEVICES.value)),
            workers=spec.get("workers"),
            eval_users=int(spec.get("eval_users", DEFAULT_EVAL_USERS)),
            cache=Path(spec["cache"]) if spec.get("cache") else None,
        )
    )
    with open(Path(spec["out"]) / "rounds.jsonl", encoding="utf-8") as f:
        rounds = [json.loads(line) for line in f]
    keep = (
        "wall_seconds",
        "timing",
        "rounds_completed",
        "clients",
        "events",
        "ratio",
        "evaluation",
        "epsilon_user_level_total",
        "epsilon_event_level_total",
        "federated",
        "centralized",
    )
    out = {k: m[k] for k in keep if k in m}
    out["rounds"] = [
        {k: r[k] for k in ("server_round", "seconds", "sampled", "bytes_up", "bytes_down")}
        for r in rounds
    ]
    if "federated" in m:
        out["nmi_level1"] = m["federated"].get("nmi_level1")
        out["ratio_nmi_level1"] = (m.get("ratio") or {}).get("nmi_level1")
    return out


def run_simulation(spec: dict[str, Any]) -> dict[str, Any]:
    """One simulation in a fresh process; adds its wall and whole-tree CPU seconds."""
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.benchmark.simulation_process", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with TreeCPU(proc.pid) as cpu:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"simulation {spec} failed:\n{err[-3000:]}")
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    res["cpu_s"] = cpu.seconds
    res["peak_rss_mb"] = cpu.peak_rss / 2**20
    res["load_before"] = load
    res["load_after"] = load_average()
    return res


def main(argv: list[str]) -> int:
    print(json.dumps(simulate_child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
