"""The hierarchy format: JSON round trip and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ConfigError
from common.hierarchy import Hierarchy, Node, NodeChange


def toy(dim: int = 4) -> Hierarchy:
    e = np.eye(dim, dtype=np.float32)
    nodes = {
        "root": Node("root", 0, None, ("g1",), e[0], 1.0),
        "g1": Node("g1", 1, "root", ("a", "b"), e[0], 1.0, (("Sports", 0.9),)),
        "a": Node("a", 2, "g1", (), e[1], 0.7, (("Sports > Soccer", 0.8),), NodeChange.GROWN),
        "b": Node("b", 2, "g1", (), e[2], 0.3),
    }
    return Hierarchy(version=3, dim=dim, projection_fingerprint="abc", nodes=nodes, server_round=3)


def test_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """save/load keeps ids, levels, labels, weights and centroids."""
    h = toy()
    h.save(tmp_path / "h.json")
    g = Hierarchy.load(tmp_path / "h.json")
    assert g.to_dict() == h.to_dict()
    assert [n.node_id for n in g.leaves] == ["a", "b"]
    assert g.path_labels("a") == "Sports > Soccer"
    ids, c = g.centroids(2)
    assert ids == ["a", "b"] and c.shape == (2, 4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.pop("dim"), "dim"),
        (lambda d: d["nodes"][1].update(parent="zzz"), "parent"),
        (lambda d: d["nodes"][1].update(centroid=[1, 2]), "centroid"),
        (lambda d: d["nodes"][1].update(level=7), "level"),
        (lambda d: d["nodes"][1].update(weight=float("nan")), "weight"),
        (lambda d: d["nodes"].append(dict(d["nodes"][1])), "duplicated"),
        (lambda d: d.update(version="3"), "version"),
    ],
)
def test_invalid_json_is_a_config_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    """Every malformed field is reported by name."""
    d = json.loads(toy().to_json())
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        Hierarchy.from_dict(d)


def test_garbage_and_deep_json() -> None:
    """Not JSON, or nested too deeply: clear errors, no crash."""
    with pytest.raises(ConfigError, match="malformed"):
        Hierarchy.from_json("{nope")
    with pytest.raises(ConfigError):
        Hierarchy.from_json("[" * 100000 + "]" * 100000)
