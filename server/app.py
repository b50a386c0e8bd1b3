"""Thin Flower ServerApp glue.

The deployed ServerApp (``server.app:app``) reads its configuration from Flower's run config
(:meth:`common.config.RunConfig.from_run_config`) plus two keys of its own: ``run-dir`` (where
the server database, ``hierarchy.json`` and ``rounds.jsonl`` go) and ``labels-file`` (the
label vocabulary embedded with the devices' encoder and the run's projection, written by
``fedinterest labels``; the server never loads a language model itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.errors import ConfigError
from common.vocabulary import LabelSpace
from server.storage import ServerStorage
from server.strategy import InterestServer, RoundSummary

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
) -> ServerApp:
    """A ServerApp running :class:`InterestServer` with the given settings (simulation)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        with ServerStorage(Path(run_dir) / "server.db") as storage:
            summaries = InterestServer(
                run,
                labels,
                storage,
                run_dir=run_dir,
                expected_nodes=expected_nodes,
                on_round=on_round,
                on_reply=on_reply,
                catalogue=catalogue,
            ).run(grid, context)
        if on_done is not None:
            on_done(summaries)

    return server


def _from_run_config(cfg: dict[str, Any]) -> tuple[RunConfig, LabelSpace, Path, int | None]:
    own = {RUN_DIR_KEY, LABELS_FILE_KEY, EXPECTED_NODES_KEY}
    if RUN_DIR_KEY not in cfg or LABELS_FILE_KEY not in cfg:
        raise ConfigError(
            f"the run config needs `{RUN_DIR_KEY}` and `{LABELS_FILE_KEY}`. Found {sorted(cfg)}."
        )
    run = RunConfig.from_run_config({k: v for k, v in cfg.items() if k not in own})
    labels = LabelSpace.load(str(cfg[LABELS_FILE_KEY]))
    expected = cfg.get(EXPECTED_NODES_KEY)
    return run, labels, Path(str(cfg[RUN_DIR_KEY])), None if expected is None else int(expected)


app = ServerApp()


@app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    run, labels, run_dir, expected = _from_run_config(dict(context.run_config))
    with ServerStorage(run_dir / "server.db") as storage:
        InterestServer(run, labels, storage, run_dir=run_dir, expected_nodes=expected).run(
            grid, context
        )
