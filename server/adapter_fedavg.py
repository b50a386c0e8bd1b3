"""The adapter's federated step: FedAvg of the devices' DP-SGD updates, with optional
user-level DP added by Flower's server-side fixed clipping wrapper.

Devices report equal weights (``num-examples = 1``): an exact example count would be a
release of its own, and the wrapper's noise (std ``z C / n``) is calibrated to the uniform
mean. The wrapper is built for the number of usable replies (not the number sampled), so a
dropout never leaves the mean with less noise than its sensitivity needs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from common.adapter import AdapterWeights
from common.config import AdapterConfig
from common.errors import InvalidReleaseError
from common.records import (
    ADAPTER_A,
    ADAPTER_ARRAYS,
    ADAPTER_B,
    ADAPTER_CONFIG,
    ADAPTER_METRICS,
    ADAPTER_NEGATIVES,
    ADAPTER_WEIGHT_KEY,
    MESSAGE_TRAIN_ADAPTER,
    REPLY_META,
    AdapterKeys,
    ReplyKeys,
    ReplyStatus,
)
from server.aggregation import robust_mean
from server.round_state import AdapterUpdate

__all__ = [
    "adapter_config_record",
    "run_adapter_step",
    "validate_adapter_reply",
]

log = logging.getLogger("fedinterest.server")


def adapter_config_record(
    cfg: AdapterConfig, server_round: int, delta: float
) -> dict[str, float | int]:
    """The DP-SGD settings sent to the devices (:class:`common.records.AdapterKeys`)."""
    return {
        AdapterKeys.SERVER_ROUND: server_round,
        AdapterKeys.NOISE_MULTIPLIER: float(cfg.noise_multiplier),
        AdapterKeys.MAX_GRAD_NORM: float(cfg.max_grad_norm),
        AdapterKeys.SAMPLE_RATE: float(cfg.sample_rate),
        AdapterKeys.STEPS: int(cfg.steps),
        AdapterKeys.LR: float(cfg.lr),
        AdapterKeys.TEMPERATURE: float(cfg.temperature),
        AdapterKeys.EXPECTED_BATCH_SIZE: int(cfg.expected_batch_size),
        AdapterKeys.UPDATE_CLIPPING_NORM: float(cfg.update_clipping_norm),
        AdapterKeys.DELTA: float(delta),
    }


def validate_adapter_reply(msg: Message, base: AdapterWeights, update_bound: float) -> bool:
    """True for a usable update; False for a status without one.

    Raises:
        InvalidReleaseError: records outside the allow-list, wrong shapes, NaN/Inf, or an
            update larger than the announced clipping norm.
    """
    if msg.has_error():
        raise InvalidReleaseError(f"device error: {msg.error.reason}")
    c = msg.content
    if REPLY_META not in c.config_records:
        raise InvalidReleaseError(f"adapter reply has no `{REPLY_META}` record.")
    status = c.config_records[REPLY_META].get(ReplyKeys.STATUS)
    if status != ReplyStatus.OK.value:
        if c.array_records:
            raise InvalidReleaseError(f"a reply with status {status!r} must not carry arrays.")
        return False
    extra = (
        (set(c.array_records) - {ADAPTER_ARRAYS})
        | (set(c.metric_records) - {ADAPTER_METRICS})
        | (set(c.config_records) - {REPLY_META})
    )
    if extra:
        raise InvalidReleaseError(
            f"adapter reply carries records outside the allow-list: {sorted(extra)}."
        )
    arrays = c.array_records.get(ADAPTER_ARRAYS)
    if arrays is None or set(arrays) != {ADAPTER_A, ADAPTER_B}:
        raise InvalidReleaseError("adapter reply needs exactly the arrays 'a' and 'b'.")
    a, b = arrays[ADAPTER_A].numpy(), arrays[ADAPTER_B].numpy()
    if a.shape != base.a.shape or b.shape != base.b.shape:
        raise InvalidReleaseError(
            f"adapter shapes must be {base.a.shape} and {base.b.shape}. Found {a.shape} and {b.shape}."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InvalidReleaseError("adapter update has NaN or Inf values.")
    metrics: Any = c.metric_records.get(ADAPTER_METRICS, {})
    if dict(metrics) != {ADAPTER_WEIGHT_KEY: 1}:
        raise InvalidReleaseError(
            f"adapter metrics must be exactly {{{ADAPTER_WEIGHT_KEY!r}: 1}}. Found {dict(metrics)}."
        )
    norm = AdapterWeights(a, b).minus(base)
    if norm > update_bound * (1 + 1e-4):
        raise InvalidReleaseError(
            f"adapter update norm {norm:.4g} exceeds the announced bound {update_bound:.4g}."
        )
    return True


def run_adapter_step(
    grid: Grid,
    nodes: Iterable[int],
    weights: AdapterWeights,
    negatives: npt.NDArray[np.float32],
    cfg: AdapterConfig,
    *,
    server_round: int,
    delta: float,
    timeout: float | None = None,
    robust: str = "none",
    trim: float = 0.1,
) -> AdapterUpdate:
    """Sends the adapter to the devices, collects their DP-SGD updates and averages them.

    With ``robust`` = ``trimmed`` or ``median`` the updates are clipped to the server's norm
    and combined coordinate-wise (poisoning-robust); the server noise is still added, but the
    user-level DP accounting of DP-FedAvg no longer applies (the server ledger says so).
    """
    config = adapter_config_record(cfg, server_round, delta)
    content = RecordDict(
        {
            ADAPTER_ARRAYS: ArrayRecord({ADAPTER_A: Array(weights.a), ADAPTER_B: Array(weights.b)}),
            ADAPTER_CONFIG: ConfigRecord(dict(config)),
            ADAPTER_NEGATIVES: ArrayRecord(
                {"vectors": Array(np.ascontiguousarray(negatives, dtype=np.float32))}
            ),
        }
    )
    msgs = [
        Message(
            content,
            dst_node_id=int(n),
            message_type=MESSAGE_TRAIN_ADAPTER,
            group_id=f"adapter-{server_round}",
        )
        for n in nodes
    ]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    failures: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    usable: list[Message] = []
    for r in replies:
        try:
            ok = validate_adapter_reply(r, weights, cfg.update_clipping_norm)
        except InvalidReleaseError as err:
            log.warning("dropping adapter reply of node %d: %s", int(r.metadata.src_node_id), err)
            failures[str(err)[:160]] += 1
            continue
        statuses[str(r.content.config_records[REPLY_META][ReplyKeys.STATUS])] += 1
        if ok:
            usable.append(r)
    missing = len(msgs) - len(replies)
    if missing:
        failures["no reply before the timeout"] += missing
    if not usable:
        return AdapterUpdate(weights, 0, dict(failures), dict(statuses))
    # Flower's FedAvg wants exactly one ArrayRecord and one MetricRecord per reply: hand it
    # copies without our metadata (the received messages stay untouched for observers)
    usable = [
        Message(
            RecordDict(
                {
                    ADAPTER_ARRAYS: r.content.array_records[ADAPTER_ARRAYS],
                    ADAPTER_METRICS: r.content.metric_records[ADAPTER_METRICS],
                }
            ),
            dst_node_id=0,
            message_type=MESSAGE_TRAIN_ADAPTER,
        )
        for r in usable
    ]
    if robust != "none":
        updates = []
        for r in usable:
            rec = r.content.array_records[ADAPTER_ARRAYS]
            w = AdapterWeights(rec[ADAPTER_A].numpy(), rec[ADAPTER_B].numpy()).clip_update(
                weights, cfg.server_clipping_norm
            )
            updates.append(np.concatenate([(w.a - weights.a).ravel(), (w.b - weights.b).ravel()]))
        delta_vec = robust_mean(np.stack(updates), robust, trim)
        if cfg.server_noise_multiplier > 0:
            std = cfg.server_noise_multiplier * cfg.server_clipping_norm / len(usable)
            delta_vec = delta_vec + np.random.default_rng().normal(0.0, std, delta_vec.shape)
        na = weights.a.size
        new = AdapterWeights(
            (weights.a + delta_vec[:na].reshape(weights.a.shape)).astype(np.float32),
            (weights.b + delta_vec[na:].reshape(weights.b.shape)).astype(np.float32),
        )
        return AdapterUpdate(new, len(usable), dict(failures), dict(statuses))
    current = ArrayRecord({ADAPTER_A: Array(weights.a), ADAPTER_B: Array(weights.b)})
    fedavg = FedAvg(
        weighted_by_key=ADAPTER_WEIGHT_KEY,
        arrayrecord_key=ADAPTER_ARRAYS,
        configrecord_key=ADAPTER_CONFIG,
    )
    if cfg.server_noise_multiplier > 0:
        dp = DifferentialPrivacyServerSideFixedClipping(
            fedavg,
            cfg.server_noise_multiplier,
            cfg.server_clipping_norm,
            num_sampled_clients=len(usable),
        )
        dp.current_arrays = current
        arrays, _ = dp.aggregate_train(server_round, usable)
    else:
        arrays, _ = fedavg.aggregate_train(server_round, usable)
    if arrays is None:
        failures["aggregation refused the replies"] += 1
        return AdapterUpdate(weights, 0, dict(failures), dict(statuses))
    new = AdapterWeights(
        arrays[ADAPTER_A].numpy().astype(np.float32), arrays[ADAPTER_B].numpy().astype(np.float32)
    )
    return AdapterUpdate(new, len(usable), dict(failures), dict(statuses))
