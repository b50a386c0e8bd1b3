"""What both sides of a deployment share: the environment Flower's processes run in.

Flower's Deployment Engine starts helper processes by name (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``), so the environment's ``bin`` directory must be on
``PATH``. Three switches keep every process offline: no telemetry, no update check, and no
runtime dependency installation (otherwise a SuperLink or SuperNode may ``uv sync`` the app's
dependencies at run time, e.g. pull a multi-GB CUDA torch), and the Hugging Face libraries stay
offline (the encoder loads a local model directory). Stdlib only (``common`` is pure).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from common.errors import ConfigError

__all__ = ["OFFLINE_ENV", "flower_env", "flower_executable", "node_config_string"]

#: Set in every Flower process of a deployment: nothing at run time reaches the network
#: except the SuperLink <-> SuperNode connection itself.
OFFLINE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # the encoder loads a local model directory; never ask the Hugging Face Hub
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def flower_env(
    flwr_home: str | Path | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a Flower process: ``base`` (default ``os.environ``) plus
    :data:`OFFLINE_ENV`, this interpreter's ``bin`` first on ``PATH``, and ``FLWR_HOME``."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    env["PATH"] = os.pathsep.join([str(_bin_dir()), env.get("PATH", "")]).rstrip(os.pathsep)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def flower_executable(name: str) -> str:
    """The absolute path of a Flower console script (``flwr``, ``flower-superlink``, ...),
    preferring the one next to this interpreter."""
    local = _bin_dir() / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"`{name}` is not installed: install fedinterest with the client or server extra "
            f"(it ships with flwr). Looked in {str(_bin_dir())!r} and on PATH."
        )
    return found


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if '"' in value or "\\" in value or "\n" in value:
        raise ConfigError(
            f"config values cannot contain quotes, backslashes or newlines. Found {value!r}."
        )
    return f'"{value}"'


def node_config_string(values: Mapping[str, str | int | float | bool]) -> str:
    """``key=value`` pairs in the TOML syntax Flower's ``--node-config`` and ``--run-config``
    parse (strings quoted), e.g. ``store="/var/lib/fedinterest/device.db" budget-epsilon=4.0``."""
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c in "=\"'" for c in key):
            raise ConfigError(f"config keys must be plain words. Found {key!r}.")
        parts.append(f"{key}={_toml_value(value)}")
    return " ".join(parts)
