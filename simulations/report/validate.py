"""A run's files read and checked: every value the report uses is checked where it is read;
a problem is one :class:`common.errors.ConfigError` naming the file, the field and the value
found."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from common.hierarchy import Hierarchy
from simulations.report.values import as_number

__all__ = [
    "AUDIT",
    "CONFIG",
    "METRICS",
    "RUN_FILES",
    "check_file",
    "check_sqlite",
    "check_versions",
    "read_hierarchy",
    "read_json",
    "read_rounds",
]

_MAX_JSON_BYTES: Final = 512 << 20
RUN_FILES: Final = (
    "config.json",
    "metrics.json",
    "rounds.jsonl",
    "hierarchy.json",
    "audit.json",
    "server.db",
    "labels.npz",
)
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_KIND_TEXT: Final = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "object": "a JSON object",
    "list": "a JSON list",
}


@dataclass(frozen=True)
class _Shape:
    """What a JSON value must be.

    Attributes:
        kind: ``any``, ``number`` (or a number as a string, as ``json_safe`` writes ``"inf"``),
            ``integer``, ``string``, ``boolean``, ``object`` or ``list``.
        fields: an object's known fields (the others are not checked).
        each: the shape of every other field of an object, or of every item of a list.
        required: fields an object must have.
        nullable: ``null`` is accepted (an object's ``null`` field then counts as missing).
        test: an extra condition, described by ``expected``.
        int_keys: an object's keys must be integers (``"3"``).
    """

    kind: str
    fields: Mapping[str, _Shape] | None = None
    each: _Shape | None = None
    required: tuple[str, ...] = ()
    nullable: bool = True
    test: Callable[[Any], bool] | None = None
    expected: str = ""
    int_keys: bool = False


def _obj(
    fields: Mapping[str, _Shape] | None = None,
    *,
    each: _Shape | None = None,
    required: tuple[str, ...] = (),
    nullable: bool = True,
    int_keys: bool = False,
) -> _Shape:
    return _Shape("object", fields, each, required=required, nullable=nullable, int_keys=int_keys)


def _list(each: _Shape | None = None) -> _Shape:
    return _Shape("list", each=each)


_ANY: Final = _Shape("any")
_NUM: Final = _Shape("number")
_INT: Final = _Shape("integer")
_STR: Final = _Shape("string")
_BOOL: Final = _Shape("boolean")
_TEXT: Final = _Shape("string", nullable=False)
_DELTA: Final = _Shape(
    "number", nullable=False, test=lambda v: 0 < float(v) < 1, expected="a number in (0, 1)"
)
_ACCOUNTANT: Final = _Shape(
    "string", nullable=False, test=lambda v: v in ("pld", "rdp"), expected="'pld' or 'rdp'"
)
_SCORES: Final = _obj(each=_NUM)

CONFIG: Final = _obj(
    {
        "dataset": _STR,
        "clients": _INT,
        "device_budget_epsilon": _NUM,
        "device_budgets": _obj(each=_NUM, int_keys=True),
        "run": _obj(
            {
                "rounds": _INT,
                "privacy": _obj(
                    {
                        "epsilon": _NUM,
                        "delta": replace(_DELTA, nullable=True),
                        "accountant": replace(_ACCOUNTANT, nullable=True),
                        "no_dp": _BOOL,
                        "clipping_norm": _NUM,
                        "max_weight": _NUM,
                    }
                ),
                "clustering": _obj(
                    {
                        "projection_dim": _Shape(
                            "integer", test=lambda v: v >= 2, expected="an integer >= 2"
                        ),
                        "projection_seed": _Shape(
                            "integer", test=lambda v: v >= 0, expected="an integer >= 0"
                        ),
                    }
                ),
                "adapter": _obj({"enabled": _BOOL, "server_user_epsilon": _NUM}),
            }
        ),
    },
    nullable=False,
)

METRICS: Final = _obj(
    {
        "dataset": _STR,
        "clients": _INT,
        "events": _INT,
        "catalogue_items": _INT,
        "rounds": _INT,
        "rounds_completed": _INT,
        "epsilon_event_level_total": _NUM,
        "noise_multiplier": _NUM,
        "bytes_up_per_client_per_round": _NUM,
        "bytes_down_per_client_per_round": _NUM,
        "wall_seconds": _NUM,
        "federated": _SCORES,
        "centralized": _SCORES,
        "catalogue": _SCORES,
        "ratio": _SCORES,
        "seed_method": _SCORES,
        "seed_method_ratio": _SCORES,
        "ranking": _obj(
            {"popularity_prior": _ANY},
            each=_obj({"recall10": _NUM, "ndcg10": _NUM, "auc": _NUM}),
        ),
        # profile -> level -> scores
        "classification": _obj(each=_obj(each=_obj({"accuracy": _NUM, "macro_f1": _NUM}))),
        "drift": _obj(
            {
                "federated": _obj(
                    {
                        "users": _NUM,
                        "switched": _NUM,
                        "never_switched": _NUM,
                        "median_events": _NUM,
                        "p90_events": _NUM,
                    }
                )
            }
        ),
        "adapter": _obj(),
        "timing": _obj(each=_NUM),
    },
    nullable=False,
)

_ROUND: Final = _obj(
    {
        "server_round": _Shape("integer", nullable=False),
        "status": _ANY,
        "usable": _INT,
        "sampled": _INT,
        "live_leaves": _INT,
        "level1_nodes": _INT,
        "epsilon_event_level": _NUM,
        "noise_std": _NUM,
        "bytes_up": _NUM,
        "seconds": _NUM,
    },
    required=("server_round",),
    nullable=False,
)

_EMPIRICAL: Final = _obj(
    {
        "canaries": _INT,
        "guesses": _INT,
        "correct": _INT,
        "epsilon_lower_bound": _NUM,
        "epsilon_accounted_of_run": _NUM,
        "epsilon_accounted": _NUM,
    }
)

AUDIT: Final = _obj(
    {
        "delta": _DELTA,
        "accountant": _ACCOUNTANT,
        "event_level": _obj(
            {
                "devices": _INT,
                "epsilon_min": _NUM,
                "epsilon_median": _NUM,
                "epsilon_max": _NUM,
                "over_budget": _list(),
                "per_device": _list(_obj({"epsilon": _NUM}, nullable=False)),
            }
        ),
        "per_round": _obj(each=_obj({"epsilon_max": _NUM, "epsilon_median": _NUM}), int_keys=True),
        "user_level": _obj({"epsilon": _NUM, "per_output": _obj(each=_NUM)}),
        "mechanisms": _obj(
            each=_obj({"entries": _INT, "epsilon_max": _NUM, "epsilon_median": _NUM})
        ),
        "flags": _list(_TEXT),
        "guarantees": _list(_TEXT),
        "empirical": _obj({"dp": _EMPIRICAL, "nodp": _EMPIRICAL}),
    },
    required=("delta", "accountant"),
    nullable=False,
)


# what Hierarchy.from_dict converts without checking the type first
_HIERARCHY: Final = _obj(
    {
        "created_at": _NUM,
        "merged": _obj(each=_ANY),
        "gone": _list(),
        "nodes": _list(
            _obj(
                {"weight": _Shape("number", nullable=False), "labels": _list(_list(_ANY))},
                nullable=False,
            )
        ),
    },
    nullable=False,
)


def _show(v: Any) -> str:
    """A found value for a message: short, one line."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)  # as JSON spells them
    if isinstance(v, dict):
        text = f"a JSON object of {len(v)} field{'s' if len(v) != 1 else ''}" if v else "{}"
    elif isinstance(v, list):
        text = f"a JSON list of {len(v)} item{'s' if len(v) != 1 else ''}" if v else "[]"
    elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**30:
        text = f"an integer of {len(str(abs(v)))} digits"
    else:
        text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        try:
            float(v)
        except OverflowError:
            return False
        return True
    return isinstance(v, str) and as_number(v) is not None


def _is_kind(kind: str, v: Any) -> bool:
    if kind == "number":
        return _is_number(v)
    if kind == "integer":  # within int64, as every count and round number the report shows
        return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63
    types: dict[str, type] = {"string": str, "boolean": bool, "object": dict, "list": list}
    return isinstance(v, types[kind])


def _conform(v: Any, shape: _Shape, where: str, source: str) -> Any:
    """``v`` checked against ``shape``; an object's ``null`` objects and lists are dropped
    (the report reads them as missing). Raises ConfigError naming ``source`` and the field."""

    def bad(expected: str) -> ConfigError:
        name = f"`{where}`" if where else "the content"
        return ConfigError(f"{source}: {name} must be {expected}. Found {_show(v)}.")

    kind = shape.kind
    if v is None:
        if shape.nullable or kind == "any":
            return None
        raise bad(shape.expected or _KIND_TEXT[kind])
    if kind == "any":
        return v
    if not _is_kind(kind, v) or (shape.test is not None and not shape.test(v)):
        raise bad(shape.expected or _KIND_TEXT[kind])
    if kind == "list" and shape.each is not None:
        return [_conform(x, shape.each, f"{where}[{i}]", source) for i, x in enumerate(v)]
    if kind != "object":
        return v
    out: dict[str, Any] = {}
    for key, x in v.items():
        at = f"{where}.{key}" if where else key
        if shape.int_keys:
            try:
                int(key)
            except ValueError:
                raise ConfigError(
                    f"{source}: the keys of `{where}` must be integers. Found {_show(key)}."
                ) from None
        sub = (shape.fields or {}).get(key, shape.each)
        if sub is None:
            out[key] = x
            continue
        y = _conform(x, sub, at, source)
        if y is None and sub.kind in ("object", "list"):
            continue
        out[key] = y
    for key in shape.required:
        if key not in out:
            at = f"{where}.{key}" if where else key
            expected = (shape.fields or {}).get(key)
            what = (expected.expected or _KIND_TEXT[expected.kind]) if expected else "present"
            raise ConfigError(f"{source}: `{at}` must be {what}. Found nothing (no such field).")
    return out


def check_file(path: Path) -> None:
    """Refuses a source that exists but is not a regular file (a directory, a socket)."""
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{path} must be a file. Found {what}.")


def _read_text(path: Path) -> str:
    check_file(path)
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise ConfigError(f"{path} must be at most {_MAX_JSON_BYTES} bytes. Found {size}.")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} must be UTF-8 text. Found byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}."
        ) from None


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"{source} must be JSON. Found nesting too deep to read.") from None
    except json.JSONDecodeError as err:
        rest = text[err.pos :].rstrip()
        # the document stops inside its last value: a string never closed, a cut number or
        # keyword, or nothing at all where a value or a closing bracket should follow
        cut = (
            not rest
            or err.msg.startswith("Unterminated string")
            or (len(rest) < 8 and re.fullmatch(r"[-+.0-9eEtrufalsn]+", rest) is not None)
        )
        found = (
            "an empty file"
            if not text.strip()
            else "a truncated document"
            if cut
            else f"invalid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        )
        raise ConfigError(f"{source} must be JSON. Found {found}.") from None


def read_json(path: Path, shape: _Shape) -> Any:
    """``path``'s JSON, checked against ``shape``."""
    return _conform(_parse_json(_read_text(path), str(path)), shape, "", str(path))


def read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            source = f"{path} line {i}"
            rec: dict[str, Any] = _conform(_parse_json(line, source), _ROUND, "", source)
            out.append(rec)
    return out


def check_versions(versions: Sequence[Hierarchy], source: str) -> None:
    """What the tree drawing needs beyond :meth:`Hierarchy.from_dict`'s checks."""
    for h in versions:
        for n in h.nodes.values():
            if not (math.isfinite(n.weight) and 0.0 <= n.weight <= 1.0e6):
                raise ConfigError(
                    f"{source}: `weight` of node {n.node_id!r} (version {h.version}) must be a "
                    f"finite number >= 0. Found {_show(n.weight)}."
                )


def read_hierarchy(path: Path) -> Hierarchy:
    source = str(path)
    d = _parse_json(_read_text(path), source)
    d = _conform(d, _HIERARCHY, "", source)
    try:
        h = Hierarchy.from_dict(d)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except (AttributeError, OverflowError, TypeError, ValueError) as err:
        raise ConfigError(
            f"{source} must be a hierarchy as the server writes it. Found a malformed value "
            f"({type(err).__name__}: {err})."
        ) from None
    check_versions([h], source)
    return h


def check_sqlite(path: Path) -> None:
    """A cheap look at a SQLite file before it is opened (opening an empty file would turn it
    into a new database)."""
    check_file(path)
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        found = "an empty file" if not head else "another kind of file"
        raise ConfigError(f"{path} must be a SQLite database. Found {found}.")
