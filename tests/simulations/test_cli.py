"""The fedinterest command line, run as a user runs it (subprocess) and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.cli import main
from tests.client.test_store import acceptance_file

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_help_and_usage_errors() -> None:
    """--help works; a missing subcommand is a usage error (exit 2)."""
    out = run("--help")
    assert out.returncode == 0 and "ingest" in out.stdout and "data" in out.stdout
    assert run().returncode == 2
    assert run("data").returncode == 2
    assert run("data", "synth", "--users", "0", "--out", "x.jsonl").returncode == 2


def test_ingest_reports_rejects_and_strict(tmp_path: Path) -> None:
    """The acceptance file: exit 0 with 997 stored and 3 rejects by line; --strict exits 1."""
    src = tmp_path / "mixed.jsonl"
    acceptance_file(src)
    db = tmp_path / "d.db"
    out = run("ingest", "--store", str(db), str(src), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert (
        payload["accepted"] == 997 and payload["rejected"] == 3 and payload["stored_events"] == 997
    )
    rejections = payload["sources"][0]["rejections"]
    assert [(r["line"], r["reason"]) for r in rejections] == [
        (301, "bad_json"),
        (602, "missing"),
        (1000, "future_timestamp"),
    ]
    human = run("ingest", "--store", str(db), str(src))
    assert (
        "line 602: missing [user_id]" in human.stdout
        and "accepted 0, duplicates 997" in human.stdout
    )
    strict = run("ingest", "--store", str(db), str(src), "--strict", "-q")
    assert strict.returncode == 1 and strict.stderr.strip().count("\n") == 0
    assert "rejected (--strict)" in strict.stderr


def test_ingest_from_stdin_and_sqlite(tmp_path: Path) -> None:
    """`-` reads JSON Lines from standard input; --sqlite/--query reads a database."""
    import sqlite3

    lines = [
        json.dumps(
            {
                "user_id": "u",
                "timestamp": 1.7e9 + i,
                "event_type": "view",
                "item_id": f"i{i}",
                "text": f"t {i}",
            }
        )
        for i in range(5)
    ]
    db = tmp_path / "d.db"
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "ingest", "--store", str(db), "-", "--json"],
        input="\n".join(lines) + "\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and json.loads(out.stdout)["accepted"] == 5
    src = tmp_path / "src.db"
    c = sqlite3.connect(src)
    c.execute("CREATE TABLE t (u, ts, k, i, x)")
    c.execute("INSERT INTO t VALUES ('v', 1700000000, 'click', 'a', 'hello')")
    c.commit()
    c.close()
    q = "SELECT u AS user_id, ts AS timestamp, k AS event_type, i AS item_id, x AS text FROM t"
    out = run("ingest", "--store", str(db), "--sqlite", str(src), "--query", q, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["stored_events"] == 6
    bad = run("ingest", "--store", str(db), "--sqlite", str(src), "--query", "SELECT nope FROM t")
    assert bad.returncode == 1 and bad.stderr.startswith("fedinterest: error:")


def test_errors_are_one_line(tmp_path: Path) -> None:
    """A missing input or store fails with exit 1 and one line on stderr."""
    out = run("ingest", "--store", str(tmp_path / "d.db"), str(tmp_path / "missing.jsonl"))
    assert (
        out.returncode == 1
        and out.stderr.strip()
        == f"fedinterest: error: input file {str(tmp_path / 'missing.jsonl')!r} does not exist."
    )
    out = run("store", "info", "--store", str(tmp_path / "none.db"))
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1


def test_store_info_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`store info --json --users` reports counts and per-user aggregates."""
    src = tmp_path / "s.jsonl"
    main(["data", "synth", "--users", "3", "--seed", "1", "--out", str(src), "-q"])
    main(["ingest", "--store", str(tmp_path / "d.db"), str(src), "-q"])
    capsys.readouterr()
    assert main(["store", "info", "--store", str(tmp_path / "d.db"), "--users", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["users"] == 3 and len(info["user_aggregates"]) == 3 and info["ledger_entries"] == 0


@pytest.mark.slow
def test_encode_command_fills_cache(tmp_path: Path) -> None:
    """`encode` embeds each distinct text once; a second run encodes nothing."""
    src = tmp_path / "s.jsonl"
    main(["data", "synth", "--users", "2", "--seed", "1", "--out", str(src), "-q"])
    main(["ingest", "--store", str(tmp_path / "d.db"), str(src), "-q"])
    first = json.loads(run("encode", "--store", str(tmp_path / "d.db"), "--json").stdout)
    second = json.loads(run("encode", "--store", str(tmp_path / "d.db"), "--json").stdout)
    assert first["encoded"] > 0 and first["cached"] == first["encoded"] and second["encoded"] == 0


@pytest.mark.slow
def test_labels_command_writes_a_label_space(tmp_path: Path) -> None:
    """`labels` embeds the vocabulary with the projection the server will check."""
    from common.projection import PublicProjection
    from common.vocabulary import LabelSpace

    out = run(
        "labels", "--out", str(tmp_path / "labels.npz"), "--cache", str(tmp_path / "c.db"), "--json"
    )
    assert out.returncode == 0, out.stderr
    ls = LabelSpace.load(tmp_path / "labels.npz")
    assert ls.vectors.shape == (len(ls.vocabulary.labels), 128) and len(ls.vocabulary.roots) == 24
    assert ls.encoder_id.startswith("all-MiniLM-L6-v2:")
    assert (
        ls.projection_fingerprint
        == PublicProjection(384, 128, encoder_id=ls.encoder_id).fingerprint
    )


def test_run_flags_default_to_the_dataclasses() -> None:
    """`simulate` and `sweep` without flags run RunConfig()'s and SimulateOptions()'s defaults."""
    from dataclasses import replace

    from common.config import RunConfig
    from simulations.cli import build_parser
    from simulations.cli.simulate import (
        run_config_from_args,
        simulate_options_from_args,
        sweep_options_from_args,
    )
    from simulations.simulate import SimulateOptions

    args = build_parser().parse_args(["simulate"])
    assert run_config_from_args(args) == RunConfig()
    assert simulate_options_from_args(args, RunConfig()) == SimulateOptions(out=Path("run"))
    sweep = sweep_options_from_args(
        build_parser().parse_args(["sweep", "--epsilons", "0.5,2", "--out", "s"])
    )
    top = replace(RunConfig().privacy, epsilon=2.0)
    assert sweep.base.run == replace(RunConfig(), privacy=top)
    assert sweep.base == SimulateOptions(out=Path("s"), run=sweep.base.run)


def test_run_flags_reach_the_run_config() -> None:
    """Every run flag lands in its RunConfig field (the one mapping, for simulate and sweep)."""
    from common.records import ReleaseMode
    from simulations.cli import build_parser
    from simulations.cli.simulate import run_config_from_args

    shared = [
        "--rounds", "3", "--fraction", "0.5", "--seed", "4", "--delta", "1e-6", "--mode", "local",
        "--min-cohort-fraction", "0.5", "--tree-z", "1.5", "--adapter", "--no-popularity",
        "--popularity-noise-factor", "2", "--unit", "event", "--noise", "discrete-gaussian",
        "--user-clipping-norm", "7",
    ]  # fmt: skip
    own = ["--epsilon", "3", "--no-dp", "--robust", "median", "--round-attempts", "3",
           "--histogram", "--top-k", "2"]  # fmt: skip
    run = run_config_from_args(build_parser().parse_args(["simulate", *shared, *own]))
    p, a = run.privacy, run.analytics
    assert (run.rounds, run.fraction, run.seed, run.robust, run.round_attempts) == (
        3, 0.5, 4, "median", 3,
    )  # fmt: skip
    assert (p.epsilon, p.delta, p.mode, p.no_dp, p.min_cohort_fraction) == (
        3.0, 1e-6, ReleaseMode.LOCAL, True, 0.5,
    )  # fmt: skip
    assert run.clustering.tree_z == 1.5 and run.adapter.enabled
    assert (p.unit.value, p.noise.value, p.user_bound) == ("event", "discrete-gaussian", 7.0)
    assert (a.popularity, a.histogram, a.top_k, a.popularity_noise_factor) == (False, True, 2, 2.0)
    sweep = build_parser().parse_args(["sweep", "--epsilons", "1,4", "--out", "s", *shared])
    swept = run_config_from_args(sweep, epsilon=4.0)
    assert swept.privacy.epsilon == 4.0 and swept.analytics == run.analytics.__class__(
        popularity=False, popularity_noise_factor=2.0
    )
    assert (swept.rounds, swept.privacy.mode, swept.clustering.tree_z) == (
        3,
        ReleaseMode.LOCAL,
        1.5,
    )


def test_choices_match_the_libraries() -> None:
    """The accountants and robust modes the CLI offers are the ones the library takes."""
    from common.config import RunConfig
    from common.errors import ConfigError
    from common.privacy.accounting import Accountant
    from simulations.cli.audit import ACCOUNTANTS
    from simulations.cli.simulate import ROBUST_CHOICES

    assert tuple(a.value for a in Accountant) == ACCOUNTANTS
    assert all(RunConfig(robust=r).robust == r for r in ROBUST_CHOICES)
    with pytest.raises(ConfigError):
        RunConfig(robust="mean")


def test_help_quotes_the_libraries_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """A default left to a library (not imported to build the parser: it loads dp-accounting
    or Flower) is quoted in the help as the library has it."""
    import inspect

    from client.app import DEFAULT_DEVICE_EPSILON
    from client.encoder import EncoderConfig
    from client.node import NodeSpec
    from client.profile import segments
    from client.store import EventStore
    from simulations.simulate import SimulateOptions

    ingest_batch = inspect.signature(EventStore.ingest).parameters["batch_size"].default
    cases = [
        (["simulate"], f"one per user (default {SimulateOptions().clients})"),
        (["ingest"], f"(default: the store's, {ingest_batch})"),
        (["encode"], f"(default: the encoder's, {EncoderConfig().batch_size})"),
        (["profile"], f"(default {segments.__kwdefaults__['min_population']:g} devices)"),
        (["node", "start"], f"(default {NodeSpec.__dataclass_fields__['port'].default})"),
        (["node", "start"], f"epsilon (default {DEFAULT_DEVICE_EPSILON:g})"),
    ]
    for words, text in cases:
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        assert text in " ".join(capsys.readouterr().out.split()), (words, text)
