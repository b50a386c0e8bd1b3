"""Section ``secagg``: SecAgg+ crypto per device and the server's unmasking per device,
Flower's stock Shamir vs the simulation's (:mod:`simulations.flower_speedups`)."""

from __future__ import annotations

import os
import time
from typing import Any

from simulations.benchmark.timing import load_average, median_runs

__all__ = ["run"]


def run(quick: bool) -> list[dict[str, Any]]:
    """SecAgg+ crypto of one device per round and the server's unmasking per device, with
    Flower's stock Shamir (pycryptodome) vs the simulation's speed-ups."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    from server.secagg import DEFAULT_NUM_SHARES, DEFAULT_RECONSTRUCTION_THRESHOLD
    from simulations.flower_speedups import flower_speedups

    sk, _pk = generate_key_pairs()
    skb = private_key_to_bytes(sk)
    pubs = [public_key_to_bytes(generate_key_pairs()[1]) for _ in range(64)]
    shape = [(1,), (257, 128)]
    runs = 3
    rows = []
    for k in (DEFAULT_NUM_SHARES,) if quick else (11, 21, 31):
        t = max(2, round(DEFAULT_RECONSTRUCTION_THRESHOLD * k))
        load = load_average()

        def device(fast: bool, k: int = k, t: int = t) -> float:
            t0 = time.perf_counter()
            create_shares(os.urandom(32), t, k)
            create_shares(skb, t, k)
            for j in range(k - 1):  # stage 1: shares out; stage 2: pairwise masks
                key = generate_shared_key(bytes_to_private_key(skb), bytes_to_public_key(pubs[j]))
                encrypt(key, b"x" * 400)
                key = generate_shared_key(bytes_to_private_key(skb), bytes_to_public_key(pubs[j]))
                pseudo_rand_gen(key, 1 << 32, shape)
            pseudo_rand_gen(os.urandom(32), 1 << 32, shape)
            return time.perf_counter() - t0

        shares = create_shares(os.urandom(32), t, k)

        def server(shares: list[bytes] = shares) -> float:
            t0 = time.perf_counter()
            combine_shares(shares)
            pseudo_rand_gen(os.urandom(32), 1 << 32, shape)
            return time.perf_counter() - t0

        stock_dev = median_runs(lambda: device(False), runs)
        stock_srv = median_runs(server, runs)
        with flower_speedups():
            fast_dev = median_runs(lambda: device(True), runs)
            fast_srv = median_runs(server, runs)
        rows.append(
            {
                "section": "secagg",
                "case": f"SecAgg+ per device per round, {k} shares, threshold {t}, 257 x 128",
                "runs": runs,
                "load": load,
                "device_stock_ms": 1000 * stock_dev,
                "device_fast_ms": 1000 * fast_dev,
                "server_stock_ms": 1000 * stock_srv,
                "server_fast_ms": 1000 * fast_srv,
                "server_speedup_x": stock_srv / fast_srv,
            }
        )
    return rows
