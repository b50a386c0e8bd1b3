"""The device context of `profile`/`recommend`: its inputs checked, the popularity prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.device_context import (
    DeviceInputError,
    MissingHierarchyError,
    Popularity,
    load_adapter,
    load_npz,
    load_popularity,
    open_device_context,
    popularity_prior,
    population_from_analytics,
)


def test_load_npz_names_what_is_wrong(tmp_path: Path) -> None:
    """A lone .npy, a missing array and a non-archive each fail naming the input."""
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DeviceInputError, match=r"--x must be an \.npz archive"):
        load_npz(tmp_path / "a.npy", "--x", ("a",))
    np.savez(tmp_path / "b.npz", b=np.zeros(3))
    with pytest.raises(DeviceInputError, match=r"--x lacks the array\(s\) a\. Found b"):
        load_npz(tmp_path / "b.npz", "--x", ("a",))
    (tmp_path / "c.npz").write_text("not a zip")
    with pytest.raises(DeviceInputError, match=r"--x is not a readable \.npz archive"):
        load_npz(tmp_path / "c.npz", "--x", ("a",))


def test_load_adapter_checks_shapes(tmp_path: Path) -> None:
    """Adapter arrays of incompatible shapes are refused; good ones load as float32."""
    np.savez(tmp_path / "bad.npz", a=np.zeros((4, 2)), b=np.zeros((3, 4)))
    with pytest.raises(DeviceInputError, match="--adapter"):
        load_adapter(tmp_path / "bad.npz", "--adapter")
    np.savez(tmp_path / "ok.npz", a=np.zeros((4, 2)), b=np.zeros((2, 4)))
    w = load_adapter(tmp_path / "ok.npz", "--adapter")
    assert w.a.dtype == np.float32 and w.is_identity()


def test_popularity_is_checked_and_unknown_items_count_zero(tmp_path: Path) -> None:
    """Counts must be finite and match the items; an unknown item gets the prior of 0."""
    np.savez(tmp_path / "p.npz", items=np.array(["a", "b"]), counts=np.array([1.0, np.inf]))
    with pytest.raises(DeviceInputError, match="`counts` must be finite"):
        load_popularity(tmp_path / "p.npz", "--popularity")
    np.savez(tmp_path / "p.npz", items=np.array(["a", "b"]), counts=np.array([50.0, 5.0]))
    pop = load_popularity(tmp_path / "p.npz", "--popularity")
    assert pop.items == ["a", "b"] and pop.noise_std == 0.0
    prior = popularity_prior(pop, ["b", "zzz", "a"])
    assert prior.shape == (3,) and prior[2] > prior[0] > prior[1]
    same = popularity_prior(Popularity(["a", "b"], np.array([50.0, 5.0]), 0.0), ["zzz"])
    assert same[0] == prior[1]


def test_population_from_analytics_reads_the_last_record(tmp_path: Path) -> None:
    """The last line of analytics.jsonl gives each broad interest's DP count."""
    path = tmp_path / "analytics.jsonl"
    path.write_text(
        json.dumps({"nodes": [{"id": "n1", "count": 3}]})
        + "\n"
        + json.dumps({"nodes": [{"id": "n1", "count": 7.5}, {"id": "n2", "count": 1}]})
        + "\n"
    )
    assert population_from_analytics(str(path)) == {"n1": 7.5, "n2": 1.0}
    path.write_text('{"rows": []}\n')
    with pytest.raises(DeviceInputError, match="Missing or wrong field"):
        population_from_analytics(str(path))


def test_a_store_without_hierarchy_is_refused(tmp_path: Path) -> None:
    """No --hierarchy and none kept in the store: a clear error, and the store is closed."""
    from client.store import EventStore

    EventStore(tmp_path / "d.db").close()
    with pytest.raises(MissingHierarchyError, match="no hierarchy"):
        open_device_context(tmp_path / "d.db")
