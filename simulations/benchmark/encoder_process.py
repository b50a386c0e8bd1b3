"""A fresh device process for the ``encoders`` section: one user-level DP release in local
mode on an existing store whose texts are not embedded yet (the device embeds them in the
round, the expensive case), with the encoder named on the command line; prints its time,
peak RSS and the heavy libraries it loaded as one JSON line:

    python -m simulations.benchmark.encoder_process STORE ENCODER
"""

from __future__ import annotations

import json
import sys
import time

__all__ = ["main"]


def main(argv: list[str]) -> int:
    import numpy as np

    t0 = time.perf_counter()  # the device's own imports count, numpy's does not
    from client.encoder_registry import make_encoder
    from client.policy import DevicePolicy
    from client.release import release_round
    from client.store import EventStore
    from common.privacy import Scope
    from common.projection import DEFAULT_SEED, PublicProjection, normalize_rows
    from common.records import ReleaseMode
    from common.round_config import RoundConfig
    from simulations.benchmark.timing import vmhwm_mb

    store_path, name = argv[0], argv[1]
    enc = make_encoder(name, num_threads=1)
    proj = PublicProjection(enc.dim, 128, DEFAULT_SEED, enc.model_id)
    cfg = RoundConfig.for_release(
        server_round=1,
        hierarchy_version=0,
        mode=ReleaseMode.LOCAL,
        noise_multiplier=5.0,
        sampled=100,
        min_cohort_fraction=0.5,
        clipping_norm=1.0,
        max_weight=1.0,
        user_clipping_norm=1.0,
        residual_threshold=0.2,
        projection_seed=DEFAULT_SEED,
        projection_dim=128,
        projection_fingerprint=proj.fingerprint,
        delta=1e-6,
        unit=Scope.USER,
    )
    rng = np.random.default_rng(0)
    centroids = normalize_rows(rng.normal(size=(150, 128)).astype(np.float32))
    with EventStore(store_path, create=False) as store:
        release_round(
            store, cfg, centroids, encoder=enc, budget=DevicePolicy().budget(4.0), rng=rng
        )
    heavy = ("torch", "transformers", "opacus", "dp_accounting", "scipy.stats")
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "peak_rss_mb": vmhwm_mb(),
                "imported": [m for m in heavy if m in sys.modules],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
