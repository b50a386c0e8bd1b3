"""The pure round step, driven for several rounds without Flower or Ray: tree rounds, a short
cohort, the devices' and the server's budgets running out, an adapter round, the releases over
the new version, and the persistence edges."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.adapter import AdapterWeights
from common.config import AdapterConfig, AnalyticsConfig, ClusteringConfig, PrivacyConfig, RunConfig
from common.errors import ConfigError
from common.privacy import epsilon_of_entries
from common.privacy.ledger import Mechanism, Scope
from common.projection import PublicProjection, normalize_rows
from common.records import ReleaseMode, ReleaseTask
from common.round_config import dpsgd_ledger_entry
from common.vocabulary import LabelSpace, Vocabulary
from server.persistence import last_completed_round, load_state, persist_round
from server.round import (
    AdapterAction,
    AdapterUpdate,
    AuxResult,
    CohortResult,
    ReleaseRequest,
    ReleaseSum,
    RoundStatus,
    ServerConfig,
    ServerState,
    adapter_action,
    aux_requests,
    aux_step,
    initial_server_state,
    release_request,
    round_step,
    sample_cohort,
)
from server.storage import ServerStorage

ENC, DIM, SEED = 24, 16, 3
ROOTS = ("Sports", "Music", "Food", "Travel")
NODES = list(range(101, 113))


def label_space() -> LabelSpace:
    vocab = Vocabulary.from_paths([[r, f"{r} {i}"] for r in ROOTS for i in range(3)])
    rng = np.random.default_rng(0)
    raw = np.zeros((len(vocab.labels), ENC), dtype=np.float32)
    for i, lab in enumerate(vocab.labels):
        raw[i] = 3.0 * np.eye(ENC)[ROOTS.index(lab.root)] + rng.normal(size=ENC)
    raw = normalize_rows(raw)
    proj = PublicProjection(ENC, DIM, SEED, "toy")
    return LabelSpace(vocab, proj(raw), "toy", ENC, proj.fingerprint, raw)


def server_config(**over: object) -> ServerConfig:
    run = RunConfig(
        rounds=3,
        min_clients=3,
        privacy=PrivacyConfig(mode=ReleaseMode.LOCAL, epsilon=4.0, unit=Scope.EVENT, delta=1e-5),
        clustering=ClusteringConfig(projection_dim=DIM, projection_seed=SEED),
        analytics=AnalyticsConfig(popularity=False),
    )
    catalogue = over.pop("catalogue", None)
    return ServerConfig.build(replace(run, **over), label_space(), catalogue)  # type: ignore[arg-type]


def cohort_sum(request: ReleaseRequest, rng: np.random.Generator, usable: int) -> ReleaseSum:
    """What ``usable`` devices' noisy releases sum to: mass near the first leaves plus the
    noise their config prescribes."""
    total = np.zeros(request.shape)
    centroids = request.arrays[0]
    for k in range(min(6, request.shape[0] - 1)):
        total[k] = 5.0 * usable * centroids[k]
    total += rng.normal(0.0, request.config.noise_std * math.sqrt(usable), request.shape)
    return ReleaseSum(total, usable, {}, {"ok": usable})


def run_rounds(
    config: ServerConfig, rounds: int, state: ServerState | None = None
) -> tuple[ServerState, list[RoundStatus]]:
    state = state or initial_server_state(config)
    rng = np.random.default_rng(1)
    statuses = []
    for r in range(state.leaves.server_round + 1, state.leaves.server_round + 1 + rounds):
        req = release_request(state, config, r, sample_cohort(NODES, r, config))
        state, outcome = round_step(state, CohortResult(req, cohort_sum(req, rng, 10)), config)
        statuses.append(outcome.summary.status)
    return state, statuses


def test_several_rounds_build_versions_and_compose_the_device_ledger() -> None:
    """Three rounds give versions 1-3, one user-level entry each, and the event-level epsilon
    of the device's own ledger entries (composed with dp-accounting) after each."""
    config = server_config()
    state = initial_server_state(config)
    before = state.leaves.centroids.copy()
    rng = np.random.default_rng(1)
    epsilons = []
    for r in (1, 2, 3):
        req = release_request(state, config, r, NODES)
        assert req.config.noise_std == pytest.approx(config.noise_multiplier)  # local: full z * 1
        new, outcome = round_step(state, CohortResult(req, cohort_sum(req, rng, 10)), config)
        assert outcome.summary.status is RoundStatus.OK and outcome.hierarchy is not None
        assert outcome.hierarchy.version == r and new.version == r
        assert [e.mechanism for e in outcome.ledger_entries] == [Mechanism.GAUSSIAN_SUM]
        assert outcome.ledger_entries[0].scope is Scope.USER
        device_entries = [
            replace(req.config, server_round=i).ledger_entry() for i in range(1, r + 1)
        ]
        expected = epsilon_of_entries(device_entries, delta=1e-5)
        assert outcome.summary.epsilon_event_level == pytest.approx(expected, rel=1e-12)
        epsilons.append(outcome.summary.epsilon_event_level)
        state = new
    assert epsilons == sorted(epsilons) and 3.95 < epsilons[-1] <= 4.0
    assert len(state.ledger) == 3 and state.leaves.server_round == 3
    assert np.array_equal(initial_server_state(config).leaves.centroids, before)


def test_short_cohort_skips_without_a_new_version() -> None:
    """Fewer usable releases than min_clients (or none at all, e.g. every device's budget
    spent) skip the round: same leaves, same tree, nothing in the ledger, nothing else asked."""
    config = server_config(analytics=AnalyticsConfig(histogram=True, popularity=False))
    state, _ = run_rounds(config, 1)
    req = release_request(state, config, 2, NODES)
    for releases in (
        cohort_sum(req, np.random.default_rng(2), 2),
        ReleaseSum(None, 0, {}, {"budget_exceeded": len(NODES)}),
    ):
        new, outcome = round_step(state, CohortResult(req, releases, attempt=2), config)
        s = outcome.summary
        assert s.status is RoundStatus.SKIPPED and s.attempt == 2 and s.hierarchy_version is None
        assert new.leaves is state.leaves and new.hierarchy is state.hierarchy
        assert new.ledger == state.ledger and outcome.ledger_entries == ()
        assert aux_requests(new, outcome, config) == []
    assert outcome.summary.statuses == {"budget_exceeded": len(NODES)}


def test_adapter_round_applies_the_update_and_records_it() -> None:
    """An adapter round: the update replaces the weights, the tree lives in the space of the
    adapter the devices were sent, the device epsilon includes the DP-SGD entry, and the next
    release carries the new adapter."""
    config = server_config(adapter=AdapterConfig(enabled=True, server_noise_multiplier=0.0))
    state = initial_server_state(config)
    assert adapter_action(state, config)[0] is AdapterAction.TRAIN
    req = release_request(state, config, 1, NODES)
    assert len(req.arrays) == 3
    w0 = state.adapter.weights
    w1 = AdapterWeights(w0.a, w0.b + 0.01)
    update = AdapterUpdate(w1, 9, {"no reply before the timeout": 3}, {"ok": 9})
    releases = cohort_sum(req, np.random.default_rng(3), 10)
    new, outcome = round_step(state, CohortResult(req, releases, update), config)
    assert new.adapter.weights is w1 and new.adapter.rounds == (1,)
    assert outcome.tree_adapter is w0
    assert outcome.summary.adapter["usable"] == 9
    assert [e.mechanism for e in outcome.ledger_entries] == [
        Mechanism.GAUSSIAN_SUM,
        Mechanism.NON_PRIVATE,
    ]
    a = config.run.adapter
    dpsgd = dpsgd_ledger_entry(
        noise_multiplier=a.noise_multiplier,
        sample_rate=a.sample_rate,
        max_grad_norm=a.max_grad_norm,
        steps=a.steps,
        server_round=1,
    )
    expected = epsilon_of_entries([req.config.ledger_entry(), dpsgd], delta=1e-5)
    assert outcome.summary.epsilon_event_level == pytest.approx(expected, rel=1e-9)
    nxt = release_request(new, config, 2, NODES)
    assert np.array_equal(nxt.arrays[2], w1.b)
    with pytest.raises(ConfigError, match="no adapter update"):
        round_step(state, CohortResult(req, releases, None), config)


def test_server_budget_exhaustion_stops_the_adapter() -> None:
    """The server's user-level budget for DP-FedAvg runs out: the adapter trains while the
    next round fits, then stops, and releases no longer carry it."""
    z = 2.0
    one = epsilon_of_entries(
        [
            dpsgd_ledger_entry(
                noise_multiplier=1, sample_rate=1, max_grad_norm=1, steps=1, server_round=1
            )
        ],
        delta=1e-5,
    )
    assert one > 0
    config = server_config(
        adapter=AdapterConfig(
            enabled=True, server_noise_multiplier=z, server_user_epsilon=3.0, noise_multiplier=30.0
        )
    )
    state = initial_server_state(config)
    rng = np.random.default_rng(4)
    actions = []
    for r in (1, 2, 3):
        action, _ = adapter_action(state, config)
        actions.append(action)
        req = release_request(state, config, r, NODES)
        assert len(req.arrays) == (3 if action is not AdapterAction.OFF else 1)
        w = state.adapter.weights
        update = (
            AdapterUpdate(AdapterWeights(w.a, w.b + 0.001), 10)
            if action is AdapterAction.TRAIN
            else None
        )
        state, outcome = round_step(
            state, CohortResult(req, cohort_sum(req, rng, 10), update), config
        )
        if action is AdapterAction.STOP:
            assert outcome.summary.adapter["status"].startswith("stopped")
            assert outcome.summary.adapter["epsilon"] > 3.0
    assert actions[0] is AdapterAction.TRAIN and AdapterAction.STOP in actions
    assert not state.adapter.training
    spent = [e for e in state.ledger if e.mechanism is Mechanism.SERVER_GAUSSIAN]
    assert len(spent) == len(state.adapter.rounds) >= 1
    assert epsilon_of_entries(spent, delta=1e-5, scope=Scope.USER) <= 3.0


def test_histogram_and_popularity_over_the_new_version() -> None:
    """A completed last round asks the same cohort for the histogram, then the popularity;
    each folds into the ledger (release, auxiliary, in order), the epsilon and the outputs."""
    catalogue = [f"item-{i}" for i in range(7)]
    config = server_config(
        rounds=1,
        analytics=AnalyticsConfig(histogram=True, popularity=True, top_k=2),
        catalogue=catalogue,
    )
    state = initial_server_state(config)
    req = release_request(state, config, 1, NODES)
    state, outcome = round_step(
        state, CohortResult(req, cohort_sum(req, np.random.default_rng(5), 12)), config
    )
    eps_tree = outcome.summary.epsilon_event_level
    aux = aux_requests(state, outcome, config)
    assert [a.task for a in aux] == [ReleaseTask.HISTOGRAM, ReleaseTask.ITEM_COUNTS]
    assert aux[0].config.top_k == 2 and aux[0].nodes == req.nodes
    assert aux[0].config.hierarchy_version == 1 and aux[1].shape == (7,)
    for a in aux:
        total = np.abs(np.random.default_rng(6).normal(size=a.shape)) + 1.0
        state, outcome = aux_step(state, outcome, AuxResult(a, ReleaseSum(total, 12)), config)
    assert [e.mechanism for e in outcome.ledger_entries] == [
        Mechanism.GAUSSIAN_SUM,
        Mechanism.GAUSSIAN_HISTOGRAM,
        Mechanism.GAUSSIAN_COUNT,
    ]
    assert state.ledger == outcome.ledger_entries
    assert state.aux_releases == ((1, ReleaseTask.HISTOGRAM), (1, ReleaseTask.ITEM_COUNTS))
    assert outcome.summary.epsilon_event_level > eps_tree
    assert 3.95 < outcome.summary.epsilon_event_level <= 4.0
    assert outcome.histogram is not None and outcome.histogram["top_k"] == 2
    assert outcome.popularity is not None and outcome.popularity.items == tuple(catalogue)
    assert set(outcome.summary.analytics) == {"histogram", "popularity"}


def test_popularity_renames_the_rounds_tree() -> None:
    """With a named catalogue, the popularity release renames the round's tree from the
    texts weighted by the DP counts (the same nodes; the labels a rename gives); the state
    carries that tree."""
    from server.hierarchy_builder import rename_hierarchy
    from server.naming import CatalogueTexts
    from server.round import labels_for

    catalogue = [f"item-{i}" for i in range(7)]
    base = server_config(rounds=1, analytics=AnalyticsConfig(popularity=True), catalogue=catalogue)
    state = initial_server_state(base)
    texts = tuple(f"{w} story number {i}" for i, w in enumerate("abcdefg"))
    vecs = normalize_rows(state.leaves.centroids[:7] + 0.05)
    names = CatalogueTexts(tuple(catalogue), texts, vecs)
    config = replace(base, names=names)
    req = release_request(state, config, 1, NODES)
    state, outcome = round_step(
        state, CohortResult(req, cohort_sum(req, np.random.default_rng(5), 12)), config
    )
    (pop,) = aux_requests(state, outcome, config)
    counts = np.arange(7, dtype=np.float64) * 10
    new, out = aux_step(state, outcome, AuxResult(pop, ReleaseSum(counts, 12)), config)
    assert out.popularity is not None and out.hierarchy is not None
    expected = rename_hierarchy(
        outcome.hierarchy,
        names,
        dict(zip(catalogue, out.popularity.counts.tolist(), strict=True)),
        labels_for(config, outcome.tree_adapter),
        config.tree,
    )
    assert new.hierarchy is out.hierarchy and out.hierarchy.version == outcome.hierarchy.version
    assert {n: v.labels for n, v in out.hierarchy.nodes.items()} == {
        n: v.labels for n, v in expected.nodes.items()
    }
    assert set(out.hierarchy.nodes) == set(outcome.hierarchy.nodes)


def test_aux_release_that_failed_changes_nothing_but_the_record() -> None:
    """A histogram that did not sum records what happened and spends nothing."""
    config = server_config(analytics=AnalyticsConfig(histogram=True, popularity=False))
    state = initial_server_state(config)
    req = release_request(state, config, 1, NODES)
    state, outcome = round_step(
        state, CohortResult(req, cohort_sum(req, np.random.default_rng(7), 10)), config
    )
    (hist,) = aux_requests(state, outcome, config)
    new, out2 = aux_step(
        state, outcome, AuxResult(hist, ReleaseSum(None, 0, {"halted": 1})), config
    )
    assert new is state and out2.ledger_entries == outcome.ledger_entries
    record = out2.summary.analytics["histogram"]
    assert {k: record[k] for k in ("usable", "failures")} == {
        "usable": 0,
        "failures": {"halted": 1},
    }
    assert set(record) == {"usable", "failures", "noise_multiplier", "device_noise_std"}


def test_persist_and_restore(tmp_path: Path) -> None:
    """Each round is written once (database, then files); the state read back is the state."""
    config = server_config(adapter=AdapterConfig(enabled=True, server_noise_multiplier=1.0))
    state = initial_server_state(config)
    rng = np.random.default_rng(8)
    with ServerStorage(tmp_path / "server.db") as st:
        for r in (1, 2):
            req = release_request(state, config, r, NODES)
            w = state.adapter.weights
            update = AdapterUpdate(AdapterWeights(w.a, w.b + 0.001 * r), 10)
            state, outcome = round_step(
                state, CohortResult(req, cohort_sum(req, rng, 10), update), config
            )
            persist_round(st, tmp_path, state, outcome)
        back = load_state(st, config)
        assert last_completed_round(st, back) == 2
        assert back.ledger == state.ledger and back.adapter.rounds == (1, 2)
        assert np.array_equal(back.leaves.acc, state.leaves.acc)
        assert back.hierarchy is not None and back.hierarchy.to_json() == state.hierarchy.to_json()  # type: ignore[union-attr]
        assert np.array_equal(back.adapter.weights.b, state.adapter.weights.b)
        assert st.get_arrays("round:2") is not None and st.get_arrays("adapter:v2") is not None
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["ok", "ok"]
    assert (tmp_path / "hierarchy.json").exists() and (tmp_path / "adapter.npz").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_round_modules_import_no_flower_or_ray() -> None:
    """The step and its persistence import neither Flower nor Ray (nor torch)."""
    code = (
        "import sys, server.round, server.persistence, common.round_config\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_adapter_update_of_a_skipped_round_is_on_the_server_ledger() -> None:
    """A skipped tree round still applies the adapter's update, so its server-side noise is
    recorded; a retry records one entry per update it applies, none when none is usable."""
    config = server_config(adapter=AdapterConfig(enabled=True, server_noise_multiplier=1.0))
    state = initial_server_state(config)
    req = release_request(state, config, 1, NODES)
    w = state.adapter.weights
    short = cohort_sum(req, np.random.default_rng(9), 2)
    applied = AdapterUpdate(AdapterWeights(w.a, w.b + 0.001), 10)
    state, out = round_step(state, CohortResult(req, short, applied), config)
    assert out.summary.status is RoundStatus.SKIPPED and state.adapter.rounds == (1,)
    assert [e.mechanism for e in out.ledger_entries] == [Mechanism.SERVER_GAUSSIAN]
    assert state.ledger == out.ledger_entries
    req = release_request(state, config, 1, NODES)
    none_usable = AdapterUpdate(state.adapter.weights, 0, {"no reply before the timeout": 12})
    state, out = round_step(
        state,
        CohortResult(req, cohort_sum(req, np.random.default_rng(10), 10), none_usable, 2),
        config,
    )
    assert out.summary.status is RoundStatus.OK
    assert [e.mechanism for e in out.ledger_entries] == [Mechanism.GAUSSIAN_SUM]
    assert len([e for e in state.ledger if e.mechanism is Mechanism.SERVER_GAUSSIAN]) == 1


def test_catalogue_seeds_replace_the_vocabulary_seeds() -> None:
    """Seeds given to the config (catalogue seeding) are the first round's leaves, unit rows;
    a wrong shape or a non-finite seed is refused naming `seeds`."""
    rng = np.random.default_rng(5)
    seeds = rng.normal(size=(7, DIM)).astype(np.float32)
    run = server_config().run
    config = ServerConfig.build(run, label_space(), None, seeds)
    state = initial_server_state(config)
    assert state.leaves.num_leaves == 7
    np.testing.assert_allclose(
        state.leaves.centroids, seeds / np.linalg.norm(seeds, axis=1, keepdims=True), atol=1e-6
    )
    assert initial_server_state(server_config()).leaves.num_leaves == len(
        label_space().vocabulary.leaves
    )
    for bad in (seeds[:, :3], seeds[:1], np.full((3, DIM), np.nan, np.float32)):
        with pytest.raises(ConfigError, match="`seeds` must be finite"):
            ServerConfig.build(run, label_space(), None, bad)
