"""Event schema, validation and cleaning.

An :class:`Event` is one behaviour record on one item that has text (a view, a purchase, a
review, a search...). Everything that enters a device store goes through :func:`parse_event`,
which validates each field (errors name the field, the line and the value) and cleans the text.

Readers for JSON Lines, CSV, file descriptors (streams) and DB-API cursors live here too; they
yield ``(line, record)`` pairs so one bad line is reported and never loses the file.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import hashlib
import html
import io
import json
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError, InvalidEventError

__all__ = [
    "CSV_REQUIRED_COLUMNS",
    "FLUSH",
    "MIN_OUTLIER_SAMPLE",
    "MIN_TIMESTAMP",
    "CleaningConfig",
    "Event",
    "EventFlag",
    "EventType",
    "IngestReport",
    "RawItem",
    "Rejection",
    "bot_like",
    "clean_text",
    "derive_event_id",
    "format_timestamp",
    "iter_records",
    "outlier_cutoff",
    "parse_event",
    "parse_timestamp",
    "read_csv",
    "read_jsonl",
    "read_sql",
    "read_stream",
    "robust_outliers",
    "text_hash",
]


class EventType(str, enum.Enum):
    """The kinds of behaviour an event records."""

    VIEW = "view"
    CLICK = "click"
    LIKE = "like"
    SHARE = "share"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    REVIEW = "review"
    SEARCH = "search"
    RATE = "rate"


class EventFlag(enum.IntFlag):
    """Quality flags stored with an event. Flags mark; they never drop an event."""

    NONE = 0
    DWELL_OUTLIER = 1
    VALUE_OUTLIER = 2
    BOT_USER = 4
    DWELL_CLAMPED = 8
    TEXT_TRUNCATED = 16


MIN_TIMESTAMP: Final[float] = 631152000.0  # 1990-01-01T00:00:00Z
_EVENT_TYPES: Final[dict[str, EventType]] = {t.value: t for t in EventType}
_ID_MAX_CHARS: Final[int] = 256

# Sentinel a reader yields when the input has no more data ready: the store commits what it
# holds so that a stream's events are stored as they arrive.
FLUSH: Final[object] = object()


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event on an item with text.

    Attributes:
        event_id: unique id; derived from the content when the source has none.
        user_id: the user the event belongs to.
        timestamp: unix seconds, UTC.
        event_type: what the user did.
        item_id: the item acted on (``None`` for searches, which have no item).
        text: the cleaned text: title, description, review or query.
        category: ground-truth category path ``"Sports > Soccer"``, for evaluation only; never
            used for training or released.
        dwell_seconds: time spent, if known (clamped to ``[0, max_dwell_seconds]``).
        value: a rating or a price, if any.
        flags: :class:`EventFlag` bits set by cleaning and quality checks.
    """

    event_id: str
    user_id: str
    timestamp: float
    event_type: EventType
    item_id: str | None
    text: str
    category: str | None = None
    dwell_seconds: float | None = None
    value: float | None = None
    flags: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict; the timestamp is ISO-8601 UTC."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "timestamp": format_timestamp(self.timestamp),
            "event_type": self.event_type.value,
            "item_id": self.item_id,
            "text": self.text,
        }
        if self.category is not None:
            out["category"] = self.category
        if self.dwell_seconds is not None:
            out["dwell_seconds"] = self.dwell_seconds
        if self.value is not None:
            out["value"] = self.value
        return out

    @property
    def category_path(self) -> tuple[str, ...]:
        """The ground-truth category split into levels (empty when unknown)."""
        if not self.category:
            return ()
        return tuple(self.category.split(" > "))


@dataclass(frozen=True)
class CleaningConfig:
    """How raw records are cleaned.

    Attributes:
        max_text_chars: texts are cut (at a word boundary) to this many characters.
        max_dwell_seconds: dwell above this is clamped to it (and flagged).
        min_timestamp: events before this (unix seconds) are rejected; default 1990-01-01.
        future_tolerance_seconds: events later than ``now`` plus this are rejected.
        strip_markup: remove HTML/XML tags and unescape entities.
        max_line_bytes: longer input lines are rejected without being read into memory.
    """

    max_text_chars: int = 2000
    max_dwell_seconds: float = 4 * 3600.0
    min_timestamp: float = MIN_TIMESTAMP
    future_tolerance_seconds: float = 86400.0
    strip_markup: bool = True
    max_line_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if not (isinstance(self.max_text_chars, int) and self.max_text_chars >= 16):
            raise ConfigError(
                f"`max_text_chars` must be an int >= 16. Found {self.max_text_chars!r}."
            )
        if not (self.max_dwell_seconds > 0 and math.isfinite(self.max_dwell_seconds)):
            raise ConfigError(f"`max_dwell_seconds` must be > 0. Found {self.max_dwell_seconds!r}.")
        if self.future_tolerance_seconds < 0:
            raise ConfigError(
                f"`future_tolerance_seconds` must be >= 0. Found {self.future_tolerance_seconds!r}."
            )
        if not (isinstance(self.max_line_bytes, int) and self.max_line_bytes >= 1024):
            raise ConfigError(
                f"`max_line_bytes` must be an int >= 1024. Found {self.max_line_bytes!r}."
            )


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected input record."""

    line: int | None
    reason: str
    field: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
        }


@dataclass
class IngestReport:
    """What an ingest did. Memory stays bounded: at most ``max_examples`` rejections are kept.

    Attributes:
        read: records read from the source (good and bad).
        accepted: events newly stored.
        duplicates: valid events already in the store (same ``event_id``), not stored again.
        conflicts: the duplicates whose content differs from the stored event (same id, other
            user, time, type, item, text, category, dwell or value): the stored event is kept.
        conflict_examples: the first conflicts: line, event id and the fields that differ.
        rejected: records that failed validation.
        reasons: rejected count per reason code.
        fixes: count per repair applied to accepted events (``dwell_clamped``...).
        examples: the first rejections, with line numbers.
    """

    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    fixes: Counter[str] = field(default_factory=Counter)
    examples: list[Rejection] = field(default_factory=list)
    max_examples: int = 1000
    conflicts: int = 0
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)

    def conflict(self, line: int | None, event_id: str, fields: Sequence[str]) -> None:
        self.conflicts += 1
        if len(self.conflict_examples) < self.max_examples:
            self.conflict_examples.append(
                {"line": line, "event_id": event_id, "fields": list(fields)}
            )

    def reject(self, rejection: Rejection) -> None:
        self.rejected += 1
        self.reasons[rejection.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(rejection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "fixes": dict(sorted(self.fixes.items())),
            "rejections": [r.to_dict() for r in self.examples],
            "rejections_truncated": self.rejected > len(self.examples),
            "conflicts": self.conflicts,
            "conflict_examples": self.conflict_examples,
        }


# ---------------------------------------------------------------------------------------------
# Field parsing
# ---------------------------------------------------------------------------------------------

_SCRIPT_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"<[!/?]?[A-Za-z][^<>]{0,2000}>")
_WS_RE = re.compile(r"\s+")


def clean_text(raw: str, *, max_chars: int = 2000, strip_markup: bool = True) -> tuple[str, bool]:
    """Cleans one text: markup stripped, unicode NFKC, control characters removed, whitespace
    collapsed, cut to ``max_chars`` at a word boundary.

    Returns:
        ``(text, truncated)``.
    """
    text = raw
    if strip_markup and "<" in text:
        text = _SCRIPT_RE.sub(" ", text)
        text = _TAG_RE.sub(" ", text)
    if strip_markup and "&" in text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    # Cc (controls) and Cf (format: zero-width, bidi overrides) carry no meaning for interest.
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )
    text = _WS_RE.sub(" ", text).strip()
    truncated = False
    if len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars + 1)
        text = text[: cut if cut > 0 else max_chars].rstrip()
        truncated = True
    return text, truncated


def text_hash(text: str) -> str:
    """The cache key of a text: hex SHA-256 of its UTF-8 bytes, first 32 characters."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def derive_event_id(
    user_id: str, timestamp: float, event_type: EventType, item_id: str | None, text: str
) -> str:
    """A deterministic id from the event's content: identical events get the same id."""
    key = "\x1f".join([user_id, f"{timestamp:.3f}", event_type.value, item_id or "", text])
    return "e" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:31]


def format_timestamp(ts: float) -> str:
    """Unix seconds -> ISO-8601 UTC (``2025-01-31T12:00:00Z``; fractions kept when present)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise InvalidEventError(
            f"`{name}` must be a number. Found {value!r}.",
            field=name,
            value=value,
            reason="bad_number",
        )
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise InvalidEventError(
                f"`{name}` must be a number. Found {value!r}.",
                field=name,
                value=value,
                reason="bad_number",
            ) from None
    else:
        raise InvalidEventError(
            f"`{name}` must be a number. Found {type(value).__name__} {_short(value)}.",
            field=name,
            value=value,
            reason="bad_number",
        )
    if not math.isfinite(out):
        raise InvalidEventError(
            f"`{name}` must be finite. Found {value!r}.",
            field=name,
            value=value,
            reason="bad_number",
        )
    return out


def parse_timestamp(value: object) -> float:
    """ISO-8601 (naive means UTC) or unix seconds (number or numeric string) -> unix seconds."""
    if value is None or value == "":
        raise InvalidEventError(
            "`timestamp` is required. Found nothing.",
            field="timestamp",
            value=value,
            reason="missing",
        )
    if isinstance(value, str) and not _looks_numeric(value):
        s = value.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise InvalidEventError(
                f"`timestamp` must be ISO-8601 or unix seconds. Found {_short(value)}.",
                field="timestamp",
                value=value,
                reason="bad_timestamp",
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    try:
        return _number(value, "timestamp")
    except InvalidEventError as err:
        raise InvalidEventError(
            f"`timestamp` must be ISO-8601 or unix seconds. Found {_short(value)}.",
            field="timestamp",
            value=value,
            reason="bad_timestamp",
        ) from err


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _short(value: object, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _identifier(record: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidEventError(
                f"`{name}` is required. Found {_short(value)}.",
                field=name,
                value=value,
                reason="missing",
            )
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEventError(
            f"`{name}` must be a string or an integer. Found {type(value).__name__} {_short(value)}.",
            field=name,
            value=value,
            reason="bad_id",
        )
    out = str(value).strip()
    if len(out) > _ID_MAX_CHARS or any(unicodedata.category(c) == "Cc" for c in out):
        raise InvalidEventError(
            f"`{name}` must be at most {_ID_MAX_CHARS} printable characters. Found {_short(value)}.",
            field=name,
            value=value,
            reason="bad_id",
        )
    return out


def _required_identifier(record: Mapping[str, Any], name: str) -> str:
    out = _identifier(record, name, required=True)
    if out is None:  # unreachable: required identifiers raise when missing
        raise InvalidEventError(f"`{name}` is required.", field=name, reason="missing")
    return out


def _optional_number(record: Mapping[str, Any], name: str) -> float | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _number(value, name)


def parse_event(
    record: Mapping[str, Any],
    *,
    config: CleaningConfig | None = None,
    now: float | None = None,
    fixes: Counter[str] | None = None,
) -> Event:
    """Validates and cleans one raw record into an :class:`Event`.

    Args:
        record: a mapping with the fields of :class:`Event` (extra keys are ignored).
        config: cleaning limits; defaults to :class:`CleaningConfig`.
        now: reference for the "future timestamp" check, unix seconds; defaults to the clock.
        fixes: if given, counts the repairs applied (``dwell_clamped``, ``text_truncated``).

    Raises:
        InvalidEventError: naming the field, the value and a reason code.
    """
    cfg = config if config is not None else CleaningConfig()
    if not isinstance(record, Mapping):
        raise InvalidEventError(
            f"an event must be an object with named fields. Found {type(record).__name__}.",
            value=_short(record),
            reason="not_an_object",
        )
    flags = 0
    user_id = _required_identifier(record, "user_id")
    raw_type = record.get("event_type")
    if raw_type is None or raw_type == "":
        raise InvalidEventError(
            "`event_type` is required. Found nothing.",
            field="event_type",
            value=raw_type,
            reason="missing",
        )
    etype = _EVENT_TYPES.get(str(raw_type).strip().lower()) if isinstance(raw_type, str) else None
    if etype is None:
        raise InvalidEventError(
            f"`event_type` must be one of {sorted(_EVENT_TYPES)}. Found {_short(raw_type)}.",
            field="event_type",
            value=raw_type,
            reason="bad_event_type",
        )
    item_id = _identifier(record, "item_id", required=etype is not EventType.SEARCH)

    ts = parse_timestamp(record.get("timestamp"))
    if ts < cfg.min_timestamp:
        raise InvalidEventError(
            f"`timestamp` must be on or after {format_timestamp(cfg.min_timestamp)}. "
            f"Found {_short(record.get('timestamp'))}.",
            field="timestamp",
            value=record.get("timestamp"),
            reason="past_timestamp",
        )
    limit = (
        now if now is not None else datetime.now(timezone.utc).timestamp()
    ) + cfg.future_tolerance_seconds
    if ts > limit:
        hint = " (milliseconds? timestamps are in seconds)" if ts > 1e11 else ""
        raise InvalidEventError(
            f"`timestamp` must not be in the future. Found {_short(record.get('timestamp'))}{hint}.",
            field="timestamp",
            value=record.get("timestamp"),
            reason="future_timestamp",
        )

    raw_text = record.get("text")
    if raw_text is None:
        raise InvalidEventError(
            "`text` is required. Found nothing.", field="text", value=None, reason="missing"
        )
    if not isinstance(raw_text, str):
        raise InvalidEventError(
            f"`text` must be a string. Found {type(raw_text).__name__} {_short(raw_text)}.",
            field="text",
            value=raw_text,
            reason="bad_text",
        )
    if _has_surrogates(raw_text):
        raise InvalidEventError(
            "`text` is not valid UTF-8.",
            field="text",
            value=_short(raw_text),
            reason="invalid_utf8",
        )
    text, truncated = clean_text(
        raw_text, max_chars=cfg.max_text_chars, strip_markup=cfg.strip_markup
    )
    if not text:
        raise InvalidEventError(
            f"`text` is empty after cleaning. Found {_short(raw_text)}.",
            field="text",
            value=raw_text,
            reason="empty_text",
        )
    if truncated:
        flags |= EventFlag.TEXT_TRUNCATED
        if fixes is not None:
            fixes["text_truncated"] += 1

    category = _category(record.get("category"))

    dwell = _optional_number(record, "dwell_seconds")
    if dwell is not None and (dwell < 0 or dwell > cfg.max_dwell_seconds):
        dwell = min(max(dwell, 0.0), cfg.max_dwell_seconds)
        flags |= EventFlag.DWELL_CLAMPED
        if fixes is not None:
            fixes["dwell_clamped"] += 1
    value = _optional_number(record, "value")

    raw_id = _identifier(record, "event_id", required=False)
    event_id = raw_id if raw_id is not None else derive_event_id(user_id, ts, etype, item_id, text)
    return Event(
        event_id=event_id,
        user_id=user_id,
        timestamp=ts,
        event_type=etype,
        item_id=item_id,
        text=text,
        category=category,
        dwell_seconds=dwell,
        value=value,
        flags=int(flags),
    )


def _category(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(
            f"`category` must be a path string like 'Sports > Soccer'. Found {_short(value)}.",
            field="category",
            value=value,
            reason="bad_category",
        )
    parts = [clean_text(p, max_chars=200)[0] for p in value.split(">")]
    parts = [p for p in parts if p]
    return " > ".join(parts) if parts else None


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Readers: each yields (line, record) where record is a mapping or an InvalidEventError.
# ---------------------------------------------------------------------------------------------

Record = Mapping[str, Any]
# (line or row number, the record or the error its line produced); Events come from the SDK.
RawItem = tuple[int | None, "Record | Event | InvalidEventError"]


def _decode_json_line(raw: bytes, line: int) -> Record | InvalidEventError:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return InvalidEventError(
            f"line is not valid UTF-8 (byte {err.start}).", line=line, reason="invalid_utf8"
        )
    try:
        obj = json.loads(text.strip())
    except RecursionError:
        return InvalidEventError("JSON nested too deeply.", line=line, reason="bad_json")
    except json.JSONDecodeError as err:
        return InvalidEventError(
            f"malformed JSON: {err.msg} at character {err.pos + 1}.", line=line, reason="bad_json"
        )
    except ValueError as err:
        return InvalidEventError(f"malformed JSON: {err}.", line=line, reason="bad_json")
    if not isinstance(obj, dict):
        return InvalidEventError(
            f"an event must be a JSON object. Found {type(obj).__name__}.",
            line=line,
            reason="not_an_object",
        )
    return obj


def _iter_byte_lines(f: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yields (line number, bytes); bytes is None for a line over the limit (never held whole)."""
    line = 0
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        line += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while True:  # skip the rest of the oversized line in bounded chunks
                rest = f.readline(max_line_bytes)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line, None
            continue
        yield line, raw


def read_jsonl(
    source: str | os.PathLike[str] | IO[bytes], *, max_line_bytes: int = 1 << 20
) -> Iterator[RawItem]:
    """Reads JSON Lines from a path or a binary file. Blank lines are skipped."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from read_jsonl(f, max_line_bytes=max_line_bytes)
        return
    for line, raw in _iter_byte_lines(source, max_line_bytes):
        if raw is None:
            yield (
                line,
                InvalidEventError(
                    f"line longer than {max_line_bytes} bytes.", line=line, reason="line_too_long"
                ),
            )
            continue
        if not raw.strip():
            continue
        yield line, _decode_json_line(raw, line)


def read_stream(fd: int, *, max_line_bytes: int = 1 << 20) -> Iterator[RawItem | object]:
    """Reads JSON Lines from a file descriptor (standard input, a pipe, a socket) as data arrives.

    After each chunk that the descriptor had ready, yields :data:`FLUSH`, so a consumer can
    commit what it holds before blocking for more input: events are stored as they arrive.
    """
    buf = b""
    line = 0
    skipping = False
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > max_line_bytes:
                    if not skipping:
                        line += 1
                        yield (
                            line,
                            InvalidEventError(
                                f"line longer than {max_line_bytes} bytes.",
                                line=line,
                                reason="line_too_long",
                            ),
                        )
                    skipping = True
                    buf = b""
                break
            raw, buf = buf[: nl + 1], buf[nl + 1 :]
            if skipping:
                skipping = False
                continue
            line += 1
            if len(raw) > max_line_bytes + 1:  # the same limit as a file's (newline aside)
                yield (
                    line,
                    InvalidEventError(
                        f"line longer than {max_line_bytes} bytes.",
                        line=line,
                        reason="line_too_long",
                    ),
                )
            elif raw.strip():
                yield line, _decode_json_line(raw, line)
        yield FLUSH
    if buf.strip() and not skipping:
        line += 1
        yield line, _decode_json_line(buf, line)
    yield FLUSH


def read_csv(
    source: str | os.PathLike[str] | IO[bytes], *, delimiter: str = ","
) -> Iterator[RawItem]:
    """Reads CSV with a header row naming the :class:`Event` fields. Empty cells are missing
    values. Line numbers count the header as line 1."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from read_csv(f, delimiter=delimiter)
        return
    text = io.TextIOWrapper(source, encoding="utf-8", errors="surrogateescape", newline="")
    try:
        yield from _read_csv_rows(text, delimiter)
    finally:
        # hand the caller's file back open (closing the wrapper would close it too)
        with contextlib.suppress(ValueError):
            text.detach()


#: the columns a CSV header must name (``item_id`` too, unless every row is a search)
CSV_REQUIRED_COLUMNS: Final[tuple[str, ...]] = ("user_id", "timestamp", "event_type", "text")


def _read_csv_rows(text: IO[str], delimiter: str) -> Iterator[RawItem]:
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        yield 1, InvalidEventError(f"malformed CSV header: {err}.", line=1, reason="bad_csv")
        return
    names = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in names]
    if missing:
        shown = ", ".join(_short(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
        yield (
            1,
            InvalidEventError(
                f"the CSV header must name the columns {', '.join(CSV_REQUIRED_COLUMNS)} "
                f"(and item_id); missing {', '.join(missing)}. Found the header [{shown}]."
                + (" (is --format tsv/csv right?)" if len(names) == 1 else ""),
                line=1,
                field="header",
                value=_short(",".join(names)),
                reason="bad_header",
            ),
        )
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield (
                reader.line_num,
                InvalidEventError(f"malformed CSV: {err}.", line=reader.line_num, reason="bad_csv"),
            )
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            yield (
                line,
                InvalidEventError(
                    f"expected {len(names)} columns ({', '.join(names)}). Found {len(row)}.",
                    line=line,
                    reason="bad_csv",
                ),
            )
            continue
        if any(_has_surrogates(c) for c in row):
            yield (
                line,
                InvalidEventError("row is not valid UTF-8.", line=line, reason="invalid_utf8"),
            )
            continue
        yield line, {k: (v if v != "" else None) for k, v in zip(names, row, strict=True)}


def read_sql(
    connection: Any,
    query: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    *,
    fetch: int = 1000,
) -> Iterator[RawItem]:
    """Runs ``query`` on any DB-API 2.0 connection; column names are the :class:`Event` fields
    (alias them in the query). Rows are fetched ``fetch`` at a time; row numbers start at 1."""
    cursor = connection.cursor()
    try:
        cursor.execute(query, params)
        if cursor.description is None:
            raise InvalidEventError(
                f"query returned no columns: {_short(query)}.", reason="bad_query"
            )
        names = [d[0] for d in cursor.description]
        row_no = 0
        while True:
            rows = cursor.fetchmany(fetch)
            if not rows:
                return
            for row in rows:
                row_no += 1
                yield row_no, dict(zip(names, row, strict=True))
    finally:
        cursor.close()


def iter_records(
    items: Iterable[Event | Mapping[str, Any]],
) -> Iterator[RawItem]:
    """Numbers the items of a Python iterable from 1 (the SDK's in-memory source)."""
    yield from enumerate(items, start=1)


# ---------------------------------------------------------------------------------------------
# Quality checks: flags, never drops.
# ---------------------------------------------------------------------------------------------


MIN_OUTLIER_SAMPLE: Final[int] = 8


def outlier_cutoff(
    median_abs_dev: float, mean_abs_dev: float, *, threshold: float = 3.5
) -> float | None:
    """The largest ``|x - median|`` that is not an outlier by the modified z-score of
    Iglewicz and Hoaglin (1993), ``0.6745 * |x - median| / MAD > threshold``. When the MAD is
    0 the mean absolute deviation (scaled by 1.2533) stands in; when that is 0 too there is no
    cutoff (``None``: nothing is flagged)."""
    if median_abs_dev > 0:
        return threshold * median_abs_dev / 0.6745
    if mean_abs_dev > 0:
        return threshold * 1.2533 * mean_abs_dev
    return None


def robust_outliers(
    values: Sequence[float] | npt.ArrayLike, *, threshold: float = 3.5
) -> npt.NDArray[np.bool_]:
    """Flags outliers by :func:`outlier_cutoff` around the median.

    Args:
        values: shape ``(n,)``; NaN entries are never flagged; fewer than 8 finite values
            flag nothing.

    Returns:
        bool array of shape ``(n,)``.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.zeros(x.shape, dtype=bool)
    ok = np.isfinite(x)
    if ok.sum() < MIN_OUTLIER_SAMPLE:
        return out
    v = x[ok]
    med = float(np.median(v))
    dev = np.abs(v - med)
    cutoff = outlier_cutoff(float(np.median(dev)), float(np.mean(dev)), threshold=threshold)
    if cutoff is not None:
        out[ok] = dev > cutoff
    return out


def bot_like(
    timestamps: Sequence[float] | Any,
    *,
    max_per_hour: int = 500,
    min_median_gap: float = 1.0,
    min_events: int = 100,
) -> bool:
    """True when a user's event rate is not humanly plausible: more than ``max_per_hour`` events
    in some hour, or at least ``min_events`` events with a median gap under ``min_median_gap``
    seconds.

    Args:
        timestamps: the user's event times, shape ``(n,)``, any order.
    """
    t = np.sort(np.asarray(timestamps, dtype=np.float64))
    if t.size > max_per_hour:
        # events in the window [t_i, t_i + 3600): count via searchsorted
        ends = np.searchsorted(t, t + 3600.0, side="left")
        if int((ends - np.arange(t.size)).max()) > max_per_hour:
            return True
    return bool(t.size >= min_events and float(np.median(np.diff(t))) < min_median_gap)
