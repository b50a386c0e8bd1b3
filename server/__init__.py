"""The aggregation server: pure aggregation functions, the tree builder, Flower glue."""

__all__: list[str] = []
