"""The DP-SGD adapter: identity start, real Opacus training, ledger, budget, clipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.adapter import (
    GROUP_SIZE,
    AdapterTrainParams,
    adapter_ledger_entry,
    adapter_round,
    next_event_pairs,
    params_from_config,
    train_adapter,
)
from client.store import EventStore
from common.adapter import AdapterWeights, event_level_dpsgd
from common.errors import BudgetExceededError, ConfigError
from common.events import iter_records
from common.privacy import Mechanism, PrivacyBudget
from common.projection import normalize_rows
from common.records import AdapterKeys
from simulations.datasets.synthetic import SyntheticConfig, generate
from tests.client.test_release import HashEncoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def data(n: int = 80, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = normalize_rows(rng.normal(size=(4, d)))
    seq = np.repeat(np.arange(4), n // 4)
    v = normalize_rows(topics[seq] + 0.3 * rng.normal(size=(n, d)))
    return v.astype(np.float32), normalize_rows(rng.normal(size=(20, d))).astype(np.float32)


def test_identity_start_and_apply() -> None:
    """A fresh adapter is the identity; apply is x + B(Ax)."""
    w = AdapterWeights.initial(32, 4, seed=1)
    x = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    assert w.is_identity() and np.allclose(w.apply(x), x)
    w2 = AdapterWeights(w.a, np.ones_like(w.b))
    assert np.allclose(w2.apply(x), x + (x @ w.a.T) @ np.ones_like(w.b).T, atol=1e-5)
    with pytest.raises(ConfigError, match="shapes"):
        AdapterWeights(w.a, w.a)


def test_pairs_are_consecutive() -> None:
    """Examples are (event, next event) pairs."""
    v = np.arange(12, dtype=np.float32).reshape(4, 3)
    p = next_event_pairs(v)
    assert p.shape == (3, 2, 3) and np.array_equal(p[1, 0], v[1]) and np.array_equal(p[1, 1], v[2])
    assert next_event_pairs(v[:1]).shape == (0, 2, 3)


def test_non_private_training_lowers_the_loss() -> None:
    """Without noise the contrastive objective learns (sanity of the loss and the optimizer)."""
    v, neg = data()
    w = AdapterWeights.initial(32, 4, seed=2)
    params = AdapterTrainParams(steps=60, sample_rate=0.5, lr=0.5, update_clipping_norm=100.0)
    _, first = train_adapter(
        w,
        next_event_pairs(v),
        neg,
        AdapterTrainParams(steps=1, sample_rate=0.5),
        seed=0,
        private=False,
    )
    new, stats = train_adapter(w, next_event_pairs(v), neg, params, seed=0, private=False)
    assert stats.mean_loss < first.mean_loss and not new.is_identity()


def test_dp_training_clips_the_update_and_is_noisy() -> None:
    """DP-SGD runs on Opacus; the update norm is at most the clipping norm; two runs with
    different noise seeds differ."""
    v, neg = data()
    w = AdapterWeights.initial(32, 4, seed=3)
    params = AdapterTrainParams(update_clipping_norm=0.5, steps=5)
    a, sa = train_adapter(w, next_event_pairs(v), neg, params, seed=1)
    b, _ = train_adapter(w, next_event_pairs(v), neg, params, seed=2)
    assert sa.update_norm <= 0.5 + 1e-6 and a.minus(w) <= 0.5 + 1e-6
    assert not np.allclose(a.b, b.b)
    # no data at all: still noise steps (empty Poisson batches are accounted, so they run)
    c, sc = train_adapter(w, np.zeros((0, 2, 32), np.float32), neg, params, seed=3)
    assert sc.steps == params.steps and not c.is_identity()


def test_ledger_entry_is_event_level_by_group_privacy() -> None:
    """One event touches 3 examples: multiplier z/3, rate 1-(1-q)^3, sensitivity 3C."""
    p = AdapterTrainParams(noise_multiplier=6.0, sample_rate=0.1, steps=7, max_grad_norm=2.0)
    e = adapter_ledger_entry(p, 4)
    z, q = event_level_dpsgd(6.0, 0.1)
    assert GROUP_SIZE == 3 and e.mechanism is Mechanism.DPSGD
    assert (e.noise_multiplier, e.sample_rate, e.steps, e.sensitivity) == pytest.approx(
        (z, q, 7, 6.0)
    )
    assert z == pytest.approx(2.0) and q == pytest.approx(1 - 0.9**3)


def test_params_from_config_fail_closed() -> None:
    """A round asking for DP-SGD without noise, or with a missing key, is refused."""
    cfg = {
        AdapterKeys.NOISE_MULTIPLIER: 8.0,
        AdapterKeys.MAX_GRAD_NORM: 1.0,
        AdapterKeys.SAMPLE_RATE: 0.05,
        AdapterKeys.STEPS: 10,
        AdapterKeys.LR: 0.05,
        AdapterKeys.TEMPERATURE: 0.1,
        AdapterKeys.EXPECTED_BATCH_SIZE: 16,
        AdapterKeys.UPDATE_CLIPPING_NORM: 1.0,
    }
    assert params_from_config(cfg).steps == 10
    with pytest.raises(ConfigError, match="without noise"):
        params_from_config({**cfg, AdapterKeys.NOISE_MULTIPLIER: 0.0})
    with pytest.raises(ConfigError, match="missing"):
        params_from_config({k: v for k, v in cfg.items() if k != AdapterKeys.LR})


def test_adapter_round_budget_ledger_and_reuse(tmp_path: Path) -> None:
    """The device checks its budget, records DP-SGD in its ledger before replying, replays a
    repeated round without spending again, and refuses once the budget is spent."""
    store = EventStore(tmp_path / "d.db")
    store.ingest(iter_records(generate(SyntheticConfig(users=1, seed=3)).events))
    enc = HashEncoder()
    w = AdapterWeights.initial(enc.dim, 4, seed=0)
    neg = normalize_rows(np.random.default_rng(0).normal(size=(10, enc.dim))).astype(np.float32)
    params = AdapterTrainParams(steps=3)
    budget = PrivacyBudget(5.0, 1e-5)
    new, reused = adapter_round(
        store, params, w, neg, server_round=1, encoder=enc, budget=budget, seed=0
    )
    assert not reused and [e.mechanism for e in store.ledger()] == [Mechanism.DPSGD]
    again, reused = adapter_round(
        store, params, w, neg, server_round=1, encoder=enc, budget=budget, seed=9
    )
    assert reused and np.array_equal(again.b, new.b) and len(store.ledger()) == 1
    with pytest.raises(BudgetExceededError):
        adapter_round(
            store,
            params,
            w,
            neg,
            server_round=2,
            encoder=enc,
            budget=PrivacyBudget(0.05, 1e-5),
            seed=0,
        )
    assert len(store.ledger()) == 1
