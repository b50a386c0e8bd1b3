"""`fedinterest sweep` on bad inputs: a bad dataset, taxonomy, cache or output is refused before
anything is written (one `fedinterest: error:` line naming the flag and the value, exit 1), and
a sweep never marks itself complete when a run failed or none finished."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from common.errors import ConfigError
from simulations.cli import main


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def _sweep(tmp: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--epsilons",
        "1,2",
        "--out",
        str(tmp / "sweep"),
        "--clients",
        "3",
        "--rounds",
        "1",
        "--cache",
        str(tmp / "cache.db"),
        "-q",
        *extra,
    ]


def _refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp: Path, must_name: list[str]
) -> str:
    capsys.readouterr()
    before = _tree(tmp)
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedinterest: error: ") and "internal error" not in lines[0]
    for word in must_name:
        assert word in lines[0], (word, lines[0])
    assert _tree(tmp) == before, "the refused sweep wrote something"
    return lines[0]


def _mind_without_files(tmp: Path) -> str:
    (tmp / "mind").mkdir()
    (tmp / "mind" / "news.tsv").write_text("")
    return f"mind:{tmp / 'mind'}"


def _events_dir(tmp: Path) -> str:
    (tmp / "events").mkdir()
    return f"events:{tmp / 'events'}"


@pytest.mark.parametrize(
    ("dataset", "words"),
    [
        (
            lambda _t: "nonsense",
            [
                "`--dataset` must be synthetic, kuairec[:FILE], catalogue:FILE, movielens, "
                "mind:DIR or events:FILE. Found 'nonsense'."
            ],
        ),
        (lambda _t: "events:", ["`--dataset`", "'events:'", "no file name"]),
        (lambda _t: "catalogue:", ["`--dataset`", "catalogue:FILE", "'catalogue:'"]),
        (lambda t: f"kuairec:{t / 'none.csv'}", ["`--dataset`", "kuairec", "no such file"]),
        (lambda t: f"events:{t / 'missing.jsonl'}", ["`--dataset`", "no such file"]),
        (_events_dir, ["`--dataset`", "is a directory"]),
        (lambda _t: "mind:", ["`--dataset`", "'mind:'"]),
        (_mind_without_files, ["`--dataset`", "has no behaviors.tsv"]),
        (lambda t: f"movielens:{t / 'nowhere'}", ["`--dataset`", "is not a directory"]),
    ],
    ids=[
        "unknown",
        "events-no-file",
        "catalogue-no-file",
        "kuairec-missing",
        "events-missing",
        "events-dir",
        "mind-no-dir",
        "mind-files",
        "movielens",
    ],
)
def test_bad_dataset_is_refused_before_anything_is_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dataset: Callable[[Path], str],
    words: list[str],
) -> None:
    """Was: a sweep.json with `"complete": true` and no finished run."""
    _refused(_sweep(tmp_path, "--dataset", dataset(tmp_path)), capsys, tmp_path, words)


def test_bad_taxonomy_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("no\theader\there\n")
    _refused(_sweep(tmp_path, "--taxonomy", str(tsv)), capsys, tmp_path, ["taxonomy", str(tsv)])
    _refused(
        _sweep(tmp_path, "--taxonomy", str(tmp_path / "none.tsv")),
        capsys,
        tmp_path,
        ["taxonomy", "does not exist"],
    )


def test_cache_directory_and_file_out_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache.db").mkdir()
    _refused(_sweep(tmp_path), capsys, tmp_path, ["`--cache`", "a directory"])
    (tmp_path / "cache.db").rmdir()
    (tmp_path / "sweep").write_text("a file")
    _refused(_sweep(tmp_path), capsys, tmp_path, ["`--out`", "a file"])


def test_unreadable_sweep_json_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_bytes(b'{"settings": \xff')
    _refused(_sweep(tmp_path), capsys, tmp_path, ["sweep.json", "--overwrite"])


def test_programmatic_sweep_checks_before_writing(tmp_path: Path) -> None:
    from simulations.simulate import SimulateOptions
    from simulations.sweep import SweepOptions, run_sweep

    opts = SweepOptions(
        epsilons=(1.0,), out=tmp_path / "s", base=SimulateOptions(dataset="nonsense")
    )
    with pytest.raises(ConfigError, match="`--dataset`"):
        run_sweep(opts)
    assert not (tmp_path / "s").exists()


def test_sweep_with_only_failed_runs_is_not_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An events file that passes the cheap checks but holds no usable event: every run fails
    (fast, at loading); sweep.json records them and is not complete; exit 1."""
    events = tmp_path / "events.jsonl"
    events.write_text('not json\n{"user_id": 1}\n')
    assert main(_sweep(tmp_path, "--dataset", f"events:{events}")) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedinterest: error: 2 run(s) failed") and len(err.splitlines()) == 1
    doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["failed", "failed"]
    assert doc["complete"] is False
    assert not list((tmp_path / "sweep").glob("*.tmp"))
