"""The deployment helpers without starting Flower: certificates, keys, command lines, the app
directory and its run config, the run directory files."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from client.node import NodeSpec, generate_node_key, supernode_command
from common.config import ClusteringConfig, RunConfig
from common.deployment import OFFLINE_ENV, flower_env, node_config_string
from common.errors import ConfigError
from server.deploy import (
    APP_DIR,
    Certificates,
    generate_certificates,
    parse_run_id,
    register_command,
    run_command,
    run_overrides,
    superlink_command,
    write_connection,
    write_run_config,
    write_run_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
_OWN_KEYS = {"run-dir", "labels-file", "expected-nodes"}


def _app_config() -> dict[str, object]:
    doc = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(doc["tool"]["flwr"]["app"]["config"])


def test_app_config_lists_every_run_config_key() -> None:
    """Flower only overrides keys the app lists: the app lists all of RunConfig's, with its
    defaults (round-timeout finite in a deployment)."""
    cfg = _app_config()
    expected = RunConfig(round_timeout=300.0).to_run_config()
    assert {k: v for k, v in cfg.items() if k not in _OWN_KEYS} == expected
    assert set(cfg) >= _OWN_KEYS
    parsed = RunConfig.from_run_config({k: v for k, v in cfg.items() if k not in _OWN_KEYS})
    assert parsed == RunConfig(round_timeout=300.0)


def test_app_components_and_version() -> None:
    """The app points at the thin fedinterest_app package and carries the project's version."""
    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    main = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert app["project"]["version"] == main["project"]["version"]
    comps = app["tool"]["flwr"]["app"]["components"]
    assert comps == {
        "serverapp": "fedinterest_app.server_app:app",
        "clientapp": "fedinterest_app.client_app:app",
    }
    import importlib

    import client.app
    import server.app

    sys.path.insert(0, str(APP_DIR))  # where Flower puts an installed FAB
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        server_app = importlib.import_module("fedinterest_app.server_app").app
        client_app = importlib.import_module("fedinterest_app.client_app").app
    finally:
        sys.path.remove(str(APP_DIR))
        sys.dont_write_bytecode = bytecode
    assert server_app is server.app.app and client_app is client.app.app


def test_fab_contains_only_the_thin_app() -> None:
    """The FAB Flower builds holds the app's pyproject and the fedinterest_app modules only."""
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(APP_DIR)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert {
        "pyproject.toml",
        "fedinterest_app/server_app.py",
        "fedinterest_app/client_app.py",
    } <= names
    assert not any(n.startswith(("server/", "client/", "common/")) for n in names)
    assert len(fab) < 64 * 1024


def test_offline_environment() -> None:
    """Every Flower process gets the offline switches and this interpreter's bin first."""
    env = flower_env("/tmp/flwr-home-x", base={"PATH": "/usr/bin"})
    for k, v in OFFLINE_ENV.items():
        assert env[k] == v
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["FLWR_HOME"] == str(Path("/tmp/flwr-home-x").resolve())


def test_node_config_string_round_trips_through_flower() -> None:
    """The key=value string parses back with Flower's own parser."""
    from flwr.common.config import parse_config_args

    s = node_config_string({"store": "/a b/device.db", "budget-epsilon": 3.0, "flag": True, "n": 2})
    assert parse_config_args([s]) == {
        "store": "/a b/device.db",
        "budget-epsilon": 3.0,
        "flag": True,
        "n": 2,
    }
    with pytest.raises(ConfigError):
        node_config_string({"store": 'a"b'})
    with pytest.raises(ConfigError):
        node_config_string({"bad key": 1})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is installed in CI")
def test_certificates_verify_and_name_the_hosts(tmp_path: Path) -> None:
    """The CA signs a server certificate for the given IPs and names; no silent overwrite."""
    certs = generate_certificates(tmp_path / "c", hosts=["127.0.0.1", "link.example"], days=2)
    for p in certs.__dict__.values():
        assert Path(p).is_file()
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certs.server_cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:link.example" in text
    assert "TLS Web Server Authentication" in text
    assert oct(certs.server_key.stat().st_mode)[-3:] == "600"
    with pytest.raises(ConfigError, match="already exists"):
        generate_certificates(tmp_path / "c")
    assert Certificates.in_dir(tmp_path / "c") == certs


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is installed in CI")
def test_node_key_is_ecdsa_p384(tmp_path: Path) -> None:
    """A node key is an OpenSSH ECDSA P-384 pair; an existing key is never replaced."""
    key = generate_node_key(tmp_path / "keys" / "node1", comment="sn1")
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert oct(key.private.stat().st_mode)[-3:] == "600"
    with pytest.raises(ConfigError, match="already exists"):
        generate_node_key(tmp_path / "keys" / "node1")


def test_command_lines(tmp_path: Path) -> None:
    """SuperLink: TLS, node auth, no runtime installs; SuperNode: TLS, its key, its store."""
    certs = Certificates.in_dir(tmp_path)
    for p in (certs.ca_cert, certs.server_cert, certs.server_key):
        p.write_text("x")
    link = superlink_command(certs, database=tmp_path / "s" / "state.db", port=9999)
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
    ):
        assert flag in link
    assert "--insecure" not in link and link[-1] == "9999"
    key = tmp_path / "node1"
    key.write_text("k")
    spec = NodeSpec("127.0.0.1:9999", tmp_path / "d.db", certs.ca_cert, key, port=9100)
    node = supernode_command(spec)
    assert node[node.index("--root-certificates") + 1] == str(certs.ca_cert.resolve())
    assert node[node.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert node[node.index("--node-config") + 1] == f'store="{(tmp_path / "d.db").resolve()}"'
    assert "--insecure" not in node
    with pytest.raises(ConfigError):
        supernode_command(
            NodeSpec("127.0.0.1:9", tmp_path / "d.db", certs.ca_cert, tmp_path / "nokey")
        )
    with pytest.raises(ConfigError):
        NodeSpec("no-port", tmp_path / "d.db", certs.ca_cert, key)
    pub = tmp_path / "node1.pub"
    pub.write_text("p")
    reg = register_command(pub, connection="c", name="sn1")
    assert reg[1:5] == ["supernode", "register", str(pub.resolve()), "c"]


def test_connection_file(tmp_path: Path) -> None:
    """The flwr CLI's config.toml names the connection as default, with an absolute CA path."""
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    path = write_connection(tmp_path / "home", "10.0.0.5:9093", ca, name="prod")
    doc = tomllib.loads(path.read_text())
    assert doc["superlink"]["default"] == "prod"
    assert doc["superlink"]["prod"] == {"address": "10.0.0.5:9093", "root-certificates": str(ca)}
    with pytest.raises(ConfigError, match="already exists"):
        write_connection(tmp_path / "home", "10.0.0.6:9093", ca, name="other")
    write_connection(tmp_path / "home", "10.0.0.6:9093", ca, name="other", overwrite=True)
    assert tomllib.loads(path.read_text())["superlink"]["default"] == "other"


def test_run_overrides_and_command(tmp_path: Path) -> None:
    """The run config override parses with Flower's parser and the ServerApp accepts it."""
    from flwr.common.config import parse_config_args

    from server.app import _from_run_config

    labels = tmp_path / "labels.npz"
    labels.write_bytes(b"")
    s = run_overrides(run_dir="rel/run", labels_file=labels, expected_nodes=3, extra={"rounds": 2})
    got = parse_config_args([s])
    assert got["run-dir"] == str((Path.cwd() / "rel" / "run").resolve())
    assert got["labels-file"] == str(labels) and got["expected-nodes"] == 3 and got["rounds"] == 2
    cfg = {**_app_config(), **got}
    run = RunConfig.from_run_config({k: v for k, v in cfg.items() if k not in _OWN_KEYS})
    assert run.rounds == 2 and run.round_timeout == 300.0
    with pytest.raises(ConfigError, match="absolute"):
        _from_run_config({**_app_config()})
    with pytest.raises(ConfigError, match="`clustering-seeding` 'catalogue' is simulation-only"):
        _from_run_config({**cfg, "clustering-seeding": "catalogue"})
    cmd = run_command(s, connection="c")
    assert cmd[1:4] == ["run", str(APP_DIR), "c"] and cmd[-1] == "--stream"
    with pytest.raises(ConfigError):
        run_overrides(run_dir=tmp_path, labels_file=tmp_path / "missing.npz")


def test_deployed_auto_seeding_is_private_from_a_population() -> None:
    """A deployed server has no catalogue: ``auto`` seeds privately from 1,000 expected
    devices, from the vocabulary below that or when the population is not known; an
    explicit choice is kept."""
    from server.app import deployed_seeding

    run = RunConfig()
    assert deployed_seeding(run, 1000).clustering.seeding == "private"
    assert deployed_seeding(run, 999).clustering.seeding == "auto"
    assert deployed_seeding(run, None).clustering.seeding == "auto"
    voc = RunConfig(clustering=ClusteringConfig(seeding="vocabulary"))
    assert deployed_seeding(voc, 10_000).clustering.seeding == "vocabulary"


def test_parse_run_id() -> None:
    """The run id comes from flwr run's banner, colours or not."""
    assert parse_run_id("Using ...\n\x1b[92mSuccessfully started run 1234\x1b[0m\n") == 1234
    assert parse_run_id("nothing here") is None


def test_run_directory_files(tmp_path: Path) -> None:
    """config.json keeps the simulation's schema; metrics.json summarises the rounds."""
    run = RunConfig(rounds=2)
    write_run_config(tmp_path, run, labels_file="/x/labels.npz", expected_nodes=3, flower_run_id=7)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["run"]["privacy"]["mode"] == "secagg" and cfg["flower_run_id"] == 7
    rounds = [
        {"server_round": 1, "status": "ok", "sampled": 3, "usable": 3, "noise_multiplier": 2.5,
         "epsilon_event_level": 1.4, "bytes_up": 300, "bytes_down": 150, "seconds": 10.0},
        {"server_round": 2, "status": "ok", "sampled": 3, "usable": 2, "noise_multiplier": 2.5,
         "epsilon_event_level": 2.0, "bytes_up": 200, "bytes_down": 150, "seconds": 12.0},
    ]  # fmt: skip
    m = write_run_metrics(tmp_path, run, rounds)
    assert m["rounds_completed"] == 2 and m["survivors_per_round"] == [3, 2]
    assert m["epsilon_event_level_total"] == 2.0 and m["clients"] == 3
    assert m["bytes_up_per_client_per_round"] == round(500 / 6, 1)
    assert json.loads((tmp_path / "metrics.json").read_text()) == m


def test_cli_prints_the_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fedinterest server superlink --print` and `node start --print` show what they run;
    each keeps its Flower home next to its state, whatever the operator's $FLWR_HOME."""
    from simulations.cli import main

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "operator"))

    certs = tmp_path / "certs"
    certs.mkdir()
    for n in ("ca.crt", "server.pem", "server.key"):
        (certs / n).write_text("x")
    (tmp_path / "node1").write_text("k")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["server", "superlink", "--certs", str(certs), "--database",
                     str(tmp_path / "s" / "state.db"), "--print"]) == 0  # fmt: skip
        assert main(["node", "start", "--superlink", "127.0.0.1:9093", "--store",
                     str(tmp_path / "d.db"), "--root-certificates", str(certs / "ca.crt"),
                     "--key", str(tmp_path / "node1"), "--budget", "3", "--print"]) == 0  # fmt: skip
    lines = buf.getvalue().splitlines()
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in lines[0]
    assert f"FLWR_HOME={tmp_path / 's' / 'flwr-home'}" in lines[0]
    assert f"FLWR_HOME={tmp_path / 'flwr-home'}" in lines[2]
    assert shlex.split(lines[1])[0].endswith("flower-superlink")
    node = shlex.split(lines[3])
    assert node[0].endswith("flower-supernode")
    assert "budget-epsilon=3.0" in node[node.index("--node-config") + 1]
    assert not (tmp_path / "d.db").exists()  # --print changes nothing


def test_cli_run_builds_the_run_config(tmp_path: Path) -> None:
    """`fedinterest server run --print`: flags and --config KEY=VALUE become run config keys."""
    from flwr.common.config import parse_config_args

    from simulations.cli import main

    labels = tmp_path / "labels.npz"
    labels.write_bytes(b"")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["server", "run", "--run-dir", str(tmp_path / "run"), "--labels", str(labels),
                     "--rounds", "3", "--mode", "local", "--config", "privacy-epsilon=1.5",
                     "--config", "robust=median", "--config", "analytics-histogram=true",
                     "--print"])  # fmt: skip
    assert code == 0
    cmd = shlex.split(buf.getvalue().strip())
    got = parse_config_args([cmd[cmd.index("--run-config") + 1]])
    assert got["rounds"] == 3 and got["privacy-mode"] == "local"
    assert got["privacy-epsilon"] == 1.5 and got["robust"] == "median"
    assert got["analytics-histogram"] is True
    assert got["run-dir"] == str(tmp_path / "run")
