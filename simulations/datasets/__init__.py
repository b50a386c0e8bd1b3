"""Datasets: the synthetic generator (the embedded default), loaders and partitioning."""

from simulations.datasets.loaders import load_events, load_mind, load_movielens, partition_by_user
from simulations.datasets.synthetic import (
    SyntheticConfig,
    SyntheticDataset,
    SyntheticTable,
    generate,
    generate_table,
    write_jsonl,
)

__all__ = [
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticTable",
    "generate",
    "generate_table",
    "load_events",
    "load_mind",
    "load_movielens",
    "partition_by_user",
    "write_jsonl",
]
