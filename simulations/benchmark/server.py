"""Section ``server``: validating and summing 100 / 1,000 / 10,000 local-mode releases of
257 x 128, then the DP-Lloyd aggregation and the tree build."""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

from simulations.benchmark.timing import load_average, median_runs

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """Validating and summing N local-mode releases, then aggregation and the tree."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    from client.encoder import MiniLMEncoder
    from client.store import EmbeddingCache
    from common.projection import PublicProjection, normalize_rows
    from common.records import REPLY_ARRAYS, REPLY_META, SUMS, ReplyKeys, ReplyStatus
    from common.vocabulary import default_vocabulary
    from server.aggregation import AggregationConfig, aggregate_round, initial_state
    from server.hierarchy_builder import build_hierarchy
    from server.replies import validate_local_reply
    from server.round import noise_norm_bound as _noise_norm_bound
    from simulations.simulate import default_cache_path, embed_labels

    enc = MiniLMEncoder()
    cache = EmbeddingCache.open(default_cache_path())
    proj = PublicProjection(384, 128)
    labels = embed_labels(default_vocabulary(), enc, cache, proj)
    cache.close()
    _, seed_vecs = labels.subset(list(labels.vocabulary.leaves))
    rng = np.random.default_rng(5)
    extra = normalize_rows(
        seed_vecs[rng.integers(0, len(seed_vecs), 256 - len(seed_vecs))]
        + 0.3 * rng.normal(size=(256 - len(seed_vecs), 128)).astype(np.float32)
    )
    seeds = np.concatenate([seed_vecs, extra])  # 256 public leaves
    state = initial_state(seeds)
    std = 0.5
    shape = (257, 128)
    pool: list[Message] = []
    for _ in range(64):  # distinct device releases, cycled
        x = np.zeros(shape, np.float32)
        leaves = rng.integers(0, 256, 5)
        x[leaves] = seeds[leaves] * rng.uniform(5, 30, (5, 1))
        x += rng.normal(0, std, shape).astype(np.float32)
        pool.append(
            Message(  # type: ignore[call-overload]
                RecordDict(
                    {
                        REPLY_ARRAYS: ArrayRecord({SUMS: Array(x)}),
                        REPLY_META: ConfigRecord(
                            {
                                ReplyKeys.STATUS: ReplyStatus.OK.value,
                                ReplyKeys.SERVER_ROUND: 1,
                                ReplyKeys.HIERARCHY_VERSION: 0,
                            }
                        ),
                    }
                ),
                metadata=Metadata(
                    run_id=1,
                    message_id=f"m{len(pool)}",
                    src_node_id=len(pool) + 2,
                    dst_node_id=1,
                    reply_to_message_id="",
                    group_id="1",
                    created_at=0.0,
                    ttl=3600.0,
                    message_type="train.interests",
                ),
            )
        )
    bound = 100.0 + _noise_norm_bound(std, shape[0] * shape[1])
    rows = []
    for n in (100, 1000, 10_000):
        load = load_average()
        runs = 3

        def validate_sum(n: int = n) -> tuple[float, Any]:
            t0 = time.perf_counter()
            total = np.zeros(shape)
            for i in range(n):
                x = validate_local_reply(
                    pool[i % len(pool)],
                    expected_shape=shape,
                    norm_bound=bound,
                    server_round=1,
                    version=0,
                )
                assert x is not None
                total += x
            return time.perf_counter() - t0, total

        def plain(n: int = n) -> float:
            t0 = time.perf_counter()
            total = np.zeros(shape, np.float32)
            for i in range(n):
                total += pool[i % len(pool)].content.array_records[REPLY_ARRAYS][SUMS].numpy()
            return time.perf_counter() - t0

        def aggregate_and_tree(total: Any, n: int = n) -> float:
            t0 = time.perf_counter()
            new, _ = aggregate_round(
                state, total, noise_var=n * std**2, config=AggregationConfig(), server_round=1
            )
            live = np.arange(new.num_leaves)[: max(4, new.num_leaves)]
            build_hierarchy(
                [new.ids[i] for i in live],
                new.centroids[live],
                np.ones(len(live)),
                version=1,
                server_round=1,
                projection_fingerprint=proj.fingerprint,
                labels=labels,
                previous=None,
                merged_leaves={},
            )
            return time.perf_counter() - t0

        vs = [validate_sum() for _ in range(runs)]
        t_validate = statistics.median(t for t, _ in vs)
        t_agg = median_runs(partial(aggregate_and_tree, vs[0][1]), runs)
        t_plain = median_runs(plain, runs)
        rows.append(
            {
                "section": "server",
                "case": f"{n:,} local-mode releases of 257 x 128: validate + sum, DP-Lloyd + tree",
                "runs": runs,
                "load": load,
                "validate_sum_s": t_validate,
                "aggregate_tree_s": t_agg,
                "total_s": t_validate + t_agg,
                "plain_sum_s": t_plain,
                "total_over_plain": (t_validate + t_agg) / t_plain,
            }
        )
    return rows
