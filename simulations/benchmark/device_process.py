"""A fresh device process for the ``client`` section: one DP release round (and, with
training, one adapter round) on an existing store, then its time, peak memory and which heavy
libraries it loaded, as one JSON line:

    python -m simulations.benchmark.device_process STORE NOISE_MULTIPLIER TRAIN(0|1)
"""

from __future__ import annotations

import json
import sys
import time

__all__ = ["main"]


def main(argv: list[str]) -> int:
    import numpy as np

    t0 = time.perf_counter()  # the device's own imports count, numpy's does not
    from client.encoder import MiniLMEncoder
    from client.release import ReleaseParams, release_round
    from client.store import EventStore
    from common.adapter import AdapterWeights
    from common.privacy import PrivacyBudget
    from common.projection import PublicProjection, normalize_rows
    from simulations.benchmark.fixtures import round_config
    from simulations.benchmark.timing import vmhwm_mb

    store_path, z, train = argv[0], float(argv[1]), argv[2] == "1"
    enc = MiniLMEncoder()
    proj = PublicProjection(384, 128, encoder_id=enc.model_id)
    rng = np.random.default_rng(0)
    centroids = normalize_rows(rng.normal(size=(256, 128)).astype(np.float32))
    with EventStore(store_path, create=False) as store:
        release_round(
            store,
            ReleaseParams.from_config(round_config(proj, 99, z)),
            centroids,
            encoder=enc,
            budget=PrivacyBudget(1e6, 1e-5),
            rng=rng,
        )
        if train:
            from client.adapter import AdapterTrainParams, adapter_round

            neg = normalize_rows(rng.normal(size=(160, 384)).astype(np.float32))
            adapter_round(
                store,
                AdapterTrainParams(),
                AdapterWeights.initial(384, 8, 7),
                neg,
                server_round=99,
                encoder=enc,
                budget=PrivacyBudget(1e6, 1e-5),
                seed=1,
            )
    mods = [m for m in ("torch", "opacus", "transformers") if m in sys.modules]
    print(
        json.dumps(
            {"seconds": time.perf_counter() - t0, "peak_rss_mb": vmhwm_mb(), "imported": mods}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
