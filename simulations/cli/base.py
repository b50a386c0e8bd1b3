"""What every ``fedinterest`` command shares: the errors and the one error boundary, the
parser that raises instead of exiting, the output helpers and the argument types.

Exit codes: 0 success, 1 failure (one line on stderr: ``fedinterest: error: ...``), 2 bad
usage, 130 interrupted. This module imports nothing heavy: the parser is built for every
command, including those that must not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from common.errors import FedInterestError

__all__ = [
    "CliError",
    "Parser",
    "UsageError",
    "add_encoder_flag",
    "batch_size",
    "boundary",
    "default_of",
    "emit",
    "existing_store",
    "finite_float",
    "fmt_eps",
    "fraction",
    "input_file",
    "open_share",
    "output_flags",
    "positive_float",
    "positive_int",
    "progress_bar",
    "rate",
    "share",
    "stderr_lines",
]


class CliError(FedInterestError):
    """A failure to report on one line and exit 1."""

    exit_code = 1


class UsageError(CliError):
    """The command line itself is wrong (a flag, a missing argument): exit 2."""

    exit_code = 2


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised to :func:`boundary` instead of printed and exited on
    the spot: one line (or JSON with ``--json``), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``: the one source of a flag's default."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise AttributeError(f"{cls.__name__} has no field {name!r} with a default")


# -- output -------------------------------------------------------------------------------------


def add_encoder_flag(
    p: argparse.ArgumentParser, *, default: str | None = None, model_dir: bool = True
) -> None:
    """``--encoder`` (a registered encoder; ``default`` ``None`` leaves the run's or the
    SDK's default to the caller) and, with ``model_dir``, ``--model-dir`` (minilm only)."""
    from client.encoder_registry import DEFAULT_ENCODER, ENCODERS

    p.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        default=default,
        help="text encoder: "
        + "; ".join(f"{k}: {v}" for k, v in ENCODERS.items())
        + f" (default {default or DEFAULT_ENCODER})",
    )
    if not model_dir:
        return
    p.add_argument(
        "--model-dir",
        default=None,
        help="minilm only: a local Hugging Face model directory (default: the bundled MiniLM)",
    )


def output_flags() -> Parser:
    """``--json`` and ``--quiet``, the parent parser of every command."""
    p = Parser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    return p


def progress_bar(total: int | None, desc: str, args: argparse.Namespace, unit: str = "it") -> Any:
    """A tqdm bar on stderr, off with ``--quiet`` or ``--json``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=True if getattr(args, "quiet", False) or getattr(args, "json", False) else None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    """``payload`` as JSON with ``--json``, else ``human()`` unless ``--quiet``."""
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif not getattr(args, "quiet", False):
        human()


def stderr_lines(args: argparse.Namespace, prefix: str = "") -> Callable[[str], None] | None:
    """A progress callback printing lines on stderr, ``None`` with ``--quiet`` or ``--json``."""
    if args.quiet or args.json:
        return None
    return lambda m: print(f"{prefix}{m}", file=sys.stderr, flush=True)


def fmt_eps(v: Any) -> str:
    """An epsilon for people: 4 decimals, ``inf``, or the string a report holds."""
    if isinstance(v, str):
        return v
    return "inf" if v == float("inf") else f"{v:.4f}"


# -- input files --------------------------------------------------------------------------------


def existing_store(path: str) -> None:
    """A ``--store`` that must already exist (and be a file)."""
    if Path(path).is_dir():
        raise CliError(f"--store {path!r} is a directory, not a device store.")
    if not Path(path).is_file():
        raise CliError(f"store {path!r} does not exist.")


def input_file(path: str, flag: str) -> Path:
    """The file a flag names: it exists and is not a directory."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path!r} is a directory; give a file.")
    if not p.is_file():
        raise CliError(f"{flag} file {path!r} does not exist.")
    return p


# -- argument types -----------------------------------------------------------------------------


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}")
    return v


def batch_size(s: str) -> int:
    """Events per ingest transaction: 1 to the store's limit."""
    from client.store import MAX_INGEST_BATCH

    v = positive_int(s)
    if v > MAX_INGEST_BATCH:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_INGEST_BATCH} (events held in memory), found {s!r}"
        )
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {s!r}")
    return v


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {s!r}")
    return v


def _in_range(s: str, ok: Callable[[float], bool], interval: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in {interval}, found {s!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected a number in {interval}, found {s!r}")
    return v


def open_share(s: str) -> float:
    """A probability strictly between 0 and 1 (delta)."""
    return _in_range(s, lambda v: 0.0 < v < 1.0, "(0, 1)")


def fraction(s: str) -> float:
    """A share of a population that must sample somebody: (0, 1]."""
    return _in_range(s, lambda v: 0.0 < v <= 1.0, "(0, 1]")


def rate(s: str) -> float:
    """A per-device probability that leaves somebody: [0, 1)."""
    return _in_range(s, lambda v: 0.0 <= v < 1.0, "[0, 1)")


def share(s: str) -> float:
    """A share, ends included: [0, 1]."""
    return _in_range(s, lambda v: 0.0 <= v <= 1.0, "[0, 1]")


# -- the error boundary -------------------------------------------------------------------------


def _report_error(message: str, code: int, kind: str, as_json: bool) -> int:
    """The CLI's one way to fail: one line on stderr (``--json``: one JSON object)."""
    message = " ".join(message.split())  # one line, whatever the exception text held
    if as_json:
        doc = {"error": {"message": message, "type": kind, "exit_code": code}}
        sys.stderr.write(json.dumps(doc, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"fedinterest: error: {message}\n")
    sys.stderr.flush()
    return code


def _os_error_message(err: OSError) -> str:
    what = err.strerror or str(err)
    if err.filename is not None:
        return f"{what}: {str(err.filename)!r}."
    return f"{what}."


def boundary(command: Callable[[], int], words: Sequence[str]) -> int:
    """Runs ``command``; returns its exit code, or the code of the error it raised.

    This is the one error boundary: no traceback reaches a user. An unexpected exception is
    reported on one line as an internal error; ``FEDINTEREST_DEBUG=1`` re-raises it.

    Args:
        command: parses the command line and runs the command.
        words: the command line (``--json`` in it: errors as one JSON object).
    """
    as_json = "--json" in words
    try:
        return command()
    except CliError as err:
        return _report_error(str(err), err.exit_code, type(err).__name__, as_json)
    except FedInterestError as err:
        return _report_error(str(err), 1, type(err).__name__, as_json)
    except BrokenPipeError:
        # the reader went away (`| head`): nothing to say, and nothing more to print
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        return _report_error(_os_error_message(err), 1, type(err).__name__, as_json)
    except KeyboardInterrupt:
        print("fedinterest: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("FEDINTEREST_DEBUG"):
            raise
        return _report_error(
            f"internal error ({type(err).__name__}: {err}); please report it, with the "
            "command; FEDINTEREST_DEBUG=1 shows the traceback.",
            1,
            "InternalError",
            as_json,
        )
