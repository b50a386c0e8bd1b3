"""`common` is pure: importing every one of its modules, in a fresh interpreter, loads none of
the heavy or networked stacks (torch, transformers, opacus, flwr, ray)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "opacus", "flwr", "ray")


def test_every_common_module_imports_without_heavy_stacks() -> None:
    """Walks the whole `common` package, imports each module, then checks sys.modules."""
    names = sorted(m.name for m in pkgutil.walk_packages(common.__path__, prefix="common."))
    assert len(names) >= 10 and "common.privacy.accounting" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"common imports {out.stdout.strip()}"
