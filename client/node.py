"""The device's side of a deployment: its authentication key and its Flower SuperNode.

A device runs one ``flower-supernode`` bound to its own store through the node config
(``store="/path/device.db"``, read by :func:`client.app.store_from_node_config`). The
SuperNode connects to the SuperLink over TLS (verifying the SuperLink's certificate with the
deployment's CA) and authenticates with an ECDSA key pair whose public half the server
operator registered; an unregistered key is refused. Each message of a round starts a fresh
``flwr-clientapp`` process that opens the store, releases, and exits, so ``fedinterest ingest``
can keep writing to the store while the node runs (SQLite WAL, one writer at a time with a
busy timeout).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.deployment import flower_executable, node_config_string
from common.errors import ConfigError

__all__ = ["KEY_TYPE", "NodeKey", "NodeSpec", "generate_node_key", "supernode_command"]

#: The key type Flower's SuperNode authentication accepts (ECDSA on P-384, OpenSSH format).
KEY_TYPE = ("ecdsa", "384")


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key pair: ``private`` stays on the device, ``public`` goes to the server
    operator (``flwr supernode register``)."""

    private: Path
    public: Path


def generate_node_key(path: str | Path, *, comment: str | None = None) -> NodeKey:
    """Writes a new ECDSA P-384 key pair (``path`` and ``path.pub``, OpenSSH format, no
    passphrase) with ``ssh-keygen``; refuses to overwrite an existing key."""
    private = Path(path)
    public = private.with_name(private.name + ".pub")
    if private.exists() or public.exists():
        raise ConfigError(f"key {str(private)!r} already exists; remove it or choose another path.")
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise ConfigError(
            "`ssh-keygen` is not installed (package openssh-client); it creates the node's key."
        )
    private.parent.mkdir(parents=True, exist_ok=True)
    cmd = [tool, "-q", "-t", KEY_TYPE[0], "-b", KEY_TYPE[1], "-N", "", "-f", str(private)]
    if comment:
        cmd += ["-C", comment]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"ssh-keygen failed: {done.stderr.strip() or done.returncode}.")
    private.chmod(0o600)
    return NodeKey(private, public)


@dataclass(frozen=True)
class NodeSpec:
    """One edge node.

    Attributes:
        superlink: the SuperLink's ``host:port`` (its Fleet API, TLS).
        store: the device's SQLite store.
        root_certificates: the deployment CA's certificate (verifies the SuperLink).
        private_key: the node's private key (its public key registered on the SuperLink).
        port: the SuperNode's local ClientApp I/O port (one per node on a machine).
        host: the address that port binds to (keep loopback).
        budget_epsilon: the device's lifetime budget at its unit (``None``: the SDK's default).
        model_dir: a local Hugging Face model directory instead of the bundled MiniLM.
        encoder: the registered encoder (node config key ``encoder``; ``None``: the SDK's
            default); it must be the run's.
        min_cohort: the smallest secure-aggregation cohort the device adds a noise share to
            (``None``: the SDK's default, :data:`client.policy.DEFAULT_MIN_COHORT`; a
            deployment of fewer devices must lower it explicitly).
        delta / unit: the device's own delta and privacy unit (``None``: the SDK's defaults).
    """

    superlink: str
    store: Path
    root_certificates: Path
    private_key: Path
    port: int = 9094
    host: str = "127.0.0.1"
    budget_epsilon: float | None = None
    model_dir: str | None = None
    encoder: str | None = None
    min_cohort: int | None = None
    delta: float | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if ":" not in self.superlink:
            raise ConfigError(f"`superlink` must be HOST:PORT. Found {self.superlink!r}.")
        if not 0 < self.port < 65536:
            raise ConfigError(f"`port` must be in 1..65535. Found {self.port!r}.")
        if self.budget_epsilon is not None and not self.budget_epsilon > 0:
            raise ConfigError(f"`budget_epsilon` must be > 0. Found {self.budget_epsilon!r}.")

    def node_config(self) -> str:
        """The ``--node-config`` value: the store path (absolute) and the optional settings
        :func:`client.app.store_from_node_config` reads."""
        values: dict[str, str | float | int] = {"store": str(self.store.resolve())}
        if self.budget_epsilon is not None:
            values["budget-epsilon"] = float(self.budget_epsilon)
        if self.model_dir is not None:
            values["model-dir"] = str(Path(self.model_dir).resolve())
        if self.encoder is not None:
            values["encoder"] = str(self.encoder)
        if self.min_cohort is not None:
            values["min-cohort"] = int(self.min_cohort)
        if self.delta is not None:
            values["delta"] = float(self.delta)
        if self.unit is not None:
            values["unit"] = str(self.unit)
        return node_config_string(values)


def supernode_command(spec: NodeSpec) -> list[str]:
    """The ``flower-supernode`` command line of one node (TLS, node authentication, the
    store in the node config, ClientApps in subprocesses of the node)."""
    for what, path in (
        ("root certificates", spec.root_certificates),
        ("private key", spec.private_key),
    ):
        if not Path(path).is_file():
            raise ConfigError(f"the node's {what} file {str(path)!r} does not exist.")
    return [
        flower_executable("flower-supernode"),
        "--superlink",
        spec.superlink,
        "--root-certificates",
        str(Path(spec.root_certificates).resolve()),
        "--auth-supernode-private-key",
        str(Path(spec.private_key).resolve()),
        "--node-config",
        spec.node_config(),
        "--isolation",
        "subprocess",
        "--host",
        spec.host,
        "--port",
        str(spec.port),
    ]
