"""Genre check: the learned trees against flat, multi-label item genres (MovieLens).

MovieLens has no category path (its genres are flat and a movie has several), so
:class:`simulations.evaluation.GroundTruth` does not apply and the hierarchical clustering
metrics are omitted. This module gives such a dataset a flat clustering check instead: each
evaluated event is assigned to its nearest leaf (cosine) and that leaf's level-1 parent, as
:func:`simulations.evaluation.assign_to_tree` does, and the NMI between the assignment and the
event's genres is computed with fractional multi-label counts: an event with ``G`` genres
adds ``1/G`` to each of its genres' cells of the (tree node x genre) contingency table, so
every event weighs 1 in total and the node marginal is the plain event count.

Genres come from the dataset's files (``movies.csv``) by the event's ``item_id``, never from
the event text; they are for evaluation only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.events import Event
from common.hierarchy import Hierarchy
from common.metrics import normalized_mutual_info
from simulations.datasets.loaders import movielens_genres
from simulations.evaluation import assign_to_tree

__all__ = [
    "GENRE_KEYS",
    "GenreTruth",
    "dataset_genres",
    "genre_metrics",
    "genre_nmi",
    "genre_summary",
]

#: the genre check's scores per tree: NMI of the level-1 and of the level-2 (leaf) assignment
GENRE_KEYS: Final[tuple[str, ...]] = ("nmi_level1", "nmi_level2")

# dataset kind (the part of ``--dataset`` before ':') -> item id -> genres, given the argument
_GENRE_SOURCES: Final[dict[str, Callable[[str], dict[str, tuple[str, ...]]]]] = {
    "movielens": lambda arg: movielens_genres(arg or None),
}


def dataset_genres(spec: str) -> dict[str, tuple[str, ...]] | None:
    """Item id -> genres of the dataset a ``--dataset`` spec names; ``None`` for a dataset
    without flat genres (everything but ``movielens[:DIR]``)."""
    kind, _, arg = spec.partition(":")
    source = _GENRE_SOURCES.get(kind)
    return source(arg) if source is not None else None


@dataclass(frozen=True)
class GenreTruth:
    """The genres of the evaluated events that have any.

    Attributes:
        rows: indices into the evaluated events of those with at least one genre, shape
            ``(n_rows,)``.
        genres: per row, the event's item's genres (distinct, at least one).
        without: evaluated events left out: no item id, an item missing from the genre
            table, or an item listed with no genre.
    """

    rows: npt.NDArray[np.int64]
    genres: tuple[tuple[str, ...], ...]
    without: int

    @classmethod
    def from_events(
        cls, events: Sequence[Event], genres_by_item: Mapping[str, Sequence[str]] | None
    ) -> GenreTruth | None:
        """``None`` when no event has a genre (the check is then omitted, not zero)."""
        if not events or not genres_by_item:
            return None
        rows: list[int] = []
        genres: list[tuple[str, ...]] = []
        for i, e in enumerate(events):
            g = tuple(dict.fromkeys(genres_by_item.get(e.item_id, ()) if e.item_id else ()))
            if g:
                rows.append(i)
                genres.append(g)
        if not rows:
            return None
        return cls(np.asarray(rows, dtype=np.int64), tuple(genres), len(events) - len(rows))


def genre_nmi(clusters: Sequence[Hashable], genres: Sequence[Sequence[str]]) -> float:
    """NMI between a hard clustering and multi-label genres, with fractional counts.

    An item with ``G`` distinct genres counts ``1/G`` in each of its genres' cells of the
    (cluster x genre) contingency table. The NMI of that weighted table is computed by
    :func:`common.metrics.normalized_mutual_info` (one NMI in the project) on one row per
    (item, genre) pair weighted ``1/G``, which builds exactly that table; normalisation is
    the arithmetic mean of the two entropies, ``I(C; G) / ((H(C) + H(G)) / 2)``, as in
    every other NMI the run reports (scikit-learn's default).

    Args:
        clusters: per item, its cluster, length ``n``.
        genres: per item, its genres, length ``n``; each non-empty (repeats count once).

    Returns:
        NMI in ``[0, 1]``.
    """
    if len(clusters) != len(genres):
        raise ConfigError(
            f"`clusters` and `genres` must have the same length. Found {len(clusters)} and "
            f"{len(genres)}."
        )
    if not len(clusters):
        raise ConfigError("the genre NMI needs at least one item. Found none.")
    distinct = [tuple(dict.fromkeys(g)) for g in genres]
    empty = [i for i, g in enumerate(distinct) if not g]
    if empty:
        raise ConfigError(
            f"every item needs at least one genre. Found {len(empty)} without (first at "
            f"index {empty[0]})."
        )
    return _genre_nmi(clusters, distinct)


def _genre_nmi(clusters: Sequence[Hashable], genres: Sequence[tuple[str, ...]]) -> float:
    counts = np.fromiter((len(g) for g in genres), dtype=np.int64, count=len(genres))
    pred = np.repeat(np.asarray([str(c) for c in clusters], dtype=object), counts)
    truth = [g for gs in genres for g in gs]
    return normalized_mutual_info(truth, list(pred), weights=np.repeat(1.0 / counts, counts))


def genre_metrics(
    vectors: npt.NDArray[np.float32], h: Hierarchy, truth: GenreTruth
) -> dict[str, float]:
    """The scores of :data:`GENRE_KEYS` for one tree.

    Args:
        vectors: unit vectors of the evaluated events, shape ``(n_events, dim)``, in the
            space of ``h`` (the same events ``truth`` was built from).
    """
    leaves, groups = assign_to_tree(np.asarray(vectors)[truth.rows], h)
    return {
        "nmi_level1": _genre_nmi(groups, truth.genres),
        "nmi_level2": _genre_nmi(leaves, truth.genres),
    }


def genre_summary(scores: Mapping[str, Mapping[str, float]], truth: GenreTruth) -> dict[str, Any]:
    """``metrics.json``'s ``genres`` block: the per-tree scores (``federated``, and whichever
    of ``centralized`` / ``seed_method`` were computed), the ratios federated / centralized
    (``ratio``) and federated / seed method (``seed_method_ratio``; ``None`` where the
    baseline scores 0), and the number of events with and without genres."""
    out: dict[str, Any] = {k: dict(v) for k, v in scores.items()}
    fed = scores.get("federated") or {}
    for key, base in (("ratio", "centralized"), ("seed_method_ratio", "seed_method")):
        if base in scores:
            b = scores[base]
            out[key] = {k: (fed[k] / b[k]) if b.get(k) else None for k in GENRE_KEYS if k in fed}
    out["events"] = len(truth.rows)
    out["events_without_genres"] = truth.without
    return out
