"""Thin Flower ServerApp glue.

The deployed ServerApp (``server.app:app``, packaged for ``flwr run`` in ``server/flwr_app``)
reads its configuration from Flower's run config
(:meth:`common.config.RunConfig.from_run_config`) plus keys of its own: ``run-dir`` (where the
server database, ``hierarchy.json``, ``rounds.jsonl``, ``config.json`` and ``metrics.json``
go), ``labels-file`` (the label vocabulary embedded with the devices' encoder and the run's
projection, written by ``fedinterest labels``; the server never loads a language model itself),
both absolute paths, and ``expected-nodes`` (devices to wait for before round 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.errors import ConfigError
from common.vocabulary import LabelSpace
from server.collectors import ReleaseCollector
from server.private_seeding import auto_seeding
from server.round import RoundSummary, ServerConfig
from server.round_loop import RoundLoop
from server.storage import ServerStorage

__all__ = ["EXPECTED_NODES_KEY", "LABELS_FILE_KEY", "RUN_DIR_KEY", "app", "build_server_app"]

RUN_DIR_KEY = "run-dir"
LABELS_FILE_KEY = "labels-file"
EXPECTED_NODES_KEY = "expected-nodes"
log = logging.getLogger("fedinterest.server")


def build_server_app(
    run: RunConfig,
    labels: LabelSpace,
    run_dir: str | Path,
    *,
    expected_nodes: int | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
    on_done: Callable[[list[RoundSummary]], None] | None = None,
    on_reply: Callable[[Any], None] | None = None,
    catalogue: list[str] | None = None,
    collector: Callable[[Grid], ReleaseCollector] | None = None,
    seeds: Any = None,
    names: Any = None,
) -> ServerApp:
    """A ServerApp running the rounds (:class:`server.round_loop.RoundLoop`) with the given
    settings (simulation); ``collector`` builds the release collector from the (metered)
    grid (default: the run's mode, :func:`server.collectors.collector_for`)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        config = ServerConfig.build(run, labels, catalogue, seeds, names)
        with ServerStorage(Path(run_dir) / "server.db") as storage:
            summaries = RoundLoop(
                config,
                storage,
                run_dir=run_dir,
                expected_nodes=expected_nodes,
                on_round=on_round,
                on_reply=on_reply,
                collector_factory=collector,
            ).run(grid, context)
        if on_done is not None:
            on_done(summaries)

    return server


def _from_run_config(cfg: dict[str, Any]) -> tuple[RunConfig, LabelSpace, Path, int | None]:
    own = {RUN_DIR_KEY, LABELS_FILE_KEY, EXPECTED_NODES_KEY}
    for key in (RUN_DIR_KEY, LABELS_FILE_KEY):
        # the app's pyproject lists both with "" (a key must exist there to be overridable)
        if not str(cfg.get(key, "")) or not Path(str(cfg[key])).is_absolute():
            raise ConfigError(
                f"the run config needs `{key}` as an absolute path (flwr run ... --run-config "
                f"'{key}=\"/abs/path\"'). Found {cfg.get(key)!r}."
            )
    run = RunConfig.from_run_config({k: v for k, v in cfg.items() if k not in own})
    if run.clustering.seeding == "catalogue":
        raise ConfigError(
            f"`clustering-seeding` {run.clustering.seeding!r} is simulation-only in this "
            "version: a deployed run seeds from the label vocabulary (`auto` resolves to it) or "
            "from its devices' data (`private`)."
        )
    labels = LabelSpace.load(str(cfg[LABELS_FILE_KEY]))
    raw = cfg.get(EXPECTED_NODES_KEY)
    expected = None if raw is None else int(raw)
    return deployed_seeding(run, expected), labels, Path(str(cfg[RUN_DIR_KEY])), expected


def deployed_seeding(run: RunConfig, expected_nodes: int | None) -> RunConfig:
    """``run`` with its seeding resolved for a deployed server, which holds no catalogue:
    ``auto`` seeds privately from a population that can carry it (``expected_nodes``), else
    from the vocabulary (:func:`server.private_seeding.auto_seeding`)."""
    c = run.clustering
    if auto_seeding(c.seeding, has_catalogue=False, population=expected_nodes) == "private":
        return replace(run, clustering=replace(c, seeding="private"))
    return run


app = ServerApp()


@app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    from server.deploy import write_run_config, write_run_metrics

    cfg = dict(context.run_config)
    run, labels, run_dir, expected = _from_run_config(cfg)
    write_run_config(
        run_dir,
        run,
        labels_file=str(cfg[LABELS_FILE_KEY]),
        expected_nodes=expected,
        flower_run_id=grid.run.run_id,
    )
    labels.save(run_dir / "labels.npz")
    config = ServerConfig.build(run, labels)
    with ServerStorage(run_dir / "server.db") as storage:
        RoundLoop(
            config, storage, run_dir=run_dir, expected_nodes=expected, on_round=_log_round
        ).run(grid, context)
        write_run_metrics(run_dir, run, storage.rounds())


def _log_round(s: RoundSummary) -> None:
    # Flower streams its own logger's output to `flwr run --stream`
    from flwr.common.logger import log as flwr_log

    flwr_log(
        logging.INFO,
        "[fedinterest] round %d: %s, %d/%d releases summed, tree v%s (%d broad interests), "
        "event-level epsilon %.3f, %.1fs%s",
        s.server_round,
        s.status,
        s.usable,
        s.sampled,
        s.hierarchy_version,
        s.level1_nodes,
        s.epsilon_event_level,
        s.seconds,
        f", failures {dict(s.failures)}" if s.failures else "",
    )
