"""The dynamic profile: incremental = full, drift, migration across versions, scoring."""

from __future__ import annotations

import numpy as np
import pytest

from client.profile import (
    InterestProfile,
    ProfileConfig,
    calibrate_scoring,
    js_divergence,
    migrate,
)
from common.events import Event, EventType
from common.hierarchy import Hierarchy, Node
from common.projection import PublicProjection, normalize_rows

DIM = 384
PROJ = PublicProjection(DIM, 16, 3)
DAY = 86400.0


def directions(n: int, seed: int = 0) -> np.ndarray:
    """n raw (encoder-space) directions that stay well separated after projection."""
    rng = np.random.default_rng(seed)
    base = np.linalg.qr(rng.normal(size=(16, 16)))[0][:n]  # orthonormal in projected space
    raw = base @ PROJ.matrix.T  # back to encoder space (W has orthonormal columns)
    return raw.astype(np.float32)


def tree(
    leaves: dict[str, tuple[str, np.ndarray]],
    version: int = 1,
    merged: dict[str, str] | None = None,
) -> Hierarchy:
    """leaves: id -> (group id, raw direction)."""
    nodes: dict[str, Node] = {}
    groups: dict[str, list[str]] = {}
    for lid, (gid, raw) in leaves.items():
        groups.setdefault(gid, []).append(lid)
        nodes[lid] = Node(
            lid, 2, gid, (), PROJ(raw[None])[0], 1 / len(leaves), ((f"Root > {lid}", 1.0),)
        )
    for gid, kids in groups.items():
        c = normalize_rows(np.mean([nodes[k].centroid for k in kids], axis=0)[None])[0]
        nodes[gid] = Node(gid, 1, "root", tuple(kids), c, len(kids) / len(leaves), ((gid, 1.0),))
    nodes["root"] = Node("root", 0, None, tuple(groups), np.eye(16, dtype=np.float32)[0], 1.0)
    return Hierarchy(
        version=version,
        dim=16,
        projection_fingerprint=PROJ.fingerprint,
        nodes=nodes,
        merged=merged or {},
    )


def events_near(
    raw: np.ndarray, n: int, t0: float, *, seed: int, user: str = "u", step: float = DAY
) -> tuple[list[Event], np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = raw[None, :] + 0.02 * rng.normal(size=(n, DIM))
    evs = [
        Event(
            f"{user}-{seed}-{i}",
            user,
            t0 + i * step,
            EventType.CLICK,
            f"i{seed}-{i}",
            f"text {seed} {i}",
        )
        for i in range(n)
    ]
    return evs, vecs.astype(np.float32)


def profile(h: Hierarchy, cfg: ProfileConfig | None = None) -> InterestProfile:
    return InterestProfile(h, PROJ, None, cfg or ProfileConfig())


def test_incremental_equals_full_recomputation() -> None:
    """Events added one by one in any order give the same profile as one batch."""
    d = directions(4)
    h = tree({"a": ("g1", d[0]), "b": ("g1", d[1]), "c": ("g2", d[2]), "e": ("g2", d[3])})
    evs, vecs = [], []
    for k in range(4):
        e, v = events_near(d[k], 10, 1.7e9 + k * 3 * DAY, seed=k)
        evs += e
        vecs.append(v)
    allv = np.vstack(vecs)
    full = profile(h)
    full.add(evs, allv)
    inc = profile(h)
    for i in np.random.default_rng(0).permutation(len(evs)):
        inc.add([evs[i]], allv[i : i + 1])
    assert inc.t_ref == full.t_ref
    assert np.allclose(inc.mass, full.mass, rtol=1e-9, atol=1e-12)
    assert np.allclose(inc.mass_short, full.mass_short, rtol=1e-9, atol=1e-12)
    d1 = full.distribution(1)
    assert sum(d1.values()) == pytest.approx(1.0)
    assert d1["g1"] == pytest.approx(full.distribution(2)["a"] + full.distribution(2)["b"])


def test_top_interests_and_explanations() -> None:
    """The strongest interest comes first, explained by its own events."""
    d = directions(3)
    h = tree({"a": ("g1", d[0]), "b": ("g2", d[1]), "c": ("g2", d[2])})
    ea, va = events_near(d[0], 12, 1.7e9, seed=1)
    eb, vb = events_near(d[1], 4, 1.7e9, seed=2)
    p = profile(h)
    p.add(ea + eb, np.vstack([va, vb]))
    top = p.top(2, 2)
    assert [t.node_id for t in top] == ["a", "b"] and top[0].strength > top[1].strength
    assert all(x.startswith("text 1 ") for x in top[0].explanations)
    assert p.top(1, 1)[0].node_id == "g1"


def test_profile_follows_a_scripted_switch_and_reports_drift() -> None:
    """60 days on interest A, then one event a day on B: B becomes the top level-1 interest
    within 30 events, and drift reports B rising and A falling."""
    d = directions(2)
    h = tree({"a": ("ga", d[0]), "b": ("gb", d[1])})
    p = profile(h)
    ea, va = events_near(d[0], 60, 1.7e9, seed=3)
    p.add(ea, va)
    assert not p.drift().drifting[1]
    eb, vb = events_near(d[1], 60, 1.7e9 + 60 * DAY, seed=4)
    lag = None
    for i in range(len(eb)):
        p.add([eb[i]], vb[i : i + 1])
        if lag is None and p.top(1, 1)[0].node_id == "gb":
            lag = i + 1
            rep = p.drift()
            assert rep.drifting[1] and rep.rising[1][0][0] == "gb" and rep.falling[1][0][0] == "ga"
            assert rep.since[1] is not None and rep.since[1] <= eb[i].timestamp
    assert lag is not None and lag <= 30


def test_migration_with_split_and_merge() -> None:
    """v1 leaves a, b, c; v2 splits a into a and a2 and merges c into b. Recomputing from the
    cached vectors keeps the total mass and puts each event's mass on the right child; the
    id-based carry-over keeps the total and sends c's mass to b."""
    d = directions(4)
    c_dir = d[1] + 0.4 * d[2]  # c was close to b: that is why they merge
    v1 = tree({"a": ("g1", d[0]), "b": ("g2", d[1]), "c": ("g2", c_dir)})
    t0 = 1.7e9
    e1, x1 = events_near(d[0], 6, t0, seed=5)
    e2, x2 = events_near(d[3], 4, t0, seed=6)  # a new interest, spread over v1's leaves
    e3, x3 = events_near(d[1], 5, t0, seed=7)
    e4, x4 = events_near(c_dir, 3, t0, seed=8)
    evs, vecs = e1 + e2 + e3 + e4, np.vstack([x1, x2, x3, x4])
    old = profile(v1, ProfileConfig(half_life_days=1e9, short_half_life_days=1e9))
    old.add(evs, vecs)
    total = old.mass.sum()
    v2 = tree(
        {"a": ("g1", d[0]), "a2": ("g1", d[3]), "b": ("g2", d[1])}, version=2, merged={"c": "b"}
    )
    new = migrate(old, v2, events=evs, raw_vectors=vecs)
    assert new.mass.sum() == pytest.approx(total, rel=1e-9)
    dist = dict(zip(new.leaf_ids, new.mass, strict=True))
    assert dist["a2"] == pytest.approx(4, abs=0.1) and dist["a"] == pytest.approx(6, abs=0.1)
    assert dist["b"] == pytest.approx(8, abs=0.1)
    carried = migrate(old, v2)
    assert carried.mass.sum() == pytest.approx(total, rel=1e-9)
    cdist = dict(zip(carried.leaf_ids, carried.mass, strict=True))
    assert cdist["b"] >= dict(zip(old.leaf_ids, old.mass, strict=True))["c"]


def test_scores_rank_matching_items_first() -> None:
    """Items near the user's interests outscore unrelated items."""
    d = directions(4)
    h = tree({"a": ("g1", d[0]), "b": ("g1", d[1]), "c": ("g2", d[2]), "e": ("g2", d[3])})
    p = profile(h)
    e, v = events_near(d[0], 10, 1.7e9, seed=9)
    p.add(e, v)
    items = np.vstack([d[0] + 0.01, d[2] + 0.01, d[3] + 0.01])
    s = p.score(items)
    assert s[0] > s[1] and s[0] > s[2]


def test_state_round_trip_and_guards() -> None:
    """A saved profile loads on the same version only; JS divergence is in [0, 1]."""
    d = directions(2)
    h = tree({"a": ("ga", d[0]), "b": ("gb", d[1])})
    p = profile(h)
    e, v = events_near(d[0], 5, 1.7e9, seed=10)
    p.add(e, v)
    q = profile(h)
    q.load_state(p.to_state())
    assert (
        np.array_equal(q.mass, p.mass)
        and q.top(2, 1)[0].explanations == p.top(2, 1)[0].explanations
    )
    # the recent events travel with the state: a reloaded profile scores the same
    items = np.vstack([d[0] + 0.01, d[1] + 0.01])
    assert np.allclose(q.score(items), p.score(items))
    with pytest.raises(Exception, match="another hierarchy"):
        profile(tree({"a": ("ga", d[0]), "b": ("gb", d[1])}, version=9)).load_state(p.to_state())
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([1.0, 1]), np.array([2.0, 2])) == pytest.approx(0.0)


def test_scoring_weights_are_calibrated_on_the_device_history() -> None:
    """The device picks the popularity weight from its own history: 0 when popularity points
    away from what it does next, > 0 when only popularity tells its next items apart."""
    d = directions(4)
    h = tree({"a": ("g1", d[0]), "b": ("g1", d[1]), "c": ("g2", d[2]), "e": ("g2", d[3])})
    evs, vecs = events_near(d[0], 20, 1.7e9, seed=11)
    others = [events_near(d[k], 10, 1.7e9, seed=20 + k) for k in (1, 2, 3)]
    cat_ids = [e.item_id or "" for e in evs] + [e.item_id or "" for o in others for e in o[0]]
    cat_raw = np.vstack([vecs, *[o[1] for o in others]])
    # popularity high on the items the user never touches: content must win
    anti = np.array([-10.0] * 20 + [10.0] * 30)
    cfg = calibrate_scoring(
        h,
        evs,
        vecs,
        cat_ids,
        cat_raw,
        prior=anti,
        projection_seed=3,
        rng=np.random.default_rng(0),
    )
    assert cfg.popularity_weight == 0.0
    # every catalogue item looks alike: only popularity separates the user's next items
    same = np.vstack([vecs, *[events_near(d[0], 10, 1.7e9, seed=30 + k)[1] for k in (1, 2, 3)]])
    cfg = calibrate_scoring(
        h,
        evs,
        vecs,
        cat_ids,
        same,
        prior=-anti,
        projection_seed=3,
        rng=np.random.default_rng(0),
    )
    assert cfg.popularity_weight > 0.0
    # too little history: the configuration comes back unchanged
    short = calibrate_scoring(
        h,
        evs[:3],
        vecs[:3],
        cat_ids,
        cat_raw,
        prior=anti,
        projection_seed=3,
        rng=np.random.default_rng(0),
    )
    assert short == ProfileConfig()
    with pytest.raises(Exception, match="prior"):
        calibrate_scoring(
            h,
            evs,
            vecs,
            cat_ids,
            cat_raw,
            prior=anti[:5],
            projection_seed=3,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(Exception, match="level_weight"):
        ProfileConfig(level_weight=-1.0)


def _kl_bits(x: np.ndarray, y: np.ndarray) -> float:
    return float(sum(xi * np.log2(xi / yi) for xi, yi in zip(x, y, strict=True) if xi > 0))


def test_js_divergence_matches_the_definition() -> None:
    """JS divergence in bits equals (KL(p||m) + KL(q||m)) / 2 computed by hand."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        p, q = rng.random(7), rng.random(7)
        p[rng.random(7) < 0.3] = 0.0
        a, b = p / p.sum(), q / q.sum()
        m = (a + b) / 2
        want = (_kl_bits(a, m) + _kl_bits(b, m)) / 2
        assert js_divergence(p, q) == pytest.approx(want, abs=1e-12)
