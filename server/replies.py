"""Reply checks: whether what a device sent is a valid release (local mode).

The server never trusts a reply: every record outside the allow-list of
:mod:`common.records`, a wrong shape or dtype, NaN/Inf, a norm above the announced bound
(user clip plus the noise's tails) or a round/version mismatch is an
:class:`~common.errors.InvalidReleaseError`; the collector logs it, counts it in the round's
``failures`` and drops the reply. Replies are decoded without copies and without loading
pickles.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, Message
from flwr.common.serde import recorddict_to_proto

from common.errors import InvalidReleaseError
from common.records import (
    RELEASE_ARRAYS,
    REPLY_ARRAYS,
    REPLY_META,
    SUMS,
    ReplyKeys,
    ReplyStatus,
)

__all__ = ["MAX_REPLY_BYTES", "failure_reason", "reply_size", "validate_local_reply"]

_STATUS_VALUES = frozenset(s.value for s in ReplyStatus)

#: The largest reply the server decodes (a resource limit; Flower's own gRPC limit is higher).
MAX_REPLY_BYTES = 16 << 20


def reply_size(msg: Message) -> int:
    """The serialized size of a message's content in bytes (0 for an error reply)."""
    if msg.has_error():
        return 0
    return int(recorddict_to_proto(msg.content).ByteSize())


#: Parsed ``.npy`` headers by their bytes: a round's releases all share one header.
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype[Any]]] = {}


def _array_view(arr: Array) -> npt.NDArray[Any]:
    """A read-only view of a Flower Array's values (what ``arr.numpy()`` returns, without a
    copy and without re-parsing the same ``.npy`` header for each of thousands of replies;
    new headers go through numpy's own parser, pickles are never loaded)."""
    data = arr.data
    if arr.stype != "numpy.ndarray" or len(data) < 10 or data[:6] != b"\x93NUMPY":
        return arr.numpy()
    major = data[6]
    offset = 10 + int.from_bytes(data[8:10], "little") if major == 1 else None
    if major in (2, 3) and len(data) >= 12:
        offset = 12 + int.from_bytes(data[8:12], "little")
    if offset is None or offset > len(data):
        return arr.numpy()
    head = bytes(data[:offset])
    parsed = _NPY_HEADERS.get(head)
    if parsed is None:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in readers:
            return arr.numpy()
        shape, fortran, dtype = readers[version](f)
        if dtype.hasobject:
            return arr.numpy()  # refuses pickles
        parsed = (tuple(shape), bool(fortran), dtype)
        if len(_NPY_HEADERS) < 64:
            _NPY_HEADERS[head] = parsed
    shape, fortran, dtype = parsed
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        return arr.numpy()  # let numpy raise its own error
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def validate_local_reply(
    msg: Message,
    *,
    expected_shape: tuple[int, ...],
    array_key: str = SUMS,
    norm_bound: float,
    server_round: int,
    version: int,
) -> npt.NDArray[np.float64] | None:
    """Checks one local-mode reply; returns its release, ``None`` for a status without one.

    Raises:
        InvalidReleaseError: naming what is wrong (keys outside the allow-list, shape, dtype,
            NaN/Inf, norm above the bound, round or version mismatch).
    """
    if msg.has_error():
        raise InvalidReleaseError(f"device error: {msg.error.reason}")
    content = msg.content
    # each of these properties rebuilds a typed view of the record dict: read them once
    array_records = content.array_records
    config_records = content.config_records
    extra = (
        set(array_records) - {REPLY_ARRAYS}
        | set(config_records) - {REPLY_META}
        | set(content.metric_records)
    )
    if extra:
        raise InvalidReleaseError(f"reply carries records outside the allow-list: {sorted(extra)}.")
    if REPLY_META not in config_records:
        raise InvalidReleaseError(f"reply has no `{REPLY_META}` record.")
    meta = config_records[REPLY_META]
    unknown_meta = set(meta) - {
        ReplyKeys.STATUS,
        ReplyKeys.SERVER_ROUND,
        ReplyKeys.HIERARCHY_VERSION,
        ReplyKeys.CODE,
    }
    if unknown_meta:
        raise InvalidReleaseError(
            f"reply metadata has keys outside the allow-list: {sorted(unknown_meta)}."
        )
    status = meta.get(ReplyKeys.STATUS)
    if status not in _STATUS_VALUES:
        raise InvalidReleaseError(
            f"reply status must be one of {[s.value for s in ReplyStatus]}. Found {status!r}."
        )
    if (
        meta.get(ReplyKeys.SERVER_ROUND) != server_round
        or meta.get(ReplyKeys.HIERARCHY_VERSION) != version
    ):
        raise InvalidReleaseError(
            f"reply is for round {meta.get(ReplyKeys.SERVER_ROUND)!r} version {meta.get(ReplyKeys.HIERARCHY_VERSION)!r}; "
            f"expected round {server_round} version {version}."
        )
    if status != ReplyStatus.OK.value:
        if REPLY_ARRAYS in array_records:
            raise InvalidReleaseError(f"a reply with status {status!r} must not carry a release.")
        return None
    if REPLY_ARRAYS not in array_records:
        raise InvalidReleaseError("an ok reply needs its release arrays.")
    if array_key not in RELEASE_ARRAYS:
        raise InvalidReleaseError(f"`{array_key}` is not a release array.")
    arrays = array_records[REPLY_ARRAYS]
    if set(arrays) != {array_key}:
        raise InvalidReleaseError(
            f"release arrays must be exactly ['{array_key}']. Found {sorted(arrays)}."
        )
    arr = arrays[array_key]
    if arr.dtype != "float32":
        raise InvalidReleaseError(f"`{array_key}` must be float32. Found {arr.dtype}.")
    if tuple(arr.shape) != expected_shape:
        raise InvalidReleaseError(
            f"`{array_key}` must have shape {expected_shape}. Found {tuple(arr.shape)}."
        )
    raw = _array_view(arr)
    # One pass for both checks: a NaN or Inf anywhere makes the sum of squares non-finite
    # (squares cannot cancel). A ufunc reduction, not np.linalg.norm: a 2-thread BLAS call
    # took ~10 ms instead of ~10 us on the loaded 2-core host (docs/performance.md).
    sq = float(np.square(raw, dtype=np.float64).sum())
    if not math.isfinite(sq) and not np.isfinite(raw).all():
        raise InvalidReleaseError(f"`{array_key}` has NaN or Inf values.")
    norm = math.sqrt(sq)
    if norm > norm_bound:
        raise InvalidReleaseError(
            f"`{array_key}` norm {norm:.3g} exceeds the bound {norm_bound:.3g} (user clip + noise)."
        )
    return raw.astype(np.float64)


def failure_reason(text: str) -> str:
    """The last line of an error text, at most 160 characters (a ``failures`` key)."""
    t = text.strip().splitlines()[-1] if text.strip() else "unknown"
    return t[:160]
