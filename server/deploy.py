"""The server's side of a deployment on Flower's Deployment Engine.

- :func:`generate_certificates`: a private CA and the SuperLink's TLS certificate (openssl);
- :func:`superlink_command`: ``flower-superlink`` with TLS, SuperNode authentication, a
  persistent state database, and no runtime dependency installation;
- :func:`write_connection`: the Flower CLI's connection to that SuperLink
  (``$FLWR_HOME/config.toml``);
- :func:`register_command`: register a device's public key (only registered keys connect);
- :func:`run_command` / :func:`run_overrides`: launch the fedinterest ServerApp
  (:data:`APP_DIR`, a thin Flower app that imports :mod:`server.app` and :mod:`client.app`);
- :func:`write_run_config` / :func:`write_run_metrics`: the run directory's ``config.json``
  and ``metrics.json``, in the same schema as a simulation's where the server knows the value.

Nothing here talks to the network itself: it builds command lines and files; the processes
are Flower's.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.deployment import flower_executable, node_config_string
from common.errors import ConfigError
from common.jsonio import atomic_write_text

__all__ = [
    "APP_DIR",
    "DEFAULT_CONNECTION",
    "Certificates",
    "generate_certificates",
    "parse_run_id",
    "register_command",
    "run_command",
    "run_overrides",
    "run_status",
    "superlink_command",
    "write_connection",
    "write_run_config",
    "write_run_metrics",
]

#: The Flower app directory ``flwr run`` packages (pyproject.toml + ``fedinterest_app``).
APP_DIR = Path(__file__).resolve().parent / "flwr_app"
#: The name of the Flower CLI connection the helpers write and use.
DEFAULT_CONNECTION = "fedinterest"

_RUN_ID = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class Certificates:
    """The deployment's TLS material.

    Attributes:
        ca_cert: the CA certificate every SuperNode and CLI uses to verify the SuperLink.
        ca_key: the CA's private key (keep offline; it signs new server certificates).
        server_cert / server_key: the SuperLink's certificate and key.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, d: str | Path) -> Certificates:
        """The file names :func:`generate_certificates` writes in ``d``."""
        p = Path(d)
        return cls(p / "ca.crt", p / "ca.key", p / "server.pem", p / "server.key")


def _openssl(args: Sequence[str], cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise ConfigError("`openssl` is not installed; it creates the deployment's certificates.")
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _san(hosts: Sequence[str]) -> str:
    out = []
    for h in hosts:
        is_ip = re.fullmatch(r"[0-9.]+", h) is not None or ":" in h
        out.append(f"IP:{h}" if is_ip else f"DNS:{h}")
    return ",".join(out)


def generate_certificates(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 365,
    overwrite: bool = False,
) -> Certificates:
    """Creates a private CA (RSA 2048) and a SuperLink certificate signed by it, valid for
    ``hosts`` (the names and addresses SuperNodes dial; IPs and DNS names) for ``days``.

    Args:
        out_dir: where ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` go.
        hosts: the subjectAltName entries; the first one is also the subject's CN.
        days: validity of both certificates.
        overwrite: replace existing files.
    """
    if not hosts:
        raise ConfigError("`hosts` needs at least one name or address the SuperLink is dialled at.")
    if days < 1:
        raise ConfigError(f"`days` must be >= 1. Found {days!r}.")
    d = Path(out_dir).resolve()
    certs = Certificates.in_dir(d)
    existing = [p for p in asdict(certs).values() if Path(p).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{str(existing[0])!r} already exists; pass overwrite to replace it.")
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        t = Path(tmp)
        _openssl(
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
                "-subj", "/CN=fedinterest deployment CA",
                "-keyout", str(certs.ca_key), "-out", str(certs.ca_cert),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ],
            t,
        )  # fmt: skip
        ext = t / "server.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={_san(hosts)}\n",
            encoding="utf-8",
        )
        csr = t / "server.csr"
        _openssl(
            [
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
                "-keyout", str(certs.server_key), "-out", str(csr),
            ],
            t,
        )  # fmt: skip
        _openssl(
            [
                "x509", "-req", "-in", str(csr), "-CA", str(certs.ca_cert),
                "-CAkey", str(certs.ca_key), "-CAcreateserial", "-CAserial", str(t / "ca.srl"),
                "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(certs.server_cert),
            ],
            t,
        )  # fmt: skip
        _openssl(["verify", "-CAfile", str(certs.ca_cert), str(certs.server_cert)], t)
    certs.ca_key.chmod(0o600)
    certs.server_key.chmod(0o600)
    return certs


def superlink_command(
    certs: Certificates,
    *,
    database: str | Path,
    host: str = "0.0.0.0",
    port: int = 9093,
) -> list[str]:
    """``flower-superlink`` serving its one HTTPS port (Fleet, Control and ServerApp APIs)
    with TLS, only registered SuperNodes admitted, the run and node state in ``database``
    (registrations survive restarts), ServerApps in subprocesses, and no runtime dependency
    installation."""
    for p in (certs.ca_cert, certs.server_cert, certs.server_key):
        if not p.is_file():
            raise ConfigError(f"certificate file {str(p)!r} does not exist.")
    if not 0 < port < 65536:
        raise ConfigError(f"`port` must be in 1..65535. Found {port!r}.")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    return [
        flower_executable("flower-superlink"),
        "--ssl-ca-certfile", str(certs.ca_cert.resolve()),
        "--ssl-certfile", str(certs.server_cert.resolve()),
        "--ssl-keyfile", str(certs.server_key.resolve()),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation", "subprocess",
        "--database", str(Path(database).resolve()),
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


def write_connection(
    flwr_home: str | Path,
    address: str,
    root_certificates: str | Path,
    *,
    name: str = DEFAULT_CONNECTION,
    overwrite: bool = False,
) -> Path:
    """Writes ``$FLWR_HOME/config.toml`` with one SuperLink connection ``name`` (the default
    one) for the ``flwr`` CLI: the SuperLink's ``host:port`` and the CA that verifies it. An
    existing file (other connections) is only replaced with ``overwrite``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"connection names are letters, digits, - and _. Found {name!r}.")
    if ":" not in address:
        raise ConfigError(f"`address` must be HOST:PORT. Found {address!r}.")
    ca = Path(root_certificates).resolve()
    if not ca.is_file():
        raise ConfigError(f"root certificates {str(ca)!r} do not exist.")
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{str(path)!r} already exists; pass overwrite (--overwrite) to replace it, or use "
            "another Flower home (--flwr-home / FLWR_HOME)."
        )
    path.write_text(
        "# Flower CLI connections (written by fedinterest)\n"
        "[superlink]\n"
        f'default = "{name}"\n\n'
        f"[superlink.{name}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{ca}"\n',
        encoding="utf-8",
    )
    return path


def register_command(
    public_key: str | Path, *, connection: str = DEFAULT_CONNECTION, name: str | None = None
) -> list[str]:
    """``flwr supernode register``: admit the SuperNode holding the matching private key."""
    key = Path(public_key)
    if not key.is_file():
        raise ConfigError(f"public key {str(key)!r} does not exist.")
    cmd = [flower_executable("flwr"), "supernode", "register", str(key.resolve()), connection]
    if name:
        cmd += ["--name", name]
    return cmd


def run_overrides(
    *,
    run_dir: str | Path,
    labels_file: str | Path,
    expected_nodes: int | None = None,
    run: RunConfig | None = None,
    extra: Mapping[str, str | int | float | bool] | None = None,
) -> str:
    """The ``--run-config`` value of a fedinterest run: the run directory and label file as
    absolute paths (the ServerApp's working directory is Flower's), the devices to wait for,
    every key of ``run`` (if given), then ``extra`` keys (kebab-case run config names)."""
    labels = Path(labels_file).resolve()
    if not labels.is_file():
        raise ConfigError(
            f"label file {str(labels)!r} does not exist (write it with `fedinterest labels`)."
        )
    values: dict[str, str | int | float | bool] = {
        "run-dir": str(Path(run_dir).resolve()),
        "labels-file": str(labels),
    }
    if expected_nodes is not None:
        values["expected-nodes"] = int(expected_nodes)
    if run is not None:
        values.update(run.to_run_config())
    if extra:
        values.update(extra)
    return node_config_string(values)


def run_command(
    overrides: str, *, connection: str = DEFAULT_CONNECTION, app_dir: str | Path = APP_DIR
) -> list[str]:
    """``flwr run`` of the fedinterest app on a SuperLink connection, streaming its logs.
    ``flwr run --stream`` exits 0 even when the ServerApp fails: check :func:`run_status`."""
    app = Path(app_dir)
    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"{str(app)!r} is not a Flower app directory (no pyproject.toml).")
    return [
        flower_executable("flwr"),
        "run",
        str(app.resolve()),
        connection,
        "--run-config",
        overrides,
        "--stream",
    ]


def parse_run_id(text: str) -> int | None:
    """The run id ``flwr run`` printed (``Successfully started run 123``), if any."""
    m = _RUN_ID.search(re.sub(r"\x1b\[[0-9;]*m", "", text))
    return int(m.group(1)) if m else None


def run_status(
    run_id: int, *, connection: str = DEFAULT_CONNECTION, env: Mapping[str, str] | None = None
) -> str:
    """The run's status on the SuperLink (``finished:completed``, ``finished:failed``,
    ``running``, ...), from ``flwr ls --format json``."""
    done = subprocess.run(
        [flower_executable("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(env) if env is not None else None,
        timeout=120,
    )
    try:
        doc = json.loads(done.stdout)
        runs = doc.get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"
    except (ValueError, KeyError, IndexError, AttributeError):
        return f"unknown ({(done.stderr or done.stdout).strip()[-300:]})"


def _safe(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_safe(v) for v in o]
    if hasattr(o, "value") and not isinstance(o, (int, float, str, bool)):
        return o.value
    return o


def write_run_config(
    run_dir: str | Path,
    run: RunConfig,
    *,
    labels_file: str | Path,
    expected_nodes: int | None,
    flower_run_id: int | None = None,
) -> Path:
    """``RUN_DIR/config.json`` of a deployed run (the simulation's schema: ``run`` holds the
    full :class:`RunConfig`; ``dataset`` is ``deployment``: the data stays on the devices)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    doc = {
        "dataset": "deployment",
        "engine": "flower-deployment",
        "flower_run_id": flower_run_id,
        "expected_nodes": expected_nodes,
        "labels_file": str(labels_file),
        "run": asdict(run),
        # each device's budget is its own node config (`budget-epsilon`); not known here
        "device_budget_epsilon": None,
        "device_budgets": {},
    }
    atomic_write_text(d / "config.json", json.dumps(_safe(doc), indent=1, default=str) + "\n")
    return d / "config.json"


def write_run_metrics(
    run_dir: str | Path, run: RunConfig, rounds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``RUN_DIR/metrics.json`` of a deployed run from its round records: the keys of a
    simulation's ``metrics.json`` the server can know (no ground truth or baselines: the
    events never leave the devices)."""
    from common.hierarchy import Hierarchy

    d = Path(run_dir)
    p = run.privacy
    done = [r for r in rounds if r.get("status") == "ok"]
    sampled = sum(int(r.get("sampled", 0)) for r in rounds) or 1
    h = Hierarchy.load(d / "hierarchy.json") if (d / "hierarchy.json").is_file() else None
    out: dict[str, Any] = {
        "dataset": "deployment",
        "mode": p.mode.value,
        "no_dp": p.no_dp,
        "epsilon_event_level_total": done[-1].get("epsilon_event_level", 0.0) if done else 0.0,
        "epsilon_budget": p.epsilon,
        "delta": p.delta,
        "noise_multiplier": rounds[0].get("noise_multiplier", 0.0) if rounds else 0.0,
        "rounds": run.rounds,
        "rounds_completed": len(done),
        "clients": max((int(r.get("sampled", 0)) for r in rounds), default=0),
        "survivors_per_round": [int(r.get("usable", 0)) for r in rounds],
        "bytes_up_per_client_per_round": round(
            sum(float(r.get("bytes_up", 0)) for r in rounds) / sampled, 1
        ),
        "bytes_down_per_client_per_round": round(
            sum(float(r.get("bytes_down", 0)) for r in rounds) / sampled, 1
        ),
        "hierarchy_version": h.version if h is not None else None,
        "level1_nodes": len(h.level(1)) if h is not None else 0,
        "level2_nodes": len(h.level(2)) if h is not None else 0,
        "federated_seconds": round(sum(float(r.get("seconds", 0.0)) for r in rounds), 2),
    }
    atomic_write_text(d / "metrics.json", json.dumps(_safe(out), indent=1, sort_keys=True) + "\n")
    return out
