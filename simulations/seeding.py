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

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from client.encoder import TextEncoder, encode_cached
from client.local_clustering import weighted_kmeans
from client.store import EmbeddingCache
from common.config import RunConfig
from common.errors import ConfigError
from common.jsonio import atomic_write_text
from common.projection import PublicProjection, normalize_rows
from common.vocabulary import LabelSpace
from server.naming import CatalogueTexts
from server.private_seeding import auto_seeding

__all__ = [
    "NAMES_FILE",
    "SEEDING_FILE",
    "SEEDS_FILE",
    "VOCABULARY_FIT",
    "catalogue_seeds",
    "load_names",
    "load_seeds",
    "resolved_run",
    "seeding_record",
    "vocabulary_fit",
    "write_public_files",
]

SEEDS_FILE = "seeds.npy"
#: What seeded the run and why (``auto``: the vocabulary's fit to the catalogue).
SEEDING_FILE = "seeding.json"
#: ``auto`` seeds from the vocabulary when it describes at least this share of the
#: catalogue (:func:`vocabulary_fit`): a taxonomy that fits the catalogue seeds better than
#: k-means of it (measured on the synthetic data, docs/federated.md); else the catalogue.
VOCABULARY_FIT = 0.5
#: The public catalogue embedded (ids, texts, projected vectors): what names the tree's nodes.
NAMES_FILE = "catalogue.npz"


def catalogue_seeds(
    vectors: npt.NDArray[np.float32],
    k: int,
    *,
    seed: int,
    labels: LabelSpace | None = None,
) -> npt.NDArray[np.float32]:
    """``k`` spherical k-means centroids of the catalogue's distinct texts, embedded and
    projected (``vectors``; fewer centroids when there are fewer texts), unit rows. With
    ``labels``, a centroid whose nearest vocabulary leaf label is close
    (:func:`server.naming.label_threshold`, the measured cosine at which a label describes a
    cluster) is replaced by that label's vector (each label once): the taxonomy anchors the
    clusters it describes and nothing else."""
    if len(vectors) < 2:
        raise ConfigError(
            f"`--seeding catalogue` needs a public catalogue of at least 2 texts. Found {len(vectors)}."
        )
    km = weighted_kmeans(
        vectors, np.ones(len(vectors)), min(k, len(vectors)), rng=np.random.default_rng([seed, 7])
    )
    live = np.flatnonzero(km.masses_ > 0)
    seeds = normalize_rows(km.cluster_centers_[live])
    if labels is not None:
        seeds = _snap_to_labels(seeds, labels)
    return seeds


def _snap_to_labels(seeds: npt.NDArray[np.float32], labels: LabelSpace) -> npt.NDArray[np.float32]:
    from server.naming import label_threshold

    vocab = labels.vocabulary
    _, vecs = labels.subset(list(vocab.leaves) or list(vocab.labels))
    sims = seeds @ vecs.T
    best = sims.argmax(axis=1)
    out = seeds.copy()
    taken: set[int] = set()
    # the closest pairs first, so a label goes to the centroid it describes best
    for i in np.argsort(-sims[np.arange(len(seeds)), best], kind="stable"):
        j = int(best[i])
        if sims[i, j] >= label_threshold(labels) and j not in taken:
            out[i] = vecs[j]
            taken.add(j)
    return normalize_rows(out)


def write_public_files(
    out: Path,
    run: RunConfig,
    items: dict[str, str],
    labels: LabelSpace,
    *,
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
    population: int,
) -> None:
    """Writes the run's public files: ``out/labels.npz``, with a catalogue ``out/catalogue.npz``
    (what names the nodes) and, with catalogue seeding, ``out/seeds.npy``; ``seeding.json``
    says what seeds the run (``population``: the run's devices, for ``auto`` without a
    catalogue: :func:`server.private_seeding.auto_seeding`)."""
    labels.save(out / "labels.npz")
    vocabulary = labels.vocabulary
    c = run.clustering
    # the distinct texts, embedded once: they name the nodes and seed the first round
    catalogue = sorted(set(items.values()))
    x = projection(encode_cached(encoder, cache, catalogue)) if catalogue else None
    if items and x is not None:
        ids = sorted(items)
        row = {t: i for i, t in enumerate(catalogue)}
        np.savez(
            out / NAMES_FILE,
            ids=np.asarray(ids, dtype=str),
            texts=np.asarray([items[i] for i in ids], dtype=str),
            vectors=x[[row[items[i]] for i in ids]].astype(np.float32),
        )
    if c.seeding == "private" or (c.seeding == "auto" and len(catalogue) < 2):
        resolved = auto_seeding(c.seeding, has_catalogue=False, population=population)
        record: dict[str, object] = {"requested": c.seeding, "seeding": resolved}
        if resolved == "private":
            record["codebook_size"] = c.codebook_size
            record["seed_leaves"] = c.leaves_to_seed(vocabulary)
        atomic_write_text(out / SEEDING_FILE, json.dumps(record, indent=2) + "\n")
        return
    if c.seeding == "vocabulary":
        return
    k = c.leaves_to_seed(vocabulary)
    if x is None:
        x = np.zeros((0, labels.dim), dtype=np.float32)
    seeds = catalogue_seeds(x, k, seed=run.seed, labels=labels if c.snap_labels else None)
    fit = vocabulary_fit(x, seeds, labels)
    resolved = c.seeding
    if c.seeding == "auto":
        resolved = "vocabulary" if fit >= VOCABULARY_FIT else "catalogue"
    record = {"requested": c.seeding, "seeding": resolved, "vocabulary_fit": round(fit, 4)}
    atomic_write_text(out / SEEDING_FILE, json.dumps(record, indent=2) + "\n")
    if resolved == "catalogue":
        np.save(out / SEEDS_FILE, seeds, allow_pickle=False)


def vocabulary_fit(
    catalogue: npt.NDArray[np.float32], seeds: npt.NDArray[np.float32], labels: LabelSpace
) -> float:
    """The share of the catalogue's texts whose catalogue cluster (nearest seed) has a
    vocabulary leaf label within the measured naming threshold
    (:func:`server.naming.label_threshold`): how much of the catalogue the taxonomy
    describes. Measured: the synthetic data (whose items the vocabulary's categories
    generate) 0.8-0.9, KuaiRec under 0.1 (docs/federated.md)."""
    from server.naming import label_threshold

    vocab = labels.vocabulary
    _, vecs = labels.subset(list(vocab.leaves) or list(vocab.labels))
    close = (seeds @ vecs.T).max(axis=1) >= label_threshold(labels)
    nearest = np.argmax(catalogue @ seeds.T, axis=1)
    return float(close[nearest].mean()) if len(nearest) else 0.0


def load_names(out: Path) -> CatalogueTexts | None:
    """The run's embedded public catalogue (``None``: the dataset has none)."""
    path = out / NAMES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return CatalogueTexts(
            tuple(str(i) for i in z["ids"]), tuple(str(t) for t in z["texts"]), z["vectors"]
        )


def seeding_record(out: Path) -> dict[str, object]:
    """What seeded the run (``seeding``) and, with a catalogue, the vocabulary's fit to it."""
    path = out / SEEDING_FILE
    if path.is_file():
        record: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
        return record
    return {"seeding": "catalogue" if (out / SEEDS_FILE).is_file() else "vocabulary"}


def resolved_run(run: RunConfig, out: Path) -> RunConfig:
    """``run`` with ``auto`` replaced by the private seeding ``seeding.json`` chose (the
    server draws the codebook itself; the other choices reach it as seeds or none)."""
    if run.clustering.seeding == "auto" and seeding_record(out)["seeding"] == "private":
        return replace(run, clustering=replace(run.clustering, seeding="private"))
    return run


def load_seeds(out: Path) -> npt.NDArray[np.float32] | None:
    """The run's catalogue seeds, or ``None`` (vocabulary seeding)."""
    path = out / SEEDS_FILE
    if not path.is_file():
        return None
    return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
