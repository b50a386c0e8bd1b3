"""Section ``encoder``: texts/s of the MiniLM encoder for short and long texts, cold (model
calls) vs warm (embedding-cache hits); fp32 vs dynamic int8 quantisation (a faster path,
with its cosine to fp32; not the default: it is below 0.99)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmark.fixtures import texts
from simulations.benchmark.timing import load_average, median_time

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """Texts/s of the encoder, cold (model calls) and warm (cache hits), and int8 vs fp32."""
    from client.encoder import EncoderConfig, MiniLMEncoder, encode_cached
    from client.store import EmbeddingCache

    threads = min(2, os.cpu_count() or 1)
    enc = MiniLMEncoder(EncoderConfig(num_threads=threads))
    enc.encode(["warm up the model"])
    runs = 3
    rows = []
    load = load_average()
    for kind, n in (("short", 256 if quick else 1024), ("long", 32 if quick else 128)):
        base_texts = texts(n, kind == "long", seed=11)
        avg_chars = sum(map(len, base_texts)) / len(base_texts)
        cold = []
        warm = []
        for r in range(runs):
            with tempfile.TemporaryDirectory() as d:
                cache = EmbeddingCache.open(Path(d) / "c.db")
                batch = [f"{t} [{r}]" for t in base_texts]  # new texts each run: a real cold cache
                t0 = time.perf_counter()
                encode_cached(enc, cache, batch)
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                encode_cached(enc, cache, batch)
                warm.append(time.perf_counter() - t0)
                cache.close()
        cold_s, warm_s = statistics.median(cold), statistics.median(warm)
        rows.append(
            {
                "section": "encoder",
                "case": f"{kind} texts (~{avg_chars:.0f} chars), fp32, {threads} threads",
                "n": n,
                "runs": runs,
                "load": load,
                "cold_texts_per_s": n / cold_s,
                "warm_texts_per_s": n / warm_s,
                "warm_over_cold": cold_s / warm_s,
            }
        )
    rows.append(_encoder_int8(enc, quick, threads, runs))
    return rows


def _encoder_int8(enc: Any, quick: bool, threads: int, runs: int) -> dict[str, Any]:
    """Dynamic int8 quantisation of MiniLM's Linear layers (torch) against fp32 model calls on
    the same texts; its cosine to fp32 decides whether it could be a default (>= 0.99)."""
    import numpy as np
    import torch

    from client.encoder import EncoderConfig, MiniLMEncoder

    load = load_average()
    sample = texts(64 if quick else 512, False, seed=12)
    q = MiniLMEncoder(EncoderConfig(num_threads=threads))
    q.encode(["warm up"])
    q._model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        q._model, {torch.nn.Linear}, dtype=torch.qint8
    )
    q.encode(["warm up"])
    t_fp = median_time(lambda: enc.encode(sample), runs)
    t_q = median_time(lambda: q.encode(sample), runs)
    cos = (np.asarray(enc.encode(sample)) * np.asarray(q.encode(sample))).sum(axis=1)
    return {
        "section": "encoder",
        "case": f"short texts, dynamic int8 (torch) vs fp32 model calls, {threads} threads",
        "n": len(sample),
        "runs": runs,
        "load": load,
        "fp32_texts_per_s": len(sample) / t_fp,
        "int8_texts_per_s": len(sample) / t_q,
        "speedup_x": t_fp / t_q,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "default": bool(cos.min() >= 0.99),
    }
