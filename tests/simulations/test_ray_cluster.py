"""Past one machine: the batched engine on a Ray cluster of two nodes (both on 127.0.0.1).

The test starts a Ray head and a second Ray node with ``ray start`` (one CPU each, their own
temp dirs), runs ``RAY_ADDRESS=... fedinterest simulate --engine batched --workers 2`` across
them, checks from the run's ``metrics.json`` that shard work ran on both Ray nodes (each
shard reply names the Ray node that computed it), then stops the cluster's processes (only
this cluster's: found by its temp dirs and port, never a machine-wide ``ray stop``) and
checks that none is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
CLI = str(Path(sys.executable).with_name("fedinterest"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(pid)] = (ppid, cmd)
    return out


def cluster_processes(marks: tuple[str, ...]) -> set[int]:
    """The processes whose command line names one of ``marks`` (the cluster's temp dirs and
    port), and their descendants; never this process."""
    ps = _processes()
    keep = {p for p, (_, cmd) in ps.items() if p != os.getpid() and any(m in cmd for m in marks)}
    grew = True
    while grew:
        grew = False
        for p, (ppid, _) in ps.items():
            if ppid in keep and p not in keep:
                keep.add(p)
                grew = True
    return keep


def stop_cluster(marks: tuple[str, ...], grace: float = 10.0) -> set[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns what is still alive."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in cluster_processes(marks):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while cluster_processes(marks) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not cluster_processes(marks):
            break
    return cluster_processes(marks)


@pytest.fixture()
def ray_cluster() -> Iterator[str]:
    if not Path(RAY).exists():
        pytest.fail(f"the ray CLI is not installed next to {sys.executable}")
    port = _free_port()
    # short paths: Ray's unix sockets live under the temp dir (108-byte limit)
    head_dir = tempfile.mkdtemp(prefix="fi-rh-", dir="/tmp")
    node_dir = tempfile.mkdtemp(prefix="fi-rn-", dir="/tmp")
    marks = (head_dir, node_dir, f":{port} ", f"--port={port}")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--temp-dir", head_dir, "--include-dashboard", "false", *common],
            check=True, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [RAY, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
             "--temp-dir", node_dir, *common],
            check=True, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        left = stop_cluster(marks)
        assert not left, f"Ray processes left running: {sorted(left)}"


def test_batched_run_spans_two_ray_nodes(ray_cluster: str, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        CLI, "simulate", "--engine", "batched", "--workers", "2", "--clients", "40",
        "--rounds", "2", "--events-per-user", "20", "--out", str(out), "--quiet",
        "--cache", str(cache),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    workers = metrics["engine"]["workers"]
    assert [w["shard"] for w in workers] == [0, 1]
    assert sum(w["users"] for w in workers) == 40
    assert all(w["requests"] >= 2 for w in workers)
    nodes = {n for w in workers for n in w["ray_nodes"]}
    assert len(nodes) == 2, f"work ran on Ray nodes {nodes}"
    assert metrics["rounds_completed"] == 2
