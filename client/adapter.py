"""A low-rank residual adapter over the frozen encoder's embeddings, trained on the device
with DP-SGD (Opacus).

``adapter(x) = x + B (A x)`` with ``A: (r, d)``, ``B: (d, r)``, ``r`` = 8 by default; ``B``
starts at zero so a fresh adapter is the identity. The public weights and their application
are numpy only (:class:`common.adapter.AdapterWeights`), so a device that is not training never
imports torch; this module trains them.

**Objective.** Next-event contrastive learning: each training example is a pair (an event,
the user's next event); the anchor should be closer to its next event than to a pool of
**public** negatives (the label vocabulary's vectors). Negatives are never other private
examples of the batch: a loss that couples examples would void DP-SGD's per-example bound.

**Privacy.** DP-SGD (Abadi et al. 2016): Poisson sampling at rate ``q`` (from the round
config, never from the data), per-example gradient clipping to ``C``, Gaussian noise
``z C``, ``steps`` steps. Examples are pairs of consecutive events, so adding or removing
one event changes up to **3** examples (it removes the pair it splits and adds two). The
event-level guarantee is accounted by group privacy, conservatively: a group of 3 examples
is hit with probability ``1 - (1 - q)^3`` and moves the noisy gradient sum by at most
``3 C``, i.e. a Poisson-subsampled Gaussian with multiplier ``z / 3`` at rate
``1 - (1 - q)^3`` (:func:`adapter_ledger_entry`). The update sent to the server is the
clipped weight change (``update_clipping_norm``), post-processing of the DP-SGD output.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from common.adapter import DPSGD_GROUP_SIZE, AdapterWeights
from common.config import AdapterConfig
from common.errors import ConfigError
from common.privacy import LedgerEntry
from common.round_config import dpsgd_ledger_entry

__all__ = [
    "GROUP_SIZE",
    "AdapterTrainParams",
    "TrainStats",
    "adapter_ledger_entry",
    "adapter_round",
    "next_event_pairs",
    "params_from_config",
    "train_adapter",
]

#: Examples one event can touch (see the module docstring).
GROUP_SIZE = DPSGD_GROUP_SIZE


@dataclass(frozen=True)
class AdapterTrainParams:
    """DP-SGD settings for one round (from the server's round config).

    Attributes:
        noise_multiplier: ``z`` per step (per example).
        max_grad_norm: per-example clipping norm ``C``.
        sample_rate: Poisson sampling rate ``q`` per example.
        steps: optimizer steps this round.
        lr: SGD learning rate.
        temperature: softmax temperature of the contrastive loss.
        expected_batch_size: the public constant the noisy gradient sum is divided by
            (dividing by the device's real batch size would leak its data size).
        update_clipping_norm: bound on the L2 norm of the weight change sent back.
    """

    # the defaults are the run's (common.config.AdapterConfig): one source for each value
    noise_multiplier: float = AdapterConfig.noise_multiplier
    max_grad_norm: float = AdapterConfig.max_grad_norm
    sample_rate: float = AdapterConfig.sample_rate
    steps: int = AdapterConfig.steps
    lr: float = AdapterConfig.lr
    temperature: float = AdapterConfig.temperature
    expected_batch_size: int = AdapterConfig.expected_batch_size
    update_clipping_norm: float = AdapterConfig.update_clipping_norm

    def __post_init__(self) -> None:
        for name in (
            "noise_multiplier",
            "max_grad_norm",
            "lr",
            "temperature",
            "update_clipping_norm",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"`{name}` must be > 0. Found {v!r}.")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"`sample_rate` must be in (0, 1]. Found {self.sample_rate!r}.")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"`steps` must be an int >= 1. Found {self.steps!r}.")
        if not (isinstance(self.expected_batch_size, int) and self.expected_batch_size >= 1):
            raise ConfigError(
                f"`expected_batch_size` must be an int >= 1. Found {self.expected_batch_size!r}."
            )


def adapter_ledger_entry(params: AdapterTrainParams, server_round: int | None) -> LedgerEntry:
    """The event-level ledger record of one round of DP-SGD (group privacy, see the module);
    defined once, for the device and the server, in
    :func:`common.round_config.dpsgd_ledger_entry`."""
    return dpsgd_ledger_entry(
        noise_multiplier=params.noise_multiplier,
        sample_rate=params.sample_rate,
        max_grad_norm=params.max_grad_norm,
        steps=params.steps,
        server_round=server_round,
    )


def next_event_pairs(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Consecutive (event, next event) pairs of a time-ordered history.

    Args:
        vectors: shape ``(n, dim)``, in time order.

    Returns:
        shape ``(max(n - 1, 0), 2, dim)``.
    """
    v = np.asarray(vectors, dtype=np.float32)
    if len(v) < 2:
        return np.zeros((0, 2, v.shape[1] if v.ndim == 2 else 0), dtype=np.float32)
    return np.stack([v[:-1], v[1:]], axis=1)


@dataclass(frozen=True)
class TrainStats:
    """What one round of training did (stays on the device)."""

    steps: int
    seconds: float
    mean_loss: float
    update_norm: float


def train_adapter(
    weights: AdapterWeights,
    pairs: npt.NDArray[np.float32],
    negatives: npt.NDArray[np.float32],
    params: AdapterTrainParams,
    *,
    seed: int | None = None,
    private: bool = True,
) -> tuple[AdapterWeights, TrainStats]:
    """Runs ``params.steps`` DP-SGD steps (Opacus) from ``weights``.

    Args:
        weights: the current (public) adapter.
        pairs: the device's examples, shape ``(n, 2, dim)``.
        negatives: public negative vectors, shape ``(m, dim)``.
        params: the round's DP-SGD settings.
        seed: seeds sampling and noise (tests/benchmarks only; ``None`` = OS entropy).
        private: ``False`` trains without clipping or noise (for the overhead benchmark
            only; never used for a release).

    Returns:
        The new weights (update clipped to ``update_clipping_norm``) and statistics.
    """
    import torch
    from opacus import GradSampleModule
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizer
    from torch.utils.data import DataLoader, TensorDataset

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    module = _AdapterModule(weights)
    x = torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.float32))
    if x.ndim != 3 or x.shape[1] != 2 or x.shape[2] != weights.dim:
        x = torch.zeros((0, 2, weights.dim))
    neg = torch.nn.functional.normalize(
        torch.from_numpy(np.asarray(negatives, dtype=np.float32)), dim=-1
    )
    dataset = TensorDataset(x)
    base_opt = torch.optim.SGD(module.parameters(), lr=params.lr)
    if private:
        model: torch.nn.Module = GradSampleModule(module)
        opt: Any = DPOptimizer(
            base_opt,
            noise_multiplier=params.noise_multiplier,
            max_grad_norm=params.max_grad_norm,
            expected_batch_size=params.expected_batch_size,
            generator=gen,
        )
        loader: Any = (
            DPDataLoader(dataset, sample_rate=params.sample_rate, generator=gen)
            if len(dataset)
            else None
        )
    else:
        model, opt = module, base_opt
        bs = max(1, round(params.sample_rate * len(dataset))) if len(dataset) else 1
        loader = (
            DataLoader(dataset, batch_size=bs, shuffle=True, generator=gen)
            if len(dataset)
            else None
        )
    losses = []
    batches = _cycle(loader, params.steps, weights.dim)
    for step in range(params.steps):
        (xb,) = next(batches)
        opt.zero_grad()
        if xb.shape[0] == 0:
            # an empty Poisson batch still takes a (pure noise) step: the accounting counts it
            loss = (model(torch.zeros((1, 2, weights.dim))) * 0.0).sum()
        else:
            out = torch.nn.functional.normalize(model(xb), dim=-1)
            a, p = out[:, 0], out[:, 1]
            logits = (
                torch.cat([(a * p).sum(-1, keepdim=True), a @ neg.T], dim=1) / params.temperature
            )
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(a), dtype=torch.long))
            losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        del step
    new = module.weights()
    clipped = new.clip_update(weights, params.update_clipping_norm)
    stats = TrainStats(
        steps=params.steps,
        seconds=time.perf_counter() - t0,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        update_norm=clipped.minus(weights),
    )
    return clipped, stats


def _cycle(loader: Any, steps: int, dim: int) -> Any:
    import torch

    done = 0
    while True:
        if loader is None:
            yield (torch.zeros((0, 2, dim)),)
            continue
        for batch in loader:
            yield batch
            done += 1
            if done >= steps:
                break


class _AdapterModule:  # created lazily below (torch imported only when training)
    def __new__(cls, weights: AdapterWeights) -> Any:
        import torch

        class Adapter(torch.nn.Module):
            def __init__(self, w: AdapterWeights) -> None:
                super().__init__()
                self.A = torch.nn.Linear(w.dim, w.rank, bias=False)
                self.B = torch.nn.Linear(w.rank, w.dim, bias=False)
                with torch.no_grad():
                    self.A.weight.copy_(torch.from_numpy(w.a))
                    self.B.weight.copy_(torch.from_numpy(w.b))

            def forward(self, x: Any) -> Any:
                return x + self.B(self.A(x))

            def weights(self) -> AdapterWeights:
                return AdapterWeights(
                    self.A.weight.detach().numpy().astype(np.float32).copy(),
                    self.B.weight.detach().numpy().astype(np.float32).copy(),
                )

        return Adapter(weights)


_STATE_UPDATE = "adapter-update:{round}"


def params_from_config(cfg: dict[str, Any], *, allow_no_dp: bool = False) -> AdapterTrainParams:
    """The DP-SGD settings of the server's adapter config record (fail closed on bad values).

    Raises:
        ConfigError: naming the key that is missing or out of range.
    """
    from common.records import AdapterKeys as K

    def num(key: str, kind: type) -> Any:
        if key not in cfg:
            raise ConfigError(f"adapter config is missing `{key}`.")
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"adapter config `{key}` must be a number. Found {v!r}.")
        return kind(v)

    z = num(K.NOISE_MULTIPLIER, float)
    if z <= 0 and not allow_no_dp:
        raise ConfigError("the adapter round asks for DP-SGD without noise; this device refuses.")
    return AdapterTrainParams(
        noise_multiplier=max(z, 1e-12),
        max_grad_norm=num(K.MAX_GRAD_NORM, float),
        sample_rate=num(K.SAMPLE_RATE, float),
        steps=num(K.STEPS, int),
        lr=num(K.LR, float),
        temperature=num(K.TEMPERATURE, float),
        expected_batch_size=num(K.EXPECTED_BATCH_SIZE, int),
        update_clipping_norm=num(K.UPDATE_CLIPPING_NORM, float),
    )


def adapter_round(
    store: Any,
    params: AdapterTrainParams,
    weights: AdapterWeights,
    negatives: npt.NDArray[np.float32],
    *,
    server_round: int,
    encoder: Any,
    budget: Any,
    seed: int | None = None,
) -> tuple[AdapterWeights, bool]:
    """One device's DP-SGD step of a round: budget check, training, ledger, cached reply.

    The ledger entry and the update are written in one transaction before the update is
    returned; asking again for the same round returns the stored update (no new spend).

    Returns:
        ``(new weights, reused)``.

    Raises:
        BudgetExceededError: the training would exceed ``budget``; nothing was recorded.
    """
    import io

    from client.encoder import encode_cached
    from common.privacy import check_budget

    key = _STATE_UPDATE.format(round=server_round)
    stored = store.get_state(key)
    if stored is not None:
        with np.load(io.BytesIO(stored), allow_pickle=False) as z:
            return AdapterWeights(z["a"], z["b"]), True
    entry = adapter_ledger_entry(params, server_round)
    if budget is not None:
        check_budget(store.ledger(), [entry], budget)
    events = store.events()
    vectors = (
        encode_cached(encoder, store.embeddings, [e.text for e in events])
        if events
        else np.zeros((0, weights.dim), np.float32)
    )
    new, _stats = train_adapter(weights, next_event_pairs(vectors), negatives, params, seed=seed)
    buf = io.BytesIO()
    np.savez(buf, a=new.a, b=new.b)
    with store.transaction():
        store.append_ledger(entry, in_transaction=True)
        store.set_state(key, buf.getvalue(), in_transaction=True)
    return new, False
