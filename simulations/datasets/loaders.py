"""Loaders that turn public datasets and generic files into validated :class:`Event` s.

- generic JSON Lines / CSV of :class:`Event` fields (:func:`load_events`);
- MovieLens (``ratings.csv``, ``movies.csv``, ``tags.csv``): one ``rate`` event per rating,
  text = title + genres + that user's tags for that movie (:func:`load_movielens`); its
  genres, for evaluation only, by movie id (:func:`movielens_genres`);
- MIND (``news.tsv``, ``behaviors.tsv``): history clicks, impression clicks and impression
  views, text = title + abstract, category = ``category > subcategory`` (:func:`load_mind`).

Every record goes through :func:`common.events.parse_event`; bad records are counted in the
returned :class:`IngestReport`, never silently dropped.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.errors import ConfigError, InvalidEventError
from common.events import (
    CleaningConfig,
    Event,
    IngestReport,
    RawItem,
    Rejection,
    parse_event,
    read_csv,
    read_jsonl,
)

__all__ = [
    "default_movielens_dir",
    "load_events",
    "load_mind",
    "load_movielens",
    "mind_items",
    "movielens_genres",
    "movielens_items",
    "partition_by_user",
    "validate_records",
]


def default_movielens_dir() -> Path:
    """``$FEDINTEREST_MOVIELENS``, else ``../shared/data/movielens-small`` from the working
    directory, else from the source tree (the project's layout in development and CI)."""
    env = os.environ.get("FEDINTEREST_MOVIELENS")
    if env:
        return Path(env)
    rel = Path("shared") / "data" / "movielens-small"
    for base in (Path.cwd().parent, Path(__file__).resolve().parents[3]):
        if (base / rel / "ratings.csv").is_file():
            return base / rel
    return Path.cwd().parent / rel


def validate_records(
    items: Iterable[RawItem],
    *,
    config: CleaningConfig | None = None,
    now: float | None = None,
    report: IngestReport | None = None,
) -> Iterator[Event]:
    """Yields the valid events of ``(line, record)`` pairs, counting the rest in ``report``."""
    rep = report if report is not None else IngestReport()
    for line, record in items:
        rep.read += 1
        try:
            if isinstance(record, InvalidEventError):
                raise record
            raw = record.to_dict() if isinstance(record, Event) else record
            event = parse_event(raw, config=config, now=now, fixes=rep.fixes)
        except InvalidEventError as err:
            rep.reject(
                Rejection(line if line is not None else err.line, err.reason, err.field, err.detail)
            )
            continue
        rep.accepted += 1
        yield event


def load_events(
    path: str | Path, *, fmt: str | None = None, config: CleaningConfig | None = None
) -> tuple[list[Event], IngestReport]:
    """Loads a JSON Lines or CSV file of events (format from the extension unless ``fmt``).

    Exact duplicates (same ``event_id``) are counted as duplicates and kept once.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"events file {str(p)!r} does not exist.")
    kind = fmt or _format_of(p)
    readers = {
        "jsonl": lambda: read_jsonl(p),
        "csv": lambda: read_csv(p),
        "tsv": lambda: read_csv(p, delimiter="\t"),
    }
    if kind not in readers:
        raise ConfigError(f"`format` must be one of {sorted(readers)}. Found {kind!r}.")
    report = IngestReport()
    seen: set[str] = set()
    out: list[Event] = []
    for e in validate_records(readers[kind](), config=config, report=report):
        if e.event_id in seen:
            report.accepted -= 1
            report.duplicates += 1
            continue
        seen.add(e.event_id)
        out.append(e)
    return out, report


def _format_of(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    raise ConfigError(
        f"cannot tell the format of {str(p)!r} from its extension; expected .jsonl, .ndjson, .csv or .tsv."
    )


_NO_GENRES = "(no genres listed)"


def _movies(d: Path) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """``(movie id, title, genres)`` of each row of ``movies.csv``; genres in file order,
    without MovieLens' ``(no genres listed)`` placeholder or repeats."""
    with open(d / "movies.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            parts = (g.strip() for g in (row["genres"] or "").split("|"))
            genres = tuple(dict.fromkeys(g for g in parts if g and g != _NO_GENRES))
            yield row["movieId"], row["title"].strip(), genres


def _movie_texts(d: Path) -> dict[str, str]:
    movies: dict[str, str] = {}
    for movie_id, title, genres in _movies(d):
        movies[movie_id] = title + (". Genres: " + ", ".join(genres) if genres else "")
    return movies


def _movies_dir(directory: str | Path | None) -> Path:
    d = Path(directory) if directory is not None else default_movielens_dir()
    if not (d / "movies.csv").is_file():
        raise ConfigError(f"MovieLens directory {str(d)!r} has no movies.csv.")
    return d


def movielens_items(directory: str | Path | None = None) -> dict[str, str]:
    """The public catalogue of MovieLens: movie id -> title and genres (no user tags)."""
    return _movie_texts(_movies_dir(directory))


def movielens_genres(directory: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """MovieLens genres, for evaluation only: movie id -> its genres from ``movies.csv``
    (flat and multi-label; an empty tuple for a movie listed with no genres). Events match
    it through their ``item_id``, the ``movieId`` :func:`load_movielens` gives them."""
    return {movie_id: genres for movie_id, _, genres in _movies(_movies_dir(directory))}


def mind_items(directory: str | Path) -> dict[str, str]:
    """The public catalogue of MIND: news id -> title + abstract."""
    d = Path(directory)
    if not (d / "news.tsv").is_file():
        raise ConfigError(f"MIND directory {str(d)!r} has no news.tsv.")
    return {nid: text for nid, (text, _) in _news(d).items()}


def _news(d: Path) -> dict[str, tuple[str, str]]:
    news: dict[str, tuple[str, str]] = {}
    with open(d / "news.tsv", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 4:
                continue
            nid, cat, sub, title = cols[0], cols[1], cols[2], cols[3]
            abstract = cols[4] if len(cols) > 4 else ""
            text = title if not abstract else f"{title}. {abstract}"
            news[nid] = (text, f"{cat} > {sub}" if sub else cat)
    return news


def load_movielens(directory: str | Path | None = None) -> tuple[list[Event], IngestReport]:
    """MovieLens (``ml-latest-small`` layout) as ``rate`` events.

    Text is ``"<title>. Genres: <g1>, <g2>. Tags: <that user's tags for the movie>"``; value
    is the rating; ``category`` is left empty (MovieLens genres are flat and multi-label, so
    there is no hierarchical ground truth).
    """
    d = Path(directory) if directory is not None else default_movielens_dir()
    for name in ("ratings.csv", "movies.csv"):
        if not (d / name).is_file():
            raise ConfigError(f"MovieLens directory {str(d)!r} has no {name}.")
    movies = _movie_texts(d)
    tags: dict[tuple[str, str], list[str]] = defaultdict(list)
    if (d / "tags.csv").is_file():
        with open(d / "tags.csv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                tag = row["tag"].strip()
                key = (row["userId"], row["movieId"])
                if tag and tag not in tags[key]:
                    tags[key].append(tag)

    def records() -> Iterator[tuple[int | None, Mapping[str, Any] | InvalidEventError]]:
        with open(d / "ratings.csv", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                u, m = row["userId"], row["movieId"]
                text = movies.get(m)
                if text is None:
                    yield (
                        reader.line_num,
                        InvalidEventError(
                            f"`item_id` {m!r} is not in movies.csv.",
                            field="item_id",
                            value=m,
                            reason="unknown_item",
                        ),
                    )
                    continue
                t = tags.get((u, m))
                if t:
                    text += ". Tags: " + ", ".join(t)
                yield (
                    reader.line_num,
                    {
                        "event_id": f"ml-u{u}-m{m}",
                        "user_id": u,
                        "timestamp": row["timestamp"],
                        "event_type": "rate",
                        "item_id": m,
                        "text": text,
                        "value": row["rating"],
                    },
                )

    report = IngestReport()
    events = list(validate_records(records(), report=report))
    return events, report


def load_mind(
    directory: str | Path, *, include_impressions: bool = True
) -> tuple[list[Event], IngestReport]:
    """MIND (Microsoft News Dataset) from a directory with ``news.tsv`` and ``behaviors.tsv``.

    - each user's click history becomes ``click`` events (once per user; MIND gives no times
      for history, so they are placed one minute apart ending one minute before the user's
      first impression);
    - in each impression, shown articles are ``view`` events (impressions; omitted when
      ``include_impressions`` is False) and clicked ones also ``click`` events;
    - text = title + abstract; category = ``category > subcategory``.
    """
    d = Path(directory)
    for name in ("news.tsv", "behaviors.tsv"):
        if not (d / name).is_file():
            raise ConfigError(f"MIND directory {str(d)!r} has no {name}.")
    news = _news(d)

    def rec(
        uid: str, nid: str, ts: float, etype: str, key: str
    ) -> Mapping[str, Any] | InvalidEventError:
        item = news.get(nid)
        if item is None:
            return InvalidEventError(
                f"`item_id` {nid!r} is not in news.tsv.",
                field="item_id",
                value=nid,
                reason="unknown_item",
            )
        return {
            "event_id": key,
            "user_id": uid,
            "timestamp": ts,
            "event_type": etype,
            "item_id": nid,
            "text": item[0],
            "category": item[1],
        }

    def records() -> Iterator[tuple[int | None, Mapping[str, Any] | InvalidEventError]]:
        seen_history: set[str] = set()
        with open(d / "behaviors.tsv", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                cols = line.rstrip("\n").split("\t")
                if len(cols) < 5:
                    yield (
                        line_no,
                        InvalidEventError(
                            f"behaviors.tsv needs 5 columns. Found {len(cols)}.", reason="bad_tsv"
                        ),
                    )
                    continue
                imp_id, uid, time_s, history, impressions = cols[:5]
                try:
                    ts = (
                        datetime.strptime(time_s, "%m/%d/%Y %I:%M:%S %p")
                        .replace(tzinfo=timezone.utc)
                        .timestamp()
                    )
                except ValueError:
                    yield (
                        line_no,
                        InvalidEventError(
                            f"`timestamp` must look like '11/15/2019 8:55:22 AM'. Found {time_s!r}.",
                            field="timestamp",
                            value=time_s,
                            reason="bad_timestamp",
                        ),
                    )
                    continue
                if uid not in seen_history:
                    seen_history.add(uid)
                    hist = history.split()
                    for k, nid in enumerate(hist):
                        t = ts - 60.0 * (len(hist) - k)
                        yield line_no, rec(uid, nid, t, "click", f"mind-{uid}-h{k}")
                for tok in impressions.split():
                    nid, _, label = tok.partition("-")
                    if include_impressions:
                        yield line_no, rec(uid, nid, ts, "view", f"mind-{imp_id}-{nid}-v")
                    if label == "1":
                        yield line_no, rec(uid, nid, ts, "click", f"mind-{imp_id}-{nid}-c")

    report = IngestReport()
    events = list(validate_records(records(), report=report))
    return events, report


def partition_by_user(
    events: Iterable[Event], *, max_events_per_client: int | None = None
) -> dict[str, list[Event]]:
    """One client per user (the natural partition), events in time order; with a cap, each
    client keeps its most recent ``max_events_per_client`` events."""
    if max_events_per_client is not None and max_events_per_client < 1:
        raise ConfigError(f"`max_events_per_client` must be >= 1. Found {max_events_per_client!r}.")
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.user_id].append(e)
    for uid, evs in out.items():
        evs.sort(key=lambda e: (e.timestamp, e.event_id))
        if max_events_per_client is not None and len(evs) > max_events_per_client:
            out[uid] = evs[-max_events_per_client:]
    return dict(sorted(out.items()))
