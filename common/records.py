"""What the server and the devices exchange: message types, record keys, shapes, dtypes.

Defined once here; ``client`` and ``server`` never retype these strings.

Server -> device, each round (``train.interests`` in local mode; the legacy ``fitins.*``
layout of Flower's SecAgg+ workflow in secagg mode):

- config record :data:`ROUND_CONFIG` with the keys of :class:`RoundKeys`;
- array :data:`CENTROIDS` of shape ``(num_leaves, dim)``, float32, unit rows (public).

Device -> server: **only** the noisy release (allow-list, checked by tests and by the server):

- array :data:`SUMS` of shape ``(num_leaves + 1, dim)``, float32: one clipped, weighted,
  noised sum per public leaf plus the last row for events no leaf explains (the "unassigned"
  bucket that seeds new leaves);
- config record :data:`REPLY_META` with :class:`ReplyKeys`: a status code, and the round
  and hierarchy version echoed back. No ids, texts, counts or timestamps.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "ADAPTER",
    "ADAPTER_A",
    "ADAPTER_ARRAYS",
    "ADAPTER_B",
    "ADAPTER_CONFIG",
    "ADAPTER_METRICS",
    "ADAPTER_NEGATIVES",
    "ADAPTER_WEIGHT_KEY",
    "CENTROIDS",
    "MESSAGE_TRAIN_ADAPTER",
    "MESSAGE_TRAIN_INTERESTS",
    "RELEASE_ARRAYS",
    "REPLY_ARRAYS",
    "REPLY_META",
    "ROUND_CONFIG",
    "SUMS",
    "AdapterKeys",
    "ReleaseMode",
    "ReplyKeys",
    "ReplyStatus",
    "RoundKeys",
]

#: Message type of a local-mode round (the secagg path uses Flower's ``train`` stages).
MESSAGE_TRAIN_INTERESTS: Final = "train.interests"
#: Message type of the adapter's DP-SGD step (after the release step of a round).
MESSAGE_TRAIN_ADAPTER: Final = "train.adapter"

ROUND_CONFIG: Final = "interests.config"
CENTROIDS: Final = "centroids"
ADAPTER: Final = "adapter"
REPLY_META: Final = "interests.meta"
REPLY_ARRAYS: Final = "interests.release"
SUMS: Final = "sums"
#: Arrays a reply may carry.
RELEASE_ARRAYS: Final = frozenset({SUMS})
#: The adapter's arrays (server -> device with every round; device -> server after DP-SGD).
ADAPTER_A: Final = "a"
ADAPTER_B: Final = "b"
#: Record names of the adapter step (Flower FedAvg's own keys, so its aggregation applies).
ADAPTER_ARRAYS: Final = "arrays"
ADAPTER_CONFIG: Final = "config"
ADAPTER_METRICS: Final = "metrics"
ADAPTER_NEGATIVES: Final = "negatives"
#: FedAvg's weighting key; devices report 1 (equal weights, no exact counts released).
ADAPTER_WEIGHT_KEY: Final = "num-examples"


class ReleaseMode(str, enum.Enum):
    """How releases reach the server."""

    SECAGG = "secagg"
    """Summed under Flower SecAgg+; each device adds a share of the noise (default)."""
    LOCAL = "local"
    """Each device adds the full noise; the server sees every noisy release."""


class RoundKeys:
    """Keys of the per-round config record (server -> device)."""

    SERVER_ROUND: Final = "server-round"
    HIERARCHY_VERSION: Final = "hierarchy-version"
    MODE: Final = "mode"
    CLIPPING_NORM: Final = "clipping-norm"
    MAX_WEIGHT: Final = "max-weight"
    NOISE_MULTIPLIER: Final = "noise-multiplier"
    NOISE_STD: Final = "noise-std"
    MIN_COHORT: Final = "min-cohort"
    USER_CLIPPING_NORM: Final = "user-clipping-norm"
    RESIDUAL_THRESHOLD: Final = "residual-threshold"
    PROJECTION_SEED: Final = "projection-seed"
    PROJECTION_DIM: Final = "projection-dim"
    PROJECTION_FINGERPRINT: Final = "projection-fingerprint"
    MAX_EVENTS: Final = "max-events"
    DELTA: Final = "delta"


class AdapterKeys:
    """Keys of the adapter step's config record (server -> device)."""

    SERVER_ROUND: Final = "server-round"
    NOISE_MULTIPLIER: Final = "adapter-noise-multiplier"
    MAX_GRAD_NORM: Final = "adapter-max-grad-norm"
    SAMPLE_RATE: Final = "adapter-sample-rate"
    STEPS: Final = "adapter-steps"
    LR: Final = "adapter-lr"
    TEMPERATURE: Final = "adapter-temperature"
    EXPECTED_BATCH_SIZE: Final = "adapter-expected-batch-size"
    UPDATE_CLIPPING_NORM: Final = "adapter-update-clipping-norm"
    DELTA: Final = "delta"


class ReplyKeys:
    """Keys of the reply's metadata record (device -> server)."""

    STATUS: Final = "status"
    SERVER_ROUND: Final = "server-round"
    HIERARCHY_VERSION: Final = "hierarchy-version"


class ReplyStatus(str, enum.Enum):
    """What a device did with a round."""

    OK = "ok"
    BUDGET_EXCEEDED = "budget_exceeded"
    """Releasing would exceed the device's budget: nothing was released."""
    NO_EVENTS = "no_events"
    """The device has nothing to release; it still sends its noise share (no data, no spend)."""
    REFUSED = "refused"
    """The round's parameters failed the device's checks (fail closed): nothing released."""
