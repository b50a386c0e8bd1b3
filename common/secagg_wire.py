"""The SecAgg+ wire format: the legacy ``fitins.*`` / ``fitres.*`` record layout that Flower's
SecAgg+ workflow needs (flwr 1.42), and the compact upload of its masked vectors.

The one place that knows it, used by both the server (:mod:`server.secagg`) and the device
(:mod:`client.app`). Formerly ``common/legacy_layout.py``. flwr is imported
inside the functions: ``common`` stays importable without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "compact_masked_vectors",
    "fitins_for_devices",
    "read_fitins",
    "read_fitres_metadata",
    "to_fitres",
    "widen_masked_vectors",
    "wire_array",
]

_UINT32_END = 1 << 32


def fitins_for_devices(arrays: list[npt.NDArray[np.float32]], config: Mapping[str, Any]) -> Any:
    """Server side: the FitIns a device receives in the SecAgg+ stage that carries the round:
    ``[centroids]`` or ``[centroids, adapter_a, adapter_b]``."""
    from flwr.common import FitIns, ndarrays_to_parameters

    return FitIns(ndarrays_to_parameters([wire_array(a) for a in arrays]), dict(config))


def read_fitins(content: Any) -> tuple[list[npt.NDArray[np.float32]], dict[str, Any]]:
    """Device side: ``(arrays, config)`` from the ``fitins.*`` records of a message."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) not in (1, 3):
        raise ValueError(
            f"expected centroids (and an adapter) in fitins. Found {len(arrays)} arrays."
        )
    return [wire_array(a) for a in arrays], dict(fitins.config)


def wire_array(a: Any) -> Any:
    """An array as it travels to or from a device: float32 for vectors; uint8 (encoded ids)
    as it is (both modes use this rule)."""
    arr = np.ascontiguousarray(a)
    return arr if arr.dtype == np.uint8 else arr.astype(np.float32)


def to_fitres(release: npt.NDArray[np.floating], metadata: Mapping[str, Any]) -> Any:
    """Device side: the ``fitres.*`` records SecAgg+ masks; ``num_examples = 1`` so the
    workflow's weighted average is the plain mean of the releases."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    res = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([np.asarray(release, dtype=np.float64)]),
        1,
        dict(metadata),
    )
    return compat.fitres_to_recorddict(res, keep_input=True)


def read_fitres_metadata(fitres: Any) -> dict[str, Any]:
    """Server side: the plaintext metadata of a legacy FitRes."""
    return dict(fitres.metrics)


def _masked_list(content: Any) -> tuple[Any, str] | None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    rec = content.config_records.get(RECORD_KEY_CONFIGS)
    if rec is None or Key.MASKED_PARAMETERS not in rec:
        return None
    return rec, str(Key.MASKED_PARAMETERS)


def compact_masked_vectors(content: Any) -> int:
    """Device side, in place: SecAgg+'s masked vector (stage 'collect masked vectors') holds
    integers mod 2^32 that flwr 1.42 ships as int64; re-encode them as uint32, lossless and
    half the upload (a 257 x 128 release: 263 kB -> 132 kB). Returns the bytes saved.

    Any array outside ``[0, 2^32)`` (never, for SecAgg+'s modulus) is left as it is."""
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes

    found = _masked_list(content)
    if found is None:
        return 0
    rec, key = found
    out, saved = [], 0
    for raw in rec[key]:
        arr = bytes_to_ndarray(raw)
        wide_int = arr.dtype.kind in "iu" and arr.dtype.itemsize > 4
        if wide_int and (arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) < _UINT32_END)):
            new = ndarray_to_bytes(arr.astype(np.uint32))
            saved += len(raw) - len(new)
            raw = new
        out.append(raw)
    rec[key] = out
    return saved


def widen_masked_vectors(content: Any) -> None:
    """Server side, in place: uint32 masked vectors back to the int64 arrays Flower's SecAgg+
    workflow sums (same values; see :func:`compact_masked_vectors`)."""
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes

    found = _masked_list(content)
    if found is None:
        return
    rec, key = found
    out = []
    for raw in rec[key]:
        arr = bytes_to_ndarray(raw)
        out.append(ndarray_to_bytes(arr.astype(np.int64)) if arr.dtype == np.uint32 else raw)
    rec[key] = out
