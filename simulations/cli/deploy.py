"""``fedinterest server ...`` and ``fedinterest node ...``: helpers around Flower's Deployment
Engine (the commands they run are in docs/deployment.md, usable without these helpers).

Server side (``fedinterest[server]``): ``certs``, ``superlink``, ``connect``, ``register``,
``run``. Device side (``fedinterest[client]``): ``keygen``, ``start``. ``superlink`` and
``node start`` replace themselves with the Flower process (``exec``), so a service manager
(systemd, a container runtime) supervises Flower directly; ``--print`` shows the command and
environment instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.deployment import OFFLINE_ENV, flower_env
from common.errors import ConfigError
from simulations.cli.base import add_encoder_flag

__all__ = ["add_parser", "run"]


def _exec_or_print(cmd: Sequence[str], env: Mapping[str, str], *, show: bool) -> int:
    if show:
        shown = {k: env[k] for k in (*OFFLINE_ENV, "FLWR_HOME") if k in env}
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()))
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], list(cmd), dict(env))
    return 1  # pragma: no cover - execve does not return


def _run_passthrough(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    return subprocess.run(list(cmd), env=dict(env), check=False).returncode


def _home(args: argparse.Namespace, default: Path | None) -> Path | None:
    """The operator's commands: ``--flwr-home``, else ``$FLWR_HOME``, else Flower's default."""
    if args.flwr_home:
        return Path(args.flwr_home)
    if os.environ.get("FLWR_HOME"):
        return Path(os.environ["FLWR_HOME"])
    return default


def _own_home(args: argparse.Namespace, default: Path) -> Path:
    """A long-running process (SuperLink, SuperNode): ``--flwr-home``, else next to its state
    (not ``$FLWR_HOME``, which is the operator CLI's: several nodes on one machine must not
    share one)."""
    return Path(args.flwr_home) if args.flwr_home else default


# -- server ------------------------------------------------------------------------------------


def _certs(args: argparse.Namespace) -> int:
    from server.deploy import generate_certificates

    certs = generate_certificates(
        args.out, hosts=args.host or ["127.0.0.1", "localhost"], days=args.days,
        overwrite=args.overwrite,
    )  # fmt: skip
    payload = {k: str(v) for k, v in certs.__dict__.items()}
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif not args.quiet:
        print(f"wrote {certs.ca_cert} (give it to every device and CLI), {certs.server_cert} and")
        print(f"{certs.server_key} (the SuperLink's), and {certs.ca_key} (keep it offline)")
    return 0


def _superlink(args: argparse.Namespace) -> int:
    from server.deploy import Certificates, superlink_command

    certs = Certificates.in_dir(args.certs)
    database = Path(args.database)
    cmd = superlink_command(certs, database=database, host=args.host, port=args.port)
    env = flower_env(_own_home(args, database.resolve().parent / "flwr-home"))
    return _exec_or_print(cmd, env, show=args.print)


def _connect(args: argparse.Namespace) -> int:
    from server.deploy import write_connection

    home = _home(args, Path.home() / ".flwr") or Path.home() / ".flwr"
    path = write_connection(
        home, args.address, args.root_certificates, name=args.name, overwrite=args.overwrite
    )
    if not args.quiet:
        print(f"wrote {path}: connection {args.name!r} -> {args.address} (the default one)")
    return 0


def _register(args: argparse.Namespace) -> int:
    from server.deploy import register_command

    cmd = register_command(args.public_key, connection=args.connection, name=args.name)
    return _run_passthrough(cmd, flower_env(_home(args, None)))


def _toml_scalar(value: str) -> str | int | float | bool:
    v = value.strip()
    if v in ("true", "false"):
        return v == "true"
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _run_extra(pairs: Sequence[str]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config takes KEY=VALUE. Found {pair!r}.")
        out[key.strip()] = _toml_scalar(value)
    return out


def _run_config_key(part: str | None, name: str) -> str:
    """A Flower run-config key, named as :meth:`common.config.RunConfig.to_run_config` names
    it (``privacy.epsilon`` -> ``privacy-epsilon``)."""
    return (f"{part}-{name}" if part else name).replace("_", "-")


#: ``server run``'s flags -> the run-config keys they override
_RUN_CONFIG_KEYS = {
    "rounds": _run_config_key(None, "rounds"),
    "epsilon": _run_config_key("privacy", "epsilon"),
    "mode": _run_config_key("privacy", "mode"),
    "min_cohort_fraction": _run_config_key("privacy", "min_cohort_fraction"),
    "round_timeout": _run_config_key(None, "round_timeout"),
    "seed": _run_config_key(None, "seed"),
}


def _server_run(args: argparse.Namespace) -> int:
    from server.deploy import parse_run_id, run_command, run_overrides, run_status

    extra: dict[str, Any] = {}
    for flag, key in _RUN_CONFIG_KEYS.items():
        v = getattr(args, flag)
        if v is not None:
            extra[key] = v
    extra.update(_run_extra(args.config or []))
    overrides = run_overrides(
        run_dir=args.run_dir,
        labels_file=args.labels,
        expected_nodes=args.expected_nodes,
        extra=extra,
    )
    cmd = run_command(overrides, connection=args.connection)
    env = flower_env(_home(args, None))
    if args.print:
        print(shlex.join(cmd))
        return 0
    seen = []
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        for line in proc.stdout or ():
            seen.append(line)
            if not (args.quiet or args.json):
                sys.stdout.write(line)
                sys.stdout.flush()
    run_id = parse_run_id("".join(seen))
    if run_id is None:
        raise ConfigError(f"`flwr run` did not start a run (exit {proc.returncode}).")
    status = run_status(run_id, connection=args.connection, env=env)
    metrics_path = Path(args.run_dir) / "metrics.json"
    payload: dict[str, Any] = {"run_id": run_id, "status": status, "run_dir": str(args.run_dir)}
    if metrics_path.is_file():
        payload["metrics"] = json.loads(metrics_path.read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif not args.quiet:
        print(f"run {run_id}: {status}; outputs in {args.run_dir}")
    if status != "finished:completed":
        raise ConfigError(f"run {run_id} ended as {status!r}; see `flwr log {run_id} --show`.")
    return 0


# -- node --------------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from client.node import generate_node_key

    key = generate_node_key(args.out, comment=args.comment)
    if args.json:
        print(json.dumps({"private": str(key.private), "public": str(key.public)}))
    elif not args.quiet:
        print(
            f"wrote {key.private} (stays on this device) and {key.public} (send it to the server operator)"
        )
    return 0


def _node_start(args: argparse.Namespace) -> int:
    from client.node import NodeSpec, supernode_command
    from client.store import EventStore

    store = Path(args.store)
    spec = NodeSpec(
        superlink=args.superlink,
        store=store,
        root_certificates=Path(args.root_certificates),
        private_key=Path(args.key),
        budget_epsilon=args.budget,
        model_dir=args.model_dir,
        encoder=args.encoder,
        min_cohort=args.min_cohort,
        **({} if args.port is None else {"port": args.port}),
    )
    env = flower_env(_own_home(args, store.resolve().parent / "flwr-home"))
    cmd = supernode_command(spec)
    if not args.print and not store.exists():
        # an empty store is fine: `fedinterest ingest` fills it while the node runs
        EventStore(store).close()
    return _exec_or_print(cmd, env, show=args.print)


# -- parsers -----------------------------------------------------------------------------------


_COMMANDS = {
    ("server", "certs"): _certs,
    ("server", "superlink"): _superlink,
    ("server", "connect"): _connect,
    ("server", "register"): _register,
    ("server", "run"): _server_run,
    ("node", "keygen"): _keygen,
    ("node", "start"): _node_start,
}


def run(args: argparse.Namespace) -> int:
    """Runs one ``server ...`` or ``node ...`` command."""
    action = args.server_command if args.command == "server" else args.node_command
    return _COMMANDS[(args.command, action)](args)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``server`` and ``node`` to the ``fedinterest`` command line (``parents``: the
    shared ``--json``/``--quiet`` flags)."""
    import inspect

    from common.records import ReleaseMode
    from server.deploy import DEFAULT_CONNECTION, generate_certificates, superlink_command

    certs_days = inspect.signature(generate_certificates).parameters["days"].default
    certs_hosts = inspect.signature(generate_certificates).parameters["hosts"].default
    link = inspect.signature(superlink_command).parameters
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--flwr-home",
        help="Flower's home directory (operator commands: default $FLWR_HOME, else ~/.flwr; "
        "superlink / node start: default flwr-home/ next to the database / store)",
    )

    srv = sub.add_parser("server", help="deployment: SuperLink, certificates, keys, runs")
    ssub = srv.add_subparsers(dest="server_command", required=True)

    c = ssub.add_parser(
        "certs", parents=parents, help="create a CA and the SuperLink's TLS certificate"
    )
    c.add_argument(
        "--out", required=True, help="directory for ca.crt, ca.key, server.pem, server.key"
    )
    c.add_argument(
        "--host",
        action="append",
        help=f"a name or IP devices dial (repeat; default {' and '.join(certs_hosts)})",
    )
    c.add_argument(
        "--days", type=int, default=certs_days, help=f"validity in days (default {certs_days})"
    )
    c.add_argument("--overwrite", action="store_true", help="replace existing files")
    c.set_defaults(handler=run)

    sl = ssub.add_parser(
        "superlink", parents=[home], help="run flower-superlink (TLS, node auth) in the foreground"
    )
    sl.add_argument("--certs", required=True, help="the directory `server certs` wrote")
    sl.add_argument(
        "--database", required=True, help="SuperLink state file (node registrations, runs)"
    )
    host, port = link["host"].default, link["port"].default
    sl.add_argument("--host", default=host, help=f"bind address (default {host})")
    sl.add_argument("--port", type=int, default=port, help=f"the one HTTPS port (default {port})")
    sl.add_argument("--print", action="store_true", help="print the command instead of running it")
    sl.set_defaults(handler=run)

    cn = ssub.add_parser(
        "connect", parents=[*parents, home], help="write the flwr CLI's connection to a SuperLink"
    )
    cn.add_argument("--address", required=True, help="the SuperLink's HOST:PORT")
    cn.add_argument("--root-certificates", required=True, help="the CA certificate (ca.crt)")
    cn.add_argument(
        "--name",
        default=DEFAULT_CONNECTION,
        help=f"connection name (default {DEFAULT_CONNECTION})",
    )
    cn.add_argument("--overwrite", action="store_true", help="replace an existing config.toml")
    cn.set_defaults(handler=run)

    rg = ssub.add_parser("register", parents=[home], help="admit a device's public key")
    rg.add_argument("public_key", help="the device's KEY.pub")
    rg.add_argument("--name", help="a name for the node")
    rg.add_argument(
        "--connection",
        default=DEFAULT_CONNECTION,
        help=f"flwr connection (default {DEFAULT_CONNECTION})",
    )
    rg.set_defaults(handler=run)

    rn = ssub.add_parser(
        "run",
        parents=[*parents, home],
        help="launch a fedinterest run on the SuperLink and wait for it",
    )
    rn.add_argument(
        "--run-dir", required=True, help="the server's run directory (on the SuperLink's machine)"
    )
    rn.add_argument("--labels", required=True, help="labels.npz from `fedinterest labels`")
    rn.add_argument(
        "--connection",
        default=DEFAULT_CONNECTION,
        help=f"flwr connection (default {DEFAULT_CONNECTION})",
    )
    rn.add_argument(
        "--expected-nodes", type=int, default=None, help="devices to wait for before round 1"
    )
    rn.add_argument("--rounds", type=int, default=None)
    rn.add_argument("--epsilon", type=float, default=None, help="total event-level epsilon")
    rn.add_argument("--mode", choices=[m.value for m in ReleaseMode], default=None)
    rn.add_argument(
        "--min-cohort-fraction",
        type=float,
        default=None,
        help="secagg: share of sampled devices whose noise shares must arrive",
    )
    rn.add_argument("--round-timeout", type=float, default=None, help="seconds per stage")
    rn.add_argument("--seed", type=int, default=None)
    rn.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="any run config key (see server/flwr_app/pyproject.toml)",
    )
    rn.add_argument(
        "--print", action="store_true", help="print the flwr command instead of running it"
    )
    rn.set_defaults(handler=run)

    nd = sub.add_parser("node", help="deployment: this device's key and SuperNode")
    nsub = nd.add_subparsers(dest="node_command", required=True)
    kg = nsub.add_parser("keygen", parents=parents, help="create the node's key pair (ECDSA P-384)")
    kg.add_argument("--out", required=True, help="private key path (PATH.pub is the public key)")
    kg.add_argument("--comment", default=None)
    kg.set_defaults(handler=run)

    st = nsub.add_parser(
        "start", parents=[home], help="run flower-supernode bound to a store, in the foreground"
    )
    st.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    st.add_argument("--store", required=True, help="the device's SQLite store (created if missing)")
    st.add_argument("--root-certificates", required=True, help="the deployment's CA certificate")
    st.add_argument("--key", required=True, help="the node's private key (its .pub registered)")
    st.add_argument(
        "--port",
        type=int,
        default=None,
        help="local ClientApp I/O port (default 9094)",
    )
    st.add_argument(
        "--budget",
        type=float,
        default=None,
        help="the device's lifetime user-level epsilon (default 4)",
    )
    st.add_argument(
        "--min-cohort",
        type=int,
        default=None,
        help="the smallest secure-aggregation cohort this device adds a noise share to "
        "(default 50 at user level; lower it only for a deployment of fewer devices)",
    )
    add_encoder_flag(st)
    st.add_argument("--print", action="store_true", help="print the command instead of running it")
    st.set_defaults(handler=run)
