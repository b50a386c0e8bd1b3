"""A dataset as a simulation uses it: events plus the public item catalogue, loaded from a
spec (``synthetic``, ``kuairec[:FILE]``, ``catalogue:FILE``, ``movielens``, ``mind:DIR``,
``events:FILE``). ``kuairec`` and ``catalogue:FILE`` simulate users over a real catalogue
(:mod:`simulations.datasets.catalogue`) with the synthetic user model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.event_table import EventTable
from common.events import Event, EventType
from simulations.datasets.catalogue import Catalogue, load_catalogue
from simulations.datasets.loaders import load_events, load_mind, load_movielens

__all__ = ["DatasetBundle", "load_bundle", "load_population"]


@dataclass
class DatasetBundle:
    """Events plus the public item catalogue of a dataset.

    Attributes:
        items: public catalogue, item id -> item text.
        truth: the synthetic generator's ground truth (interests, drift times), if any.
    """

    name: str
    events: list[Event]
    items: dict[str, str]
    rejected: int = 0
    truth: Any = None

    @property
    def catalogue(self) -> list[str]:
        """The distinct public item texts."""
        return sorted(set(self.items.values()))


def _sample_users(events: list[Event], clients: int, seed: int) -> list[Event]:
    users = sorted({e.user_id for e in events})
    if clients >= len(users):
        return events
    rng = np.random.default_rng(seed)
    keep = {users[i] for i in rng.choice(len(users), size=clients, replace=False)}
    return [e for e in events if e.user_id in keep]


_SPECS = "synthetic, kuairec[:FILE], catalogue:FILE, movielens, mind:DIR or events:FILE"


def _catalogue_of(spec: str) -> Catalogue | None:
    """The catalogue a ``kuairec[:FILE]`` / ``catalogue:FILE`` spec names (``None`` for the
    other specs)."""
    kind, _, arg = spec.partition(":")
    if kind == "kuairec":
        return load_catalogue(arg or None)
    if kind == "catalogue":
        if not arg:
            raise ConfigError("`--dataset catalogue:FILE` needs a catalogue file.")
        return load_catalogue(arg)
    return None


def load_bundle(spec: str, *, clients: int, seed: int, events_per_user: int = 60) -> DatasetBundle:
    """Loads ``synthetic``, ``kuairec[:FILE]``, ``catalogue:FILE``, ``movielens``,
    ``mind:DIR`` or ``events:FILE``."""
    kind, _, arg = spec.partition(":")
    cat = _catalogue_of(spec)
    if kind == "synthetic" or cat is not None:
        from simulations.datasets.synthetic import SyntheticConfig, generate

        ds = generate(
            SyntheticConfig(users=clients, seed=seed, events_per_user=events_per_user),
            catalogue=cat,
        )
        return DatasetBundle(
            kind if cat is None else cat.name,
            ds.events,
            {it.item_id: it.text for it in ds.items},
            truth=ds.users,
        )
    if kind == "movielens":
        from simulations.datasets.loaders import movielens_items

        events, rep = load_movielens(arg or None)
        return DatasetBundle(
            "movielens",
            _sample_users(events, clients, seed),
            movielens_items(arg or None),
            rep.rejected,
        )
    if kind == "mind":
        if not arg:
            raise ConfigError(
                "`--dataset mind:DIR` needs the directory with news.tsv and behaviors.tsv."
            )
        from simulations.datasets.loaders import mind_items

        events, rep = load_mind(arg)
        return DatasetBundle(
            "mind", _sample_users(events, clients, seed), mind_items(arg), rep.rejected
        )
    if kind == "events":
        if not arg:
            raise ConfigError("`--dataset events:FILE.jsonl` needs a file.")
        events, rep = load_events(arg)
        events = _sample_users(events, clients, seed)
        private = {EventType.SEARCH, EventType.REVIEW}
        items: dict[str, str] = {}
        for e in events:
            if e.item_id is not None and e.event_type not in private:
                items.setdefault(e.item_id, e.text)
        return DatasetBundle(f"events:{Path(arg).name}", events, items, rep.rejected)
    raise ConfigError(f"`--dataset` must be {_SPECS}. Found {spec!r}.")


def load_population(
    spec: str,
    *,
    clients: int,
    seed: int,
    events_per_user: int = 60,
    max_events_per_client: int | None = None,
) -> tuple[EventTable, DatasetBundle]:
    """A dataset as one :class:`~common.event_table.EventTable` (users in id order, each
    user's events in time order, at most its latest ``max_events_per_client``) and its bundle
    without the event list (the batched engine: no Python object per event)."""
    from dataclasses import replace

    from simulations.datasets.loaders import partition_by_user

    cat = _catalogue_of(spec)
    if spec == "synthetic" or cat is not None:
        from simulations.datasets.synthetic import SyntheticConfig, generate_table

        syn = generate_table(
            SyntheticConfig(users=clients, seed=seed, events_per_user=events_per_user),
            catalogue=cat,
        )
        bundle = DatasetBundle(
            "synthetic" if cat is None else cat.name,
            [],
            {it.item_id: it.text for it in syn.items},
            truth=syn.users,
        )
        return syn.table.latest(max_events_per_client), bundle
    bundle = load_bundle(spec, clients=clients, seed=seed, events_per_user=events_per_user)
    table = EventTable.from_events(
        partition_by_user(bundle.events, max_events_per_client=max_events_per_client)
    )
    return table, replace(bundle, events=[])
