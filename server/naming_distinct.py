"""Distinct names: nodes of one level that would show the same name are told apart.

A node shows the last `` > `` segment of its best label (``common.hierarchy.Node.label``), so
two leaves both named ``Movies & TV > Thrillers``, or three broad interests all named by the
root ``Movies & TV`` (a dataset inside one root of the vocabulary), cannot be told apart in
the published tree. :func:`distinct_labels` qualifies each such duplicate in its best label
(the path keeps its root and vocabulary name as a prefix, the score is unchanged; the other
labels stay as they are) with words that also describe that node:

- a broad interest named by a vocabulary root: the close label names of its heaviest
  children, those under its root first (``"Movies & TV: Thrillers, Crime Dramas"``), then
  its own c-TF-IDF words;
- a leaf, or a broad interest named by words: its c-TF-IDF words not already in its name
  (``"Movies & TV > Thrillers · halloween · police"``), then the names of its other close
  labels (for a broad interest, of its children's).

Qualifiers shared by every duplicate of a name are skipped (they tell none apart). Within
one set of duplicates every node gets the same number of qualifiers, the smallest that makes
them distinct (after a vocabulary name at least :data:`_MIN_AFTER_LABEL` of its first kind,
words or children, when it has them; 1 after words; at most :data:`_MAX_QUALIFIERS`); a name
still shown twice gets `` (2)``, `` (3)``... on all but the heaviest of its nodes. Qualifiers
come only from the node's own close labels, its children's close labels and the words of the
catalogue items nearest it, so a qualified name never adds an unrelated label. Nodes with a
unique name, and unnamed nodes (shown by their distinct ids), are left as they are.
Deterministic: ties break by node order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["distinct_labels", "shown_name"]

_Labels = tuple[tuple[str, float], ...]
#: (text before the first qualifier, text between qualifiers, least number of qualifiers).
_Style = tuple[str, str, int]

#: Qualifiers after a vocabulary name: one child or word alone rarely says what sets a node
#: apart ("Movies & TV: Drama Films" for a group of ten genres).
_MIN_AFTER_LABEL: Final[int] = 2
#: Beyond this many qualifiers a name stops being readable: an ordinal tells them apart.
_MAX_QUALIFIERS: Final[int] = 4


def shown_name(labels: _Labels) -> str | None:
    """The name a node shows: its best label's last `` > `` segment (``None``: unnamed)."""
    return labels[0][0].split(" > ")[-1] if labels else None


def _last(path: str) -> str:
    return path.split(" > ")[-1]


def _own(name: str, candidates: Sequence[str]) -> list[str]:
    """``candidates`` in order, without repeats and without those already in ``name``."""
    seen: set[str] = set()
    out: list[str] = []
    low = name.lower()
    for c in candidates:
        key = c.strip().lower()
        if key and key not in seen and key not in low:
            seen.add(key)
            out.append(c.strip())
    return out


def _by_name(labels: Sequence[_Labels]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        name = shown_name(lab)
        if name is not None:
            out[name].append(i)
    return out


def _named(name: str, own: Sequence[Sequence[str]], styles: Sequence[_Style], k: int) -> list[str]:
    """``name`` followed by each node's first ``k`` qualifiers (at least its least)."""
    out = []
    for o, (first, sep, least) in zip(own, styles, strict=True):
        q = o[: min(max(k, least), _MAX_QUALIFIERS)]
        out.append(name + first + sep.join(q) if q else name)
    return out


def _renamed(labels: _Labels, shown: str) -> _Labels:
    path, score = labels[0]
    head = path.rsplit(" > ", 1)[0] + " > " if " > " in path else ""
    return ((head + shown, score), *labels[1:])


def _qualify_level(
    labels: list[_Labels],
    candidates: Sequence[Sequence[str]],
    styles: Sequence[_Style],
    masses: npt.NDArray[np.float64],
) -> None:
    """Qualifies, in place, the best label of each node whose shown name is repeated, then
    numbers the names still repeated (all but the heaviest node)."""
    for name, dup in _by_name(labels).items():
        if len(dup) < 2:
            continue
        own = [_own(name, candidates[i]) for i in dup]
        shared = set.intersection(*(set(o) for o in own))
        own = [[c for c in o if c not in shared] for o in own]
        styled = [styles[i] for i in dup]
        top = min(max(len(o) for o in own), _MAX_QUALIFIERS)
        k = next(
            (k for k in range(1, top + 1) if len(set(_named(name, own, styled, k))) == len(dup)),
            max(top, 1),
        )
        for i, new in zip(dup, _named(name, own, styled, k), strict=True):
            labels[i] = _renamed(labels[i], new)
    groups = _by_name(labels)
    taken = set(groups)
    for name, dup in groups.items():
        n = 1
        for i in sorted(dup, key=lambda i: (-float(masses[i]), i))[1:]:
            n += 1
            while f"{name} ({n})" in taken:
                n += 1
            taken.add(f"{name} ({n})")
            labels[i] = _renamed(labels[i], f"{name} ({n})")


def _with_words(labels: _Labels, words: _Labels, separator: str) -> _Labels:
    if not words:
        return labels
    name = separator.join(w for w, _ in words)
    return (*labels, (name, round(sum(s for _, s in words), 6)))


def distinct_labels(
    leaf_close: Sequence[_Labels],
    leaf_words: Sequence[_Labels],
    group_close: Sequence[_Labels],
    group_words: Sequence[_Labels],
    groups: Sequence[Sequence[int]],
    leaf_masses: npt.ArrayLike,
    num_words: int,
    word_separator: str,
) -> tuple[tuple[_Labels, ...], tuple[_Labels, ...]]:
    """The labels of a two-level tree: close labels, then the first ``num_words`` words
    joined by ``word_separator`` as one name, with every repeated shown name qualified (see
    the module docstring).

    Args:
        leaf_close / group_close: each node's close vocabulary labels, best first.
        leaf_words / group_words: each node's c-TF-IDF words with their weights, best first
            (may run past ``num_words``: the rest only qualify).
        groups: each group's leaf indices.
        leaf_masses: shape ``(n_leaves,)``, >= 0 (a group weighs the sum of its leaves).
        num_words: words in a name.
        word_separator: joins words (``server.naming.WORD_SEPARATOR``).

    Returns:
        ``(leaf_labels, group_labels)`` (``server.naming.NodeLabels``), in input order.
    """
    k, sep = num_words, word_separator
    m = np.asarray(leaf_masses, dtype=np.float64)
    leaves = [_with_words(a, b[:k], sep) for a, b in zip(leaf_close, leaf_words, strict=True)]
    cand = [
        [w for w, _ in words] + [_last(p) for p, _ in close[1:]]
        for words, close in zip(leaf_words, leaf_close, strict=True)
    ]
    styles = [
        (sep, sep, min(_MIN_AFTER_LABEL, max(len(words), 1)) if close else 1)
        for close, words in zip(leaf_close, leaf_words, strict=True)
    ]
    _qualify_level(leaves, cand, styles, m)

    out = [_with_words(a, b[:k], sep) for a, b in zip(group_close, group_words, strict=True)]
    g_cand: list[list[str]] = []
    g_styles: list[_Style] = []
    for members, close, words in zip(groups, group_close, group_words, strict=True):
        root = close[0][0] if close else None
        kids = sorted((int(i) for i in members if leaf_close[int(i)]), key=lambda i: (-m[i], i))
        under = [i for i in kids if leaf_close[i][0][0].split(" > ")[0] == root]
        names = [_last(leaf_close[i][0][0]) for i in under + [i for i in kids if i not in under]]
        own_words = [w for w, _ in words]
        if root is not None:
            g_cand.append(names + own_words)
            g_styles.append((": ", ", ", min(_MIN_AFTER_LABEL, max(len(set(names)), 1))))
        else:
            g_cand.append(own_words + names)
            g_styles.append((sep, sep, 1))
    g_mass = np.asarray([float(m[np.asarray(g, dtype=np.int64)].sum()) for g in groups])
    _qualify_level(out, g_cand, g_styles, g_mass)
    return tuple(leaves), tuple(out)
