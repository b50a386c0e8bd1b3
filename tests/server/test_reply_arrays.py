"""The server's fast read of reply arrays equals Flower's own, and validation still rejects."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

from common.errors import InvalidReleaseError
from common.records import REPLY_ARRAYS, REPLY_META, SUMS, ReplyKeys
from server.replies import _array_view, validate_local_reply


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.arange(5, dtype=">f8"),
        np.zeros((0, 4), dtype=np.float32),
        np.array(3.5, dtype=np.float32),
    ],
)
def test_array_view_equals_numpy(arr: np.ndarray) -> None:
    """Same values, shape and dtype as `Array.numpy()`, twice (the header cache)."""
    a = Array(arr)
    for _ in range(2):
        got = _array_view(a)
        want = a.numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def _reply(x: np.ndarray) -> Message:
    meta = {ReplyKeys.STATUS: "ok", ReplyKeys.SERVER_ROUND: 1, ReplyKeys.HIERARCHY_VERSION: 0}
    return Message(  # type: ignore[call-overload]
        RecordDict({REPLY_ARRAYS: ArrayRecord({SUMS: Array(x)}), REPLY_META: ConfigRecord(meta)}),
        metadata=Metadata(
            run_id=1,
            message_id="m",
            src_node_id=2,
            dst_node_id=1,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=60.0,
            message_type="train.interests",
        ),
    )


def test_validation_rejects_nan_inf_and_large_norms() -> None:
    """NaN and Inf are named as such; a finite release above the bound is named by its norm."""
    kw = {"expected_shape": (3, 4), "norm_bound": 10.0, "server_round": 1, "version": 0}
    ok = np.full((3, 4), 0.5, dtype=np.float32)
    x = validate_local_reply(_reply(ok), **kw)  # type: ignore[arg-type]
    assert x is not None and x.dtype == np.float64
    np.testing.assert_array_equal(x, ok)
    for bad in (np.nan, np.inf, -np.inf):
        y = ok.copy()
        y[1, 2] = bad
        with pytest.raises(InvalidReleaseError, match="NaN or Inf"):
            validate_local_reply(_reply(y), **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidReleaseError, match="exceeds the bound"):
        validate_local_reply(_reply(ok * 100), **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidReleaseError, match="exceeds the bound"):
        validate_local_reply(_reply(np.full((3, 4), 3e38, dtype=np.float32)), **kw)  # type: ignore[arg-type]
