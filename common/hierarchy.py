"""The interest tree: nodes, levels, centroids, labels, versions, JSON.

Levels: 0 is the root, 1 the broad interests, 2 the fine interests (the leaves the devices
cluster against). Node ids are stable across versions: a node that continues a node of the
previous version keeps its id (see :mod:`server.hierarchy_builder`).

Centroids live in the public projected space (unit vectors of dimension ``dim``); a hierarchy
records the projection's fingerprint so a device never compares vectors from another space.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from common.errors import ConfigError
from common.jsonio import atomic_write_text

__all__ = ["MAX_HIERARCHY_BYTES", "Hierarchy", "Node", "NodeChange"]

MAX_HIERARCHY_BYTES: Final = 64 << 20


class NodeChange:
    """How a node changed from the previous version."""

    NEW: Final = "new"
    GROWN: Final = "grown"
    SHRUNK: Final = "shrunk"
    STABLE: Final = "stable"
    ALL: Final = frozenset({NEW, GROWN, SHRUNK, STABLE})


@dataclass(frozen=True)
class Node:
    """One node of the tree.

    Attributes:
        node_id: stable id (``"n17"``); the root is ``"root"``.
        level: 0 root, 1 broad, 2 fine.
        parent: the parent's id (``None`` for the root).
        children: ids of the children.
        centroid: unit vector, shape ``(dim,)``, float32.
        weight: population weight: share of the (noisy, DP) mass at this level, in [0, 1].
        labels: best vocabulary labels ``(path, score)``, best first.
        change: a :class:`NodeChange` value relative to the previous version.
    """

    node_id: str
    level: int
    parent: str | None
    children: tuple[str, ...]
    centroid: npt.NDArray[np.float32] = field(compare=False, repr=False)
    weight: float
    labels: tuple[tuple[str, float], ...] = ()
    change: str = NodeChange.NEW

    @property
    def label(self) -> str:
        """The best label's last name (``"Soccer"``), or the id when unlabelled."""
        if not self.labels:
            return self.node_id
        return self.labels[0][0].split(" > ")[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "level": self.level,
            "parent": self.parent,
            "children": list(self.children),
            "weight": round(float(self.weight), 6),
            "labels": [[p, round(float(s), 4)] for p, s in self.labels],
            "change": self.change,
            "centroid": [round(float(v), 6) for v in self.centroid],
        }


@dataclass(frozen=True)
class Hierarchy:
    """One version of the global interest tree."""

    version: int
    dim: int
    projection_fingerprint: str
    nodes: Mapping[str, Node]
    server_round: int = 0
    created_at: float = field(default_factory=time.time)
    parent_version: int | None = None
    merged: Mapping[str, str] = field(default_factory=dict)
    """Ids of nodes of the previous version merged into another, ``old -> surviving``."""
    gone: tuple[str, ...] = ()
    """Ids of the previous version's nodes that no longer exist (and were not merged)."""
    label_space: str = ""

    ROOT: ClassVar[str] = "root"

    def __post_init__(self) -> None:
        self.validate()

    # -- structure ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Checks ids, parents, levels and centroid shapes; raises :class:`ConfigError`."""
        if self.ROOT not in self.nodes:
            raise ConfigError("a hierarchy needs a node with id 'root'.")
        if not (isinstance(self.version, int) and self.version >= 0):
            raise ConfigError(f"`version` must be an int >= 0. Found {self.version!r}.")
        if not (isinstance(self.dim, int) and self.dim >= 2):
            raise ConfigError(f"`dim` must be an int >= 2. Found {self.dim!r}.")
        for nid, node in self.nodes.items():
            if nid != node.node_id:
                raise ConfigError(f"node stored under {nid!r} has id {node.node_id!r}.")
            if node.level not in (0, 1, 2):
                raise ConfigError(f"node {nid!r}: `level` must be 0, 1 or 2. Found {node.level!r}.")
            c = node.centroid
            if c.shape != (self.dim,) or not np.isfinite(c).all():
                raise ConfigError(
                    f"node {nid!r}: centroid must be {self.dim} finite values. Found shape {c.shape}."
                )
            if not (math.isfinite(node.weight) and 0 <= node.weight <= 1 + 1e-6):
                raise ConfigError(
                    f"node {nid!r}: `weight` must be in [0, 1]. Found {node.weight!r}."
                )
            if node.change not in NodeChange.ALL:
                raise ConfigError(
                    f"node {nid!r}: `change` must be one of {sorted(NodeChange.ALL)}. Found {node.change!r}."
                )
            if nid == self.ROOT:
                if node.parent is not None or node.level != 0:
                    raise ConfigError("the root must have level 0 and no parent.")
                continue
            parent = self.nodes.get(node.parent or "")
            if parent is None:
                raise ConfigError(f"node {nid!r}: parent {node.parent!r} does not exist.")
            if parent.level != node.level - 1 or nid not in parent.children:
                raise ConfigError(
                    f"node {nid!r}: not a child of its parent {node.parent!r} at level {node.level - 1}."
                )
            for ch in node.children:
                if ch not in self.nodes:
                    raise ConfigError(f"node {nid!r}: child {ch!r} does not exist.")

    @property
    def root(self) -> Node:
        return self.nodes[self.ROOT]

    def level(self, level: int) -> list[Node]:
        """Nodes of one level, ordered by weight (heaviest first), then id."""
        return sorted(
            (n for n in self.nodes.values() if n.level == level),
            key=lambda n: (-n.weight, n.node_id),
        )

    @property
    def leaves(self) -> list[Node]:
        return self.level(2)

    def centroids(self, level: int) -> tuple[list[str], npt.NDArray[np.float32]]:
        """``(ids, matrix)`` of one level; matrix shape ``(n, dim)``."""
        nodes = self.level(level)
        if not nodes:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        return [n.node_id for n in nodes], np.stack([n.centroid for n in nodes]).astype(np.float32)

    def ancestors(self, node_id: str) -> list[str]:
        """Ids from the node up to (excluding) the root."""
        out = []
        cur: str | None = node_id
        while cur is not None and cur != self.ROOT:
            out.append(cur)
            cur = self.nodes[cur].parent
        return out

    def path_labels(self, node_id: str) -> str:
        """``"Sports > Soccer"``-style path of the node's best labels."""
        return " > ".join(self.nodes[n].label for n in reversed(self.ancestors(node_id)))

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fedinterest.hierarchy/1",
            "version": self.version,
            "parent_version": self.parent_version,
            "server_round": self.server_round,
            "created_at": self.created_at,
            "dim": self.dim,
            "projection_fingerprint": self.projection_fingerprint,
            "label_space": self.label_space,
            "levels": {str(k): [n.node_id for n in self.level(k)] for k in (1, 2)},
            "merged": dict(self.merged),
            "gone": list(self.gone),
            "nodes": [self.nodes[k].to_dict() for k in sorted(self.nodes, key=_node_sort_key)],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hierarchy:
        """Parses and validates; every problem is a :class:`ConfigError` naming the field."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a hierarchy must be a JSON object. Found {type(d).__name__}.")
        if d.get("format") != "fedinterest.hierarchy/1":
            raise ConfigError(
                f"`format` must be 'fedinterest.hierarchy/1'. Found {d.get('format')!r}."
            )
        try:
            dim = _int(d["dim"], "dim")
            raw_nodes = d["nodes"]
            if not isinstance(raw_nodes, list):
                raise ConfigError(f"`nodes` must be a list. Found {type(raw_nodes).__name__}.")
            nodes: dict[str, Node] = {}
            for i, rn in enumerate(raw_nodes):
                if not isinstance(rn, Mapping):
                    raise ConfigError(f"`nodes[{i}]` must be an object.")
                centroid = np.asarray(rn["centroid"], dtype=np.float64)
                if centroid.shape != (dim,):
                    raise ConfigError(
                        f"`nodes[{i}].centroid` must have {dim} numbers. Found shape {centroid.shape}."
                    )
                labels = tuple((str(p), float(s)) for p, s in rn.get("labels") or [])
                node = Node(
                    node_id=str(rn["id"]),
                    level=_int(rn["level"], f"nodes[{i}].level"),
                    parent=None if rn.get("parent") is None else str(rn["parent"]),
                    children=tuple(str(c) for c in rn.get("children") or []),
                    centroid=centroid.astype(np.float32),
                    weight=float(rn["weight"]),
                    labels=labels,
                    change=str(rn.get("change", NodeChange.NEW)),
                )
                if node.node_id in nodes:
                    raise ConfigError(f"`nodes[{i}].id` {node.node_id!r} is duplicated.")
                nodes[node.node_id] = node
            return cls(
                version=_int(d["version"], "version"),
                dim=dim,
                projection_fingerprint=str(d["projection_fingerprint"]),
                nodes=nodes,
                server_round=_int(d.get("server_round", 0), "server_round"),
                created_at=float(d.get("created_at", 0.0)),
                parent_version=None
                if d.get("parent_version") is None
                else _int(d["parent_version"], "parent_version"),
                merged={str(k): str(v) for k, v in (d.get("merged") or {}).items()},
                gone=tuple(str(g) for g in d.get("gone") or []),
                label_space=str(d.get("label_space", "")),
            )
        except KeyError as err:
            raise ConfigError(f"hierarchy JSON is missing the field {err}.") from None
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"hierarchy JSON has a malformed value: {err}.") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Hierarchy:
        if len(text) > MAX_HIERARCHY_BYTES:
            raise ConfigError(
                f"hierarchy JSON must be at most {MAX_HIERARCHY_BYTES} bytes. Found {len(text)}."
            )
        try:
            data = json.loads(text)
        except RecursionError:
            raise ConfigError("hierarchy JSON is nested too deeply.") from None
        except ValueError as err:
            raise ConfigError(f"hierarchy JSON is malformed: {err}.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Hierarchy:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"hierarchy file {str(p)!r} does not exist.")
        return cls.from_json(p.read_bytes())


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"`{name}` must be an integer. Found {v!r}.")
    return v


def _node_sort_key(node_id: str) -> tuple[int, str]:
    return (0 if node_id == Hierarchy.ROOT else 1, node_id)
