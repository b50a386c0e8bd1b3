"""What ``fedinterest simulate`` runs (:class:`SimulateOptions`) and where it caches
embeddings: a light module (no Flower, no torch), read by the CLI, the run directory helpers
and the metrics."""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.encoder_registry import DEFAULT_ENCODER
from client.policy import DEFAULT_MIN_COHORT, DevicePolicy
from common.config import RunConfig
from common.events import Event

__all__ = [
    "DEFAULT_EVAL_USERS",
    "Engine",
    "SimulateOptions",
    "default_cache_path",
    "simulated_device_policy",
]

#: Users the metrics are computed on when the population is larger (a seeded sample).
DEFAULT_EVAL_USERS = 2000


class Engine(str, enum.Enum):
    """How ``simulate`` runs the devices on Flower's simulation engine."""

    DEVICES = "devices"
    """One virtual node per device, real SecAgg+ messages (protocol-faithful, ~70 ms a device
    and round)."""
    BATCHED = "batched"
    """One virtual node per worker hosting a shard of the devices, the secure sum simulated by
    an exact sum (:mod:`simulations.engines.batched`)."""

    def __str__(self) -> str:
        return self.value


def default_cache_path() -> Path:
    """``$FEDINTEREST_CACHE``, else ``$XDG_CACHE_HOME/fedinterest``, else ``~/.cache/fedinterest``
    (``embeddings.db`` inside)."""
    env = os.environ.get("FEDINTEREST_CACHE")
    if env:
        return Path(env) / "embeddings.db"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedinterest" / "embeddings.db"


@dataclass(frozen=True)
class SimulateOptions:
    """What ``fedinterest simulate`` runs.

    Attributes:
        dataset: ``synthetic``, ``movielens``, ``mind:DIR`` or ``events:FILE.jsonl``.
        clients: virtual clients (one per user; the first ``clients`` users of a real dataset
            in a seeded random order).
        out: the run directory.
        run: the federated run's configuration.
        events_per_user: median events per synthetic user.
        max_events_per_client: each client keeps its latest events up to this cap.
        cache: the shared embedding cache file.
        taxonomy: a TSV label space instead of the project's vocabulary.
        overwrite: replace an existing run directory.
        noise_seed: seed the devices' DP noise (tests only: predictable noise is not private).
        canaries: extra events per client index (the empirical audit's canaries).
        canary_devices: the canaries **replace** their devices' data (user-level canaries: a
            device whose whole data is its canary, or nothing when the canary is absent).
        canary_items: item ids added to the public catalogue (the canaries' items).
        device_budgets: per-client-index lifetime epsilon overriding the default budget.
        evaluate: compute the metrics against the baselines (off for audit runs).
        resume: continue the run in ``out`` from its last completed round (after a crash).
        client_mods: Flower mods wrapped around every virtual device (fault injection in tests:
            dropouts, poisoning).
        holdout: share of each user's latest events held out from the federated run and the
            baselines (the ranking and classification evaluation uses them).
        engine: :class:`Engine`: one Flower node per device, or shards of devices per node.
        workers: shard nodes of the batched engine (default: one per CPU).
        eval_users: the metrics are computed on a seeded sample of this many users when the
            population is larger (batched engine).
        encoder: the registered encoder every device and the server use
            (:data:`client.encoder_registry.ENCODERS`).
    """

    dataset: str = "synthetic"
    clients: int = 10_000
    out: Path = Path("run")
    run: RunConfig = field(default_factory=RunConfig)
    events_per_user: int = 60
    max_events_per_client: int | None = 5000
    cache: Path | None = None
    taxonomy: Path | None = None
    overwrite: bool = False
    noise_seed: int | None = None
    verbose: bool = False
    holdout: float = 0.2
    canaries: dict[int, list[Event]] = field(default_factory=dict)
    canary_devices: bool = False
    canary_items: tuple[str, ...] = ()
    resume: bool = False
    client_mods: tuple[Any, ...] = ()
    device_budgets: dict[int, float] = field(default_factory=dict)
    evaluate: bool = True
    engine: Engine = Engine.BATCHED
    workers: int | None = None
    eval_users: int = DEFAULT_EVAL_USERS
    encoder: str = DEFAULT_ENCODER


def simulated_device_policy(run: RunConfig, population: int) -> DevicePolicy:
    """The simulated devices' own policy: the run's delta and unit, and a minimum cohort of
    the unit's default (:data:`client.policy.DEFAULT_MIN_COHORT`) or, for a population too
    small to reach it, the smallest cohort the run's secure sum may have: a simulation is
    configured by its operator, who owns both sides (deployed devices keep the default
    unless their node config lowers it)."""
    p = run.privacy
    sampled = max(1, math.floor(run.fraction * population))
    fewest = max(2, math.floor(p.min_cohort_fraction * sampled))
    return DevicePolicy(
        delta=p.delta, unit=p.unit, min_cohort=min(DEFAULT_MIN_COHORT[p.unit], fewest)
    )
