"""Process bookkeeping for the loopback deployment test: start by pid, watch every
descendant (Flower spawns flower-superexec, flwr-serverapp and flwr-clientapp), sample their
memory from /proc, and stop all of them by pid, verifying each pid by its start time so a
recycled pid is never signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcessBook", "Started"]


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live pid, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    if rest[0] == "Z":  # a zombie has exited
        return None
    return int(rest[1]), int(rest[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _args(p: subprocess.Popen[bytes]) -> str:
    a = p.args
    return " ".join(map(str, a)) if isinstance(a, (list, tuple)) else str(a)


@dataclass
class Started:
    """A process the test started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    start_ticks: int

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class _Seen:
    name: str  # the root it descends from
    start_ticks: int
    cmd: str
    peak_hwm_kb: int = 0


@dataclass
class ProcessBook:
    """Every process started here and every descendant seen while it ran."""

    started: list[Started] = field(default_factory=list)
    seen: dict[int, _Seen] = field(default_factory=dict)
    # per root name: the largest sum of RSS over its process tree at one sample
    tree_rss_peak_kb: dict[str, int] = field(default_factory=dict)
    # per root name: the root process's own peak RSS (VmHWM)
    root_peak_kb: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(
        self, name: str, cmd: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path
    ) -> Started:
        """Starts ``cmd`` in its own session, output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            p = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        st = _stat(p.pid)
        s = Started(name, p, log, st[1] if st else -1)
        with self._lock:
            self.started.append(s)
        return s

    # -- watching -------------------------------------------------------------------------------

    def watch(self, interval: float = 0.2) -> None:
        """Samples the process trees in a background thread until :meth:`stop_all`."""
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(interval)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st is not None:
                    children.setdefault(st[0], []).append(int(entry))
        with self._lock:
            roots = list(self.started)
        for root in roots:
            total = 0
            todo = [root.pid]
            while todo:
                pid = todo.pop()
                todo.extend(children.get(pid, []))
                st = _stat(pid)
                if st is None:
                    continue
                total += _status_kb(pid, "VmRSS")
                if pid == root.pid:
                    with self._lock:
                        self.root_peak_kb[root.name] = max(
                            self.root_peak_kb.get(root.name, 0), _status_kb(pid, "VmHWM")
                        )
                    continue
                with self._lock:
                    seen = self.seen.get(pid)
                    if seen is None or seen.start_ticks != st[1]:
                        seen = _Seen(root.name, st[1], _cmdline(pid))
                        self.seen[pid] = seen
                    seen.peak_hwm_kb = max(seen.peak_hwm_kb, _status_kb(pid, "VmHWM"))
            with self._lock:
                self.tree_rss_peak_kb[root.name] = max(
                    self.tree_rss_peak_kb.get(root.name, 0), total
                )

    def peak_kb(self, cmd_part: str, root_prefix: str = "") -> int:
        """Largest peak RSS (VmHWM) of a watched descendant whose command contains
        ``cmd_part``, under roots named with ``root_prefix``."""
        with self._lock:
            return max(
                (
                    s.peak_hwm_kb
                    for s in self.seen.values()
                    if cmd_part in s.cmd and s.name.startswith(root_prefix)
                ),
                default=0,
            )

    def count(self, cmd_part: str) -> int:
        with self._lock:
            return sum(1 for s in self.seen.values() if cmd_part in s.cmd)

    # -- stopping -------------------------------------------------------------------------------

    def _alive(self, pid: int, ticks: int) -> bool:
        st = _stat(pid)
        return st is not None and st[1] == ticks

    def _signal(self, pid: int, ticks: int, sig: int) -> None:
        if self._alive(pid, ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def descendants(self, root: Started) -> list[tuple[int, int]]:
        """Live (pid, start ticks) under ``root`` right now (plus those seen before)."""
        self.sample()
        with self._lock:
            return [
                (pid, s.start_ticks)
                for pid, s in self.seen.items()
                if s.name == root.name and self._alive(pid, s.start_ticks)
            ]

    def stop(
        self,
        root: Started,
        *,
        grace: float = 15.0,
        kill_children_first: bool = False,
        crash: bool = False,
    ) -> None:
        """SIGTERM ``root`` (SIGKILL after ``grace``), then its descendants the same way;
        ``crash``: SIGKILL the whole tree at once (no graceful shutdown anywhere)."""
        kids = self.descendants(root)
        if kill_children_first or crash:
            for pid, ticks in kids:
                self._signal(pid, ticks, signal.SIGKILL)
        self._signal(root.pid, root.start_ticks, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            root.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(root.pid, root.start_ticks, signal.SIGKILL)
            root.popen.wait(timeout=10)
        for pid, ticks in kids:
            self._signal(pid, ticks, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(self._alive(p, t) for p, t in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, ticks in kids:
            self._signal(pid, ticks, signal.SIGKILL)

    def stop_all(self) -> list[str]:
        """Stops every started process and its descendants (newest first); returns the ones
        still alive afterwards (``pid cmd``), which should be none."""
        self.sample()
        for root in reversed(self.started):
            if root.popen.poll() is None or self.descendants(root):
                self.stop(root)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        time.sleep(0.5)
        left = []
        with self._lock:
            everything = [(s.pid, s.start_ticks, _args(s.popen)) for s in self.started]
            everything += [(pid, s.start_ticks, s.cmd) for pid, s in self.seen.items()]
        for pid, ticks, cmd in everything:
            if self._alive(pid, ticks):
                left.append(f"{pid} {cmd[:120]}")
        return left
