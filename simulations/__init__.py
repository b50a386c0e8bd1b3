"""Runnable experiments: datasets, partitions, baselines, benchmarks and the CLI."""

__all__: list[str] = []
