"""The batched engine: a population of 10^3-10^5 simulated devices on a few Flower nodes.

``fedinterest simulate --engine batched`` runs one Flower virtual node per worker (default:
one per CPU, ``--workers N``; with ``RAY_ADDRESS`` the nodes spread over a Ray cluster), each
hosting a **shard** of the population:

1. the population's events are columns (:class:`common.event_table.EventTable`), never one
   Python object per event; each distinct text is embedded once for the whole run;
2. each shard is one SQLite file (:class:`client.shard_store.ShardStore`): its users' events,
   their texts' cached embeddings, one ledger per user;
3. the server samples cohorts of **users** (not nodes) and sends each shard the members it
   hosts (:class:`server.batched.BatchedCollector`); the shard computes every member's release
   with the devices' own release functions (:mod:`client.release_math`), checks and records
   each member's budget in that member's ledger, and returns the noisy sum
   (:class:`client.shard.ShardDevices`);
4. the metrics are computed on a seeded sample of users when the population is large (stated
   in ``metrics.json``'s ``evaluation``).

Not simulated (use ``--engine devices`` for that): SecAgg+ masking, key agreement and per-stage
dropouts (the secure sum is an exact sum), the adapter (refused), the empirical audit's
canaries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.policy import DevicePolicy
from client.shard_store import ShardData, ShardStore
from client.store import EmbeddingCache
from common.errors import ConfigError
from common.event_table import EventTable
from common.events import text_hash

__all__ = ["EvaluationSample", "default_workers", "shard_path", "write_shards"]


def default_workers() -> int:
    """One shard per CPU of this machine, or of the Ray cluster ``RAY_ADDRESS`` names (its
    CPUs are counted when the run starts Ray: :func:`cluster_cpus`)."""
    return max(1, os.cpu_count() or 1)


def shard_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:03d}.db"


def _progress(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=None)


def write_shards(
    root: Path,
    table: EventTable,
    workers: int,
    *,
    cache: EmbeddingCache,
    model_id: str,
    budgets: npt.NDArray[np.float64],
) -> list[Path]:
    """Splits ``table``'s users into ``workers`` contiguous shards and writes one shard store
    each (users keep their index in ``table`` as their global index).

    Args:
        budgets: each user's lifetime epsilon (NaN: none), ``(num_users,)``.

    Raises:
        ConfigError: a text of the table is not in the embedding cache.
    """
    if workers < 1:
        raise ConfigError(f"`workers` must be >= 1. Found {workers!r}.")
    root.mkdir(parents=True, exist_ok=True)
    hashes = [text_hash(t) for t in table.texts]
    used = np.unique(table.text)
    found = cache.get(model_id, [hashes[int(i)] for i in used])
    missing = [int(i) for i in used if hashes[int(i)] not in found]
    if missing:
        raise ConfigError(
            f"{len(missing)} texts are not in the embedding cache (first {table.texts[missing[0]]!r})."
        )
    paths = []
    blocks = np.array_split(np.arange(table.num_users), min(workers, max(table.num_users, 1)))
    bar = _progress(len(blocks), "write shards", "shard")
    for s, users in enumerate(blocks):
        sub = table.take_users(users)
        texts = np.unique(sub.text)
        items = np.unique(sub.item[sub.item >= 0])
        item_local = np.full(len(table.items) + 1, -1, dtype=np.int32)
        item_local[items] = np.arange(len(items), dtype=np.int32)
        data = ShardData(
            users=users.astype(np.int64),
            names=sub.users,
            budgets=np.asarray(budgets, dtype=np.float64)[users],
            user=sub.user,
            timestamp=sub.timestamp,
            event_type=sub.event_type,
            text=np.searchsorted(texts, sub.text).astype(np.int32),
            item=item_local[sub.item],
            dwell=np.asarray(sub.dwell, dtype=np.float64),
            value=np.asarray(sub.value, dtype=np.float64),
            text_hashes=[hashes[int(i)] for i in texts],
            embeddings=np.stack([found[hashes[int(i)]] for i in texts]).astype(np.float32)
            if len(texts)
            else np.zeros((0, 1), np.float32),
            item_ids=[table.items[int(i)] for i in items],
            model_id=model_id,
        )
        path = shard_path(root, s)
        with ShardStore(path, create=True) as store:
            store.write(data)
        paths.append(path)
        bar.update(1)
    bar.close()
    return paths


@dataclass(frozen=True)
class EvaluationSample:
    """The users the metrics are computed on.

    Attributes:
        users: their indices in the population table.
        population: the population's size.
        seed: the sample's seed.
    """

    users: npt.NDArray[np.int64]
    population: int
    seed: int

    @classmethod
    def draw(cls, population: int, limit: int, seed: int) -> EvaluationSample:
        """All users up to ``limit``, else a seeded uniform sample of ``limit``."""
        if limit < 1:
            raise ConfigError(f"`eval_users` must be >= 1. Found {limit!r}.")
        if population <= limit:
            return cls(np.arange(population, dtype=np.int64), population, seed)
        rng = np.random.default_rng([seed, 0xE7A1])
        return cls(np.sort(rng.choice(population, size=limit, replace=False)), population, seed)

    def describe(self) -> dict[str, Any]:
        whole = len(self.users) == self.population
        return {
            "users": len(self.users),
            "population": self.population,
            "seed": self.seed,
            "note": "every user"
            if whole
            else (
                f"metrics and rankings on a seeded uniform sample of {len(self.users)} of "
                f"{self.population} users (their training events for the baselines, their "
                "held-out events for the rankings); the federated tree was trained on all"
            ),
        }


def shard_recipe_resolver(
    root: str, allow_no_dp: bool, noise_seed: int | None, policy: DevicePolicy
) -> Callable[[Any], Any]:
    """The shard settings of a virtual node (its partition id is its shard index); its
    devices hold ``policy``."""
    from client.shard_app import ShardSettings

    def settings_for(context: Any) -> ShardSettings:
        pid = int(context.node_config["partition-id"])
        return ShardSettings(shard_path(Path(root), pid), pid, allow_no_dp, noise_seed, policy)

    return settings_for
