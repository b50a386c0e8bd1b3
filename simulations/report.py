"""``fedinterest report``: one self-contained HTML page per run, for people to look at.

The page shows the interest tree (a zoomable Plotly sunburst per version, with labels,
population weights and the new/grown/shrunk nodes of each version), the epsilon spent per
round (event level from the device ledgers, user level from the server's ledger, with the
budget) and its distribution over the devices, the utility against the baselines (clustering
metrics per version and at the end, ranking metrics), the empirical audit beside the
accounted epsilon, and the run's parameters.

Everything is inlined: Plotly's JavaScript once (gzip + base64, unpacked in the browser with
``DecompressionStream``; ``compress=False`` inlines it as plain text instead), each chart as a
JSON document, tables as plain HTML (readable without JavaScript). No request leaves the page,
so it opens offline. Nothing per device is embedded beyond a histogram, so the size does not
grow with the number of devices (about 2 MB; the tree is bounded by ``max_leaves``).

Sources, all in the run directory: ``config.json``, ``metrics.json``, ``rounds.jsonl``,
``hierarchy.json`` and every version in ``server.db``, ``audit.json`` (recomputed from the
ledgers in ``clients/*.db`` and ``server.db`` when missing or older than the run). The
clustering metrics per version read the simulation's device stores (their events' ground-truth
categories and cached embeddings): an evaluation-only view that a deployment does not have.

Every file is read and checked (its type, and the type of each field the report uses) before
anything is computed or written; a bad one is a :class:`common.errors.ConfigError` naming the
file, the field and the value found. An output path that is a directory is refused up front,
and the page is written through a temporary file that is removed whatever fails.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.errors import ConfigError
from common.hierarchy import Hierarchy, NodeChange

__all__ = [
    "MAX_REPORT_BYTES",
    "Page",
    "Raw",
    "ReportResult",
    "RunData",
    "flatten",
    "load_run",
    "render_page",
    "run_page",
    "write_page",
    "write_report",
]

MAX_REPORT_BYTES: Final = 5_000_000
"""The size the report must stay under (tested with a 1,000-device, 256-leaf worst case)."""

_CHANGE_COLORS: Final = {
    NodeChange.NEW: "#2ca02c",
    NodeChange.GROWN: "#1f77b4",
    NodeChange.SHRUNK: "#ff7f0e",
    NodeChange.STABLE: "#c7c7c7",
}
_SERIES_COLORS: Final = {
    "federated": "#1f77b4",
    "centralized": "#2ca02c",
    "catalogue": "#9467bd",
    "popularity": "#ff7f0e",
    "random": "#7f7f7f",
}
_TREND_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")
_RANKING_METRICS: Final = ("recall10", "ndcg10", "auc")
_MAX_TREE_VERSIONS: Final = 12
_HIST_BINS: Final = 20

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    """A float from a metrics value (``json_safe`` writes non-finite floats as strings)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, str)):
        try:
            return float(v)
        except (OverflowError, ValueError):  # an int beyond float's range; a non-number
            return None
    return None


def _finite(v: Any) -> float | None:
    x = _num(v)
    return x if x is not None and math.isfinite(x) else None


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "-" if v is None else html.escape(str(v))
    if math.isinf(x):
        return "∞"
    if math.isnan(x):
        return "n/a"
    if x != 0 and (abs(x) >= 10_000 or abs(x) < 10**-(digits)):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def _units(weight: float) -> int:
    return max(0, round(weight * 1_000_000))


def _round(v: float, sig: int = 5) -> float:
    return float(f"{v:.{sig}g}")


# --------------------------------------------------------------------------------------------
# the run's data
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything the report shows, read from one run directory.

    Attributes:
        versions: every hierarchy version (oldest first), from ``server.db`` or, without it,
            ``hierarchy.json`` alone.
        audit: the ledger audit (``audit.json``'s content), ``None`` when it could not be made.
        audit_source: where ``audit`` came from, or why it is missing.
        user_per_round: per user-level output, ``(round, cumulative epsilon)``.
        utility: per version, ``{"server_round", "version", metric: value}``.
        utility_note: how ``utility`` was computed, or why it is empty.
    """

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    rounds: list[dict[str, Any]]
    versions: list[Hierarchy]
    audit: dict[str, Any] | None
    audit_source: str
    user_per_round: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    utility: list[dict[str, Any]] = field(default_factory=list)
    utility_note: str = ""

    @property
    def privacy(self) -> dict[str, Any]:
        p: dict[str, Any] = self.config.get("run", {}).get("privacy", {})
        return p

    @property
    def latest(self) -> Hierarchy | None:
        return self.versions[-1] if self.versions else None


# --------------------------------------------------------------------------------------------
# reading the run's files: every value the report uses is checked where it is read; a problem
# is one ConfigError naming the file, the field and the value found
# --------------------------------------------------------------------------------------------

_MAX_JSON_BYTES: Final = 512 << 20
_RUN_FILES: Final = (
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

_CONFIG: Final = _obj(
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

_METRICS: Final = _obj(
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

_AUDIT: Final = _obj(
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
    return isinstance(v, str) and _num(v) is not None


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


def _check_file(path: Path) -> None:
    """Refuses a source that exists but is not a regular file (a directory, a socket)."""
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{path} must be a file. Found {what}.")


def _read_text(path: Path) -> str:
    _check_file(path)
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


def _read_json(path: Path, shape: _Shape) -> Any:
    """``path``'s JSON, checked against ``shape``."""
    return _conform(_parse_json(_read_text(path), str(path)), shape, "", str(path))


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            source = f"{path} line {i}"
            rec: dict[str, Any] = _conform(_parse_json(line, source), _ROUND, "", source)
            out.append(rec)
    return out


def _check_versions(versions: Sequence[Hierarchy], source: str) -> None:
    """What the tree drawing needs beyond :meth:`Hierarchy.from_dict`'s checks."""
    for h in versions:
        for n in h.nodes.values():
            if not (math.isfinite(n.weight) and 0.0 <= n.weight <= 1.0e6):
                raise ConfigError(
                    f"{source}: `weight` of node {n.node_id!r} (version {h.version}) must be a "
                    f"finite number >= 0. Found {_show(n.weight)}."
                )


def _read_hierarchy(path: Path) -> Hierarchy:
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
    _check_versions([h], source)
    return h


def _check_sqlite(path: Path) -> None:
    """A cheap look at a SQLite file before it is opened (opening an empty file would turn it
    into a new database)."""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        found = "an empty file" if not head else "another kind of file"
        raise ConfigError(f"{path} must be a SQLite database. Found {found}.")


def _read_versions(run_dir: Path) -> list[Hierarchy]:
    db = run_dir / "server.db"
    if db.exists():
        from server.storage import ServerStorage

        _check_sqlite(db)
        with ServerStorage(db) as st:
            found = []
            for v in st.versions():
                try:
                    found.append(st.version(v))
                except ConfigError as err:
                    raise ConfigError(f"{db}: hierarchy version {v}: {err}") from None
        versions = [h for h in found if h is not None]
        if versions:
            _check_versions(versions, str(db))
            return versions
    if (run_dir / "hierarchy.json").exists():
        return [_read_hierarchy(run_dir / "hierarchy.json")]
    return []


def _audit_is_stale(run_dir: Path) -> bool:
    path = run_dir / "audit.json"
    if not path.is_file():
        return True
    newest = max(
        (
            p.stat().st_mtime
            for p in (run_dir / "rounds.jsonl", run_dir / "config.json")
            if p.exists()
        ),
        default=0.0,
    )
    return path.stat().st_mtime < newest


def _read_audit(path: Path, *, can_recompute: bool) -> dict[str, Any]:
    try:
        audit: dict[str, Any] = _read_json(path, _AUDIT)
    except ConfigError as err:
        if not can_recompute:
            raise
        raise ConfigError(
            f"{str(err).rstrip('.')}; `fedinterest report --reaudit` recomputes it from the "
            "ledgers."
        ) from None
    return audit


def _stored_audit(run_dir: Path, *, reaudit: bool) -> tuple[dict[str, Any] | None, str] | None:
    """``audit.json``'s content, checked, when the report uses it as it is: ``(audit, source)``;
    ``None`` when it is to be recomputed from the ledgers (see :func:`_recomputed_audit`)."""
    have_stores = (
        any((run_dir / "clients").glob("*.db")) if (run_dir / "clients").is_dir() else False
    )
    path = run_dir / "audit.json"
    if not reaudit and not _audit_is_stale(run_dir):
        return _read_audit(path, can_recompute=have_stores), "audit.json"
    if have_stores:
        return None
    if path.is_file():
        return _read_audit(
            path, can_recompute=False
        ), "audit.json (no device stores to recompute it)"
    return (
        None,
        "no audit.json and no device stores under clients/: event-level audit unavailable",
    )


def _recomputed_audit(run_dir: Path, say: Progress) -> tuple[dict[str, Any], str]:
    from simulations.audit import audit_run

    n = len(list((run_dir / "clients").glob("*.db")))
    say(f"auditing the ledgers of {n} devices and the server")
    t0 = time.perf_counter()
    report = audit_run(run_dir)
    say(f"audit done in {time.perf_counter() - t0:.1f}s (wrote {run_dir / 'audit.json'})")
    return report, "recomputed from the ledgers (written to audit.json)"


def _user_level_per_round(
    run_dir: Path, delta: float, accountant: str
) -> dict[str, list[tuple[int, float]]]:
    """Cumulative user-level epsilon after each round, per output, from the server ledger."""
    db = run_dir / "server.db"
    if not db.is_file():
        return {}
    from common.privacy import Scope, epsilon_of_entries
    from server.storage import ServerStorage

    with ServerStorage(db) as st:
        entries = [e for e in st.ledger() if e.scope is Scope.USER]
    out: dict[str, list[tuple[int, float]]] = {}
    outputs = sorted({str(e.details.get("output", e.mechanism.value)) for e in entries})
    rounds = sorted({e.server_round for e in entries if e.server_round is not None})
    for name in outputs:
        mine = [e for e in entries if str(e.details.get("output", e.mechanism.value)) == name]
        series = []
        for r in rounds:
            upto = [e for e in mine if e.server_round is not None and e.server_round <= r]
            if upto:
                series.append(
                    (
                        r,
                        epsilon_of_entries(
                            upto, delta=delta, scope=Scope.USER, accountant=accountant
                        ),
                    )
                )
        out[name] = series
    return out


def _utility_per_version(
    run_dir: Path,
    config: dict[str, Any],
    versions: Sequence[Hierarchy],
    *,
    max_devices: int,
    say: Progress,
) -> tuple[list[dict[str, Any]], str]:
    """Clustering metrics of every version on the devices' own (training) events.

    Evaluation only: it reads the simulation's device stores (ground-truth categories and the
    embeddings each device cached), which no deployed server could.
    """
    stores = sorted((run_dir / "clients").glob("*.db")) if (run_dir / "clients").is_dir() else []
    if not stores:
        return [], "no device stores under clients/: per-version metrics unavailable"
    if not versions:
        return [], "no hierarchy version"
    from client.store import EventStore
    from common.adapter import AdapterWeights
    from common.events import text_hash
    from common.projection import PublicProjection
    from simulations.evaluation import GroundTruth, clustering_metrics

    sampled = len(stores) > max_devices
    if sampled:
        idx = np.unique(np.linspace(0, len(stores) - 1, max_devices).round().astype(int))
        stores = [stores[i] for i in idx]
    model_id = _encoder_id(run_dir)
    events: list[Any] = []
    vectors: list[Any] = []
    say(f"reading events and cached embeddings of {len(stores)} device stores")
    for path in stores:
        with EventStore(path, create=False) as store:
            evs = store.events()
            if not evs:
                continue
            mid = model_id or _only_model_id(store)
            if mid is None:
                continue
            hashes = [text_hash(e.text) for e in evs]
            found = store.embeddings.get(mid, sorted(set(hashes)))
        keep = [i for i, h in enumerate(hashes) if h in found]
        events.extend(evs[i] for i in keep)
        vectors.extend(found[hashes[i]] for i in keep)
    truth = GroundTruth.from_events(events)
    if truth is None:
        return [], "the events carry no ground-truth categories: per-version metrics omitted"
    raw = np.stack(vectors).astype(np.float32)
    clustering = config.get("run", {}).get("clustering", {})
    dim, seed = clustering.get("projection_dim"), clustering.get("projection_seed")
    try:
        projection = PublicProjection(
            raw.shape[1], 128 if dim is None else int(dim), 0 if seed is None else int(seed)
        )
    except ConfigError as err:
        raise ConfigError(f"{run_dir / 'config.json'}: `run.clustering`: {err}") from None
    adapters = _adapters(run_dir, [h.server_round for h in versions])
    out = []
    for h in versions:
        if h.projection_fingerprint != projection.fingerprint:
            return [], (
                f"version {h.version} is in projection {h.projection_fingerprint}, the config's is "
                f"{projection.fingerprint}: per-version metrics omitted"
            )
        adapter = adapters.get(h.server_round)
        x = adapter.apply(raw) if isinstance(adapter, AdapterWeights) else raw
        row: dict[str, Any] = {"version": h.version, "server_round": h.server_round}
        row.update(clustering_metrics(projection(x), h, truth))
        out.append(row)
    users = len(stores)
    note = (
        f"on the training events of {users} devices"
        + (" (an even sample of the run's devices)" if sampled else "")
        + f", {len(events)} events; read from the simulation's device stores (evaluation only)"
    )
    return out, note


def _encoder_id(run_dir: Path) -> str | None:
    path = run_dir / "labels.npz"
    if not path.exists():
        return None
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "encoder_id" not in z.files:
                return None
            value = z["encoder_id"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"{path} must be the label space numpy archive (.npz) the run wrote. Found an "
            f"unreadable file ({type(err).__name__}: {str(err).split('. ')[0].rstrip('.')})."
        ) from None
    if value.ndim != 0 or value.dtype.kind not in "US":
        raise ConfigError(
            f"{path}: `encoder_id` must be one string. Found an array of {value.dtype} "
            f"with shape {value.shape}."
        )
    return str(value)


def _only_model_id(store: Any) -> str | None:
    rows = store.connection.execute("SELECT DISTINCT model_id FROM embeddings LIMIT 2").fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def _adapters(run_dir: Path, rounds: Iterable[int]) -> dict[int, Any]:
    """The adapter after each round (``adapter:v{round}`` in ``server.db``), identity ones left
    out."""
    db = run_dir / "server.db"
    if not db.is_file():
        return {}
    from common.adapter import AdapterWeights
    from server.storage import ServerStorage

    out: dict[int, Any] = {}
    with ServerStorage(db) as st:
        for r in sorted(set(rounds)):
            arr = st.get_arrays(f"adapter:v{r}")
            if arr is not None:
                w = AdapterWeights.from_arrays(arr)
                if not w.is_identity():
                    out[r] = w
    return out


def load_run(
    run_dir: str | Path,
    *,
    reaudit: bool = False,
    utility: bool = True,
    utility_devices: int = 300,
    progress: Progress | None = None,
) -> RunData:
    """Reads a run directory written by ``fedinterest simulate``.

    Args:
        run_dir: the run directory.
        reaudit: recompute the ledger audit even when ``audit.json`` is up to date.
        utility: compute the clustering metrics of every version from the device stores.
        utility_devices: at most this many device stores are read for them (an even sample).
        progress: called with one line per long step.
    """
    say = progress or (lambda _m: None)
    d = Path(run_dir)
    # every file is read and checked before anything is computed or written
    if not d.exists():
        raise ConfigError(f"run directory {str(d)!r} does not exist.")
    if not d.is_dir():
        raise ConfigError(
            f"run directory {str(d)!r} is a file; give the directory `fedinterest simulate "
            "--out DIR` wrote."
        )
    for name in _RUN_FILES:
        _check_file(d / name)
    if (d / "clients").exists() and not (d / "clients").is_dir():
        raise ConfigError(f"{d / 'clients'} must be a directory of device stores. Found a file.")
    if not (d / "config.json").exists():
        raise ConfigError(
            f"{str(d)!r} is not a run directory (no config.json); make one with "
            "`fedinterest simulate --out DIR`."
        )
    config: dict[str, Any] = _read_json(d / "config.json", _CONFIG)
    metrics: dict[str, Any] | None = (
        _read_json(d / "metrics.json", _METRICS) if (d / "metrics.json").exists() else None
    )
    rounds = _read_rounds(d / "rounds.jsonl")
    versions = _read_versions(d)
    if not versions:
        raise ConfigError(
            f"{d / 'hierarchy.json'} must exist (or server.db hold a hierarchy version). Found "
            "neither: the run has no interest tree to report (it finished no round)."
        )
    stored = _stored_audit(d, reaudit=reaudit)
    if utility:
        _encoder_id(d)
    # every file checked: the long steps (the audit writes audit.json)
    data = RunData(d, config, metrics, rounds, versions, *(stored or (None, "")))
    if utility:
        data.utility, data.utility_note = _utility_per_version(
            d, config, versions, max_devices=utility_devices, say=say
        )
    else:
        data.utility_note = "not computed (--no-utility)"
    if stored is None:
        data.audit, data.audit_source = _recomputed_audit(d, say)
    audit, priv = data.audit, data.privacy
    delta = float(audit["delta"]) if audit else (_num(priv.get("delta")) or 1e-5)
    accountant = str(audit["accountant"]) if audit else str(priv.get("accountant") or "pld")
    data.user_per_round = _user_level_per_round(d, delta, accountant)
    return data


# --------------------------------------------------------------------------------------------
# page model and HTML
# --------------------------------------------------------------------------------------------


@dataclass
class _Block:
    html: str = ""
    fig_id: str | None = None
    spec: dict[str, Any] | None = None


@dataclass
class _Section:
    key: str
    title: str
    blocks: list[_Block] = field(default_factory=list)

    def text(self, markup: str) -> None:
        """Adds trusted markup (callers escape what they interpolate)."""
        self.blocks.append(_Block(html=markup))

    def para(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.blocks.append(_Block(html=f"<p{c}>{html.escape(text)}</p>"))

    def figure(self, fig_id: str, fig: Any, caption: str = "") -> None:
        self.blocks.append(_Block(fig_id=fig_id, spec=_fig_spec(fig), html=caption))

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[Any]],
        caption: str = "",
        cls: str = "",
    ) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        c = f' class="{cls}"' if cls else ""
        self.blocks.append(
            _Block(
                html=f'<div class="tbl"><table{c}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            )
        )


def _cell(v: Any) -> str:
    if isinstance(v, Raw):
        return v.markup
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return _fmt(v)
    return html.escape("-" if v is None else str(v))


@dataclass(frozen=True)
class Raw:
    """Trusted markup for a table cell (everything else is escaped)."""

    markup: str


@dataclass
class Page:
    """A report page: a title, summary tiles and sections of text, tables and charts."""

    title: str
    subtitle: str = ""
    tiles: list[tuple[str, str, str]] = field(default_factory=list)
    sections: list[_Section] = field(default_factory=list)

    def section(self, key: str, title: str) -> _Section:
        s = _Section(key, title)
        self.sections.append(s)
        return s

    def tile(self, label: str, value: str, note: str = "") -> None:
        self.tiles.append((label, value, note))


def _fig_spec(fig: Any) -> dict[str, Any]:
    import plotly.io as pio

    spec: dict[str, Any] = json.loads(pio.to_json(fig, validate=False, pretty=False))
    spec.get("layout", {}).pop("template", None)
    return {"data": spec.get("data", []), "layout": spec.get("layout", {})}


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@functools.lru_cache(maxsize=2)
def _plotly_js(compress: bool) -> tuple[str, str]:
    """``(version, payload)``: the plotly.js bundle, plain or gzip + base64."""
    try:
        import plotly
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ConfigError(
            "the report needs plotly: pip install 'fedinterest[report]' (the sim and dev extras "
            "include it)."
        ) from None
    js = get_plotlyjs()
    if not compress:
        return str(plotly.__version__), js.replace("</script", "<\\/script")
    packed = gzip.compress(js.encode("utf-8"), compresslevel=9, mtime=0)
    return str(plotly.__version__), base64.b64encode(packed).decode("ascii")


@functools.lru_cache(maxsize=1)
def _template_json() -> str:
    import plotly.io as pio
    from plotly.utils import PlotlyJSONEncoder

    tpl = json.loads(
        json.dumps(pio.templates["plotly_white"].to_plotly_json(), cls=PlotlyJSONEncoder)
    )
    tpl.get("layout", {}).update({"font": {"family": _FONT, "size": 13}})
    return _script_json(tpl)


_FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

_CSS: Final = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#1f77b4}
*{box-sizing:border-box}
body{margin:0;font-family:FONT;color:var(--fg);background:var(--bg);line-height:1.45}
header{background:#1d2330;color:#fff;padding:22px 32px 18px}
header h1{margin:0;font-size:24px;font-weight:600}
header .sub{color:#c9cfdb;margin-top:4px;font-size:14px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-size:14px}
main{max-width:1280px;margin:0 auto;padding:18px 32px 48px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin:6px 0 18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.tile .k{font-size:12px;color:var(--muted);letter-spacing:.02em}
.tile .v{font-size:22px;font-weight:600;margin-top:2px}
.tile .n{font-size:12px;color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 22px 18px;margin:0 0 18px}
section h2{font-size:19px;margin:14px 0 8px}
p{margin:6px 0 10px}
p.note{color:var(--muted);font-size:13px}
.fi-fig{width:100%;min-height:120px}
.fig-status{color:var(--muted);font-size:13px;padding:8px 0}
.tbl{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:13px;min-width:40%}
caption{text-align:left;font-weight:600;padding:4px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:#fafbfc;font-weight:600}
td.num,th.num{text-align:right}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.flag{color:#b00020;font-weight:600}
.ok{color:#1b7f3b;font-weight:600}
ul.g{margin:6px 0 10px;padding-left:20px;font-size:13px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
""".replace("FONT", _FONT)

_LOADER: Final = """
(async function () {
  const status = document.getElementById('fi-status');
  const figs = Array.from(document.querySelectorAll('div.fi-fig'));
  try {
    if (!window.Plotly) {
      const packed = document.getElementById('fi-plotly-gz');
      if (!packed) throw new Error('the page carries no plotly.js');
      if (typeof DecompressionStream === 'undefined') {
        throw new Error('this browser cannot unpack the embedded charts (it has no ' +
          'DecompressionStream); rebuild the report with --no-compress');
      }
      const bin = atob(packed.textContent.trim());
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
      const code = await new Response(stream).text();
      const s = document.createElement('script');
      s.textContent = code;
      document.head.appendChild(s);
    }
    const template = JSON.parse(document.getElementById('fi-template').textContent);
    let drawn = 0;
    for (const div of figs) {
      const spec = JSON.parse(document.getElementById(div.dataset.spec).textContent);
      spec.layout.template = template;
      await Plotly.newPlot(div, spec.data, spec.layout,
        {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d']});
      drawn++;
    }
    document.body.dataset.rendered = String(drawn);
    if (status) status.remove();
  } catch (err) {
    document.body.dataset.rendered = 'error';
    if (status) status.textContent = 'The charts could not be drawn: ' + err.message;
    console.error('fedinterest report: ' + err.message);
  }
})();
"""


def render_page(page: Page, *, compress: bool = True) -> str:
    """The page as one self-contained HTML document (Plotly inlined once)."""
    version, payload = _plotly_js(compress)
    nav = "".join(
        f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in page.sections
    )
    tiles = "".join(
        f'<div class="tile"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
        f'<div class="n">{html.escape(n)}</div></div>'
        for k, v, n in page.tiles
    )
    body = []
    scripts = []
    for s in page.sections:
        parts = [
            f'<section id="{html.escape(s.key)}" data-section="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>'
        ]
        for b in s.blocks:
            if b.fig_id is not None:
                spec_id = f"{b.fig_id}-spec"
                # a fixed container height: Plotly's responsive resize sizes the chart to its
                # container, and an auto-height container lets a tall window stretch it
                height = int((b.spec or {}).get("layout", {}).get("height") or 450)
                parts.append(
                    f'<div class="fi-fig" id="{html.escape(b.fig_id)}" style="height:{height}px" '
                    f'data-spec="{html.escape(spec_id)}"></div>'
                )
                if b.html:
                    parts.append(f'<p class="note">{html.escape(b.html)}</p>')
                scripts.append(
                    f'<script type="application/json" id="{html.escape(spec_id)}">{_script_json(b.spec)}</script>'
                )
            else:
                parts.append(b.html)
        parts.append("</section>")
        body.append("".join(parts))
    if compress:
        lib = f'<script type="application/octet-stream" id="fi-plotly-gz">{payload}</script>'
    else:
        lib = f"<script>{payload}</script>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="fedinterest report (plotly.py {html.escape(version)})">'
        f"<title>{html.escape(page.title)}</title><style>{_CSS}</style></head>\n"
        f'<body><header><h1>{html.escape(page.title)}</h1><div class="sub">{html.escape(page.subtitle)}</div></header>'
        f"<nav>{nav}</nav><main>"
        f'<div id="fi-status" class="fig-status">Drawing the charts…</div>'
        '<noscript><p class="fig-status">The charts need JavaScript; every table below is '
        "complete without it.</p></noscript>"
        f'<div class="tiles">{tiles}</div>'
        + "\n".join(body)
        + "</main><footer>Self-contained report: no request leaves this page. "
        f"Charts: Plotly (plotly.py {html.escape(version)}), inlined.</footer>\n"
        + "\n".join(scripts)
        + f'\n<script type="application/json" id="fi-template">{_template_json()}</script>\n'
        + lib
        + f"\n<script>{_LOADER}</script>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _layout(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "legend": {"orientation": "h", "y": -0.2},
        "height": 420,
    }
    base.update(kw)
    return base


def _tree_figure(versions: Sequence[Hierarchy]) -> Any:
    import plotly.graph_objects as go

    shown = list(versions)[-_MAX_TREE_VERSIONS:]
    fig = go.Figure()
    for i, h in enumerate(shown):
        ids, labels, parents, values, colors, hover = [], [], [], [], [], []
        level1 = h.level(1)
        total = 0
        rows = []
        for n1 in level1:
            kids = [h.nodes[c] for c in n1.children if c in h.nodes]
            # integer units (1e-6 of the level's mass): a parent's value is then exactly the
            # sum of its children's, which Plotly's branchvalues='total' requires
            kid_sum = sum(_units(k.weight) for k in kids)
            v1 = max(kid_sum, _units(n1.weight))
            total += v1
            rows.append((n1, v1, kids))
        ids.append("root")
        labels.append(f"v{h.version}")
        parents.append("")
        values.append(total)
        colors.append("#ffffff")
        hover.append(f"version {h.version} (round {h.server_round})")
        for n1, v1, kids in rows:
            ids.append(n1.node_id)
            labels.append(html.escape(n1.label))
            parents.append("root")
            values.append(v1)
            colors.append(_CHANGE_COLORS.get(n1.change, "#c7c7c7"))
            hover.append(_node_hover(h, n1))
            for k in kids:
                ids.append(k.node_id)
                labels.append(html.escape(k.label))
                parents.append(n1.node_id)
                values.append(_units(k.weight))
                colors.append(_CHANGE_COLORS.get(k.change, "#c7c7c7"))
                hover.append(_node_hover(h, k))
        fig.add_trace(
            go.Sunburst(
                ids=ids,
                labels=labels,
                parents=parents,
                values=values,
                branchvalues="total",
                marker={"colors": colors, "line": {"color": "#ffffff", "width": 1}},
                hovertext=hover,
                hoverinfo="text",
                insidetextorientation="radial",
                maxdepth=3,
                name=f"v{h.version}",
                visible=i == len(shown) - 1,
            )
        )
    buttons = [
        {
            "label": f"version {h.version} (round {h.server_round})",
            "method": "update",
            "args": [{"visible": [j == i for j in range(len(shown))]}],
        }
        for i, h in enumerate(shown)
    ]
    fig.update_layout(
        height=640,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        updatemenus=[
            {
                "buttons": buttons,
                "active": len(shown) - 1,
                "x": 0.0,
                "y": 1.06,
                "xanchor": "left",
                "yanchor": "top",
                "showactive": True,
            }
        ]
        if len(shown) > 1
        else [],
    )
    return fig


def _node_hover(h: Hierarchy, n: Any) -> str:
    best = "<br>".join(f"{html.escape(p)} ({s:.2f})" for p, s in list(n.labels)[:3]) or "(no label)"
    level = "broad interest" if n.level == 1 else "fine interest"
    return (
        f"<b>{html.escape(h.path_labels(n.node_id))}</b><br>{level} {html.escape(n.node_id)}, "
        f"{n.change}<br>population weight {100 * n.weight:.2f}% of its level<br>labels: {best}"
    )


def _changes_figure(versions: Sequence[Hierarchy]) -> Any:
    import plotly.graph_objects as go

    xs = [f"v{h.version}" for h in versions]
    fig = go.Figure()
    for change in (NodeChange.NEW, NodeChange.GROWN, NodeChange.SHRUNK, NodeChange.STABLE):
        fig.add_trace(
            go.Bar(
                x=xs,
                y=[
                    sum(1 for n in h.nodes.values() if n.level > 0 and n.change == change)
                    for h in versions
                ],
                name=change,
                marker_color=_CHANGE_COLORS[change],
            )
        )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[len(h.merged) + len(h.gone) for h in versions],
            name="merged or gone",
            mode="lines+markers",
            line={"color": "#d62728"},
        )
    )
    fig.update_layout(
        **_layout(
            barmode="stack",
            title={"text": "Nodes per version by change from the previous version"},
            yaxis={"title": {"text": "nodes (broad + fine)"}},
            height=360,
        )
    )
    return fig


def _epsilon_figure(data: RunData) -> tuple[Any, list[str]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    notes: list[str] = []
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Event level (per device)", "User level (server ledger)"),
        horizontal_spacing=0.1,
    )
    rounds = [int(r["server_round"]) for r in data.rounds]
    server_eps = [_num(r.get("epsilon_event_level")) for r in data.rounds]
    if any(x is not None and math.isinf(x) for x in server_eps):
        notes.append("No noise in this run (--no-dp): the event-level epsilon is infinite.")
    if rounds:
        fig.add_trace(
            go.Scatter(
                x=rounds,
                y=[x if x is not None and math.isfinite(x) else None for x in server_eps],
                name="accounted by the server (rounds.jsonl)",
                mode="lines+markers",
                line={"color": "#1f77b4", "width": 3},
            ),
            row=1,
            col=1,
        )
    if data.audit and data.audit.get("per_round"):
        pr = data.audit["per_round"]
        rs = sorted(pr, key=int)
        fig.add_trace(
            go.Scatter(
                x=[int(r) for r in rs],
                y=[_finite(pr[r].get("epsilon_max")) for r in rs],
                name="max over devices (ledger audit)",
                mode="lines+markers",
                line={"color": "#d62728", "dash": "dash"},
                marker={"symbol": "diamond", "size": 9},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[int(r) for r in rs],
                y=[_finite(pr[r].get("epsilon_median")) for r in rs],
                name="median over devices",
                mode="lines+markers",
                line={"color": "#9467bd", "dash": "dot"},
            ),
            row=1,
            col=1,
        )
    budget = _finite(data.config.get("device_budget_epsilon")) or _finite(
        data.privacy.get("epsilon")
    )
    xs = rounds or [1]
    if budget is not None:
        fig.add_trace(
            go.Scatter(
                x=[min(xs) - 0.3, max(xs) + 0.3],
                y=[budget, budget],
                name=f"event-level budget ε={budget:g}",
                mode="lines",
                line={"color": "#000000", "dash": "longdash", "width": 1.5},
            ),
            row=1,
            col=1,
        )
    user_vals = []
    palette = ["#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
    for i, (name, series) in enumerate(sorted(data.user_per_round.items())):
        ys = [v if math.isfinite(v) else None for _, v in series]
        user_vals += [v for v in ys if v is not None and v > 0]
        fig.add_trace(
            go.Scatter(
                x=[r for r, _ in series],
                y=ys,
                name=f"user level: {name}",
                mode="lines+markers",
                line={"color": palette[i % len(palette)]},
            ),
            row=1,
            col=2,
        )
    adapter = data.config.get("run", {}).get("adapter", {})
    if adapter.get("enabled") and _finite(adapter.get("server_user_epsilon")):
        ub = float(adapter["server_user_epsilon"])
        user_vals.append(ub)
        fig.add_trace(
            go.Scatter(
                x=[min(xs) - 0.3, max(xs) + 0.3],
                y=[ub, ub],
                name=f"adapter user-level budget ε={ub:g}",
                mode="lines",
                line={"color": "#444444", "dash": "longdash", "width": 1.5},
            ),
            row=1,
            col=2,
        )
    if not data.user_per_round:
        notes.append("The server's ledger records no user-level mechanism.")
    log_user = bool(user_vals) and max(user_vals) / max(min(user_vals), 1e-12) > 30
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_yaxes(title_text="epsilon (cumulative)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(
        title_text="epsilon (cumulative)" + (", log scale" if log_user else ""),
        type="log" if log_user else "linear",
        row=1,
        col=2,
    )
    delta = data.audit.get("delta") if data.audit else data.privacy.get("delta")
    fig.update_layout(
        **_layout(
            title={"text": f"Epsilon spent per round (δ={_fmt(delta, 2)})", "y": 0.98},
            height=480,
            margin={"l": 60, "r": 20, "t": 90, "b": 50},
            legend={"orientation": "h", "y": -0.25},
        )
    )
    return fig, notes


def _device_histogram(audit: Mapping[str, Any], budget: float | None) -> tuple[Any, str]:
    import plotly.graph_objects as go

    per = audit.get("event_level", {}).get("per_device", [])
    vals = np.array([v for v in (_finite(d.get("epsilon")) for d in per) if v is not None])
    fig = go.Figure()
    if len(vals) == 0:
        return fig, "no finite per-device epsilon"
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):
        counts, edges = np.array([len(vals)]), np.array([lo - 0.01, hi + 0.01])
    else:
        counts, edges = np.histogram(vals, bins=_HIST_BINS)
    centers = (edges[:-1] + edges[1:]) / 2
    fig.add_trace(
        go.Bar(
            x=[_round(c) for c in centers],
            y=counts.tolist(),
            width=[_round(w) for w in np.diff(edges)],
            name="devices",
            marker_color="#1f77b4",
            hovertemplate="ε %{x}<br>%{y} devices<extra></extra>",
        )
    )
    if budget is not None:
        fig.add_vline(
            x=budget,
            line_dash="longdash",
            line_color="#000000",
            annotation_text=f"budget {budget:g}",
        )
    fig.update_layout(
        **_layout(
            title={"text": f"Event-level epsilon over {len(vals)} devices (histogram)"},
            xaxis={"title": {"text": "epsilon at the end of the run"}},
            yaxis={"title": {"text": "devices"}},
            height=360,
            showlegend=False,
        )
    )
    summary = (
        f"min {lo:.4g}, median {float(np.median(vals)):.4g}, max {hi:.4g} over {len(vals)} devices"
        + (f" ({len(per) - len(vals)} infinite)" if len(per) > len(vals) else "")
    )
    return fig, summary


def _empirical_figure(emp: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    names = {"dp": "with the run's noise", "nodp": "without noise (--no-dp)"}
    kinds = [k for k in ("dp", "nodp") if k in emp]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[names[k] for k in kinds],
            y=[
                _finite(emp[k].get("epsilon_accounted_of_run", emp[k].get("epsilon_accounted")))
                for k in kinds
            ],
            name="accounted epsilon (ledgers)",
            marker_color="#1f77b4",
            texttemplate="%{y:.3f}",
            textposition="outside",
        )
    )
    fig.add_trace(
        go.Bar(
            x=[names[k] for k in kinds],
            y=[_finite(emp[k].get("epsilon_lower_bound")) for k in kinds],
            name="empirical lower bound (95%)",
            marker_color="#d62728",
            texttemplate="%{y:.3f}",
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Empirical audit: one-run lower bound beside the accounted epsilon"},
            yaxis={"title": {"text": "epsilon"}},
            height=360,
        )
    )
    return fig


def _metrics_bar_figure(metrics: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    from simulations.evaluation import METRIC_KEYS

    fig = go.Figure()
    for side in ("federated", "centralized", "catalogue"):
        vals = metrics.get(side)
        if not isinstance(vals, Mapping):
            continue
        keys = [k for k in METRIC_KEYS if k in vals]
        fig.add_trace(
            go.Bar(
                x=keys,
                y=[_finite(vals[k]) for k in keys],
                name=side,
                marker_color=_SERIES_COLORS[side],
            )
        )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Clustering quality against the ground truth (end of run)"},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
        )
    )
    return fig


def _utility_trend_figure(
    utility: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any] | None
) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    xs = [int(u["server_round"]) for u in utility]
    for i, key in enumerate(
        k for k in _TREND_METRICS if any(_finite(u.get(k)) is not None for u in utility)
    ):
        color = palette[i % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[_finite(u.get(key)) for u in utility],
                name=f"federated {key}",
                mode="lines+markers",
                line={"color": color, "width": 3},
            )
        )
        central = (metrics or {}).get("centralized", {}).get(key) if metrics else None
        if _finite(central) is not None and xs:
            fig.add_trace(
                go.Scatter(
                    x=[min(xs), max(xs)],
                    y=[_finite(central)] * 2,
                    name=f"centralized {key}",
                    mode="lines",
                    line={"color": color, "dash": "dash", "width": 1.5},
                )
            )
    fig.update_layout(
        **_layout(
            title={
                "text": "Clustering quality per version (federated) and the centralized baseline"
            },
            xaxis={"title": {"text": "round"}, "dtick": 1},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
            height=440,
        )
    )
    return fig


def _ranking_figure(ranking: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for side in ("federated", "centralized", "popularity", "random"):
        vals = ranking.get(side)
        if not isinstance(vals, Mapping):
            continue
        keys = [k for k in _RANKING_METRICS if k in vals]
        fig.add_trace(
            go.Bar(
                x=keys,
                y=[_finite(vals[k]) for k in keys],
                name=side,
                marker_color=_SERIES_COLORS.get(side, "#888888"),
            )
        )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Ranking the held-out events (per user, temporal split)"},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
        )
    )
    return fig


# --------------------------------------------------------------------------------------------
# the run page
# --------------------------------------------------------------------------------------------


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``("a.b.c", value)`` rows."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, json.dumps(v) if isinstance(v, (list, dict)) else v))
    return out


def _legend(items: Mapping[str, str]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><i style="background:{c}"></i>{html.escape(k)}</span>' for k, c in items.items()
        )
        + "</div>"
    )


def run_page(data: RunData) -> Page:
    """The report of one run as a :class:`Page`."""
    cfg = data.config
    run = cfg.get("run", {})
    priv = data.privacy
    m = data.metrics or {}
    h = data.latest
    mode = priv.get("mode")
    mode = mode.get("value", mode) if isinstance(mode, Mapping) else mode
    page = Page(
        title=f"fedinterest run report: {data.run_dir.name}",
        subtitle=(
            f"{cfg.get('dataset', '?')} · {cfg.get('clients', '?')} devices · "
            f"{len(data.rounds)}/{run.get('rounds', '?')} rounds · {mode} · "
            f"target ε={_fmt(priv.get('epsilon'), 2)}, δ={_fmt(priv.get('delta'), 2)}"
            + (" · NO DP" if priv.get("no_dp") else "")
        ),
    )
    ev = (data.audit or {}).get("event_level", {})
    if ev:
        page.tile(
            "event-level ε (max over devices)",
            _fmt(ev.get("epsilon_max")),
            f"budget {_fmt(cfg.get('device_budget_epsilon'), 2)}",
        )
    elif m:
        page.tile(
            "event-level ε (accounted)", _fmt(m.get("epsilon_event_level_total")), "no ledger audit"
        )
    if data.audit:
        page.tile(
            "user-level ε (server)",
            _fmt(data.audit.get("user_level", {}).get("epsilon")),
            "all outputs composed",
        )
        flags = data.audit.get("flags", [])
        page.tile(
            "audit flags",
            str(len(flags)),
            "ledgers consistent" if not flags else "see privacy section",
        )
    if h is not None:
        page.tile(
            "interest tree", f"v{h.version}", f"{len(h.level(1))} broad, {len(h.level(2))} fine"
        )
    if isinstance(m.get("federated"), Mapping) and "nmi_level1" in m["federated"]:
        ratio = (m.get("ratio") or {}).get("nmi_level1")
        page.tile(
            "NMI level 1", _fmt(m["federated"]["nmi_level1"]), f"{_fmt(ratio, 2)}x centralized"
        )
    ranking = m.get("ranking") if isinstance(m.get("ranking"), Mapping) else None
    if ranking and isinstance(ranking.get("federated"), Mapping):
        page.tile(
            "recall@10",
            _fmt(ranking["federated"].get("recall10")),
            f"centralized {_fmt((ranking.get('centralized') or {}).get('recall10'))}",
        )

    _tree_section(page, data)
    _privacy_section(page, data)
    _utility_section(page, data)
    _parameters_section(page, data)
    return page


def _tree_section(page: Page, data: RunData) -> None:
    s = page.section("tree", "Interest tree")
    if not data.versions:
        s.para("The run produced no hierarchy version.", "note")
        return
    h = data.versions[-1]
    shown = data.versions[-_MAX_TREE_VERSIONS:]
    s.para(
        f"Version {h.version} after round {h.server_round}: {len(h.level(1))} broad and "
        f"{len(h.level(2))} fine interests. Sector sizes are population weights (the DP mass "
        "released by the devices); colours show how each node changed from the previous version. "
        "Click a sector to zoom in; pick another version in the menu."
        + (
            f" The menu holds the last {len(shown)} of {len(data.versions)} versions."
            if len(shown) < len(data.versions)
            else ""
        )
    )
    s.text(_legend(_CHANGE_COLORS))
    s.figure("fig-tree", _tree_figure(data.versions))
    if len(data.versions) > 1:
        s.figure("fig-changes", _changes_figure(data.versions))
    rows = []
    for n1 in h.level(1):
        kids = [h.nodes[c] for c in n1.children if c in h.nodes]
        kids.sort(key=lambda k: -k.weight)
        rows.append(
            (
                n1.label,
                f"{100 * n1.weight:.1f}%",
                n1.change,
                ", ".join(f"{k.label} ({100 * k.weight:.1f}%, {k.change})" for k in kids[:8])
                + (f" +{len(kids) - 8}" if len(kids) > 8 else ""),
            )
        )
    s.table(
        ["broad interest", "weight", "change", "fine interests (weight, change)"],
        rows,
        caption=f"Version {h.version}",
    )
    if h.merged or h.gone:
        merged = [
            f"{h.path_labels(b) or b} absorbed {a}" for a, b in h.merged.items() if b in h.nodes
        ]
        s.para(
            f"Since version {h.parent_version}: {len(h.merged)} node(s) merged"
            + (f" ({'; '.join(merged[:10])}{' …' if len(merged) > 10 else ''})" if merged else "")
            + f", {len(h.gone)} gone (no longer supported by the DP evidence).",
            "note",
        )


def _privacy_section(page: Page, data: RunData) -> None:
    s = page.section("privacy", "Privacy: epsilon spent")
    fig, notes = _epsilon_figure(data)
    s.para(
        "Event level: each device's ledger composed with dp-accounting (add/remove one event). "
        "User level: the server's ledger (add/remove one user's whole contribution). "
        f"Audit source: {data.audit_source}."
    )
    for n in notes:
        s.para(n, "note")
    s.figure("fig-epsilon", fig)
    audit = data.audit
    if audit is None:
        return
    budget = _finite(data.config.get("device_budget_epsilon"))
    hist, summary = _device_histogram(audit, budget)
    s.figure("fig-devices", hist, caption=f"Distribution over devices: {summary}.")
    ev = audit.get("event_level", {})
    over = ev.get("over_budget", [])
    flags = audit.get("flags", [])
    status = (
        Raw('<span class="ok">no flags</span>')
        if not flags
        else Raw(f'<span class="flag">{len(flags)} flag(s)</span>')
    )
    s.table(
        ["devices", "ε min", "ε median", "ε max", "over budget", "ledger checks"],
        [
            (
                ev.get("devices"),
                ev.get("epsilon_min"),
                ev.get("epsilon_median"),
                ev.get("epsilon_max"),
                len(over),
                status,
            )
        ],
        caption=f"Event level at δ={_fmt(audit.get('delta'), 2)} ({audit.get('accountant')} accountant)",
    )
    mech = audit.get("mechanisms", {})
    if mech:
        s.table(
            ["mechanism", "ledger entries", "ε max", "ε median"],
            [
                (k, v.get("entries"), v.get("epsilon_max"), v.get("epsilon_median"))
                for k, v in mech.items()
            ],
            caption="Per mechanism (event level)",
        )
    per_out = audit.get("user_level", {}).get("per_output", {})
    if per_out:
        s.table(
            ["output", "user-level ε"], sorted(per_out.items()), caption="User level, per output"
        )
    if flags:
        s.text(
            '<ul class="g">'
            + "".join(f'<li class="flag">{html.escape(f)}</li>' for f in flags[:50])
            + "</ul>"
        )
    g = audit.get("guarantees", [])
    if g:
        s.text(
            '<p><b>What the audit states</b></p><ul class="g">'
            + "".join(f"<li>{html.escape(x)}</li>" for x in g)
            + "</ul>"
        )
    emp = audit.get("empirical")
    if isinstance(emp, Mapping) and any(k in emp for k in ("dp", "nodp")):
        s.figure("fig-empirical", _empirical_figure(emp))
        s.table(
            ["run", "canaries", "guesses", "correct", "lower bound", "accounted"],
            [
                (
                    k,
                    emp[k].get("canaries"),
                    emp[k].get("guesses"),
                    emp[k].get("correct"),
                    emp[k].get("epsilon_lower_bound"),
                    emp[k].get("epsilon_accounted_of_run", emp[k].get("epsilon_accounted")),
                )
                for k in ("dp", "nodp")
                if k in emp
            ],
            caption="Empirical audit (Steinke, Nasr and Jagielski 2023, one run)",
        )
    else:
        s.para(
            "No empirical audit in audit.json; `fedinterest audit RUN_DIR --empirical` (and "
            "`--empirical --no-dp`) adds the canary lower bound beside the accounted epsilon.",
            "note",
        )


def _utility_section(page: Page, data: RunData) -> None:
    from simulations.evaluation import METRIC_KEYS

    s = page.section("utility", "Utility against the baselines")
    m = data.metrics
    if m is None:
        s.para("No metrics.json: the run did not finish.", "note")
    if data.utility:
        s.figure(
            "fig-utility-rounds",
            _utility_trend_figure(data.utility, m),
            caption=f"Per version: {data.utility_note}. Dashed: the centralized baseline at the end "
            "of the run (metrics.json, training and held-out events).",
        )
    else:
        s.para(f"Per-version metrics: {data.utility_note}.", "note")
    if m and isinstance(m.get("federated"), Mapping):
        s.figure("fig-utility", _metrics_bar_figure(m))
        ratio = m.get("ratio") or {}
        s.table(
            ["metric", "federated", "centralized", "catalogue", "fed / central"],
            [
                (
                    k,
                    m["federated"].get(k),
                    (m.get("centralized") or {}).get(k),
                    (m.get("catalogue") or {}).get(k),
                    ratio.get(k),
                )
                for k in METRIC_KEYS
                if k in m["federated"]
            ],
            caption="End of run (metrics.json)",
        )
    elif m:
        s.para("No ground-truth categories in this dataset: clustering metrics omitted.", "note")
    ranking = (m or {}).get("ranking")
    if isinstance(ranking, Mapping):
        s.figure(
            "fig-ranking",
            _ranking_figure(ranking),
            caption=f"Popularity prior: {ranking.get('popularity_prior', 'n/a')}.",
        )
    cls = (m or {}).get("classification")
    if isinstance(cls, Mapping):
        rows = []
        for side, levels in cls.items():
            for level, vals in (levels or {}).items():
                rows.append((side, level, vals.get("accuracy"), vals.get("macro_f1")))
        s.table(
            ["profile", "level", "accuracy", "macro F1"],
            rows,
            caption="Interest classification of held-out events",
        )
    drift = (m or {}).get("drift", {}).get("federated") if m else None
    if isinstance(drift, Mapping):
        s.table(
            ["drifting users", "switched", "never switched", "median lag (events)", "p90 lag"],
            [
                (
                    drift.get("users"),
                    drift.get("switched"),
                    drift.get("never_switched"),
                    drift.get("median_events"),
                    drift.get("p90_events"),
                )
            ],
            caption="Drift: events until the profile follows a user's new interest",
        )
    adapter = (m or {}).get("adapter")
    if isinstance(adapter, Mapping) and adapter:
        s.table(["adapter", "value"], sorted(adapter.items()), caption="Low-rank adapter (DP-SGD)")
    if data.rounds:
        s.table(
            [
                "round",
                "status",
                "releases",
                "fine",
                "broad",
                "event ε",
                "noise std",
                "KiB up / device",
                "seconds",
            ],
            [
                (
                    r.get("server_round"),
                    r.get("status"),
                    f"{r.get('usable')}/{r.get('sampled')}",
                    r.get("live_leaves"),
                    r.get("level1_nodes"),
                    r.get("epsilon_event_level"),
                    r.get("noise_std"),
                    (_num(r.get("bytes_up")) or 0.0) / 1024 / max(1, int(r.get("sampled") or 1)),
                    r.get("seconds"),
                )
                for r in data.rounds
            ],
            caption="Rounds (rounds.jsonl)",
        )


def _parameters_section(page: Page, data: RunData) -> None:
    s = page.section("parameters", "Run parameters")
    m = data.metrics or {}
    facts = [
        ("run directory", str(data.run_dir)),
        ("dataset", m.get("dataset", data.config.get("dataset"))),
        ("devices", m.get("clients", data.config.get("clients"))),
        ("training events", m.get("events")),
        ("catalogue items", m.get("catalogue_items")),
        (
            "rounds completed",
            f"{m.get('rounds_completed', len(data.rounds))}/{m.get('rounds', data.config.get('run', {}).get('rounds'))}",
        ),
        ("noise multiplier", m.get("noise_multiplier")),
        (
            "KiB up per device per round",
            (_num(m.get("bytes_up_per_client_per_round")) or 0) / 1024 if m else None,
        ),
        (
            "KiB down per device per round",
            (_num(m.get("bytes_down_per_client_per_round")) or 0) / 1024 if m else None,
        ),
        ("wall seconds", m.get("wall_seconds")),
        (
            "encode / federated seconds",
            f"{_fmt((m.get('timing') or {}).get('encode_seconds'), 1)} / {_fmt((m.get('timing') or {}).get('federated_seconds'), 1)}"
            if m
            else None,
        ),
    ]
    s.table(["", "value"], [(k, v) for k, v in facts if v is not None], caption="Run")
    s.table(["setting", "value"], flatten(data.config), caption="config.json")


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    path: Path
    bytes: int
    sections: tuple[str, ...]
    figures: int
    summary: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.path),
            "bytes": self.bytes,
            "sections": list(self.sections),
            "figures": self.figures,
            "seconds": round(self.seconds, 2),
            **self.summary,
        }


def _check_out(path: Path, flag: str | None = None) -> None:
    """Refuses an output path that cannot become a file, before anything is computed.

    Args:
        path: the report file to write.
        flag: the command-line flag that named it, for the message.
    """
    name = f"`{flag}` {str(path)!r}" if flag else repr(str(path))
    if path.is_dir():
        raise ConfigError(
            f"{name} is a directory; give a file path such as {str(path / 'report.html')!r}."
        )
    if path.exists() and not path.is_file():
        raise ConfigError(f"{name} must be a regular file path. Found something else there.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name}: {str(parent)!r} must be a directory. Found a file.")
            break


def _atomic_write(path: Path, text: str) -> int:
    """Writes ``text`` to a temporary file beside ``path`` and renames it over ``path``; on
    any failure the temporary file is removed and ``path`` is left as it was."""
    _check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    # a hidden name of this process's own (the umask applies, as to the report itself)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


def write_page(page: Page, out: Path, *, compress: bool = True) -> tuple[int, int]:
    """Renders and writes ``page``; returns ``(bytes, figures)``."""
    text = render_page(page, compress=compress)
    figures = sum(1 for sec in page.sections for b in sec.blocks if b.fig_id)
    return _atomic_write(out, text), figures


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    reaudit: bool = False,
    utility: bool = True,
    utility_devices: int = 300,
    compress: bool = True,
    progress: Progress | None = None,
) -> ReportResult:
    """Writes the run's report (default ``RUN_DIR/report.html``)."""
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    _plotly_js(compress)  # fail early, before the audit, when plotly is missing
    if out is not None:
        _check_out(Path(out), "--out")
    data = load_run(
        run_dir, reaudit=reaudit, utility=utility, utility_devices=utility_devices, progress=say
    )
    say("drawing the report")
    page = run_page(data)
    path = Path(out) if out is not None else data.run_dir / "report.html"
    size, figures = write_page(page, path, compress=compress)
    h = data.latest
    ev = (data.audit or {}).get("event_level", {})
    m = data.metrics or {}
    summary: dict[str, Any] = {
        "run_dir": str(data.run_dir),
        "hierarchy_version": h.version if h else None,
        "level1_nodes": len(h.level(1)) if h else 0,
        "level2_nodes": len(h.level(2)) if h else 0,
        "versions": len(data.versions),
        "rounds": len(data.rounds),
        "epsilon_event_level_max": ev.get("epsilon_max", m.get("epsilon_event_level_total")),
        "epsilon_user_level": (data.audit or {}).get("user_level", {}).get("epsilon"),
        "audit_flags": len((data.audit or {}).get("flags", [])),
        "audit_source": data.audit_source,
        "empirical": sorted(((data.audit or {}).get("empirical") or {}).keys()),
        "nmi_level1": (m.get("federated") or {}).get("nmi_level1"),
        "nmi_level1_ratio": (m.get("ratio") or {}).get("nmi_level1"),
        "utility_versions": len(data.utility),
    }
    return ReportResult(
        path,
        size,
        tuple(sec.key for sec in page.sections),
        figures,
        summary,
        time.perf_counter() - t0,
    )
