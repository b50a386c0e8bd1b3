"""Hostile input at the edges, with hypothesis (bounded example counts, default suite):
event parsing and ingestion, the server's reply decoding, the device's round-config parsing,
and hierarchy JSON. Each must either accept or fail with its own clear error type."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.release import ReleaseParams, ReleaseRefusedError
from client.store import EventStore
from common.errors import ConfigError, InvalidEventError, InvalidReleaseError
from common.events import read_csv, read_jsonl
from common.hierarchy import Hierarchy
from common.records import REPLY_ARRAYS, REPLY_META, SUMS, ReplyKeys, RoundKeys
from server.replies import validate_local_reply

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(
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
        "extra",
    ]
)


@FUZZ
@given(st.binary(max_size=3000))
def test_jsonl_reader_survives_random_bytes(data: bytes) -> None:
    """Random bytes (invalid UTF-8, NULs, partial JSON) give records or per-line errors."""
    for _line, item in read_jsonl(io.BytesIO(data), max_line_bytes=1024):
        assert isinstance(item, (dict, InvalidEventError))


@FUZZ
@given(st.binary(max_size=2000))
def test_csv_reader_survives_random_bytes(data: bytes) -> None:
    """Random bytes as CSV give rows or per-row errors, never a crash."""
    for _line, item in read_csv(io.BytesIO(b"user_id,timestamp,event_type,item_id,text\n" + data)):
        assert isinstance(item, (dict, InvalidEventError))


@FUZZ
@given(st.lists(st.dictionaries(fields, json_values, max_size=9), max_size=15), st.integers(0, 3))
def test_ingest_random_records_never_loses_or_crashes(
    records: list[dict[str, Any]], depth: int
) -> None:
    """Ingesting hostile records (extreme numbers, wrong types, nesting) stores exactly the
    valid ones and rejects the rest with reasons."""
    lines = []
    for r in records:
        doc: Any = r
        for _ in range(depth):
            doc = {"wrap": doc}
        try:
            lines.append(json.dumps(doc, allow_nan=True))
        except (ValueError, OverflowError):
            lines.append("{broken")
    data = ("\n".join(lines) + "\n").encode()
    with tempfile.TemporaryDirectory() as d, EventStore(Path(d) / "s.db") as store:
        rep = store.ingest(read_jsonl(io.BytesIO(data)), batch_size=3, now=1.8e9)
        assert rep.read == len([x for x in lines if x.strip()])
        assert rep.accepted + rep.duplicates + rep.rejected == rep.read
        assert store.count() == rep.accepted
        assert all(r.reason for r in rep.examples)


@FUZZ
@given(st.dictionaries(st.text(max_size=20), json_scalars, max_size=12))
def test_round_config_parsing_fails_closed(cfg: dict[str, Any]) -> None:
    """Any config either parses into consistent parameters or is refused, never crashes."""
    base = {
        RoundKeys.SERVER_ROUND: 1,
        RoundKeys.HIERARCHY_VERSION: 0,
        RoundKeys.MODE: "local",
        RoundKeys.CLIPPING_NORM: 1.0,
        RoundKeys.MAX_WEIGHT: 1.0,
        RoundKeys.NOISE_MULTIPLIER: 2.0,
        RoundKeys.NOISE_STD: 2.0,
        RoundKeys.MIN_COHORT: 1,
        RoundKeys.USER_CLIPPING_NORM: 10.0,
        RoundKeys.RESIDUAL_THRESHOLD: 0.2,
        RoundKeys.PROJECTION_SEED: 1,
        RoundKeys.PROJECTION_DIM: 8,
        RoundKeys.PROJECTION_FINGERPRINT: "x",
        RoundKeys.DELTA: 1e-5,
    }
    for merged in (cfg, {**base, **cfg}):
        try:
            p = ReleaseParams.from_config(merged)
        except ReleaseRefusedError:
            continue
        assert p.noise_std >= p.required_noise_std * (1 - 1e-9) and p.noise_multiplier > 0


def _reply(
    arrays: dict[str, np.ndarray] | None,
    meta: dict[str, Any],
    extra_records: dict[str, Any] | None = None,
) -> Any:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    # outside a running app, Flower needs a task identity to build a message
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1

    content: dict[str, Any] = {REPLY_META: ConfigRecord(meta)} if meta is not None else {}
    if arrays is not None:
        content[REPLY_ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    for k, v in (extra_records or {}).items():
        content[k] = ConfigRecord(v)
    return Message(RecordDict(content), dst_node_id=1, message_type="train.interests")


@FUZZ
@given(
    st.sampled_from([(4, 3), (4, 4), (5, 3), (12,)]),
    st.sampled_from(["float32", "float64", "int32"]),
    st.floats(-1e6, 1e6) | st.just(math.nan) | st.just(math.inf),
    st.sampled_from(["ok", "budget_exceeded", "weird", ""]),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
)
def test_server_decoding_of_hostile_replies(
    shape: tuple[int, ...],
    dtype: str,
    fill: float,
    status: str,
    rnd: int,
    extra_key: bool,
    extra_meta: bool,
) -> None:
    """A reply is either a valid release or an InvalidReleaseError naming what is wrong."""
    arr = (
        np.full(shape, fill, dtype=np.float64).astype(dtype)
        if not (dtype == "int32" and not math.isfinite(fill))
        else np.zeros(shape, dtype)
    )
    meta: dict[str, Any] = {
        ReplyKeys.STATUS: status,
        ReplyKeys.SERVER_ROUND: rnd,
        ReplyKeys.HIERARCHY_VERSION: 0,
    }
    if extra_meta:
        meta["user_id"] = "alice"
    msg = _reply({SUMS: arr}, meta, {"leak": {"x": 1}} if extra_key else None)
    try:
        out = validate_local_reply(
            msg, expected_shape=(4, 3), norm_bound=1e5, server_round=1, version=0
        )
    except InvalidReleaseError as err:
        assert str(err)
        return
    assert (
        out is not None
        and out.shape == (4, 3)
        and np.isfinite(out).all()
        and not extra_key
        and not extra_meta
    )


@FUZZ
@given(json_values)
def test_hierarchy_json_loading_rejects_garbage(doc: Any) -> None:
    """Random JSON documents are rejected with ConfigError."""
    try:
        text = json.dumps(doc)
    except (ValueError, OverflowError):
        return
    try:
        Hierarchy.from_json(text)
    except ConfigError:
        return
    raise AssertionError("a random document was accepted as a hierarchy")


@FUZZ
@given(st.sampled_from(["format", "dim", "nodes", "version", "levels"]), json_values)
def test_hierarchy_with_one_hostile_field(field: str, value: Any) -> None:
    """A valid hierarchy with one field replaced by garbage loads or fails with ConfigError."""
    from tests.common.test_hierarchy import toy

    d = json.loads(toy().to_json())
    d[field] = value
    with contextlib.suppress(ConfigError):
        Hierarchy.from_dict(d)


def test_huge_line_and_deep_json_limits(tmp_path: Path) -> None:
    """A 5 MB line and a 100k-deep JSON are rejected by reason; their neighbours are kept."""
    good = json.dumps(
        {"user_id": "u", "timestamp": 1.7e9, "event_type": "view", "item_id": "i", "text": "ok"}
    )
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        good.encode()
        + b"\n"
        + b"{"
        + b'"a":' * 10
        + b'"'
        + b"x" * (5 << 20)
        + b'"}\n'
        + b"[" * 100000
        + b"]" * 100000
        + b"\n"
        + good.replace('"ok"', '"ok2"').encode()
        + b"\n"
    )
    with EventStore(tmp_path / "s.db") as store:
        rep = store.ingest(read_jsonl(path))
    assert rep.accepted == 2 and rep.reasons == {"line_too_long": 1, "bad_json": 1}


def test_resource_limits_fail_with_clear_errors(tmp_path: Path) -> None:
    """Ingest batch size, replies per round: out-of-range limits are refused by name and value,
    and nothing already stored is lost."""
    from client.store import MAX_INGEST_BATCH
    from common.config import RunConfig
    from common.errors import StoreError

    good = {"user_id": "u", "timestamp": 1.7e9, "event_type": "view", "item_id": "i", "text": "a"}
    with EventStore(tmp_path / "s.db") as store:
        assert store.ingest([(1, good)]).accepted == 1
        with pytest.raises(StoreError, match=f"batch_size.*{MAX_INGEST_BATCH}.*1000000"):
            store.ingest([(1, {**good, "text": "b"})], batch_size=1_000_000)
        assert store.count() == 1
    with pytest.raises(ConfigError, match=r"max_replies.*1"):
        RunConfig(max_replies=1)
