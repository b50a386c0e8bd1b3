"""Section ``scale``: how many devices a simulation reaches on this machine.

1. **Per device and round, both engines in the same run**: ``simulate --engine devices`` (one
   Flower node per device, real SecAgg+) and ``--engine batched`` (one node per CPU hosting a
   shard) on the same population, each in a fresh process; the cost of a device-round is the
   federated phase's wall time (and the whole process tree's CPU time) divided by devices x
   rounds.
2. **The batched engine at 1,000, 10,000 and 100,000 devices x 5 rounds** (``--quick``: 1,000
   and 10,000): wall time of the whole run, of each phase, and the peak resident memory of the
   process tree (driver, Ray, actors; pages shared between processes counted in each, so an
   upper bound).

Texts are cached beforehand (each size's texts are embedded before its timed run), as the
targets assume; the encode column shows the rest.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.simulation_process import run_simulation
from simulations.benchmark.timing import load_average

__all__ = ["run", "run_quality", "run_user_level"]


def _warm_cache(clients: int, seed: int) -> float:
    """Embeds every text a run of ``clients`` synthetic users needs; returns the seconds."""
    from client.encoder import EncoderConfig, MiniLMEncoder, encode_cached
    from client.store import EmbeddingCache
    from common.vocabulary import default_vocabulary
    from simulations.datasets.bundle import load_population
    from simulations.options import default_cache_path

    t0 = time.perf_counter()
    table, bundle = load_population("synthetic", clients=clients, seed=seed)
    texts = sorted(
        set(table.texts) | set(bundle.catalogue) | {lab.text for lab in default_vocabulary().labels}
    )
    enc = MiniLMEncoder(EncoderConfig())
    cache = EmbeddingCache.open(default_cache_path())
    encode_cached(enc, cache, texts)
    cache.close()
    return time.perf_counter() - t0


def _row(case: str, clients: int, rounds: int, res: dict[str, Any]) -> dict[str, Any]:
    t = res["timing"]
    device_rounds = clients * rounds
    ratio = res.get("ratio") or {}
    rounds_s = [r["seconds"] for r in res["rounds"]]
    return {
        "section": "scale",
        "case": case,
        "load": res["load_before"],
        "wall_s": res["process_wall_s"],
        "federated_s": t["federated_seconds"],
        "ms_per_device_round": 1000 * t["federated_seconds"] / device_rounds,
        # the marginal cost: a round's own seconds (no process or Ray start-up) per device
        "round_ms_per_device": 1000 * statistics.median(rounds_s) / clients,
        "cpu_ms_per_device_round": 1000 * res["cpu_s"] / device_rounds,
        "prepare_s": t.get("prepare_seconds", float("nan")),
        "evaluate_s": t.get("evaluate_seconds", float("nan")),
        "encode_s": t["encode_seconds"],
        "peak_rss_mb": res["peak_rss_mb"],
        "ratio_nmi_l1": ratio.get("nmi_level1") or float("nan"),
        "ratio_item_nmi_l2": ratio.get("item_nmi_level2") or float("nan"),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Both engines side by side, then the batched engine up to 100,000 devices."""
    rows: list[dict[str, Any]] = []
    side = (50, 2) if quick else (200, 3)
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    with tempfile.TemporaryDirectory() as d:
        clients, rounds = side
        _warm_cache(clients, 0)
        per: dict[str, float] = {}
        for engine in ("devices", "batched"):
            res = run_simulation(
                {
                    "clients": clients,
                    "rounds": rounds,
                    "engine": engine,
                    "out": str(Path(d) / f"side-{engine}"),
                }
            )
            row = _row(f"{engine}: {clients} devices x {rounds} rounds", clients, rounds, res)
            per[engine] = row["round_ms_per_device"]
            per[engine + "-total"] = row["ms_per_device_round"]
            rows.append(row)
        for clients in sizes:
            print(f"  scale: warming the cache for {clients} devices", file=sys.stderr, flush=True)
            _warm_cache(clients, 0)
            print(f"  scale: batched, {clients} devices x 5 rounds", file=sys.stderr, flush=True)
            res = run_simulation(
                {
                    "clients": clients,
                    "rounds": 5,
                    "engine": "batched",
                    "out": str(Path(d) / f"batched-{clients}"),
                }
            )
            rows.append(_row(f"batched: {clients} devices x 5 rounds", clients, 5, res))
            per[f"batched-{clients}"] = rows[-1]["round_ms_per_device"]
    rows.append(
        {
            "section": "scale",
            "case": f"devices / batched per device-round, same {side[0]} devices, round time",
            "load": load_average(),
            "speedup": per["devices"] / per["batched"],
        }
    )
    rows.append(
        {
            "section": "scale",
            "case": f"devices / batched per device-round, same {side[0]} devices, with start-up",
            "load": load_average(),
            "speedup": per["devices-total"] / per["batched-total"],
        }
    )
    rows.append(
        {
            "section": "scale",
            "case": f"devices ({side[0]}) / batched ({sizes[-1]}) per device-round, round time",
            "load": load_average(),
            "speedup": per["devices"] / per[f"batched-{sizes[-1]}"],
        }
    )
    return rows


_QUALITY_KEYS = ("nmi_level1", "nmi_level2", "item_nmi_level2", "dendrogram_purity")


def _quality_row(section: str, case: str, res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A row of a quality section: the run's ratios to centralized."""
    ratio = res.get("ratio") or {}
    return {
        "section": section,
        "case": case,
        "load": res["load_before"],
        "wall_s": res["process_wall_s"],
        **extra,
        **{f"ratio_{k}": ratio.get(k) or float("nan") for k in _QUALITY_KEYS},
    }


def run_quality(quick: bool) -> list[dict[str, Any]]:
    """Section ``engines``: ratios to centralized of both engines where they overlap (100 and,
    full run, 1,000 devices; several seeds each, so the devices engine's run-to-run spread is
    measured beside the batched engine's figures)."""
    plan = ((100, (0, 1)),) if quick else ((100, (0, 1, 2)), (1000, (0, 1)))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for clients, seeds in plan:
            _warm_cache(clients, 0)
            for engine in ("devices", "batched"):
                for seed in seeds:
                    res = run_simulation(
                        {
                            "clients": clients,
                            "rounds": 5,
                            "engine": engine,
                            "seed": seed,
                            "out": str(Path(d) / f"q-{engine}-{clients}-{seed}"),
                        }
                    )
                    rows.append(
                        _quality_row("engines", f"{engine}: {clients} devices, seed {seed}", res)
                    )
    return rows


def run_user_level(quick: bool) -> list[dict[str, Any]]:
    """Section ``user_level``: the tree's ratios to centralized against the user-level
    epsilon (delta 1e-6, secagg, 5 rounds, the batched engine) at 1,000, 10,000 and 100,000
    devices, over seeds (``--quick``: 1,000 and 10,000 devices, one seed)."""
    if quick:
        plan: tuple[tuple[int, tuple[int, ...]], ...] = ((1_000, (0,)), (10_000, (0,)))
    else:
        plan = ((1_000, (0, 1, 2)), (10_000, (0, 1, 2)), (100_000, (0,)))
    epsilons = (2.0, 8.0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for clients, seeds in plan:
            for seed in seeds:
                _warm_cache(clients, seed)
                for eps in epsilons:
                    print(
                        f"  user_level: {clients} devices, seed {seed}, epsilon {eps:g}",
                        file=sys.stderr,
                        flush=True,
                    )
                    res = run_simulation(
                        {
                            "clients": clients,
                            "rounds": 5,
                            "engine": "batched",
                            "seed": seed,
                            "epsilon": eps,
                            "unit": "user",
                            "delta": 1e-6,
                            "out": str(Path(d) / f"u-{clients}-{seed}-{eps:g}"),
                        }
                    )
                    rows.append(
                        _quality_row(
                            "user_level",
                            f"{clients} devices, seed {seed}, user-level epsilon {eps:g}",
                            res,
                            epsilon_user_level=res.get("epsilon_user_level_total"),
                        )
                    )
    return rows
