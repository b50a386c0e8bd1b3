"""`fedinterest report` on hostile run directories: every bad file is one line on stderr that
names the file and the field, exit 1, and nothing is written (no report, no temporary file, no
change in the run directory)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.config import PrivacyConfig, RunConfig
from simulations.cli import main
from simulations.options import Engine


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A real run (6 devices x 1 round on a JSON Lines file of synthetic events) with a fresh
    audit.json, so that a report on a copy reads it instead of writing one."""
    from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl
    from simulations.report import write_report
    from simulations.simulate import SimulateOptions, simulate

    base = tmp_path_factory.mktemp("hostile-report")
    events = base / "events.jsonl"
    write_jsonl(generate(SyntheticConfig(users=6, seed=5, events_per_user=20)).events, events)
    run = base / "run"
    simulate(
        SimulateOptions(
            engine=Engine.DEVICES,
            dataset=f"events:{events}",
            clients=6,
            out=run,
            run=RunConfig(rounds=1, seed=5, privacy=PrivacyConfig(epsilon=4.0)),
            cache=cache,
        )
    )
    write_report(run, base / "first.html", utility=False)  # writes audit.json
    assert (run / "audit.json").is_file() and (run / "hierarchy.json").is_file()
    return run


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the run (modification times kept: its audit.json stays up to date)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], *, watch: Path, must_name: list[str]
) -> str:
    """Runs the CLI, asserts exit 1 with one `fedinterest: error:` line naming ``must_name``
    and that nothing under ``watch`` changed; returns the message."""
    capsys.readouterr()
    before = _snapshot(watch)
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    msg = lines[0]
    assert msg.startswith("fedinterest: error: ") and "internal error" not in msg, msg
    assert "Traceback" not in captured.err
    for word in must_name:
        assert word in msg, (word, msg)
    assert _snapshot(watch) == before, "the refused command wrote or changed files"
    return msg


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    edit(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def _set(*keys: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for k in keys[:-1]:
            doc = doc[k]
        doc[keys[-1]] = value

    return edit


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _first_round_as_string(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    rec["server_round"] = "1"
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n", encoding="utf-8")


def _rename_per_round(path: Path) -> None:
    _edit_json(path, lambda d: d.__setitem__("per_round", {"first": {"epsilon_max": 1.0}}))


def _replace_by_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _hierarchy_only(edit: Callable[[Path], object]) -> Callable[[Path], object]:
    """The run without server.db: the report then reads hierarchy.json."""

    def mutate(run: Path) -> None:
        (run / "server.db").unlink()
        edit(run / "hierarchy.json")

    return mutate


# (case id, the file edited, edit, words the message must hold)
CASES: list[tuple[str, Callable[[Path], object], list[str]]] = [
    (
        "metrics-field-type",
        lambda r: _edit_json(r / "metrics.json", _set("federated", value="x")),
        ["metrics.json", "`federated` must be a JSON object. Found 'x'."],
    ),
    (
        "metrics-nested-field-type",
        lambda r: _edit_json(r / "metrics.json", _set("ranking", "federated", value=[1, 2])),
        ["metrics.json", "`ranking.federated` must be a JSON object"],
    ),
    (
        "metrics-number-type",
        lambda r: _edit_json(r / "metrics.json", _set("rounds_completed", value="two")),
        ["metrics.json", "`rounds_completed` must be an integer. Found 'two'."],
    ),
    (
        "metrics-not-an-object",
        lambda r: (r / "metrics.json").write_text("[1, 2]"),
        ["metrics.json", "must be a JSON object"],
    ),
    (
        "metrics-not-json",
        lambda r: (r / "metrics.json").write_text("{not json"),
        ["metrics.json", "must be JSON", "line 1 column 2"],
    ),
    (
        "metrics-not-utf8",
        lambda r: (r / "metrics.json").write_bytes(b'{"dataset": "\xff\xfe"}'),
        ["metrics.json", "must be UTF-8", "0xff"],
    ),
    (
        "metrics-truncated",
        lambda r: (r / "metrics.json").write_text('{"clients": 6, "federated": {"nmi_level1": 0.8'),
        ["metrics.json", "must be JSON", "truncated"],
    ),
    (
        "metrics-empty",
        lambda r: (r / "metrics.json").write_bytes(b""),
        ["metrics.json", "empty file"],
    ),
    (
        "metrics-too-deep",
        lambda r: (r / "metrics.json").write_text("[" * 100_000),
        ["metrics.json", "nesting too deep"],
    ),
    (
        "metrics-is-a-directory",
        lambda r: _replace_by_directory(r / "metrics.json"),
        ["metrics.json", "must be a file. Found a directory."],
    ),
    (
        "config-field-type",
        lambda r: _edit_json(r / "config.json", _set("run", "privacy", "delta", value="x")),
        ["config.json", "`run.privacy.delta` must be a number in (0, 1). Found 'x'."],
    ),
    (
        "config-section-type",
        lambda r: _edit_json(r / "config.json", _set("run", value=[])),
        ["config.json", "`run` must be a JSON object. Found []."],
    ),
    (
        "config-projection",
        lambda r: _edit_json(
            r / "config.json", _set("run", "clustering", "projection_dim", value=10**400)
        ),
        ["config.json", "`run.clustering.projection_dim` must be an integer >= 2"],
    ),
    (
        "config-not-an-object",
        lambda r: (r / "config.json").write_text('"a string"'),
        ["config.json", "must be a JSON object. Found 'a string'."],
    ),
    (
        "rounds-field-type",
        lambda r: _first_round_as_string(r / "rounds.jsonl"),
        ["rounds.jsonl line 1", "`server_round` must be an integer. Found '1'."],
    ),
    (
        "rounds-missing-field",
        lambda r: (r / "rounds.jsonl").write_text("{}\n"),
        ["rounds.jsonl line 1", "`server_round` must be an integer. Found nothing"],
    ),
    (
        "rounds-not-json",
        lambda r: (r / "rounds.jsonl").write_text('{"server_round": 1}\nnot json\n'),
        ["rounds.jsonl line 2 must be JSON"],
    ),
    (
        "rounds-not-utf8",
        lambda r: (r / "rounds.jsonl").write_bytes(b"\xc3\x28\n"),
        ["rounds.jsonl", "must be UTF-8"],
    ),
    (
        "audit-field-type",
        lambda r: _edit_json(r / "audit.json", _set("flags", value="none")),
        ["audit.json", "`flags` must be a JSON list. Found 'none'", "--reaudit"],
    ),
    (
        "audit-keys",
        lambda r: _rename_per_round(r / "audit.json"),
        ["audit.json", "the keys of `per_round` must be integers. Found 'first'"],
    ),
    (
        "audit-truncated",
        lambda r: _half(r / "audit.json"),
        ["audit.json", "must be JSON"],
    ),
    (
        "hierarchy-field-type",
        _hierarchy_only(lambda p: _edit_json(p, _set("merged", value="x"))),
        ["hierarchy.json", "`merged` must be a JSON object. Found 'x'."],
    ),
    (
        "hierarchy-node-weight",
        _hierarchy_only(
            lambda p: _edit_json(p, lambda d: d["nodes"][0].__setitem__("weight", "heavy"))
        ),
        ["hierarchy.json", "`nodes[0].weight` must be a number. Found 'heavy'."],
    ),
    (
        "hierarchy-not-json",
        _hierarchy_only(lambda p: p.write_text("<html>")),
        ["hierarchy.json", "must be JSON"],
    ),
    (
        "labels-npz-garbage",
        lambda r: (r / "labels.npz").write_bytes(b"PK\x03\x04 not really a zip"),
        ["labels.npz", "unreadable"],
    ),
    (
        "server-db-garbage",
        lambda r: (r / "server.db").write_text("not a database"),
        ["server.db", "must be a SQLite database"],
    ),
    (
        "server-db-empty",
        lambda r: (r / "server.db").write_bytes(b""),
        ["server.db", "must be a SQLite database. Found an empty file."],
    ),
]


@pytest.mark.parametrize(("edit", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_run_file_is_one_line_naming_file_and_field(
    run_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[Path], object],
    words: list[str],
) -> None:
    edit(run_copy)
    out = tmp_path / "out" / "report.html"
    _refused(["report", str(run_copy), "--out", str(out)], capsys, watch=tmp_path, must_name=words)
    assert not (tmp_path / "out").exists()
    # the default output (RUN_DIR/report.html) is refused the same way
    _refused(["report", str(run_copy)], capsys, watch=tmp_path, must_name=words[:1])


def test_out_directory_is_refused_before_anything_is_written(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out DIR` (an existing directory): refused up front, no ~2 MB .tmp left beside it."""
    out = tmp_path / "reports"
    out.mkdir()
    msg = _refused(
        ["report", str(run_copy), "--out", str(out)],
        capsys,
        watch=tmp_path,
        must_name=["`--out`", str(out), "is a directory", str(out / "report.html")],
    )
    assert msg == (
        f"fedinterest: error: `--out` {str(out)!r} is a directory; give a file path such as "
        f"{str(out / 'report.html')!r}."
    )
    assert list(out.iterdir()) == [] and not list(tmp_path.rglob("*.tmp"))


def test_out_below_a_file_is_refused(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("x")
    _refused(
        ["report", str(run_copy), "--out", str(tmp_path / "plain" / "r.html")],
        capsys,
        watch=tmp_path,
        must_name=["`--out`", "must be a directory. Found a file."],
    )


def test_failed_write_leaves_no_temporary_file(
    run_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The atomic write removes its temporary file whatever fails (here: the final rename)."""

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    import common.jsonio

    # the one atomic write (common.jsonio) renames with os.replace
    monkeypatch.setattr(common.jsonio.os, "replace", no_rename)
    assert main(["report", str(run_copy), "--out", str(out / "r.html"), "--no-utility", "-q"]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.startswith("fedinterest: error: ") and len(err.splitlines()) == 1, err
    assert list(out.iterdir()) == []


def test_report_still_written_from_a_good_copy(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks accept what simulate writes (and json_safe's non-finite strings)."""
    _edit_json(run_copy / "metrics.json", _set("noise_multiplier", value="inf"))
    out = tmp_path / "r.html"
    assert main(["report", str(run_copy), "--out", str(out), "--no-utility", "-q"]) == 0
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))


def _no_dir(tmp: Path) -> Path:
    return tmp / "nope"


def _a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file"


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_no_dir, ["run directory", "nope", "does not exist."]),
        (_a_file, ["run directory", "file", "is a file"]),
        (_empty_dir, ["empty", "is not a run directory (no config.json)"]),
    ],
    ids=["missing", "a-file", "empty"],
)
def test_run_dir_itself_is_checked(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    words: list[str],
) -> None:
    run = make(tmp_path)
    _refused(["report", str(run)], capsys, watch=tmp_path, must_name=words)


def test_run_without_any_tree_is_refused(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No hierarchy.json and no server.db version: nothing to report, nothing written."""
    (run_copy / "hierarchy.json").unlink()
    (run_copy / "server.db").unlink()
    _refused(
        ["report", str(run_copy)],
        capsys,
        watch=tmp_path,
        must_name=["hierarchy.json", "must exist", "no interest tree"],
    )
