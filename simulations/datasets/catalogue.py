"""Public item catalogues with a category path: what the generator simulates users over
(``fedinterest data synth --catalogue FILE``, ``--dataset kuairec``).

A catalogue file is one of:

- **generic**: JSON Lines, CSV or TSV with the fields ``item_id``, ``text`` and ``category``
  (a path, levels joined by ``" > "``: ``"Food > Baking"``); a record without a text or a
  category is dropped and counted;
- **KuaiRec** (``kuairec_caption_category.csv``, Gao et al., CIKM 2022, CC BY-SA 4.0; read
  from ``../shared/data/kuairec-catalogue``, never copied here): recognised by its header.
  An item's text is its caption, else its manual cover text, else its topic tags; its
  category is ``first > second`` level (``first > 其他`` where the second level is
  ``UNKNOWN``: "other", a leaf of its own under its first level). Dropped and counted: items
  with none of the three texts (989 of 10,732), items whose first level is ``UNKNOWN``, and
  the rows a caption's unquoted line break splits (8 physical rows).

KuaiRec carries no interactions here: users over it are simulated by the same user model as
the synthetic dataset (:func:`simulations.datasets.synthetic.generate_table`), and results
on it say so.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from common.errors import ConfigError
from simulations.datasets.synthetic_text import SyntheticItem

__all__ = [
    "KUAIREC_OTHER",
    "Catalogue",
    "default_kuairec_file",
    "load_catalogue",
]

#: The second level given to KuaiRec items whose second level is ``UNKNOWN`` ("other").
KUAIREC_OTHER: Final[str] = "其他"
_KUAIREC_FILE = "kuairec_caption_category.csv"
_KUAIREC_FIELDS = frozenset({"caption", "manual_cover_text", "first_level_category_name"})
_UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Catalogue:
    """Items with a text and a category path.

    Attributes:
        name: where it came from (the file's name, or ``kuairec``).
        items: in file order; ``leaf`` is the category path, at least one level.
        dropped: records left out, by reason.
    """

    name: str
    items: list[SyntheticItem]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def leaves(self) -> list[str]:
        """The distinct category paths, in order of first appearance."""
        return list(dict.fromkeys(it.leaf for it in self.items))


def default_kuairec_file() -> Path:
    """``$FEDINTEREST_KUAIREC`` (the CSV file), else
    ``../shared/data/kuairec-catalogue/kuairec_caption_category.csv`` from the working
    directory or the source tree."""
    env = os.environ.get("FEDINTEREST_KUAIREC")
    if env:
        return Path(env)
    rel = Path("shared") / "data" / "kuairec-catalogue" / _KUAIREC_FILE
    for base in (Path.cwd().parent, Path(__file__).resolve().parents[3]):
        if (base / rel).is_file():
            return base / rel
    return Path.cwd().parent / rel


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Reads a catalogue file (``None``: KuaiRec's, :func:`default_kuairec_file`).

    Raises:
        ConfigError: the file is missing, unreadable, of an unknown layout, or holds no item
            with a text and a category (the message names the file and the field).
    """
    p = Path(path) if path is not None else default_kuairec_file()
    if not p.is_file():
        raise ConfigError(f"`catalogue` must be a catalogue file. Found {str(p)!r} (no such file).")
    try:
        if p.suffix.lower() == ".jsonl":
            items, dropped = _generic(_jsonl_rows(p), p)
            name = p.name
        else:
            with open(p, encoding="utf-8", newline="") as f:
                delim = "\t" if p.suffix.lower() == ".tsv" else ","
                reader = csv.DictReader(f, delimiter=delim)
                header = set(reader.fieldnames or ())
                if header >= _KUAIREC_FIELDS:
                    items, dropped = _kuairec(reader)
                    name = "kuairec"
                else:
                    items, dropped = _generic(reader, p)
                    name = p.name
    except UnicodeDecodeError as err:
        raise ConfigError(f"catalogue {str(p)!r} is not UTF-8 text: {err}.") from None
    except csv.Error as err:
        raise ConfigError(f"catalogue {str(p)!r} is not valid CSV: {err}.") from None
    if not items:
        raise ConfigError(
            f"catalogue {str(p)!r} holds no item with a text and a category "
            f"(dropped: {dict(dropped) or 'none'})."
        )
    return Catalogue(name, items, dict(dropped))


def _jsonl_rows(p: Path) -> Iterator[dict[str, object]]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ConfigError(f"catalogue {str(p)!r} line {n}: not JSON ({err}).") from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"catalogue {str(p)!r} line {n}: must be an object. Found {type(row).__name__}."
                )
            yield row


def _generic(
    rows: Iterator[dict[str, object]] | csv.DictReader[str], p: Path
) -> tuple[list[SyntheticItem], Counter[str]]:
    items: list[SyntheticItem] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        missing = [k for k in ("item_id", "text", "category") if k not in row]
        if missing:
            raise ConfigError(
                f"catalogue {str(p)!r} record {n}: needs the fields item_id, text and category. "
                f"Missing {missing}."
            )
        item_id = str(row["item_id"] or "").strip()
        text = str(row["text"] or "").strip()
        path = " > ".join(s.strip() for s in str(row["category"] or "").split(">") if s.strip())
        if not item_id:
            dropped["no item_id"] += 1
        elif item_id in seen:
            dropped["duplicate item_id"] += 1
        elif not text:
            dropped["no text"] += 1
        elif not path:
            dropped["no category"] += 1
        else:
            seen.add(item_id)
            items.append(SyntheticItem(item_id, path, text))
    return items, dropped


def _kuairec(reader: csv.DictReader[str]) -> tuple[list[SyntheticItem], Counter[str]]:
    items: list[SyntheticItem] = []
    dropped: Counter[str] = Counter()
    for row in reader:
        # A caption with an unquoted line break splits one record into two short rows: the
        # first lacks the last columns, the second has a non-numeric id. Both are dropped.
        vid = row.get("video_id") or ""
        if not vid.isdigit() or row.get("third_level_category_name") is None:
            dropped["broken row (a caption's line break)"] += 1
            continue
        text = ""
        for key in ("caption", "manual_cover_text"):
            t = (row.get(key) or "").strip()
            if t and t != _UNKNOWN:
                text = t
                break
        if not text:
            tags = (row.get("topic_tag") or "").strip().strip("[]")
            text = " ".join(t.strip() for t in tags.split(",") if t.strip())
        first = (row.get("first_level_category_name") or "").strip()
        second = (row.get("second_level_category_name") or "").strip()
        if not text:
            dropped["no caption, cover text or topic tag"] += 1
        elif not first or first == _UNKNOWN:
            dropped["first level UNKNOWN"] += 1
        else:
            leaf = f"{first} > {second if second and second != _UNKNOWN else KUAIREC_OTHER}"
            items.append(SyntheticItem(f"kr{vid}", leaf, text))
    return items, dropped
