"""``fedinterest labels``: the server's label vocabulary, embedded and projected
(``labels.npz``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client.encoder_registry import DEFAULT_ENCODER
from simulations.cli.base import add_encoder_flag, emit, positive_int

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Runs ``labels``."""
    from client.encoder_registry import make_encoder
    from client.store import EmbeddingCache
    from common.projection import DEFAULT_SEED, PublicProjection
    from common.vocabulary import default_vocabulary, load_taxonomy_tsv
    from simulations.simulate import default_cache_path, embed_labels

    vocab = load_taxonomy_tsv(args.taxonomy) if args.taxonomy else default_vocabulary()
    encoder = make_encoder(args.encoder, model_dir=args.model_dir)
    seed = args.projection_seed if args.projection_seed is not None else DEFAULT_SEED
    projection = PublicProjection(encoder.dim, args.dim, seed, encoder.model_id)
    cache = EmbeddingCache.open(args.cache or default_cache_path())
    labels = embed_labels(vocab, encoder, cache, projection)
    cache.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    labels.save(args.out)
    payload = {
        "out": str(args.out),
        "labels": len(vocab.labels),
        "roots": len(vocab.roots),
        "vocabulary": vocab.name,
        "encoder_id": labels.encoder_id,
        "projection_fingerprint": labels.projection_fingerprint,
    }
    emit(
        args,
        payload,
        lambda: print(
            f"wrote {payload['labels']} labels ({payload['roots']} roots, {vocab.name}) embedded with "
            f"{labels.encoder_id}, projection {labels.projection_fingerprint}, to {args.out}"
        ),
    )
    return 0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``labels``."""
    from common.config import ClusteringConfig

    dim = ClusteringConfig().projection_dim
    lab = sub.add_parser(
        "labels", parents=parents, help="embed a label vocabulary for the server (labels.npz)"
    )
    lab.add_argument("--out", required=True, help="output .npz file")
    lab.add_argument("--taxonomy", help="label space TSV (default: the project's vocabulary)")
    lab.add_argument(
        "--dim", type=positive_int, default=dim, help=f"projection dimension (default {dim})"
    )
    lab.add_argument(
        "--projection-seed", type=int, default=None, help="projection seed (default: the project's)"
    )
    add_encoder_flag(lab, default=DEFAULT_ENCODER)
    lab.add_argument("--cache", help="embedding cache file")
    lab.set_defaults(handler=run)
