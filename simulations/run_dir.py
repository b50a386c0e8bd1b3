"""Run directories: what ``simulate`` may write into, and how ``--overwrite`` replaces one
without ever losing a user's files.

Rules (checked before anything is written):

- ``--out`` must not be an existing file, the working directory, one of its parents, the home
  directory or the filesystem root, with or without ``--overwrite``;
- an existing non-empty directory is replaced only with ``--overwrite`` and only when it is a
  fedinterest run: it holds :data:`RUN_MARKER` (written first thing into every run), or, for a
  run written before the marker existed, ``config.json`` with ``server.db``;
- the replacement is built beside the old run (a hidden sibling directory) and swapped in only
  when the new run has finished; a failed run leaves the old one as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from client.encoder_registry import DEFAULT_ENCODER
from common.config import RunConfig
from common.errors import ConfigError
from common.jsonio import atomic_write_text, json_safe
from simulations.options import DEFAULT_EVAL_USERS, Engine, SimulateOptions

if TYPE_CHECKING:
    from common.vocabulary import Vocabulary

__all__ = [
    "RUN_MARKER",
    "RunStaging",
    "check_resumable",
    "check_run_target",
    "is_run_dir",
    "options_from_run_dir",
    "rewrite_outputs_from_db",
    "write_config",
]

#: written first into every run directory: ``--overwrite`` replaces only directories holding it
RUN_MARKER: Final[str] = ".fedinterest-run"
_LEGACY_RUN_FILES: Final[tuple[str, ...]] = ("config.json", "server.db")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory that ``simulate`` wrote."""
    if not path.is_dir():
        return False
    return (path / RUN_MARKER).is_file() or all((path / f).exists() for f in _LEGACY_RUN_FILES)


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be a run directory to replace, or ``None``."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd:
        return "it is the working directory"
    if target in cwd.parents:
        return "it holds the working directory"
    if target == Path(target.anchor):
        return "it is the filesystem root"
    home = Path.home().resolve()
    if target == home or target in home.parents:
        return "it is (or holds) the home directory"
    return None


def check_run_target(out: Path, *, overwrite: bool) -> None:
    """Refuses an ``--out`` that a new run may not write to. Writes nothing.

    Raises:
        ConfigError: naming ``--out``, the path and why.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`--out` {str(out)!r} is a file, not a directory; choose another --out.")
    if not out.exists():
        parent = next((p for p in out.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"`--out` {str(out)!r} lies under the file {str(parent)!r}.")
        return
    if not any(out.iterdir()):
        why = _protected(out)
        if why is not None and overwrite:
            raise ConfigError(f"`--out` {str(out)!r} cannot be a run directory: {why}.")
        return
    if not overwrite:
        raise ConfigError(
            f"run directory {str(out)!r} is not empty; pass --overwrite or choose another --out."
        )
    why = _protected(out)
    if why is not None:
        raise ConfigError(f"`--overwrite` refuses to replace {str(out)!r}: {why}.")
    if not is_run_dir(out):
        raise ConfigError(
            f"`--overwrite` refuses to replace {str(out)!r}: it is not a fedinterest run "
            f"directory (no {RUN_MARKER} marker); remove it yourself or choose another --out."
        )


class RunStaging:
    """Where a new run writes, and the swap into ``out`` once it has finished.

    A fresh (absent or empty) ``out`` is written in place; replacing a run writes a hidden
    sibling ``.NAME.partial-PID`` and swaps it in on :meth:`commit`. Call
    :func:`check_run_target` first.
    """

    def __init__(self, out: Path, *, resume: bool = False) -> None:
        self.out = out
        self._replace = not resume and out.is_dir() and any(out.iterdir())
        self._created = not out.exists()
        if self._replace:
            self.path = out.parent / f".{out.name}.partial-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(self.path)
        else:
            self.path = out
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            marker = {"written_by": "fedinterest simulate", "started_at": time.time()}
            (self.path / RUN_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")

    def commit(self) -> None:
        """Puts the finished run at ``out`` (the replaced run is removed only now)."""
        if not self._replace:
            return
        old = self.out.parent / f".{self.out.name}.replaced-{os.getpid()}"
        self.out.rename(old)
        self.path.rename(self.out)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self, *, keep: bool) -> None:
        """After a failure: removes what this run created (a staged replacement always; a
        fresh directory unless ``keep``, e.g. once rounds ran and ``--resume`` can use it)."""
        if self._replace or (self._created and not keep):
            shutil.rmtree(self.path, ignore_errors=True)
        elif not keep:
            for child in self.path.iterdir():  # it was empty: leave it empty
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


# -- a run's config.json and outputs, read back ------------------------------------------------


def write_config(
    out: Path, opts: SimulateOptions, run: RunConfig, clients: int, vocabulary: Vocabulary
) -> None:
    doc = {
        "dataset": opts.dataset,
        "clients": clients,
        "events_per_user": opts.events_per_user,
        "max_events_per_client": opts.max_events_per_client,
        "holdout": opts.holdout,
        "taxonomy": str(opts.taxonomy) if opts.taxonomy else None,
        "run": asdict(run),
        "vocabulary": vocabulary.name,
        "device_budget_epsilon": None if run.privacy.no_dp else run.privacy.device_budget_epsilon,
        "device_budgets": {str(k): v for k, v in opts.device_budgets.items()},
        "engine": opts.engine.value,
        "workers": opts.workers,
        "eval_users": opts.eval_users,
        "encoder": opts.encoder,
    }
    atomic_write_text(out / "config.json", json.dumps(json_safe(doc), indent=1, default=str) + "\n")


def check_resumable(out: Path) -> None:
    for name in ("config.json", "server.db", "labels.npz", "clients"):
        if not (out / name).exists():
            raise ConfigError(
                f"cannot resume {str(out)!r}: it has no {name} (was it written by simulate?)."
            )


def rewrite_outputs_from_db(out: Path) -> None:
    """After a crash, ``rounds.jsonl`` and ``hierarchy.json`` are rebuilt from the server's
    database (the source of truth, written in one transaction per round)."""
    from server.storage import ServerStorage

    with ServerStorage(out / "server.db") as st:
        rounds = st.rounds()
        h = st.latest_version()
    atomic_write_text(
        out / "rounds.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds)
    )
    if h is not None:
        h.save(out / "hierarchy.json")


def options_from_run_dir(run_dir: str | Path, **over: Any) -> SimulateOptions:
    """The options a run directory was written with (``config.json``), for resuming or
    re-running it (e.g. the empirical audit). A corrupt or foreign file is a
    :class:`ConfigError` naming the file and the field."""
    d = Path(run_dir)
    path = d / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(d)!r} has no config.json.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is not a JSON run config: {err}.") from err
    try:
        if not isinstance(cfg, dict) or not isinstance(cfg.get("run"), dict):
            raise ConfigError("it must be an object with a `run` object.")
        return _options_from_config(cfg, d, over)
    except ConfigError as err:
        raise ConfigError(f"{str(path)!r}: {err}") from err
    except KeyError as err:
        raise ConfigError(f"{str(path)!r} lacks the field {err}.") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{str(path)!r} has a field of the wrong type or value: {err}.") from err


def _options_from_config(cfg: dict[str, Any], d: Path, over: dict[str, Any]) -> SimulateOptions:
    from common.config import AdapterConfig, AnalyticsConfig, ClusteringConfig, PrivacyConfig

    r = cfg["run"]
    run = RunConfig(
        **{
            k: v for k, v in r.items() if k not in ("privacy", "clustering", "adapter", "analytics")
        },
        privacy=PrivacyConfig(**r["privacy"]),
        clustering=ClusteringConfig(**r["clustering"]),
        adapter=AdapterConfig(**r.get("adapter", {})),
        analytics=AnalyticsConfig(**r.get("analytics", {})),
    )
    base = SimulateOptions(
        dataset=cfg["dataset"],
        clients=int(cfg["clients"]),
        out=d,
        run=run,
        events_per_user=int(cfg.get("events_per_user", 60)),
        max_events_per_client=cfg.get("max_events_per_client", 5000),
        holdout=float(cfg.get("holdout", 0.2)),
        taxonomy=Path(cfg["taxonomy"]) if cfg.get("taxonomy") else None,
        device_budgets={int(k): float(v) for k, v in (cfg.get("device_budgets") or {}).items()},
        engine=Engine(cfg.get("engine", Engine.DEVICES.value)),
        workers=None if cfg.get("workers") is None else int(cfg["workers"]),
        eval_users=int(cfg.get("eval_users", DEFAULT_EVAL_USERS)),
        encoder=str(cfg.get("encoder", DEFAULT_ENCODER)),
    )
    return replace(base, **over)
