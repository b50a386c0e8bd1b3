"""Writing the files ``simulations/`` owns (reports, ``sweep.json``, ``audit.json``) so that a
reader never sees half of one, through :mod:`common.jsonio`'s one atomic write."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.jsonio import atomic_write_bytes, atomic_write_text, json_safe

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_json(path: str | Path, doc: Mapping[str, Any], **dumps: Any) -> int:
    """Replaces ``path`` with ``doc`` as JSON (``json_safe`` first: numpy scalars to Python,
    non-finite floats to strings) and a final newline; ``dumps``: :func:`json.dumps`'s
    options (``indent``, ``sort_keys``, ``default``). The write is :mod:`common.jsonio`'s."""
    return atomic_write_text(path, json.dumps(json_safe(dict(doc)), **dumps) + "\n")
