"""Every name in every package's and module's __all__ exists (no typos shipped)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["common", "client", "server", "simulations"]


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg)
        mod = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"{pkg}."):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_all_names_exist(name: str) -> None:
    """Each module defines __all__ and every listed name is importable."""
    mod = importlib.import_module(name)
    if name.endswith("__main__"):
        return
    assert hasattr(mod, "__all__"), f"{name} has no __all__"
    for attr in mod.__all__:
        assert hasattr(mod, attr), f"{name}.__all__ lists {attr!r}, which does not exist"


def test_common_imports_no_torch_or_flwr() -> None:
    """`common` stays pure: importing it pulls in neither torch nor flwr."""
    import subprocess
    import sys

    code = "import sys, common, common.events, common.features; print(any(m.split('.')[0] in ('torch','flwr','transformers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
