"""Event schema: validation, cleaning, readers, quality flags."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError, InvalidEventError
from common.events import (
    FLUSH,
    CleaningConfig,
    EventFlag,
    EventType,
    bot_like,
    clean_text,
    derive_event_id,
    format_timestamp,
    parse_event,
    parse_timestamp,
    read_csv,
    read_jsonl,
    read_sql,
    read_stream,
    robust_outliers,
)

NOW = 1_750_000_000.0  # 2025-06-15


def good(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "user_id": "u1",
        "timestamp": "2025-01-02T03:04:05Z",
        "event_type": "click",
        "item_id": "i1",
        "text": "Best trail running shoes",
    }
    rec.update(over)
    return rec


def test_parse_valid_event_fields() -> None:
    """A valid record becomes an Event with UTC unix seconds and a derived id."""
    e = parse_event(good(category="Sports >  Running ", dwell_seconds="12.5", value=4), now=NOW)
    assert e.user_id == "u1"
    assert e.timestamp == 1735787045.0
    assert e.event_type is EventType.CLICK
    assert e.category == "Sports > Running"
    assert e.category_path == ("Sports", "Running")
    assert e.dwell_seconds == 12.5 and e.value == 4.0
    assert e.event_id == derive_event_id("u1", e.timestamp, EventType.CLICK, "i1", e.text)


def test_derived_id_is_deterministic_and_content_based() -> None:
    """Identical content gives the same id; any change gives another."""
    a = parse_event(good(), now=NOW)
    b = parse_event(good(), now=NOW)
    c = parse_event(good(text="Best trail running shoes!"), now=NOW)
    assert a.event_id == b.event_id != c.event_id
    assert parse_event(good(event_id=42), now=NOW).event_id == "42"


@pytest.mark.parametrize(
    ("over", "field", "reason"),
    [
        ({"user_id": None}, "user_id", "missing"),
        ({"user_id": "  "}, "user_id", "missing"),
        ({"user_id": ["x"]}, "user_id", "bad_id"),
        ({"event_type": "buy"}, "event_type", "bad_event_type"),
        ({"event_type": None}, "event_type", "missing"),
        ({"item_id": None}, "item_id", "missing"),
        ({"timestamp": "yesterday"}, "timestamp", "bad_timestamp"),
        ({"timestamp": None}, "timestamp", "missing"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "timestamp", "future_timestamp"),
        ({"timestamp": 1735787045000}, "timestamp", "future_timestamp"),
        ({"timestamp": "1989-12-31T23:59:59Z"}, "timestamp", "past_timestamp"),
        ({"timestamp": True}, "timestamp", "bad_timestamp"),
        ({"text": "<p> </p>"}, "text", "empty_text"),
        ({"text": None}, "text", "missing"),
        ({"text": 12}, "text", "bad_text"),
        ({"dwell_seconds": "long"}, "dwell_seconds", "bad_number"),
        ({"value": float("nan")}, "value", "bad_number"),
        ({"value": float("inf")}, "value", "bad_number"),
        ({"category": 3}, "category", "bad_category"),
    ],
)
def test_invalid_fields_name_field_value_and_reason(
    over: dict[str, object], field: str, reason: str
) -> None:
    """Each invalid field raises InvalidEventError naming the field and the reason."""
    with pytest.raises(InvalidEventError) as info:
        parse_event(good(**over), now=NOW)
    assert info.value.field == field
    assert info.value.reason == reason
    assert f"`{field}`" in str(info.value)


def test_millisecond_timestamps_get_a_hint() -> None:
    """A millisecond timestamp is rejected with a hint about units."""
    with pytest.raises(InvalidEventError, match="milliseconds"):
        parse_event(good(timestamp=1735787045000), now=NOW)


def test_search_needs_no_item() -> None:
    """Searches have no item; other types require one."""
    e = parse_event(good(event_type="SEARCH", item_id=None, text="  cheap   flights "), now=NOW)
    assert e.item_id is None and e.text == "cheap flights" and e.event_type is EventType.SEARCH


def test_timestamps_iso_offsets_naive_and_unix() -> None:
    """ISO with offset, naive ISO (UTC) and unix seconds agree."""
    assert parse_timestamp("2025-01-01T01:00:00+01:00") == parse_timestamp("2025-01-01T00:00:00")
    assert parse_timestamp("2025-01-01T00:00:00Z") == 1735689600.0
    assert parse_timestamp(1735689600) == parse_timestamp("1735689600") == 1735689600.0
    assert format_timestamp(1735689600.0) == "2025-01-01T00:00:00Z"


def test_dwell_is_clamped_and_flagged() -> None:
    """Negative and absurd dwell are clamped into [0, max] and flagged, not rejected."""
    from collections import Counter

    fixes: Counter[str] = Counter()
    neg = parse_event(good(dwell_seconds=-5), now=NOW, fixes=fixes)
    huge = parse_event(good(dwell_seconds=10**7), now=NOW, fixes=fixes)
    assert neg.dwell_seconds == 0.0 and neg.flags & EventFlag.DWELL_CLAMPED
    assert huge.dwell_seconds == CleaningConfig().max_dwell_seconds
    assert fixes["dwell_clamped"] == 2


def test_clean_text_markup_unicode_whitespace_and_cap() -> None:
    """Markup, entities, odd unicode and whitespace are normalised; long text is cut."""
    text, cut = clean_text("<b>Caf\u00e9&amp;Bar</b>\u200b\t\n <script>x()</script> \uff21")
    assert text == "Café&Bar A" and not cut
    long, cut = clean_text("word " * 1000, max_chars=100)
    assert cut and len(long) <= 100 and long.endswith("word")
    e = parse_event(good(text="x " * 5000), now=NOW)
    assert e.flags & EventFlag.TEXT_TRUNCATED and len(e.text) <= 2000


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_clean_text_is_idempotent(raw: str) -> None:
    """Cleaning twice changes nothing more than cleaning once."""
    once, _ = clean_text(raw)
    assert clean_text(once)[0] == once


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "user_id",
                "timestamp",
                "event_type",
                "item_id",
                "text",
                "dwell_seconds",
                "value",
                "category",
                "event_id",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=40),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_parse_event_only_raises_invalid_event_error(record: dict[str, object]) -> None:
    """Whatever the record, parsing either succeeds or raises InvalidEventError."""
    with contextlib.suppress(InvalidEventError):
        parse_event(record, now=NOW)


def test_cleaning_config_validates() -> None:
    """Bad cleaning limits raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="max_text_chars"):
        CleaningConfig(max_text_chars=0)


def test_read_jsonl_reports_bad_lines_and_keeps_good_ones() -> None:
    """Malformed JSON, non-objects, invalid UTF-8, deep nesting and huge lines are
    rejected by line; good lines come through."""
    good_line = json.dumps(good()).encode()
    data = b"\n".join(
        [
            good_line,
            b'{"user_id": ',
            b"[1, 2]",
            b'{"text": "\xff\xfe"}',
            b"[" * 100000 + b"]" * 100000,
            b'{"text": "' + b"a" * 5000 + b'"}',
            b"",
            good_line,
        ]
    )
    items = list(read_jsonl(io.BytesIO(data), max_line_bytes=4096))
    reasons = [(line, r.reason if isinstance(r, InvalidEventError) else "ok") for line, r in items]
    assert reasons == [
        (1, "ok"),
        (2, "bad_json"),
        (3, "not_an_object"),
        (4, "invalid_utf8"),
        (5, "line_too_long"),
        (6, "line_too_long"),
        (8, "ok"),
    ]


def test_deep_json_within_line_limit_is_rejected() -> None:
    """JSON nested deeper than the parser allows is a reject, not a crash."""
    deep = b"[" * 50000 + b"]" * 50000
    [(_line, err)] = list(read_jsonl(io.BytesIO(deep)))
    assert isinstance(err, InvalidEventError) and err.reason == "bad_json"


def test_read_csv_rows_columns_and_line_numbers() -> None:
    """CSV rows map header names to fields; empty cells are missing; bad rows are reported."""
    data = (
        b"user_id,timestamp,event_type,item_id,text,dwell_seconds\n"
        b"u1,1735689600,view,i1,Hello world,\n"
        b"u2,1735689600,view,i2\n"
        b'u3,1735689600,view,i3,"multi\nline text",3\n'
    )
    items = list(read_csv(io.BytesIO(data)))
    assert items[0][0] == 2 and items[0][1]["dwell_seconds"] is None  # type: ignore[index]
    assert isinstance(items[1][1], InvalidEventError) and items[1][0] == 3
    assert parse_event(items[2][1], now=NOW).text == "multi line text"  # type: ignore[arg-type]


def test_read_sql_on_dbapi_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A SELECT on any DB-API connection yields numbered records."""
    conn = sqlite3.connect(tmp_path / "src.db")
    conn.execute("CREATE TABLE logs (uid TEXT, t INTEGER, kind TEXT, item TEXT, title TEXT)")
    conn.executemany(
        "INSERT INTO logs VALUES (?,?,?,?,?)",
        [(f"u{i}", 1735689600 + i, "view", f"i{i}", f"title {i}") for i in range(2500)],
    )
    rows = list(
        read_sql(
            conn,
            "SELECT uid AS user_id, t AS timestamp, kind AS event_type, item AS item_id, title AS text FROM logs",
        )
    )
    assert len(rows) == 2500 and rows[-1][0] == 2500
    assert parse_event(rows[0][1], now=NOW).user_id == "u0"  # type: ignore[arg-type]


def test_read_stream_flushes_as_data_arrives() -> None:
    """A stream reader yields FLUSH after each chunk, before blocking for more input."""
    r, w = os.pipe()
    out: list[object] = []
    first_flush = threading.Event()

    def consume() -> None:
        for item in read_stream(r):
            out.append(item)
            if item is FLUSH:
                first_flush.set()

    t = threading.Thread(target=consume)
    t.start()
    os.write(w, (json.dumps(good()) + "\n").encode())
    assert first_flush.wait(5), "no FLUSH while the writer keeps the pipe open"
    assert out[0][0] == 1  # type: ignore[index]
    os.write(w, b'{"bad": \n' + json.dumps(good(text="tail")).encode())  # last line unterminated
    os.close(w)
    t.join(5)
    os.close(r)
    records = [x for x in out if x is not FLUSH]
    assert [line for line, _ in records] == [1, 2, 3]  # type: ignore[misc]
    assert isinstance(records[1][1], InvalidEventError)  # type: ignore[index]


def test_robust_outliers_modified_z_score() -> None:
    """Median/MAD flags the far values only; constant data flags nothing."""
    x = np.array([10, 11, 9, 10, 12, 10, 11, 9, 10, 500, np.nan], dtype=float)
    assert robust_outliers(x).tolist() == [False] * 9 + [True, False]
    assert not robust_outliers(np.full(20, 3.0)).any()
    assert not robust_outliers([1.0, 1000.0]).any()  # too few values to judge


def test_bot_like_rates() -> None:
    """600 events within an hour or a sub-second median gap are bot-like; a human is not."""
    t0 = 1.7e9
    assert bot_like(t0 + np.arange(600) * 5.0)
    assert bot_like(t0 + np.arange(150) * 0.5)
    rng = np.random.default_rng(0)
    assert not bot_like(t0 + np.sort(rng.uniform(0, 90 * 86400, 400)))
