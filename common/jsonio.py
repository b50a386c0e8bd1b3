"""JSON-safe values and atomic file writes (numpy and the standard library only).

A reader never sees a half-written file: every write goes to a temporary file beside the
target, is flushed to disk, and replaces the target in one ``os.replace`` (atomic on POSIX
file systems). Appending rewrites the file the same way (the files appended to, one line per
round, stay small).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_append_text", "atomic_write_bytes", "atomic_write_text", "json_safe"]


def json_safe(o: Any) -> Any:
    """numpy scalars to Python, non-finite floats to strings ("inf"), recursively."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Replaces ``path`` with ``data`` in one step; returns the bytes written. The temporary
    file (hidden, this process's own) is removed on any failure, leaving the target as it
    was."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


def atomic_write_text(path: str | Path, text: str) -> int:
    """Replaces ``path`` with ``text`` (UTF-8) in one step; returns the bytes written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_append_text(path: str | Path, text: str) -> None:
    """Appends ``text`` (UTF-8) to ``path`` by replacing the file in one step: a crash leaves
    the old content or the new, never a partial line."""
    p = Path(path)
    old = p.read_bytes() if p.exists() else b""
    atomic_write_bytes(p, old + text.encode("utf-8"))
