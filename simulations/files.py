"""Writing the files ``simulations/`` owns (reports, ``sweep.json``, ``audit.json``) so that a
reader never sees half of one: the bytes go to a temporary file beside the target, which is
renamed over it (atomic on POSIX file systems); on any failure the temporary file is removed
and the target is left as it was."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Replaces ``path`` with ``data`` in one step; returns the bytes written."""
    p = Path(path)
    # a hidden name of this process's own (the umask applies, as to the file itself)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(p)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


def atomic_write_text(path: str | Path, text: str) -> int:
    """Replaces ``path`` with ``text`` (UTF-8) in one step; returns the bytes written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, doc: Mapping[str, Any], **dumps: Any) -> int:
    """Replaces ``path`` with ``doc`` as JSON (``json_safe`` first: numpy scalars to Python,
    non-finite floats to strings) and a final newline; ``dumps``: :func:`json.dumps`'s
    options (``indent``, ``sort_keys``, ``default``)."""
    from server.strategy import json_safe

    return atomic_write_text(path, json.dumps(json_safe(dict(doc)), **dumps) + "\n")
