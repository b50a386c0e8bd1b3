"""Catalogue seeding (``--seeding catalogue``): the first round's leaves from the public
catalogue instead of the label vocabulary.

The distinct public item texts are embedded with the run's encoder and projected; spherical
k-means (k-means++ seeding, then Lloyd iterations, unweighted: the catalogue is public and
carries no behaviour) gives ``seed_leaves`` centroids (default: as many as the vocabulary has
leaf labels). They seed the federated run's leaves and, for a like-for-like comparison, the
centralized and catalogue baselines. Public data only: no privacy cost. The seeds are written
to ``RUN_DIR/seeds.npy`` (what ``--resume`` and the metrics read back). The vocabulary still
names the leaves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from client.encoder import TextEncoder, encode_cached
from client.local_clustering import weighted_kmeans
from client.store import EmbeddingCache
from common.config import RunConfig
from common.errors import ConfigError
from common.projection import PublicProjection, normalize_rows
from common.vocabulary import LabelSpace

__all__ = ["SEEDS_FILE", "catalogue_seeds", "load_seeds", "write_public_files"]

SEEDS_FILE = "seeds.npy"


def catalogue_seeds(
    catalogue: list[str],
    k: int,
    *,
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
    seed: int,
) -> npt.NDArray[np.float32]:
    """``k`` spherical k-means centroids of the catalogue's projected embeddings (fewer when
    the catalogue has fewer distinct texts), unit rows."""
    texts = sorted(set(catalogue))
    if len(texts) < 2:
        raise ConfigError(
            f"`--seeding catalogue` needs a public catalogue of at least 2 texts. Found {len(texts)}."
        )
    x = projection(encode_cached(encoder, cache, texts))
    km = weighted_kmeans(x, np.ones(len(x)), min(k, len(x)), rng=np.random.default_rng([seed, 7]))
    live = np.flatnonzero(km.masses_ > 0)
    return normalize_rows(km.cluster_centers_[live])


def write_public_files(
    out: Path,
    run: RunConfig,
    catalogue: list[str],
    labels: LabelSpace,
    *,
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
) -> None:
    """Writes the run's public files: ``out/labels.npz`` and, with catalogue seeding,
    ``out/seeds.npy``."""
    labels.save(out / "labels.npz")
    vocabulary = labels.vocabulary
    c = run.clustering
    if c.seeding != "catalogue":
        return
    k = c.seed_leaves or len(vocabulary.leaves) or len(vocabulary.labels)
    seeds = catalogue_seeds(
        catalogue, k, encoder=encoder, cache=cache, projection=projection, seed=run.seed
    )
    np.save(out / SEEDS_FILE, seeds, allow_pickle=False)


def load_seeds(out: Path) -> npt.NDArray[np.float32] | None:
    """The run's catalogue seeds, or ``None`` (vocabulary seeding)."""
    path = out / SEEDS_FILE
    if not path.is_file():
        return None
    return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
