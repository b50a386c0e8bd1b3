"""The round's edges: the server state restored from the database, and each round's outcome
written once, at the end of the round.

:func:`persist_round` writes, in **one** SQLite transaction (``server.db``, the source of
truth): the server's view of the round, the aggregation state, the adapter, the new version
and the adapter it lives in, the server's ledger entries, what was released, the popularity
and histogram releases, and the round record. Then the run directory's files, each replaced
atomically (:mod:`common.jsonio`): ``hierarchy.json``, ``adapter.npz``, ``popularity.npz``,
``analytics.jsonl`` and ``rounds.jsonl``. A crash leaves the database with the whole round or
none of it; a resumed run rebuilds ``rounds.jsonl`` and ``hierarchy.json`` from it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.adapter import AdapterWeights
from common.jsonio import atomic_append_text, atomic_write_bytes, json_safe
from common.records import ReleaseTask
from server.aggregation import LeafState
from server.round_state import (
    AdapterState,
    RoundOutcome,
    ServerConfig,
    ServerState,
    initial_server_state,
)
from server.storage import ServerStorage

__all__ = ["last_completed_round", "load_state", "persist_round"]

_STATE_KEY = "leaf_state"
_ADAPTER_KEY = "adapter"
_RELEASED_KEY = "released"


def load_state(storage: ServerStorage, config: ServerConfig) -> ServerState:
    """The server state after the last persisted round (the initial state for a new run)."""
    fresh = initial_server_state(config)
    arrays = storage.get_arrays(_STATE_KEY)
    adapter = storage.get_arrays(_ADAPTER_KEY)
    released = storage.get_json(_RELEASED_KEY) or {}
    adapter_state = AdapterState(
        weights=AdapterWeights.from_arrays(adapter)
        if adapter is not None
        else fresh.adapter.weights,
        training=bool(released.get("adapter_training", True)),
        rounds=tuple(int(r) for r in released.get("adapter", [])),
    )
    return ServerState(
        leaves=LeafState.from_arrays(arrays) if arrays is not None else fresh.leaves,
        hierarchy=storage.latest_version() if arrays is not None else None,
        adapter=adapter_state,
        aux_releases=tuple((int(r), ReleaseTask(t)) for r, t in released.get("aux", [])),
        ledger=tuple(storage.ledger()),
    )


def last_completed_round(storage: ServerStorage, state: ServerState) -> int:
    """The last round with a record (a skipped round counts: it is not tried again)."""
    recorded = [int(r["server_round"]) for r in storage.rounds()]
    return max([state.leaves.server_round, *recorded])


def persist_round(
    storage: ServerStorage, run_dir: str | Path, state: ServerState, outcome: RoundOutcome
) -> None:
    """Writes one round: the database in one transaction, then the run directory's files."""
    summary = outcome.summary
    r = summary.server_round
    record = json_safe(summary.to_dict())
    h = outcome.hierarchy
    with storage.transaction() as conn:
        if outcome.view is not None:
            storage.put_arrays(f"round:{r}", dict(outcome.view), conn=conn)
        if h is not None:
            storage.put_arrays(_STATE_KEY, state.leaves.to_arrays(), conn=conn)
        storage.put_arrays(_ADAPTER_KEY, state.adapter.weights.to_arrays(), conn=conn)
        if h is not None:
            storage.put_version(h, conn=conn)
            if outcome.tree_adapter is not None:
                # the adapter whose space this version's centroids live in
                storage.put_arrays(
                    f"adapter:v{h.version}", outcome.tree_adapter.to_arrays(), conn=conn
                )
        for entry in outcome.ledger_entries:
            storage.append_ledger(entry, conn=conn)
        storage.put_json(_RELEASED_KEY, _released(state), conn=conn)
        if outcome.popularity is not None:
            p = outcome.popularity
            storage.put_arrays(
                "popularity", {"counts": p.counts, "noise_var": p.noise_var}, conn=conn
            )
            storage.put_json("popularity_items", list(p.items), conn=conn)
        if outcome.histogram is not None:
            storage.put_json(f"analytics:{r}", dict(outcome.histogram), conn=conn)
        storage.put_round(r, record, conn=conn)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if outcome.popularity is not None:
        p = outcome.popularity
        atomic_write_bytes(
            out / "popularity.npz",
            _npz(
                compressed=True,
                items=np.asarray(p.items),
                counts=p.counts.astype(np.float32),
                noise_std=np.asarray(p.noise_std),
            ),
        )
    if outcome.histogram is not None:
        atomic_append_text(
            out / "analytics.jsonl", json.dumps(json_safe(outcome.histogram), sort_keys=True) + "\n"
        )
    if h is not None:
        h.save(out / "hierarchy.json")
        if outcome.tree_adapter is not None:
            w = outcome.tree_adapter
            atomic_write_bytes(out / "adapter.npz", _npz(a=w.a, b=w.b))
    atomic_append_text(out / "rounds.jsonl", json.dumps(record, sort_keys=True) + "\n")


def _released(state: ServerState) -> dict[str, Any]:
    return {
        "aux": [[r, t.value] for r, t in state.aux_releases],
        "adapter": list(state.adapter.rounds),
        "adapter_training": state.adapter.training,
    }


def _npz(*, compressed: bool = False, **arrays: Any) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()
