"""Thin Flower ClientApp glue: the device's side of a round.

Two handlers, one release (:func:`client.release.release_round`):

- ``train`` (default name) with Flower's ``secaggplus_mod``: the SecAgg+ stages; the round
  config and centroids arrive in the legacy ``fitins.*`` layout and the release leaves in
  ``fitres.*``, masked (:mod:`common.secagg_wire`);
- ``train.interests``: local mode; the release leaves as the allow-listed records of
  :mod:`common.records`.

The store path comes from the node config key ``store`` (deployment: ``flower-supernode
--node-config 'store="/var/lib/fedinterest/device.db"'``) or, in simulation, from the
resolver the simulation passes to :func:`build_client_app`. A device that cannot release
(budget spent, parameters refused) replies with a status and releases nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from client.encoder import TextEncoder
from client.encoder_registry import DEFAULT_ENCODER, ENCODERS, make_encoder
from client.policy import DEFAULT_DEVICE_DELTA, DEFAULT_DEVICE_UNIT, DevicePolicy
from client.release import (
    ReleaseOutcome,
    count_release,
    histogram_release,
    release_round,
)
from client.store import EventStore
from common.adapter import AdapterWeights
from common.errors import (
    BudgetExceededError,
    ConfigError,
    DeviceRefusalError,
    RefusalCode,
    ReleaseRefusedError,
)
from common.privacy import PrivacyBudget, Scope
from common.records import (
    ADAPTER,
    ADAPTER_A,
    ADAPTER_ARRAYS,
    ADAPTER_B,
    ADAPTER_CONFIG,
    ADAPTER_METRICS,
    ADAPTER_NEGATIVES,
    ADAPTER_WEIGHT_KEY,
    CENTROIDS,
    COUNTS,
    HISTOGRAM,
    REPLY_ARRAYS,
    REPLY_META,
    ROUND_CONFIG,
    SUMS,
    AdapterKeys,
    ReleaseTask,
    ReplyKeys,
    ReplyStatus,
    RoundKeys,
    decode_ids,
)
from common.round_config import RoundConfig
from common.secagg_wire import compact_masked_vectors, read_fitins, to_fitres

__all__ = [
    "ADAPTER_STATE_KEY",
    "DEFAULT_DEVICE_DELTA",
    "DeviceSettings",
    "app",
    "build_client_app",
    "store_from_node_config",
]

log = logging.getLogger("fedinterest.client")

NODE_STORE_KEY = "store"
NODE_BUDGET_EPSILON_KEY = "budget-epsilon"
NODE_MODEL_DIR_KEY = "model-dir"
NODE_ENCODER_KEY = "encoder"
NODE_DELTA_KEY = "delta"
NODE_UNIT_KEY = "unit"
NODE_MIN_COHORT_KEY = "min-cohort"
#: A device's lifetime budget at its unit (user level by default: the whole device).
DEFAULT_DEVICE_EPSILON = 4.0
#: Device state key of the latest public adapter (for profiles between rounds).
ADAPTER_STATE_KEY = "adapter"


@dataclass(frozen=True)
class DeviceSettings:
    """How one device runs.

    Attributes:
        store: its SQLite store.
        budget_epsilon: lifetime epsilon at the policy's unit (``None`` only with
            ``allow_no_dp``).
        allow_no_dp: accept rounds without noise (simulation of ``--no-dp`` only).
        model_dir: a local HF model directory instead of the bundled MiniLM.
        encoder: the registered encoder (:data:`client.encoder_registry.ENCODERS`); it must
            be the run's (the projection fingerprint covers it), else the device refuses.
        noise_seed: seed for the DP noise (tests only; ``None`` = OS entropy).
        policy: its own delta, unit and minimum cohort (:class:`client.policy.DevicePolicy`):
            a round breaching them is refused (a server announcing delta 0.1 would otherwise
            buy ~100 releases out of a lifetime epsilon 4).
    """

    store: Path
    budget_epsilon: float | None = DEFAULT_DEVICE_EPSILON
    allow_no_dp: bool = False
    model_dir: str | None = None
    noise_seed: int | None = None
    encoder: str = DEFAULT_ENCODER
    policy: DevicePolicy = field(default_factory=DevicePolicy)

    @property
    def delta(self) -> float:
        return self.policy.delta


def store_from_node_config(context: Context) -> DeviceSettings:
    """Deployment: settings from the SuperNode's node config (``store``, ``budget-epsilon``,
    ``encoder``, ``model-dir``, and the device's own ``delta``, ``unit`` and ``min-cohort``)."""
    cfg = context.node_config
    if NODE_STORE_KEY not in cfg:
        raise ConfigError(
            f"the node config needs `{NODE_STORE_KEY}` (the device store path), e.g. "
            f"--node-config 'store=\"/path/device.db\"'. Found keys {sorted(cfg)}."
        )
    eps = cfg.get(NODE_BUDGET_EPSILON_KEY, DEFAULT_DEVICE_EPSILON)
    model_dir = cfg.get(NODE_MODEL_DIR_KEY)
    encoder = str(cfg.get(NODE_ENCODER_KEY, DEFAULT_ENCODER))
    if encoder not in ENCODERS:
        raise ConfigError(
            f"the node config is refused: `{NODE_ENCODER_KEY}` must be one of "
            f"{', '.join(ENCODERS)}. Found {encoder!r}."
        )
    try:
        delta = float(str(cfg.get(NODE_DELTA_KEY, DEFAULT_DEVICE_DELTA)))
        raw_cohort = cfg.get(NODE_MIN_COHORT_KEY)
        policy = DevicePolicy(
            delta=delta,
            unit=str(cfg.get(NODE_UNIT_KEY, DEFAULT_DEVICE_UNIT.value)),  # type: ignore[arg-type]
            min_cohort=None if raw_cohort is None else int(str(raw_cohort)),
        )
    except (ValueError, ConfigError) as err:
        raise ConfigError(f"the node config is refused: {err}") from None
    return DeviceSettings(
        store=Path(str(cfg[NODE_STORE_KEY])),
        budget_epsilon=float(str(eps)),
        model_dir=None if model_dir is None else str(model_dir),
        encoder=encoder,
        policy=policy,
    )


_ENCODERS: dict[tuple[str, str | None], TextEncoder] = {}


def _encoder(settings: DeviceSettings) -> TextEncoder:
    # one per process; the model itself loads only if a text misses the cache
    key = (settings.encoder, settings.model_dir)
    if key not in _ENCODERS:
        _ENCODERS[key] = make_encoder(settings.encoder, num_threads=1, model_dir=settings.model_dir)
    return _ENCODERS[key]


def _budget(settings: DeviceSettings, delta: float) -> PrivacyBudget | None:
    """The device's budget, accounted at **its own** delta and unit; a round announcing a
    larger delta than the device holds is refused (fail closed: the device never takes the
    server's)."""
    if delta > settings.delta:
        raise ReleaseRefusedError(
            f"the round announces delta {delta:g}, above this device's {settings.delta:g}; "
            "refusing to release.",
            RefusalCode.DELTA,
        )
    return settings.policy.budget(settings.budget_epsilon)


def _rng_seed(settings: DeviceSettings, salt: int) -> int | None:
    return None if settings.noise_seed is None else settings.noise_seed * 1009 + salt


def _open_store(settings: DeviceSettings) -> EventStore:
    if not settings.store.exists():
        raise ConfigError(f"device store {str(settings.store)!r} does not exist.")
    return EventStore(settings.store, create=False)


def _public_adapter(adapter: AdapterWeights | None) -> AdapterWeights | None:
    return None if adapter is None or adapter.is_identity() else adapter


def _release_leaf_sums(
    settings: DeviceSettings,
    params: RoundConfig,
    first: np.ndarray,
    adapter: AdapterWeights | None,
) -> ReleaseOutcome:
    seed = _rng_seed(settings, params.server_round)
    rng = np.random.default_rng(seed) if seed is not None else np.random.default_rng()
    with _open_store(settings) as store:
        if adapter is not None:
            # the device keeps the latest public adapter for its profile between rounds
            store.set_state(ADAPTER_STATE_KEY, _pack(adapter))
        return release_round(
            store,
            params,
            first,
            encoder=_encoder(settings),
            budget=_budget(settings, params.delta),
            rng=rng,
            adapter=_public_adapter(adapter),
        )


def _aux_rng(settings: DeviceSettings, params: RoundConfig) -> np.random.Generator:
    seed = _rng_seed(settings, 7919 * params.server_round + len(params.task.value))
    return np.random.default_rng(seed) if seed is not None else np.random.default_rng()


def _release_item_counts(
    settings: DeviceSettings,
    params: RoundConfig,
    first: np.ndarray,
    adapter: AdapterWeights | None,
) -> ReleaseOutcome:
    rng = _aux_rng(settings, params)
    with _open_store(settings) as store:
        try:
            catalogue = decode_ids(first)
        except (UnicodeDecodeError, ValueError) as err:
            raise ReleaseRefusedError(
                f"the catalogue array is not UTF-8 item ids: {err}."
            ) from None
        if not catalogue:
            raise ReleaseRefusedError("an item-count round needs the catalogue's item ids.")
        return count_release(
            store, params, catalogue, budget=_budget(settings, params.delta), rng=rng
        )


def _release_histogram(
    settings: DeviceSettings,
    params: RoundConfig,
    first: np.ndarray,
    adapter: AdapterWeights | None,
) -> ReleaseOutcome:
    rng = _aux_rng(settings, params)
    with _open_store(settings) as store:
        return histogram_release(
            store,
            params,
            first,
            top_k=params.top_k if params.top_k is not None else 1,
            encoder=_encoder(settings),
            budget=_budget(settings, params.delta),
            rng=rng,
            adapter=_public_adapter(adapter),
        )


_RELEASES: dict[
    ReleaseTask,
    Callable[[DeviceSettings, RoundConfig, np.ndarray, AdapterWeights | None], ReleaseOutcome],
] = {
    ReleaseTask.LEAF_SUMS: _release_leaf_sums,
    ReleaseTask.ITEM_COUNTS: _release_item_counts,
    ReleaseTask.HISTOGRAM: _release_histogram,
}


def _dispatch(
    settings: DeviceSettings, cfg: dict[str, Any], first: np.ndarray, adapter: AdapterWeights | None
) -> ReleaseOutcome:
    """Parses the round config (refusing, fail closed, what it cannot parse or check) and runs
    the release its ``task`` asks for (leaf sums, item counts, histogram)."""
    params = RoundConfig.from_record(cfg, allow_no_dp=settings.allow_no_dp)
    settings.policy.admit(params)
    return _RELEASES[params.task](settings, params, first, adapter)


def _pack(w: AdapterWeights) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, a=w.a, b=w.b)
    return buf.getvalue()


def _run_adapter(
    settings: DeviceSettings, cfg: dict[str, Any], weights: AdapterWeights, negatives: np.ndarray
) -> AdapterWeights:
    from client.adapter import adapter_round, params_from_config

    if settings.policy.unit is Scope.USER:
        # DP-SGD bounds one event's examples, and the update leaves outside the secure sum: no
        # user-level bound covers it, so a user-level device never trains the adapter
        raise ReleaseRefusedError(
            "this device keeps a user-level budget; the adapter's DP-SGD is event level. Refusing.",
            RefusalCode.UNIT,
        )
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("torch", "opacus")):
        raise ReleaseRefusedError(
            "the adapter trains with torch and opacus, which this install lacks (the `edge` "
            "extra releases leaf sums only): pip install 'fedinterest[client]'. Refusing.",
            RefusalCode.UNSUPPORTED,
        )
    params = params_from_config(cfg, allow_no_dp=settings.allow_no_dp)
    delta = float(cfg.get(AdapterKeys.DELTA, 1e-5))
    with _open_store(settings) as store:
        new, _reused = adapter_round(
            store,
            params,
            weights,
            negatives,
            server_round=int(cfg.get(AdapterKeys.SERVER_ROUND, 0)),
            encoder=_encoder(settings),
            budget=_budget(settings, delta),
            seed=_rng_seed(settings, int(cfg.get(AdapterKeys.SERVER_ROUND, 0))),
        )
    return new


def refusal_code(err: BaseException) -> tuple[ReplyStatus, RefusalCode]:
    """The reply status and refusal code of an error raised by a release (what may leave the
    device; the message stays in the device's log)."""
    if isinstance(err, BudgetExceededError):
        return ReplyStatus.BUDGET_EXCEEDED, RefusalCode.BUDGET
    if isinstance(err, ReleaseRefusedError):
        return ReplyStatus.REFUSED, err.code
    if isinstance(err, ConfigError):
        return ReplyStatus.REFUSED, RefusalCode.CONFIG
    return ReplyStatus.REFUSED, RefusalCode.INTERNAL


@contextmanager
def _codes_only(settings_name: str) -> Iterator[None]:
    """Around a secure-aggregation release: any error leaves as a :class:`DeviceRefusalError` whose
    text is its code (Flower sends an exception's text to the server); the message and the
    traceback go to the device's own log."""
    try:
        yield
    except DeviceRefusalError:
        raise
    except Exception as err:
        _status, code = refusal_code(err)
        log.warning("device %s refused (%s): %s", settings_name, code.value, err)
        raise DeviceRefusalError(code) from None


def _compact_upload_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Around ``secaggplus_mod``: the masked vector leaves as uint32 instead of int64 (the
    same integers mod 2^32; half the upload, see :func:`common.secagg_wire.compact_masked_vectors`)."""
    reply: Message = call_next(msg, context)
    if not reply.has_error():
        compact_masked_vectors(reply.content)
    return reply


def _meta(
    status: ReplyStatus, cfg: dict[str, Any], code: RefusalCode | None = None
) -> dict[str, Any]:
    """The reply's metadata: the status (and a refusal's code) and the round and version
    echoed back (-1 where the config had no usable int: a refusal of a malformed config must
    not crash the handler)."""

    def echo(key: str) -> int:
        v = cfg.get(key, -1)
        return v if isinstance(v, int) and not isinstance(v, bool) else -1

    out: dict[str, Any] = {
        ReplyKeys.STATUS: status.value,
        ReplyKeys.SERVER_ROUND: echo(RoundKeys.SERVER_ROUND),
        ReplyKeys.HIERARCHY_VERSION: echo(RoundKeys.HIERARCHY_VERSION),
    }
    if code is not None:
        out[ReplyKeys.CODE] = code.value
    return out


def build_client_app(
    settings_for: Callable[[Context], DeviceSettings] = store_from_node_config,
    mods: list[Any] | None = None,
) -> ClientApp:
    """A ClientApp whose devices find their settings with ``settings_for(context)``; ``mods``
    are Flower mods around every handler (e.g. fault injection in simulations)."""
    client = ClientApp(mods=mods or [])

    @client.train(mods=[_compact_upload_mod, secaggplus_mod])
    def train_secagg(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        # budget and refusals raise: the SecAgg+ stage turns that into an error reply and the
        # device drops out of this round's sum without releasing anything; the error's text
        # is its code only
        with _codes_only(settings.store.name):
            arrays, cfg = read_fitins(msg.content)
            adapter = AdapterWeights(arrays[1], arrays[2]) if len(arrays) == 3 else None
            outcome = _dispatch(settings, cfg, arrays[0], adapter)
        return Message(to_fitres(outcome.sums, _meta(ReplyStatus.OK, cfg)), reply_to=msg)

    def _local(msg: Message, context: Context, array_key: str) -> Message:
        # a message without the round config is parsed as an empty one: refused, not a crash
        record = msg.content.config_records.get(ROUND_CONFIG)
        cfg = dict(record) if record is not None else {}
        first = np.zeros(1, dtype=np.float32)
        if CENTROIDS in msg.content.array_records:
            first = msg.content.array_records[CENTROIDS][CENTROIDS].numpy()
        adapter = None
        if ADAPTER in msg.content.array_records:
            rec = msg.content.array_records[ADAPTER]
            adapter = AdapterWeights(rec[ADAPTER_A].numpy(), rec[ADAPTER_B].numpy())
        settings = settings_for(context)
        try:
            outcome = _dispatch(settings, cfg, first, adapter)
        except Exception as err:
            status, code = refusal_code(err)
            log.warning("device %s refused (%s): %s", settings.store.name, code.value, err)
            return Message(
                RecordDict({REPLY_META: ConfigRecord(_meta(status, cfg, code))}), reply_to=msg
            )
        content = RecordDict(
            {
                REPLY_ARRAYS: ArrayRecord(
                    {array_key: Array(np.ascontiguousarray(outcome.sums, dtype=np.float32))}
                ),
                REPLY_META: ConfigRecord(_meta(ReplyStatus.OK, cfg)),
            }
        )
        return Message(content, reply_to=msg)

    @client.train("interests")
    def train_local(msg: Message, context: Context) -> Message:
        return _local(msg, context, SUMS)

    @client.train("counts")
    def train_counts(msg: Message, context: Context) -> Message:
        return _local(msg, context, COUNTS)

    @client.query("histogram")
    def query_histogram(msg: Message, context: Context) -> Message:
        return _local(msg, context, HISTOGRAM)

    @client.train("adapter")
    def train_adapter_step(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content.config_records[ADAPTER_CONFIG])
        rec = msg.content.array_records[ADAPTER_ARRAYS]
        weights = AdapterWeights(rec[ADAPTER_A].numpy(), rec[ADAPTER_B].numpy())
        negatives = next(iter(msg.content.array_records[ADAPTER_NEGATIVES].values())).numpy()
        meta_cfg = {
            RoundKeys.SERVER_ROUND: cfg.get(AdapterKeys.SERVER_ROUND, -1),
            RoundKeys.HIERARCHY_VERSION: -1,
        }
        settings = settings_for(context)
        try:
            new = _run_adapter(settings, cfg, weights, negatives)
        except Exception as err:
            status, code = refusal_code(err)
            log.warning("device %s refused (%s): %s", settings.store.name, code.value, err)
            return Message(
                RecordDict({REPLY_META: ConfigRecord(_meta(status, meta_cfg, code))}),
                reply_to=msg,
            )
        content = RecordDict(
            {
                ADAPTER_ARRAYS: ArrayRecord({ADAPTER_A: Array(new.a), ADAPTER_B: Array(new.b)}),
                ADAPTER_METRICS: MetricRecord({ADAPTER_WEIGHT_KEY: 1}),
                REPLY_META: ConfigRecord(_meta(ReplyStatus.OK, meta_cfg)),
            }
        )
        return Message(content, reply_to=msg)

    return client


#: The deployed ClientApp (``flower-supernode ... client.app:app``): settings from node config.
app = build_client_app()
