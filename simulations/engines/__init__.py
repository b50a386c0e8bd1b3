"""Simulation engines: how ``fedinterest simulate`` maps devices onto Flower nodes
(:mod:`simulations.engines.batched`: shards of devices per node)."""

__all__: list[str] = []
