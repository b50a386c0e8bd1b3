"""The ``fedinterest`` command line: one module per command family.

======================  ===================================================================
module                  commands
======================  ===================================================================
:mod:`.data`            ``data synth``, ``data movielens``
:mod:`.store`           ``ingest``, ``store info``, ``encode``
:mod:`.simulate`        ``simulate``, ``sweep`` (the run flags, mapped to ``RunConfig``)
:mod:`.profile`         ``profile``, ``recommend``
:mod:`.audit`           ``audit``
:mod:`.report`          ``report``
:mod:`.labels`          ``labels``
:mod:`.deploy`          ``server ...``, ``node ...``
:mod:`.base`            errors, the error boundary, output helpers, argument types
======================  ===================================================================

Each family module has ``add_parser(subparsers, parents)`` and ``run(args)``. A command
imports what it needs when it runs, so a device that only ingests never imports torch.
Exit codes: 0 success, 1 failure (one line on stderr: ``fedinterest: error: ...``), 2 bad
usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from simulations.cli import audit, data, deploy, labels, profile, report, simulate, store
from simulations.cli.base import Parser, boundary, output_flags

__all__ = ["build_parser", "main"]

#: the families in the order ``fedinterest --help`` lists their commands
_FAMILIES = (data, store, simulate, profile, audit, report, labels, deploy)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fedinterest")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole ``fedinterest`` parser; each command sets ``handler`` (its family's ``run``)."""
    parser = Parser(
        prog="fedinterest",
        description="Federated, differentially private interest hierarchies from behaviour logs.",
    )
    parser.add_argument("--version", action="version", version=f"fedinterest {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [output_flags()]
    for family in _FAMILIES:
        family.add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code: 0 success, 1 error, 2 usage (130 interrupted)."""
    words = list(sys.argv[1:] if argv is None else argv)

    def command() -> int:
        args = build_parser().parse_args(words)
        return int(args.handler(args))

    return boundary(command, words)
