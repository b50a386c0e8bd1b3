"""The batched engine's device side: the release arithmetic vectorised over users
(client.release_math) against an independent per-user computation, a shard of devices
(client.shard) against the devices' own release_round on real SQLite stores, the noise of
the shard's sum against the sum of device shares, budgets, replays and stale ledgers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from client.release import release_round
from client.release_math import count_sum, histogram_sum, leaf_sum
from client.shard import ShardDevices
from client.shard_store import ShardStore
from client.store import EmbeddingCache, EventStore
from common.event_table import EventTable
from common.events import iter_records, text_hash
from common.privacy import PrivacyBudget
from common.records import ReleaseTask, RoundKeys, encode_ids
from common.round_config import RoundConfig
from simulations.datasets.loaders import partition_by_user
from simulations.datasets.synthetic import SyntheticConfig, generate
from simulations.engines.batched import write_shards
from tests.client.test_release import EVENT_POLICY, D, HashEncoder, centroids, config

# -- the arithmetic against an independent computation ----------------------------------------


def _naive_leaf(vectors, rows, weights, users, n_users, n_rows, c, w_max, bound):  # type: ignore[no-untyped-def]
    """Per user, with Python loops: rows of clipped weighted vectors, then the user clip."""
    total = np.zeros((n_rows, vectors.shape[1]))
    for u in range(n_users):
        rel = np.zeros_like(total)
        for x, r, w, owner in zip(vectors, rows, weights, users, strict=True):
            if owner != u:
                continue
            n = np.linalg.norm(x)
            x = x * min(1.0, c * (1 - 1e-6) / n)
            rel[r] += min(max(w, 0.0), w_max) * x
        norm = np.linalg.norm(rel)
        if norm > bound:
            rel *= bound * (1 - 1e-6) / norm
        total += rel
    return total


def test_leaf_sum_matches_a_per_user_loop() -> None:
    rng = np.random.default_rng(3)
    n, users, rows, d = 400, 9, 7, 5
    vec = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    row = rng.integers(0, rows, size=n)
    w = rng.uniform(-0.5, 3.0, size=n)
    owner = rng.integers(0, users, size=n)
    for bound in (0.5, 3.0, 1e6):
        got = leaf_sum(
            vec, row, np.arange(n), w, owner, users, rows,
            clipping_norm=1.0, max_weight=2.0, user_clipping_norm=bound,
        )  # fmt: skip
        want = _naive_leaf(vec, row, w, owner, users, rows, 1.0, 2.0, bound)
        np.testing.assert_allclose(got.total, want, rtol=1e-10, atol=1e-12)


def test_leaf_sum_shares_texts_and_bounds_memory() -> None:
    """Events pointing at shared texts give the same sums as one vector per event, also when
    the chunking splits the work (a tiny chunk)."""
    import client.release_math as rm

    rng = np.random.default_rng(4)
    texts = rng.normal(size=(30, 6))
    t = rng.integers(0, 30, size=500)
    w = rng.uniform(0, 1, size=500)
    u = np.sort(rng.integers(0, 40, size=500))
    rows = rng.integers(0, 5, size=30)
    shared = leaf_sum(
        texts, rows, t, w, u, 40, 5, clipping_norm=1.0, max_weight=1.0, user_clipping_norm=0.8
    )
    flat = leaf_sum(
        texts[t],
        rows[t],
        np.arange(500),
        w,
        u,
        40,
        5,
        clipping_norm=1.0,
        max_weight=1.0,
        user_clipping_norm=0.8,
    )
    np.testing.assert_allclose(shared.total, flat.total, rtol=1e-12)
    old = rm._CHUNK_EVENTS
    rm._CHUNK_EVENTS = 7
    try:
        small = leaf_sum(
            texts, rows, t, w, u, 40, 5, clipping_norm=1.0, max_weight=1.0, user_clipping_norm=0.8
        )
    finally:
        rm._CHUNK_EVENTS = old
    np.testing.assert_allclose(small.total, shared.total, rtol=1e-12)
    np.testing.assert_allclose(small.norms, shared.norms, rtol=1e-12)


def test_histogram_and_count_sums_match_per_user_loops() -> None:
    rng = np.random.default_rng(5)
    n, users, groups = 300, 12, 6
    grp = rng.integers(0, groups, size=n)
    w = rng.uniform(0.1, 2.0, size=n)
    owner = rng.integers(0, users - 2, size=n)  # the last two users have no events
    got = histogram_sum(grp, np.arange(n), w, owner, users, groups, top_k=2, user_clipping_norm=0.5)
    want = np.zeros(groups)
    for u in range(users):
        mass = np.bincount(grp[owner == u], weights=w[owner == u], minlength=groups)
        if (owner == u).any():
            want[np.argsort(-mass)[:2]] += (1 / math.sqrt(2)) * (0.5 * (1 - 1e-6))
    np.testing.assert_allclose(got.total, want, rtol=1e-12)
    items = rng.integers(-1, 8, size=n)
    got = count_sum(items, owner, users, 8, user_clipping_norm=3.0)
    want = np.zeros(8)
    for u in range(users):
        c = np.bincount(items[(owner == u) & (items >= 0)], minlength=8).astype(float)
        norm = np.linalg.norm(c)
        want += c if norm <= 3.0 else c * 3.0 * (1 - 1e-6) / norm
    np.testing.assert_allclose(got.total, want, rtol=1e-12)


# -- a shard of devices against the devices themselves ----------------------------------------


class Population:
    """``users`` synthetic devices as real device stores and as one shard store."""

    def __init__(self, tmp: Path, users: int, *, budget: float = 1e9) -> None:
        self.encoder = HashEncoder()
        events = generate(SyntheticConfig(users=users, seed=8, events_per_user=20)).events
        parts = partition_by_user(events)
        self.table = EventTable.from_events(parts)
        self.devices: list[Path] = []
        for i, evs in enumerate(parts.values()):
            path = tmp / f"d{i}.db"
            with EventStore(path) as s:
                s.ingest(iter_records(evs), flag_quality=False)
            self.devices.append(path)
        cache = EmbeddingCache.open(tmp / "cache.db")
        cache.put(
            self.encoder.model_id,
            [text_hash(t) for t in self.table.texts],
            self.encoder.encode(self.table.texts),
        )
        self.budget = budget
        (self.shard,) = write_shards(
            tmp / "shards", self.table, 1, cache=cache, model_id=self.encoder.model_id,
            budgets=np.full(users, budget),
        )  # fmt: skip

    def device_release(self, i: int, cfg: dict, first: np.ndarray, seed: int) -> np.ndarray:  # type: ignore[type-arg]
        from client.release import count_release, histogram_release

        params = RoundConfig.from_record(cfg, allow_no_dp=True)
        rng = np.random.default_rng(seed)
        budget = None if params.non_private else PrivacyBudget(self.budget, params.delta)
        with EventStore(self.devices[i], create=False) as s:
            if params.task is ReleaseTask.LEAF_SUMS:
                out = release_round(s, params, first, encoder=self.encoder, budget=budget, rng=rng)
            elif params.task is ReleaseTask.HISTOGRAM:
                out = histogram_release(
                    s,
                    params,
                    first,
                    top_k=params.top_k or 1,
                    encoder=self.encoder,
                    budget=budget,
                    rng=rng,
                )
            else:
                from common.records import decode_ids

                out = count_release(s, params, decode_ids(first), budget=budget, rng=rng)
        return out.sums.astype(np.float64)


def _requests() -> list[tuple[dict, np.ndarray]]:  # type: ignore[type-arg]
    g = centroids(4)
    return [
        (config(**{RoundKeys.NOISE_STD: 0.0, RoundKeys.NOISE_MULTIPLIER: 0.0}), centroids()),
        (
            config(
                **{
                    RoundKeys.NOISE_STD: 0.0,
                    RoundKeys.NOISE_MULTIPLIER: 0.0,
                    RoundKeys.USER_CLIPPING_NORM: 2.0,
                    RoundKeys.SERVER_ROUND: 2,
                }
            ),
            centroids(9),
        ),
        (
            config(
                **{
                    RoundKeys.NOISE_STD: 0.0,
                    RoundKeys.NOISE_MULTIPLIER: 0.0,
                    RoundKeys.TASK: "histogram",
                    RoundKeys.TOP_K: 2,
                    RoundKeys.SERVER_ROUND: 3,
                }
            ),
            g,
        ),
        (
            config(
                **{
                    RoundKeys.NOISE_STD: 0.0,
                    RoundKeys.NOISE_MULTIPLIER: 0.0,
                    RoundKeys.TASK: "item-counts",
                    RoundKeys.SERVER_ROUND: 4,
                    RoundKeys.USER_CLIPPING_NORM: 3.0,
                }
            ),
            encode_ids([f"it{i:05d}" for i in range(1, 4801)]),
        ),
    ]


def test_shard_sum_equals_the_devices_sum_without_noise(tmp_path: Path) -> None:
    """The same requests, noise off: the shard's sum is the sum of the devices' own releases
    (leaf sums with and without the user clip binding, histogram, item counts), and every
    user's ledger holds the same entries as its device's."""
    pop = Population(tmp_path, 12, budget=math.nan)
    shard = ShardDevices(pop.shard, allow_no_dp=True, policy=EVENT_POLICY)
    for cfg, first in _requests():
        want = sum(pop.device_release(i, cfg, first, seed=i) for i in range(12))
        got = shard.release(cfg, first, shard.users.tolist())
        assert got.usable == 12 and got.statuses == {"ok": 12}
        assert got.total is not None
        np.testing.assert_allclose(got.total, want, rtol=2e-5, atol=2e-5)
    with ShardStore(pop.shard, read_only=True) as st:
        for i in range(12):
            with EventStore(pop.devices[i], create=False) as s:
                dev = [_key(e) for e in s.ledger()]
            assert [_key(e) for e in st.user_ledger(i)] == dev


def _key(e):  # type: ignore[no-untyped-def]
    return (e.mechanism, e.noise_multiplier, e.sensitivity, e.server_round, e.scope, e.steps)


def test_shard_noise_has_the_variance_of_the_devices_shares(tmp_path: Path) -> None:
    """With noise on, (release - noiseless release) over many coordinates: the shard's one
    draw and the sum of the devices' shares have the same variance, m x std^2."""
    (tmp_path / "quiet").mkdir()
    (tmp_path / "noisy").mkdir()
    quiet = Population(tmp_path / "quiet", 10, budget=math.nan)
    pop = Population(tmp_path / "noisy", 10)
    std = 0.5
    quiet_cfg, _ = _requests()[0]
    first = centroids(79)  # 80 rows x 16 dims a release
    shard = ShardDevices(pop.shard, policy=EVENT_POLICY)
    base = sum(quiet.device_release(i, quiet_cfg, first, seed=i) for i in range(10))
    shard_noise, device_noise = [], []
    for r in range(2, 10):
        cfg = {
            **quiet_cfg,
            RoundKeys.NOISE_STD: std,
            RoundKeys.NOISE_MULTIPLIER: std,
            RoundKeys.SERVER_ROUND: r,
        }
        got = shard.release(cfg, first, shard.users.tolist()).total
        assert got is not None
        shard_noise.append((got - base).ravel())
        dev = sum(pop.device_release(i, cfg, first, seed=100 * r + i) for i in range(10))
        device_noise.append((dev - base).ravel())
    a, b = np.concatenate(shard_noise), np.concatenate(device_noise)
    expected = 10 * std**2
    # 8 x 1,280 = 10,240 samples each: the sample variance's relative standard deviation is
    # sqrt(2 / 10,240) = 1.4%, so 8% is more than 5 sigma
    assert abs(a.var() / expected - 1) < 0.08
    assert abs(b.var() / expected - 1) < 0.08
    assert abs(a.mean()) < 4 * math.sqrt(expected / a.size)


def test_budgets_replays_and_refusals(tmp_path: Path) -> None:
    """Each user is checked against its own ledger: a user whose budget the release would
    exceed is reported and releases nothing; a repeated request gets the stored sum (no new
    ledger row); a member of another cohort under the same key is refused."""
    pop = Population(tmp_path, 6, budget=3.0)
    with ShardStore(pop.shard) as st:
        # user 5 has a smaller budget (as --device-budgets gives)
        st._conn.execute("UPDATE users SET budget_epsilon = 0.5 WHERE user = 5")
    shard = ShardDevices(pop.shard, policy=EVENT_POLICY)
    cfg, first = _requests()[0]
    cfg = {**config(), RoundKeys.SERVER_ROUND: 1}
    out = shard.release(cfg, first, [0, 1, 2, 3, 4, 5])
    assert out.usable == 5 and out.statuses == {"ok": 5, "budget_exceeded": 1}
    again = shard.release(cfg, first, [0, 1, 2, 3, 4, 5])
    assert again.reused and again.total is not None and out.total is not None
    np.testing.assert_array_equal(again.total, out.total)
    other = shard.release(cfg, first, [0, 1])
    assert other.usable == 0 and other.statuses == {"refused": 2}
    with ShardStore(pop.shard, read_only=True) as st:
        assert [len(st.user_ledger(u)) for u in range(6)] == [1, 1, 1, 1, 1, 0]


def test_a_stale_copy_never_budgets(tmp_path: Path) -> None:
    """Two processes holding the same shard (Flower's Ray backend runs a node's messages on any
    actor): the second reads the first one's ledger rows before checking budgets."""
    pop = Population(tmp_path, 4, budget=1.2)
    a = ShardDevices(pop.shard, policy=EVENT_POLICY)
    b = ShardDevices(pop.shard, policy=EVENT_POLICY)
    first = centroids()
    assert a.release({**config(), RoundKeys.SERVER_ROUND: 1}, first, [0, 1, 2, 3]).usable == 4
    # one round of config()'s noise costs ~0.74; a second one would pass 1.2
    out = b.release({**config(), RoundKeys.SERVER_ROUND: 2}, first, [0, 1, 2, 3])
    assert out.usable == 0 and out.statuses == {"budget_exceeded": 4}


def test_malformed_requests_are_refused_before_anything_is_recorded(tmp_path: Path) -> None:
    from common.errors import ReleaseRefusedError

    pop = Population(tmp_path, 3)
    shard = ShardDevices(pop.shard, policy=EVENT_POLICY)
    with pytest.raises(ReleaseRefusedError, match="centroids"):
        shard.release(config(), np.zeros((3, D + 1), np.float32), [0, 1, 2])
    with pytest.raises(ReleaseRefusedError, match="not users of this shard"):
        shard.release(config(), centroids(), [0, 7])
    with pytest.raises(ReleaseRefusedError):
        shard.release({**config(), RoundKeys.PROJECTION_FINGERPRINT: "x"}, centroids(), [0])
    with ShardStore(pop.shard, read_only=True) as st:
        assert st.latest_mechanism() == 0
