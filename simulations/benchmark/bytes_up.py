"""Section ``bytes``: upload per device per round at 256 leaves x 128 dims under SecAgg+ and in
local mode (measured on the wire in a real simulation), against FedAvg of the full MiniLM (its
parameter count x 4 bytes)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from simulations.benchmark.simulation_process import run_simulation

__all__ = ["minilm_parameters", "run", "taxonomy_256"]


def taxonomy_256(path: Path) -> None:
    """A label space with 256 leaves: the default vocabulary plus numbered variants."""
    from common.vocabulary import DEFAULT_VOCABULARY

    pairs = [(root, leaf) for root, leaves in DEFAULT_VOCABULARY.items() for leaf in leaves]
    i = 0
    while len(pairs) < 256:
        root, leaf = pairs[i % len(pairs)]
        pairs.append((root, f"{leaf} (variant {i // len(DEFAULT_VOCABULARY) + 2})"))
        i += 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("category\n")
        for root, leaf in pairs[:256]:
            f.write(f"{root}>{leaf}\n")


def minilm_parameters() -> int:
    """Parameter count of the bundled MiniLM, read from its safetensors header."""
    import struct

    from client.encoder import default_model_dir

    total = 0
    for f in sorted(default_model_dir().glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total


def run(quick: bool) -> list[dict[str, Any]]:
    """Upload per device per round at 256 leaves x 128 dims, measured on the wire (Flower's
    serialised message content) in a real simulation, SecAgg+ and local mode."""
    params = minilm_parameters()
    fedavg = params * 4
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tax = Path(d) / "tax256.tsv"
        taxonomy_256(tax)
        for mode in ("secagg",) if quick else ("secagg", "local"):
            res = run_simulation(
                {
                    "clients": 24,  # more than the shares per device
                    "rounds": 1,
                    "mode": mode,
                    "popularity": False,
                    "evaluate": False,
                    "taxonomy": str(tax),
                    "out": str(Path(d) / mode),
                }
            )
            r = res["rounds"][0]
            up = r["bytes_up"] / r["sampled"]
            payload = 257 * 128 * 4
            rows.append(
                {
                    "section": "bytes",
                    "case": f"{mode}: 24 devices, 256 leaves x 128 dims, one tree round",
                    "runs": 1,
                    "load": res["load_before"],
                    "up_bytes_per_device": up,
                    "down_bytes_per_device": r["bytes_down"] / r["sampled"],
                    "payload_float32_bytes": payload,
                    "overhead_bytes": up - payload,
                    "fedavg_minilm_bytes": fedavg,
                    "fedavg_over_ours": fedavg / up,
                }
            )
    return rows
