"""What several sections measure on: synthetic texts, a one-user device store, a tree round's
config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

__all__ = ["device_store", "fresh_accounting", "round_config", "texts"]


def texts(n: int, long: bool, seed: int) -> list[str]:
    """``n`` distinct synthetic texts: short ones (under 60 characters) or paragraphs."""
    from simulations.datasets.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=max(20, n // 40), seed=seed))
    base = sorted({e.text for e in ds.events}, key=len)
    if not long:
        short = [t for t in base if len(t) < 60]
        return [f"{short[i % len(short)]} #{i}" for i in range(n)]
    paragraphs = [" ".join(base[(i * 7 + k) % len(base)] for k in range(12)) for i in range(n)]
    return paragraphs


def round_config(proj: Any, server_round: int, z: float) -> dict[str, Any]:
    """A secagg tree round's config record (70 devices' noise shares, multiplier ``z``)."""
    from common.records import RoundKeys

    return {
        RoundKeys.SERVER_ROUND: server_round,
        RoundKeys.HIERARCHY_VERSION: 0,
        RoundKeys.MODE: "secagg",
        RoundKeys.CLIPPING_NORM: 1.0,
        RoundKeys.MAX_WEIGHT: 1.0,
        RoundKeys.NOISE_MULTIPLIER: z,
        RoundKeys.NOISE_STD: z / math.sqrt(70),
        RoundKeys.MIN_COHORT: 70,
        RoundKeys.USER_CLIPPING_NORM: 100.0,
        RoundKeys.RESIDUAL_THRESHOLD: 0.2,
        RoundKeys.PROJECTION_SEED: proj.seed,
        RoundKeys.PROJECTION_DIM: proj.output_dim,
        RoundKeys.PROJECTION_FINGERPRINT: proj.fingerprint,
        RoundKeys.DELTA: 1e-5,
    }


def device_store(path: Path, n_events: int, enc: Any, cache: Any, *, embed: bool = True) -> None:
    """A device store with ``n_events`` synthetic events of one user, all texts cached (none
    with ``embed=False``: the device embeds them in its round)."""
    from client.encoder import encode_cached
    from client.store import EventStore
    from common.events import iter_records, text_hash
    from simulations.datasets.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(users=max(1, n_events // 60), seed=31, events_per_user=60))
    evs = [dataclasses.replace(e, user_id="one") for e in ds.events[:n_events]]
    with EventStore(path) as store:
        store.ingest(iter_records(evs), flag_quality=False)
        if not embed:
            return
        unique = sorted({e.text for e in evs})
        vecs = encode_cached(enc, cache, unique)
        store.embeddings.put(enc.model_id, [text_hash(t) for t in unique], vecs)


def fresh_accounting() -> None:
    """Forget memoised epsilons: every real round composes a ledger it has not seen before
    (otherwise the second device size would reuse the first one's accounting)."""
    from common.privacy import accounting

    accounting._epsilon_cached.cache_clear()
