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
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ADAPTER",
    "ADAPTER_A",
    "ADAPTER_ARRAYS",
    "ADAPTER_B",
    "ADAPTER_CONFIG",
    "ADAPTER_METRICS",
    "ADAPTER_NEGATIVES",
    "ADAPTER_WEIGHT_KEY",
    "CATALOGUE_KEY",
    "CENTROIDS",
    "COUNTS",
    "HISTOGRAM",
    "MESSAGE_QUERY_HISTOGRAM",
    "MESSAGE_QUERY_ROSTER",
    "MESSAGE_TRAIN_ADAPTER",
    "MESSAGE_TRAIN_COUNTS",
    "MESSAGE_TRAIN_INTERESTS",
    "MESSAGE_TRAIN_SHARD",
    "RELEASE_ARRAYS",
    "REPLY_ARRAYS",
    "REPLY_META",
    "ROUND_CONFIG",
    "SHARD_META",
    "SHARD_SUM",
    "SHARD_USERS",
    "SUMS",
    "TASK_SENSITIVITY",
    "AdapterKeys",
    "NoiseKind",
    "ReleaseMode",
    "ReleaseTask",
    "ReplyKeys",
    "ReplyStatus",
    "RoundKeys",
    "ShardKeys",
    "decode_ids",
    "encode_ids",
]

#: Message type of a local-mode round (the secagg path uses Flower's ``train`` stages).
MESSAGE_TRAIN_INTERESTS: Final = "train.interests"
#: Message type of the adapter's DP-SGD step (after the release step of a round).
MESSAGE_TRAIN_ADAPTER: Final = "train.adapter"
#: Local-mode message types of the item-count and histogram releases.
MESSAGE_TRAIN_COUNTS: Final = "train.counts"
MESSAGE_QUERY_HISTOGRAM: Final = "query.histogram"
#: The batched simulation engine (one virtual node per shard of simulated devices, not a
#: deployment path): the server asks each shard for its users' global indices, then sends it
#: each release request with the members it samples; the shard answers with the noisy sum of
#: their releases (:mod:`client.shard`, :class:`server.collectors.BatchedCollector`).
MESSAGE_QUERY_ROSTER: Final = "query.roster"
MESSAGE_TRAIN_SHARD: Final = "train.shard"
#: Array record (and array) of the members / users of a shard, int64 global indices.
SHARD_USERS: Final = "users"
#: Array record (and array) of a shard's noisy sum, float64.
SHARD_SUM: Final = "shard_sum"
#: Config record of a shard's reply (:class:`ShardKeys`).
SHARD_META: Final = "shard_meta"


class ShardKeys:
    """Keys of :data:`SHARD_META`."""

    SHARD: Final = "shard"
    USABLE: Final = "usable"
    STATUSES: Final = "statuses"
    ERROR: Final = "error"
    RAY_NODE: Final = "ray-node"
    SECONDS: Final = "seconds"
    REUSED: Final = "reused"


#: The catalogue's item ids travel as one uint8 array (UTF-8, newline-separated): Flower's
#: legacy SecAgg+ config cannot carry lists (see :func:`encode_ids` / :func:`decode_ids`).
CATALOGUE_KEY: Final = "catalogue"


def encode_ids(ids: list[str]) -> np.ndarray:
    """Item ids -> a uint8 array (UTF-8, newline-separated)."""
    import numpy as np

    if any("\n" in i for i in ids):
        raise ValueError("item ids must not contain newlines.")
    return np.frombuffer("\n".join(ids).encode("utf-8"), dtype=np.uint8).copy()


def decode_ids(arr: np.ndarray) -> list[str]:
    """The inverse of :func:`encode_ids`."""
    import numpy as np

    raw = np.asarray(arr, dtype=np.uint8).tobytes()
    return raw.decode("utf-8").split("\n") if raw else []


ROUND_CONFIG: Final = "interests.config"
CENTROIDS: Final = "centroids"
ADAPTER: Final = "adapter"
REPLY_META: Final = "interests.meta"
REPLY_ARRAYS: Final = "interests.release"
SUMS: Final = "sums"
COUNTS: Final = "counts"
HISTOGRAM: Final = "histogram"
#: Arrays a reply may carry (one of them, by task).
RELEASE_ARRAYS: Final = frozenset({SUMS, COUNTS, HISTOGRAM})
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


class ReleaseTask(str, enum.Enum):
    """What a release round asks the devices for (round config key ``task``)."""

    LEAF_SUMS = "leaf-sums"
    """Per public leaf, the weighted sum of the device's event vectors (the tree)."""
    ITEM_COUNTS = "item-counts"
    """Per public catalogue item, how many of the device's events touch it (popularity)."""
    HISTOGRAM = "histogram"
    """The device's top-k broad interests as a k-hot vector of norm 1 (population analytics)."""


#: Event-level L2 sensitivity of the tasks other than the leaf sums (whose sensitivity is
#: clipping_norm x max_weight): a count moves by 1; two k-hot unit vectors differ by <= sqrt(2).
TASK_SENSITIVITY: Final = MappingProxyType(
    {ReleaseTask.ITEM_COUNTS: 1.0, ReleaseTask.HISTOGRAM: math.sqrt(2.0)}
)


class ReleaseMode(str, enum.Enum):
    """How releases reach the server."""

    SECAGG = "secagg"
    """Summed under Flower SecAgg+; each device adds a share of the noise (default)."""
    LOCAL = "local"
    """Each device adds the full noise; the server sees every noisy release."""


class NoiseKind(str, enum.Enum):
    """The noise a release carries."""

    GAUSSIAN = "gaussian"
    """Continuous Gaussian (Flower's SecAgg+ then quantises it; the accounting is the
    continuous mechanism's)."""
    DISCRETE = "discrete-gaussian"
    """Integer noise: the distributed discrete Gaussian (:mod:`common.privacy.discrete`);
    what SecAgg+ sums is exactly the accounted mechanism."""


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
    TASK: Final = "task"
    TOP_K: Final = "top-k"
    UNIT: Final = "unit"
    """The privacy unit the noise is calibrated for (``user`` or ``event``)."""
    NOISE: Final = "noise"
    """:class:`NoiseKind` (absent: continuous Gaussian)."""
    CLIP_UNITS: Final = "clip-units"
    """Integer noise: the release's norm bound in integer units."""
    RELEASE_DIM: Final = "release-dim"
    """Integer noise: the release's number of coordinates."""


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
    CODE: Final = "code"
    """A refusal's :class:`~common.errors.RefusalCode` (absent from an ok reply)."""


class ReplyStatus(str, enum.Enum):
    """What a device did with a round."""

    OK = "ok"
    BUDGET_EXCEEDED = "budget_exceeded"
    """Releasing would exceed the device's budget: nothing was released."""
    NO_EVENTS = "no_events"
    """The device has nothing to release; it still sends its noise share (no data, no spend)."""
    REFUSED = "refused"
    """The round's parameters failed the device's checks (fail closed): nothing released."""
