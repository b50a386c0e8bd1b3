"""The synthetic dataset's texts: catalogue items (public) and the search queries and reviews
users write (private), composed from templates, word lists and the terms of
:mod:`simulations.datasets.taxonomy`; every draw comes from the caller's seeded generator.

:mod:`simulations.datasets.synthetic` builds a dataset's catalogue with :func:`make_catalogue`
and its per-leaf private-text pools with :func:`search_pool` and :func:`review_pool`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from simulations.datasets.taxonomy import LEAF_TERMS, ROOT_TERMS

__all__ = [
    "SyntheticItem",
    "make_catalogue",
    "review_pool",
    "root_of",
    "search_pool",
]

_ARTICLE = (
    "{n} things nobody tells you about {a}",
    "Why {a} is changing how people think about {b}",
    "A beginner's guide to {a} and {b}",
    "The surprising history of {a}",
    "{A} vs {b}: which one is right for you?",
    "Everything you need to know about {a} this year",
    "How I got into {a}, and what I would do differently",
    "Expert tips for getting more out of {a}",
    "Inside the world of {a}: {b} and beyond",
    "Is {a} worth it? An honest look at {b}",
    "The complete checklist for {a}",
    "{n} common mistakes with {a} and how to avoid them",
    "What {aud} should know before trying {a}",
    "{A}: the trends to watch, from {b} to {c}",
)
_PRODUCT = (
    "{brand} {a}, {adj} edition",
    "{Adj} {a} bundle with {b}",
    "{brand} {a}: {adj} and made for {b}",
    "{A} starter kit by {brand}",
    "Set of {n}: {adj} {a}",
    "{brand} {adj} {a} for {aud}",
)
_MEDIA = (
    "Watch: {a} explained in {n} minutes",
    "Live stream: {a} and {b}, questions answered",
    "Podcast episode {n}: talking {a} with an expert",
    "{A} tutorial for {aud}",
    "Video review: {a} tested against {b}",
)
_DESCRIPTION = (
    "A {r} favourite: covers {b}, {c} and more.",
    "Perfect for anyone into {r}, especially {b} or {c}.",
    "Includes notes on {b} and {c}, for people who love {r}.",
    "From {c} to {b}: a closer look at {r} and {r2}.",
    "With a section on {c}.",
    "All about {r} and {r2}, with tips on {b}.",
    "Covers {b}, {c} and more.",
    "",
)
_SEARCH = (
    "{a}",
    "best {a}",
    "{a} near me",
    "cheap {a}",
    "{a} for {aud}",
    "how to get started with {a}",
    "{a} vs {b}",
    "{a} reviews",
    "is {a} worth it",
    "{a} {b} tips",
    "where to buy {a}",
    "{a} recommendations {aud}",
    "what is {a}",
    "{a} {r} news",
    "{r} {a} ideas",
)
_REVIEW = (
    "Loved it! The {a} is {adj2} and {opinion}.",
    "The {a} was {adj2}, but the part about {b} could be better.",
    "Bought this for my {rel}, who is really into {a}. {Opinion}.",
    "Five stars: great on {a}, and {b} is covered well too.",
    "Disappointed. I expected more on {a}; {b} felt rushed.",
    "Honest review: {a} is {adj2} here and {b} is {adj3}.",
    "Second time I picked something about {a}. {Opinion}.",
    "If you care about {a} or {b}, get this. {Opinion}.",
)
_ADJ = (
    "lightweight", "premium", "compact", "professional", "classic", "ultimate",
    "beginner-friendly", "durable", "eco-friendly", "limited", "deluxe", "everyday",
    "travel-size", "heavy-duty", "essential", "advanced",
)  # fmt: skip
_ADJ2 = (
    "excellent", "solid", "fantastic", "decent", "mediocre", "well made", "surprisingly good",
    "overpriced", "brilliant", "useful",
)  # fmt: skip
_OPINION = (
    "would recommend it to a friend", "worth every penny", "arrived quickly", "exactly as described",
    "I use it every week", "not sure I would buy it again", "my whole family enjoys it",
    "it exceeded my expectations",
)  # fmt: skip
_BRAND = (
    "Northpeak", "Altura", "Veloce", "Brightwell", "Kestrel", "Lumio", "Oakridge", "Solace",
    "Trident", "Zenova", "Harbor & Finch", "Maple Lane", "Corvid", "Pinecrest",
)  # fmt: skip
_AUD = (
    "beginners", "families", "busy professionals", "students", "experts", "kids", "seniors",
    "weekend enthusiasts", "first-timers",
)  # fmt: skip
_REL = ("partner", "dad", "mum", "sister", "brother", "best friend", "son", "daughter")


@dataclass(frozen=True)
class SyntheticItem:
    """A catalogue item: public text, one leaf."""

    item_id: str
    leaf: str
    text: str


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng: np.random.Generator, words: tuple[str, ...], k: int) -> list[str]:
    """``k`` distinct entries of ``words``, uniformly (one draw for all ``k``: generating
    texts makes ~30,000 such picks)."""
    left = list(words)
    return [left.pop(int(u * len(left))) for u in rng.random(k).tolist()]


# Sizes of the word lists `_fill` draws one entry of, in the order it unpacks them.
_FILL_HIGHS: Final[npt.NDArray[np.float64]] = np.array(
    [10, *map(len, (_ADJ, _ADJ, _ADJ2, _ADJ2, _OPINION, _OPINION, _BRAND, _AUD, _REL))],
    dtype=np.float64,
)


def _fill(template: str, rng: np.random.Generator, root: tuple[str, ...], picks: list[str]) -> str:
    """``template`` with its slots filled: ``a, b, c`` from ``picks`` (three of a leaf's terms),
    ``r, r2`` two distinct words of the leaf's root, the others from the word lists."""
    a, b, c = picks
    r, r2 = _pick(rng, root, 2)
    slots = (rng.random(len(_FILL_HIGHS)) * _FILL_HIGHS).astype(np.int64).tolist()
    n, adj, adj_cap, adj2, adj3, op, op_cap, brand, aud, rel = slots
    values = {
        "r": r,
        "r2": r2,
        "a": a,
        "b": b,
        "c": c,
        "A": _cap(a),
        "n": str(n + 3),
        "adj": _ADJ[adj],
        "Adj": _cap(_ADJ[adj_cap]),
        "adj2": _ADJ2[adj2],
        "adj3": _ADJ2[adj3],
        "opinion": _OPINION[op],
        "Opinion": _cap(_OPINION[op_cap]),
        "brand": _BRAND[brand],
        "aud": _AUD[aud],
        "rel": _REL[rel],
    }
    return template.format(**values)


def root_of(leaf: str) -> str:
    """The root of a leaf path (``"Sports > Soccer"`` -> ``"Sports"``)."""
    return leaf.split(" > ")[0]


def make_catalogue(rng: np.random.Generator, items_per_leaf: int) -> list[SyntheticItem]:
    """The catalogue: ``items_per_leaf`` items per leaf, leaf by leaf (an article, product or
    media title with a description), ids ``it00001``, ``it00002``... in that order."""
    kinds = (_ARTICLE, _PRODUCT, _MEDIA)
    kind_cdf = np.cumsum([0.45, 0.35, 0.20])
    out: list[SyntheticItem] = []
    for leaf, terms in LEAF_TERMS.items():
        root = ROOT_TERMS[root_of(leaf)]
        draws = np.searchsorted(kind_cdf, rng.random(items_per_leaf) * kind_cdf[-1], "right")
        for kind in np.minimum(draws, len(kinds) - 1).tolist():
            templates = kinds[kind]
            picks = _pick(rng, terms, 3)
            title = _fill(templates[int(rng.integers(len(templates)))], rng, root, picks)
            desc = _fill(_DESCRIPTION[int(rng.integers(len(_DESCRIPTION)))], rng, root, picks)
            sep = " " if title.endswith(("?", "!", ".")) else ". "
            out.append(SyntheticItem(f"it{len(out) + 1:05d}", leaf, f"{title}{sep}{desc}".strip()))
    return out


def _pool(rng: np.random.Generator, templates: tuple[str, ...], leaf: str, size: int) -> list[str]:
    """``size`` texts of ``leaf`` from ``templates``; short templates can repeat a text, which
    then comes up more often (a popular query)."""
    terms = LEAF_TERMS[leaf]
    root = ROOT_TERMS[root_of(leaf)]
    return [
        _fill(templates[t], rng, root, _pick(rng, terms, 3))
        for t in rng.integers(len(templates), size=size).tolist()
    ]


def search_pool(rng: np.random.Generator, leaf: str, size: int) -> list[str]:
    """``size`` search queries about ``leaf`` (private text: no catalogue item holds them)."""
    return _pool(rng, _SEARCH, leaf, size)


def review_pool(rng: np.random.Generator, leaf: str, size: int) -> list[str]:
    """``size`` reviews about ``leaf``, praise and complaints mixed (private text)."""
    return _pool(rng, _REVIEW, leaf, size)
