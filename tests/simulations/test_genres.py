"""The genre check: fractional multi-label NMI, the genre table of MovieLens, the metrics block."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from common.errors import ConfigError
from common.events import Event, EventType
from common.metrics import normalized_mutual_info
from simulations.datasets.loaders import (
    default_movielens_dir,
    load_movielens,
    movielens_genres,
    movielens_items,
)
from simulations.evaluation import assign_to_tree, seed_method_baseline
from simulations.genres import (
    GENRE_KEYS,
    GenreTruth,
    dataset_genres,
    genre_metrics,
    genre_nmi,
    genre_summary,
)


def _event(i: int, item: str | None) -> Event:
    return Event(f"e{i}", "u", 1e9 + i, EventType.RATE, item, f"text {item}")


def test_genre_nmi_hand_computed_table() -> None:
    """A 2x2 fractional table worked out by hand: a: x 1.5, y 0.5; b: y 1 (n = 3)."""
    got = genre_nmi(["a", "a", "b"], [("x",), ("x", "y"), ("y",)])
    p = {("a", "x"): 1.5 / 3, ("a", "y"): 0.5 / 3, ("b", "y"): 1 / 3}
    pc = {"a": 2 / 3, "b": 1 / 3}
    pg = {"x": 0.5, "y": 0.5}
    mi = sum(v * math.log(v / (pc[c] * pg[g])) for (c, g), v in p.items())
    hc = -sum(v * math.log(v) for v in pc.values())
    hg = -sum(v * math.log(v) for v in pg.values())
    assert got == pytest.approx(mi / ((hc + hg) / 2), rel=1e-12)
    assert mi == pytest.approx(0.5 * math.log(1.5) + math.log(2) / 6, rel=1e-12)


def test_genre_nmi_matches_sklearn_on_replicated_rows() -> None:
    """Mixed G in {1, 2, 3}: each (event, genre) row repeated 6/G times gives the same table
    up to scale, so scikit-learn's arithmetic NMI on the unweighted rows must agree."""
    rng = np.random.default_rng(7)
    names = [f"g{i}" for i in range(6)]
    clusters, genres, rep_c, rep_g = [], [], [], []
    for _ in range(400):
        g = tuple(str(x) for x in rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
        # clusters that follow the first genre most of the time: an NMI well inside (0, 1)
        c = f"c{names.index(g[0]) % 4}" if rng.random() < 0.7 else f"c{int(rng.integers(4))}"
        clusters.append(c)
        genres.append(g)
        for name in g:
            rep_c += [c] * (6 // len(g))
            rep_g += [name] * (6 // len(g))
    want = normalized_mutual_info_score(rep_g, rep_c, average_method="arithmetic")
    got = genre_nmi(clusters, genres)
    assert 0.05 < got < 0.95
    assert got == pytest.approx(want, rel=1e-9)


def test_genre_nmi_equal_g_matches_plain_replication() -> None:
    """With every event having G = 2 genres, one unweighted row per (event, genre) suffices."""
    rng = np.random.default_rng(3)
    genres = [tuple(rng.choice(["a", "b", "c", "d"], size=2, replace=False)) for _ in range(200)]
    clusters = [int(rng.integers(3)) if rng.random() < 0.5 else hash(g[0]) % 3 for g in genres]
    rows_c = [c for c, g in zip(clusters, genres, strict=True) for _ in g]
    rows_g = [x for g in genres for x in g]
    want = normalized_mutual_info_score(rows_g, rows_c)
    assert genre_nmi(clusters, genres) == pytest.approx(want, rel=1e-9)


def test_genre_nmi_single_label_is_the_repo_nmi() -> None:
    """One genre per event: exactly :func:`common.metrics.normalized_mutual_info`."""
    rng = np.random.default_rng(1)
    truth = [str(x) for x in rng.integers(0, 5, 300)]
    pred = [str(x) for x in rng.integers(0, 4, 300)]
    got = genre_nmi(pred, [(t,) for t in truth])
    assert got == pytest.approx(normalized_mutual_info(truth, pred), rel=1e-12)


def test_genre_nmi_bounds_and_repeats() -> None:
    """Clusters equal to single genres score 1; repeated genres count once; labels are free."""
    assert genre_nmi([0, 0, 1, 1], [("x",), ("x",), ("y",), ("y",)]) == pytest.approx(1.0)
    a = genre_nmi(["p", "q", "q"], [("x", "y"), ("y",), ("x", "z")])
    b = genre_nmi(["q", "p", "p"], [("y", "x", "x"), ("y",), ("z", "x")])
    assert a == pytest.approx(b, rel=1e-12)
    assert 0.0 <= a <= 1.0


def test_genre_nmi_rejects_bad_input() -> None:
    """Mismatched lengths, no items, or an item with no genre are errors that say why."""
    with pytest.raises(ConfigError, match="same length"):
        genre_nmi(["a"], [("x",), ("y",)])
    with pytest.raises(ConfigError, match="at least one item"):
        genre_nmi([], [])
    with pytest.raises(ConfigError, match="at least one genre"):
        genre_nmi(["a", "b"], [("x",), ()])


def test_genre_truth_from_events() -> None:
    """Events without an item, with an unknown item or a genre-less item are left out and
    counted; no genre table or no matching event gives None."""
    table = {"1": ("Drama", "Comedy", "Drama"), "2": (), "3": ("Horror",)}
    events = [_event(0, "1"), _event(1, None), _event(2, "2"), _event(3, "9"), _event(4, "3")]
    truth = GenreTruth.from_events(events, table)
    assert truth is not None
    assert truth.rows.tolist() == [0, 4]
    assert truth.genres == (("Drama", "Comedy"), ("Horror",))
    assert truth.without == 3
    assert GenreTruth.from_events(events, None) is None
    assert GenreTruth.from_events(events, {}) is None
    assert GenreTruth.from_events([_event(0, "2")], table) is None


def test_genre_metrics_use_the_tree_assignment() -> None:
    """Per tree: the genre NMI of the nearest leaf and of its level-1 parent, rows only."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    x = centres[rng.integers(0, 4, 120)] + 0.3 * rng.normal(size=(120, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    h = seed_method_baseline(x, 4, 2, fingerprint="test", seed=0)
    items = [str(int(np.argmax(v @ centres.T))) if i % 10 else None for i, v in enumerate(x)]
    table = {"0": ("a",), "1": ("a", "b"), "2": ("c",), "3": ("c", "d", "a")}
    events = [_event(i, item) for i, item in enumerate(items)]
    truth = GenreTruth.from_events(events, table)
    assert truth is not None and truth.without == 12
    got = genre_metrics(x, h, truth)
    leaves, groups = assign_to_tree(x[truth.rows], h)
    assert set(got) == set(GENRE_KEYS)
    assert got["nmi_level1"] == pytest.approx(genre_nmi(groups, truth.genres))
    assert got["nmi_level2"] == pytest.approx(genre_nmi(leaves, truth.genres))
    assert got["nmi_level2"] > 0.3


def test_genre_summary_ratios() -> None:
    """Ratios are federated / baseline, None where the baseline scores 0; counts are kept."""
    truth = GenreTruth(np.arange(3), (("a",), ("b",), ("a", "b")), 2)
    out = genre_summary(
        {
            "federated": {"nmi_level1": 0.2, "nmi_level2": 0.3},
            "centralized": {"nmi_level1": 0.4, "nmi_level2": 0.0},
            "seed_method": {"nmi_level1": 0.1, "nmi_level2": 0.6},
        },
        truth,
    )
    assert out["ratio"] == {"nmi_level1": pytest.approx(0.5), "nmi_level2": None}
    assert out["seed_method_ratio"] == {
        "nmi_level1": pytest.approx(2.0),
        "nmi_level2": pytest.approx(0.5),
    }
    assert out["events"] == 3 and out["events_without_genres"] == 2
    assert out["federated"] == {"nmi_level1": 0.2, "nmi_level2": 0.3}


def test_print_genres_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The run summary prints one row per genre score with the two ratios."""
    from simulations.cli.simulate import _print_genres

    _print_genres(
        {
            "federated": {"nmi_level1": 0.2, "nmi_level2": 0.3},
            "centralized": {"nmi_level1": 0.4, "nmi_level2": 0.6},
            "seed_method": {"nmi_level1": 0.1, "nmi_level2": 0.3},
            "ratio": {"nmi_level1": 0.5, "nmi_level2": 0.5},
            "seed_method_ratio": {"nmi_level1": 2.0, "nmi_level2": None},
            "events": 10,
            "events_without_genres": 0,
        }
    )
    out = capsys.readouterr().out
    assert "genre check" in out and "10 events" in out
    assert "fed/central" in out and "fed/seed" in out
    row = next(line for line in out.splitlines() if line.startswith("nmi_level2"))
    assert row.split()[1:] == ["0.300", "0.600", "0.300", "0.500", "nan"]


def test_dataset_genres_only_for_movielens() -> None:
    """Datasets without flat genres have no genre table."""
    for spec in ("synthetic", "kuairec", "mind:/nowhere", "events:/nowhere.jsonl"):
        assert dataset_genres(spec) is None


@pytest.mark.movielens
def test_movielens_genres_real(movielens_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """movies.csv's genres by movie id: 9,742 movies, 19 genres, 34 listed with none; every
    event's genres are the ones its text names; the default directory is the shared one."""
    genres = movielens_genres(movielens_dir)
    assert len(genres) == 9742
    assert genres["1"] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert len({g for gs in genres.values() for g in gs}) == 19
    assert sum(not gs for gs in genres.values()) == 34
    assert all("(no genres listed)" not in gs for gs in genres.values())
    items = movielens_items(movielens_dir)
    assert set(items) == set(genres)
    for movie_id, gs in genres.items():
        assert (". Genres: " in items[movie_id]) == bool(gs), movie_id
        assert not gs or items[movie_id].endswith(". Genres: " + ", ".join(gs)), movie_id
    events, _ = load_movielens(movielens_dir)
    truth = GenreTruth.from_events(events, genres)
    assert truth is not None and len(truth.rows) + truth.without == len(events)
    assert truth.without == sum(not genres[e.item_id or ""] for e in events)
    for i, gs in zip(truth.rows[:2000], truth.genres[:2000], strict=True):
        assert ". Genres: " + ", ".join(gs) in events[int(i)].text
    assert dataset_genres(f"movielens:{movielens_dir}") == genres
    monkeypatch.delenv("FEDINTEREST_MOVIELENS", raising=False)
    assert default_movielens_dir().resolve() == movielens_dir.resolve()
    assert dataset_genres("movielens") == genres
