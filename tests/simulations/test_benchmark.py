"""The benchmark's helpers (fast) and, opt-in with --run-bench, the benchmark itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.benchmark import SECTIONS
from simulations.benchmark.bytes_up import minilm_parameters, taxonomy_256
from simulations.benchmark.timing import TreeCPU


def test_taxonomy_256_has_256_leaves(tmp_path: Path) -> None:
    """The bytes section's label space has exactly 256 distinct leaves."""
    from common.vocabulary import load_taxonomy_tsv

    path = tmp_path / "t.tsv"
    taxonomy_256(path)
    assert len(load_taxonomy_tsv(path).leaves) == 256


def test_minilm_parameter_count() -> None:
    """The FedAvg baseline counts MiniLM-L6's ~22.7M parameters (~91 MB as float32)."""
    n = minilm_parameters()
    assert 22_000_000 < n < 23_500_000


def test_tree_cpu_counts_children() -> None:
    """CPU seconds of a child's own child are counted (a grandchild busy for ~0.8 s: the
    sampling, every 0.05 s, may miss the last tick of it, never half a second)."""
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'x = sum(range(80_000_000))'])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with TreeCPU(proc.pid, interval=0.05) as cpu:
        proc.wait()
        time.sleep(0.1)
    assert cpu.seconds > 0.3
    assert cpu.peak_rss > 0


@pytest.mark.bench
def test_quick_benchmark_sections(tmp_path: Path) -> None:
    """`--quick --only server --only secagg --only bytes` runs and meets the upload target."""
    out = tmp_path / "bench.json"
    args = ["--quick", "--out", str(out)]
    for name in ("server", "secagg", "bytes"):
        assert name in SECTIONS
        args += ["--only", name]
    subprocess.run([sys.executable, "-m", "simulations.benchmark", *args], check=True)
    rows = json.loads(out.read_text())["rows"]
    up = [r for r in rows if r["section"] == "bytes" and r["case"].startswith("secagg")]
    assert up and up[0]["up_bytes_per_device"] < 256 * 1024
