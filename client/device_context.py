"""What the device's own commands (profile, recommend) work on: its store, the published
hierarchy, the encoder and the adapter the device last received, plus the run outputs it may
read (the DP item popularity, the DP population counts).

Every input is checked before the store is written; a bad one is a
:class:`DeviceInputError` naming it (``what``: the flag or file, as the caller calls it).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.adapter import AdapterWeights
from common.errors import ConfigError
from common.hierarchy import Hierarchy

__all__ = [
    "HIERARCHY_STATE_KEY",
    "DeviceContext",
    "DeviceInputError",
    "MissingHierarchyError",
    "Popularity",
    "load_adapter",
    "load_npz",
    "load_popularity",
    "open_device_context",
    "popularity_prior",
    "population_from_analytics",
    "rank_candidates",
]

#: the store state key of the hierarchy last given to the device (kept for offline calls)
HIERARCHY_STATE_KEY = "hierarchy"


class DeviceInputError(ConfigError):
    """A file the device was given cannot be used (missing array, malformed record...)."""


class MissingHierarchyError(DeviceInputError):
    """No hierarchy was given and the store holds none."""


@dataclass
class DeviceContext:
    """An open device store with the hierarchy, encoder and adapter to read it with.

    Attributes:
        store: the device's :class:`client.store.EventStore` (closed by :meth:`close`).
        hierarchy: the published interest tree.
        encoder: the device's text encoder.
        adapter: the adapter to apply, ``None`` when there is none or it is the identity.
    """

    store: Any
    hierarchy: Hierarchy
    encoder: Any
    adapter: AdapterWeights | None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> DeviceContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_device_context(
    store_path: str | Path,
    *,
    hierarchy: Hierarchy | None = None,
    adapter: AdapterWeights | None = None,
    model_dir: str | None = None,
    encoder: str | None = None,
) -> DeviceContext:
    """Opens an existing store with its hierarchy, encoder and adapter.

    Args:
        store_path: the device store (it must exist).
        hierarchy: a hierarchy to use and keep in the store; ``None``: the one kept there.
        adapter: adapter weights to use; ``None``: the adapter the device last received.
        model_dir: a local Hugging Face model directory (``None``: the bundled MiniLM).
        encoder: the registered encoder (the run's: the hierarchy's fingerprint covers it;
            ``None``: :data:`client.encoder_registry.DEFAULT_ENCODER`).

    Raises:
        MissingHierarchyError: no ``hierarchy`` and none kept in the store.
        DeviceInputError: the store's adapter cannot be read.
    """
    from client.app import ADAPTER_STATE_KEY
    from client.encoder_registry import DEFAULT_ENCODER, make_encoder
    from client.store import EventStore

    store = EventStore(store_path, create=False)
    try:
        if hierarchy is not None:
            store.set_state(HIERARCHY_STATE_KEY, hierarchy.to_json().encode("utf-8"))
        else:
            raw = store.get_state(HIERARCHY_STATE_KEY)
            if raw is None:
                raise MissingHierarchyError(
                    "no hierarchy: pass --hierarchy RUN_DIR/hierarchy.json once (it is kept in "
                    "the store)."
                )
            hierarchy = Hierarchy.from_json(raw)
        if adapter is None:
            packed = store.get_state(ADAPTER_STATE_KEY)
            if packed is not None:
                adapter = load_adapter(io.BytesIO(packed), "the store's adapter")
        text_encoder = make_encoder(encoder or DEFAULT_ENCODER, model_dir=model_dir)
    except BaseException:
        store.close()
        raise
    if adapter is not None and adapter.is_identity():
        adapter = None
    return DeviceContext(store, hierarchy, text_encoder, adapter)


def load_npz(source: Any, what: str, keys: Sequence[str]) -> dict[str, Any]:
    """The arrays of an ``.npz`` (no pickles) that must hold ``keys``.

    Raises:
        DeviceInputError: naming ``what``, when it is not such an archive.
    """
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DeviceInputError(f"{what} must be an .npz archive. Found a single .npy array.")
        with loaded as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DeviceInputError(
                    f"{what} lacks the array(s) {', '.join(missing)}. Found "
                    f"{', '.join(z.files) or 'none'} (is it the right file?)."
                )
            return {k: z[k] for k in z.files}
    except DeviceInputError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DeviceInputError(f"{what} is not a readable .npz archive: {err}.") from err


def load_adapter(source: Any, what: str) -> AdapterWeights:
    """Adapter weights from an ``.npz`` with arrays ``a`` and ``b`` (as the device keeps them)."""
    z = load_npz(source, what, ("a", "b"))
    try:
        return AdapterWeights(z["a"].astype("float32"), z["b"].astype("float32"))
    except (ValueError, TypeError) as err:
        raise DeviceInputError(f"{what}: {err}") from err


@dataclass(frozen=True)
class Popularity:
    """A run's DP item popularity (``popularity.npz``): item ids, noisy counts, noise std."""

    items: list[str]
    counts: npt.NDArray[np.float64]
    noise_std: float


def load_popularity(path: Path, what: str) -> Popularity:
    """A run's ``popularity.npz``, checked (``what``: how the caller names it)."""
    z = load_npz(path, what, ("items", "counts"))
    items, counts = z["items"], z["counts"]
    if items.ndim != 1 or counts.shape != items.shape:
        raise DeviceInputError(
            f"{what}: `items` and `counts` must be two arrays of one length. "
            f"Found shapes {items.shape} and {counts.shape}."
        )
    if not np.issubdtype(counts.dtype, np.number) or not np.isfinite(counts).all():
        raise DeviceInputError(f"{what}: `counts` must be finite numbers.")
    noise = z.get("noise_std", np.array(0.0))
    try:
        noise_std = float(noise)
    except (TypeError, ValueError):
        noise_std = float("nan")
    if not (noise_std >= 0 and np.isfinite(noise_std)):
        raise DeviceInputError(f"{what}: `noise_std` must be a number >= 0. Found {noise!r}.")
    return Popularity([str(i) for i in items], counts.astype(np.float64), noise_std)


def popularity_prior(popularity: Popularity, item_ids: Sequence[str]) -> npt.NDArray[np.float64]:
    """The standardised popularity prior of ``item_ids``, shape ``(len(item_ids),)``; an item
    outside the catalogue counts as observed at 0."""
    from common.popularity import standardised_prior

    counts = np.append(popularity.counts, 0.0)  # the extra entry: an unknown item
    prior = standardised_prior(counts, popularity.noise_std)
    where = {item: n for n, item in enumerate(popularity.items)}
    out: npt.NDArray[np.float64] = prior[[where.get(i, len(popularity.items)) for i in item_ids]]
    return out


def rank_candidates(
    ctx: DeviceContext,
    candidates: Sequence[tuple[str, str]],
    *,
    projection_seed: int,
    popularity: Popularity | None = None,
) -> tuple[npt.NDArray[np.float64], Any]:
    """Scores ``(item_id, text)`` candidates for the device's user.

    Returns:
        ``(scores, profile)``: one score per candidate, shape ``(len(candidates),)``, and the
        device's :class:`client.profile.InterestProfile`.
    """
    from client.encoder import encode_cached
    from client.profile import device_profile

    prof = device_profile(
        ctx.store,
        ctx.hierarchy,
        encoder=ctx.encoder,
        adapter=ctx.adapter,
        projection_seed=projection_seed,
    )
    raw = encode_cached(ctx.encoder, ctx.store.embeddings, [t for _, t in candidates])
    prior = (
        popularity_prior(popularity, [i for i, _ in candidates]) if popularity is not None else None
    )
    scores: npt.NDArray[np.float64] = prof.score(raw, prior=prior)
    return scores, prof


def population_from_analytics(path: str) -> dict[str, float]:
    """Level-1 node id -> DP population count, from the last record of a run's
    ``analytics.jsonl`` (a run with the population histogram)."""
    p = Path(path)
    if not p.is_file():
        raise DeviceInputError(
            f"population file {path!r} does not exist (RUN_DIR/analytics.jsonl of a run with --histogram)."
        )
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as err:
        raise DeviceInputError(f"population file {path!r} is not UTF-8 text: {err}.") from err
    if not lines:
        raise DeviceInputError(f"population file {path!r} is empty.")
    where = f"population file {path!r}, line {len(lines)}"
    try:
        last = json.loads(lines[-1])
        nodes = last["nodes"]
        out = {str(n["id"]): float(n["count"]) for n in nodes}
    except ValueError as err:
        raise DeviceInputError(f"{where}: not a JSON analytics record ({err}).") from err
    except (KeyError, TypeError) as err:
        raise DeviceInputError(
            f'{where}: expected {{"nodes": [{{"id": ..., "count": ...}}]}} '
            f"(RUN_DIR/analytics.jsonl). Missing or wrong field: {err}."
        ) from err
    return out
