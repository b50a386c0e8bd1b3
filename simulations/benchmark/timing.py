"""Measuring: medians of repeated runs, the load average, CPU seconds of a process tree, peak
memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

__all__ = ["TreeCPU", "load_average", "median_runs", "median_time", "vmhwm_mb"]


def median_time(fn: Callable[[], object], runs: int) -> float:
    """Median wall seconds of ``runs`` calls of ``fn``."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_average() -> float:
    """The 1-minute load average (every row records it: contention often dominates)."""
    return round(os.getloadavg()[0], 2)


def median_runs(fn: Callable[[], float], runs: int) -> float:
    """Median of ``runs`` calls of ``fn``, which returns its own measurement."""
    return statistics.median(fn() for _ in range(runs))


class TreeCPU:
    """CPU seconds (user + system) used by a process and all its descendants (Ray's raylet,
    workers and actors included), sampled from ``/proc`` twice a second. Linux only."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self._seen: dict[int, float] = {}
        #: the largest sum of resident set sizes over the tree seen in one sample, in bytes
        #: (pages shared between processes are counted in each: an upper bound)
        self.peak_rss = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        cpu: dict[int, float] = {}
        rss: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)] = int(fields[1])
            cpu[int(d)] = (int(fields[11]) + int(fields[12])) / self._tick
            rss[int(d)] = int(fields[21]) * self._page
        tree = {self.pid}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parent.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        for pid in tree:
            if pid in cpu:
                self._seen[pid] = max(self._seen.get(pid, 0.0), cpu[pid])
        self.peak_rss = max(self.peak_rss, sum(rss.get(pid, 0) for pid in tree))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())


def vmhwm_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")
