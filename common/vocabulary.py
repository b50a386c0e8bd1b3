"""Public label vocabularies: names for the interest tree's nodes, and cold-start seeds.

The project ships its own small two-level vocabulary (:data:`DEFAULT_VOCABULARY`: 24 roots,
160 leaves). It is public: devices and server may embed it freely, so it can seed the first
round's leaf centroids and name the learned nodes. A user can pass another label space as a
TSV (:func:`load_taxonomy_tsv`), e.g. the Topics API v2 or IAB Content 3.1 taxonomies.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError

__all__ = [
    "DEFAULT_VOCABULARY",
    "Label",
    "LabelSpace",
    "Vocabulary",
    "default_vocabulary",
    "load_taxonomy_tsv",
]

_DEFAULT: Final[dict[str, tuple[str, ...]]] = {
    "Sports": ("Soccer", "Basketball", "Tennis", "Running", "Cycling", "Swimming", "Golf", "Skiing"),
    "Technology": (
        "Smartphones", "Laptops", "Programming", "Artificial Intelligence", "Cybersecurity",
        "Smart Home", "Consumer Audio",
    ),
    "Food & Drink": (
        "Baking", "Vegan Cooking", "Coffee", "Wine", "Grilling & BBQ", "Asian Cuisine",
        "Craft Beer", "Italian Cuisine",
    ),
    "Travel": (
        "Beach Holidays", "Backpacking", "City Breaks", "Cruises", "Road Trips", "Luxury Hotels",
        "Air Travel",
    ),
    "Personal Finance": (
        "Stock Market Investing", "Cryptocurrency", "Retirement Planning", "Budgeting",
        "Credit & Loans", "Taxes", "Insurance",
    ),
    "Health & Fitness": (
        "Yoga", "Strength Training", "Nutrition & Dieting", "Mental Health", "Sleep",
        "Diabetes Care", "Dental Care",
    ),
    "Music": (
        "Rock Music", "Hip Hop", "Classical Music", "Jazz", "Electronic Music", "Country Music",
        "Guitar Playing", "Concerts & Festivals", "Pop Music", "Heavy Metal",
    ),
    "Movies & TV": (
        "Science Fiction Films", "Horror Films", "Animated Films", "Documentaries", "Crime Dramas",
        "Romantic Comedies", "Reality TV", "Anime", "Action Films", "Comedy Films", "Drama Films",
        "Thrillers", "War Films", "Westerns", "Musicals", "Fantasy Films",
    ),
    "Books & Literature": (
        "Mystery Novels", "Fantasy Novels", "Poetry", "Biographies", "Self-Help Books",
        "Comics & Graphic Novels", "Historical Fiction", "Children's Books",
    ),
    "Home & Garden": (
        "Gardening", "Houseplants", "Interior Design", "DIY Home Improvement",
        "Kitchen Appliances", "Furniture", "Cleaning & Organizing",
    ),
    "Fashion & Beauty": (
        "Sneakers", "Skincare", "Makeup", "Women's Fashion", "Men's Fashion", "Watches", "Jewelry",
        "Hair Care",
    ),
    "Automotive": (
        "Electric Vehicles", "Motorcycles", "Car Maintenance", "Classic Cars",
        "Pickup Trucks & SUVs", "Motorsport",
    ),
    "Pets & Animals": ("Dogs", "Cats", "Aquariums", "Birds", "Horses", "Reptiles"),
    "Science": (
        "Astronomy & Space", "Physics", "Biology & Genetics", "Climate & Environment", "Chemistry",
        "Archaeology",
    ),
    "Parenting & Family": ("Pregnancy", "Baby Care", "Toddlers", "Teenagers", "Family Activities"),
    "Games": ("Video Games", "Board Games", "Chess", "Esports", "Puzzles", "Tabletop RPG"),
    "Arts & Crafts": (
        "Painting", "Knitting", "Photography", "Woodworking", "Pottery", "Drawing & Illustration",
        "Sewing",
    ),
    "Careers & Education": (
        "Job Search", "Online Courses", "Language Learning", "Entrepreneurship", "Remote Work",
        "College Admissions",
    ),
    "News & Politics": (
        "Elections", "International Relations", "Economy & Markets", "Law & Justice", "Immigration",
    ),
    "Outdoors": ("Hiking", "Fishing", "Camping", "Climbing", "Hunting", "Water Sports"),
    "Real Estate": ("Home Buying", "Renting", "Property Investment", "Mortgages"),
    "Religion & Spirituality": ("Christianity", "Buddhism", "Islam", "Astrology"),
    "Weddings": ("Wedding Planning", "Bridal Fashion", "Honeymoons"),
    "Shopping": ("Deals & Coupons", "Online Marketplaces", "Luxury Goods"),
}  # fmt: skip

#: Root -> its leaves: the project's own label vocabulary.
DEFAULT_VOCABULARY: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(_DEFAULT)


@dataclass(frozen=True)
class Label:
    """One vocabulary entry.

    Attributes:
        path: names from the root down, e.g. ``("Sports", "Soccer")``.
    """

    path: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def root(self) -> str:
        return self.path[0]

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def full(self) -> str:
        """``"Sports > Soccer"``."""
        return " > ".join(self.path)

    @property
    def text(self) -> str:
        """What is embedded: the name, with its parent for context (``"Soccer (Sports)"``)."""
        if len(self.path) == 1:
            return self.path[0]
        return f"{self.path[-1]} ({self.path[-2]})"


@dataclass(frozen=True)
class Vocabulary:
    """A label space: roots (depth 1) and everything below them."""

    labels: tuple[Label, ...]
    name: str = "fedinterest-default"

    def __post_init__(self) -> None:
        if not self.labels:
            raise ConfigError("a vocabulary needs at least one label.")
        if not any(lab.depth == 1 for lab in self.labels):
            raise ConfigError("a vocabulary needs at least one root (depth-1) label.")

    @property
    def roots(self) -> tuple[Label, ...]:
        return tuple(lab for lab in self.labels if lab.depth == 1)

    @property
    def leaves(self) -> tuple[Label, ...]:
        """Labels with no children (the fine interests)."""
        parents = {lab.path[:-1] for lab in self.labels if lab.depth > 1}
        return tuple(lab for lab in self.labels if lab.path not in parents and lab.depth > 1)

    @classmethod
    def from_paths(cls, paths: Iterable[Iterable[str]], *, name: str = "custom") -> Vocabulary:
        """Builds a vocabulary from label paths; missing ancestors are added."""
        seen: dict[tuple[str, ...], None] = {}
        for p in paths:
            path = tuple(s.strip() for s in p if s and s.strip())
            for i in range(1, len(path) + 1):
                seen.setdefault(path[:i], None)
        return cls(tuple(Label(p) for p in seen), name=name)


def default_vocabulary() -> Vocabulary:
    """The project's own vocabulary (:data:`DEFAULT_VOCABULARY`)."""
    return Vocabulary.from_paths(
        ([root, leaf] for root, leaves in DEFAULT_VOCABULARY.items() for leaf in leaves),
        name="fedinterest-default",
    )


#: a label space is a few thousand lines; anything far larger is the wrong file
MAX_TAXONOMY_BYTES: Final[int] = 16 << 20


def load_taxonomy_tsv(path: str | Path) -> Vocabulary:
    """Loads a label space from a TSV.

    Understood layouts:
        - a ``path`` column with ``/``-separated names (Topics API v2: ``topic_id, name,
          parent_id, depth, path``);
        - ``Tier 1`` ... ``Tier N`` columns (IAB Content Taxonomy 3.x; its first line is a
          banner and the header is on the second line);
        - a ``category`` column with ``>``-separated names.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"taxonomy {str(p)!r} is a directory; give a .tsv file.")
    if not p.is_file():
        raise ConfigError(f"taxonomy file {str(p)!r} does not exist.")
    if p.stat().st_size > MAX_TAXONOMY_BYTES:
        raise ConfigError(
            f"taxonomy {str(p)!r} is {p.stat().st_size} bytes; the limit is {MAX_TAXONOMY_BYTES}."
        )
    try:
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"taxonomy {str(p)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
            "give a tab-separated label file."
        ) from err
    except csv.Error as err:
        raise ConfigError(f"taxonomy {str(p)!r} is not a readable TSV: {err}.") from err
    header_idx = next(
        (
            i
            for i, row in enumerate(rows[:3])
            if "path" in row or "Tier 1" in row or "category" in row
        ),
        None,
    )
    if header_idx is None:
        raise ConfigError(
            f"taxonomy {str(p)!r} needs a 'path', 'Tier 1' or 'category' column in its header."
        )
    header = rows[header_idx]
    body = rows[header_idx + 1 :]
    paths: list[list[str]] = []
    if "path" in header:
        j = header.index("path")
        paths = [[s for s in row[j].split("/") if s] for row in body if len(row) > j]
    elif "Tier 1" in header:
        tiers = [header.index(h) for h in header if h.startswith("Tier ")]
        paths = [[row[j] for j in tiers if j < len(row) and row[j].strip()] for row in body]
    else:
        j = header.index("category")
        paths = [[s for s in row[j].split(">")] for row in body if len(row) > j]
    try:
        return Vocabulary.from_paths([q for q in paths if q], name=p.stem)
    except ConfigError as err:
        raise ConfigError(f"taxonomy {str(p)!r}: {err}") from err


@dataclass(frozen=True)
class LabelSpace:
    """A vocabulary embedded in the public projected space (public data).

    Attributes:
        vocabulary: the labels.
        vectors: unit vectors, shape ``(len(vocabulary.labels), dim)``, in label order.
        encoder_id: the encoder that embedded them (``TextEncoder.model_id``).
        encoder_dim: that encoder's output dimension (the projection's input).
        projection_fingerprint: of the projection applied.
        raw_vectors: the encoder's vectors before the projection, shape ``(n, encoder_dim)``
            (the adapter's public negatives; re-projected when the adapter changes).
    """

    vocabulary: Vocabulary
    vectors: npt.NDArray[np.float32]
    encoder_id: str = ""
    encoder_dim: int = 384
    projection_fingerprint: str = ""
    raw_vectors: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        v = self.vectors
        if v.ndim != 2 or v.shape[0] != len(self.vocabulary.labels) or not np.isfinite(v).all():
            raise ConfigError(
                f"label vectors must be finite with shape ({len(self.vocabulary.labels)}, dim). Found {v.shape}."
            )
        r = self.raw_vectors
        if r is not None and (
            r.shape != (v.shape[0], self.encoder_dim) or not np.isfinite(r).all()
        ):
            raise ConfigError(
                f"raw label vectors must be finite with shape ({v.shape[0]}, {self.encoder_dim}). Found {r.shape}."
            )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def subset(self, labels: Sequence[Label]) -> tuple[list[Label], npt.NDArray[np.float32]]:
        index = {lab.path: i for i, lab in enumerate(self.vocabulary.labels)}
        rows = [index[lab.path] for lab in labels]
        return list(labels), self.vectors[rows]

    def save(self, path: str | Path) -> None:
        """Writes ``.npz``: label paths (joined with " > "), vectors and provenance."""
        np.savez_compressed(
            path,
            paths=np.asarray([lab.full for lab in self.vocabulary.labels]),
            vectors=self.vectors,
            name=np.asarray(self.vocabulary.name),
            encoder_id=np.asarray(self.encoder_id),
            encoder_dim=np.asarray(self.encoder_dim),
            projection_fingerprint=np.asarray(self.projection_fingerprint),
            raw_vectors=self.raw_vectors
            if self.raw_vectors is not None
            else np.zeros((0, 0), np.float32),
        )

    @classmethod
    def load(cls, path: str | Path) -> LabelSpace:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"label file {str(p)!r} does not exist.")
        try:
            with np.load(p, allow_pickle=False) as z:
                paths = [str(s).split(" > ") for s in z["paths"]]
                vectors = np.asarray(z["vectors"], dtype=np.float32)
                name = str(z["name"])
                encoder_id = str(z["encoder_id"])
                encoder_dim = int(z["encoder_dim"])
                fingerprint = str(z["projection_fingerprint"])
                raw = (
                    np.asarray(z["raw_vectors"], dtype=np.float32)
                    if "raw_vectors" in z.files
                    else None
                )
        except (KeyError, ValueError, OSError) as err:
            raise ConfigError(f"{str(p)!r} is not a label file: {err}.") from None
        vocab = Vocabulary(tuple(Label(tuple(pth)) for pth in paths), name=name)
        if raw is not None and raw.size == 0:
            raw = None
        return cls(vocab, vectors, encoder_id, encoder_dim, fingerprint, raw)

    def with_vectors(self, vectors: npt.NDArray[np.float32]) -> LabelSpace:
        """The same labels with other projected vectors (after an adapter update)."""
        return LabelSpace(
            self.vocabulary,
            vectors,
            self.encoder_id,
            self.encoder_dim,
            self.projection_fingerprint,
            self.raw_vectors,
        )
