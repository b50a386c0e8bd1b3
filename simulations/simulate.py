"""``fedinterest simulate``: the full federated pipeline on Flower's simulation engine.

1. load the dataset (synthetic default, MovieLens, MIND, or any JSONL of events) and partition
   it one client per user;
2. embed every distinct text **once** for the whole run, into a shared embedding cache (an
   item seen by many users is encoded once), and the label vocabulary;
3. give each virtual client its own SQLite store under ``RUN_DIR/clients/``, with its events
   and the cached vectors of its own texts (a deployed device embeds on ingest);
4. run the ServerApp and one ClientApp per user on Flower's simulation engine (Ray backend,
   one CPU per virtual client);
5. compute the metrics against the centralized and catalogue baselines on the same data, and
   write ``hierarchy.json``, ``metrics.json``, ``rounds.jsonl`` and ``config.json``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from client.encoder import TextEncoder, encode_cached
from client.encoder_registry import DEFAULT_ENCODER, make_encoder
from client.policy import DevicePolicy
from client.store import EmbeddingCache, EventStore
from common.config import RunConfig
from common.errors import ConfigError
from common.event_table import EventTable
from common.events import Event, iter_records
from common.hierarchy import Hierarchy
from common.jsonio import atomic_write_text, json_safe
from common.projection import PublicProjection
from common.vocabulary import LabelSpace, Vocabulary, default_vocabulary, load_taxonomy_tsv
from server.round import RoundSummary
from simulations.datasets.bundle import DatasetBundle, load_bundle, load_population
from simulations.datasets.loaders import partition_by_user
from simulations.options import Engine, SimulateOptions, default_cache_path, simulated_device_policy
from simulations.profile_eval import temporal_split
from simulations.run_dir import (
    RunStaging,
    check_resumable,
    check_run_target,
    options_from_run_dir,
    rewrite_outputs_from_db,
    write_config,
)
from simulations.run_metrics import RunData, round_printer, run_metrics
from simulations.seeding import load_names, load_seeds, resolved_run, write_public_files

__all__ = [
    "DatasetBundle",
    "SimulateOptions",
    "default_cache_path",
    "embed_labels",
    "load_bundle",
    "options_from_run_dir",
    "simulate",
]

log = logging.getLogger("fedinterest.simulate")


def embed_labels(
    vocabulary: Vocabulary,
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
) -> LabelSpace:
    """The vocabulary embedded with the devices' encoder and the run's projection."""
    vecs = encode_cached(encoder, cache, [lab.text for lab in vocabulary.labels])
    return LabelSpace(
        vocabulary, projection(vecs), encoder.model_id, encoder.dim, projection.fingerprint, vecs
    )


def _embed(
    opts: SimulateOptions, vocabulary: Vocabulary, texts: set[str], say: Callable[[str], None]
) -> tuple[TextEncoder, EmbeddingCache, PublicProjection, LabelSpace, float]:
    """The run's encoder, cache and projection (its fingerprint covers the encoder), with
    ``texts`` and the vocabulary's labels embedded into the cache; and the seconds that took."""
    run = opts.run
    encoder = make_encoder(opts.encoder, num_threads=os.cpu_count() or 1)
    cache = EmbeddingCache.open(opts.cache or default_cache_path())
    projection = PublicProjection(
        encoder.dim, run.clustering.projection_dim, run.clustering.projection_seed, encoder.model_id
    )
    todo = sorted(texts | {lab.text for lab in vocabulary.labels})
    missing = len(todo) - len(cache.get(encoder.model_id, _hashes(todo)))
    say(f"embedding {missing} new texts ({len(todo) - missing} cached) with {encoder.model_id}")
    t_enc = time.perf_counter()
    encode_cached(encoder, cache, todo, progress=_bar(missing, "encode") if missing else None)
    seconds = time.perf_counter() - t_enc
    return encoder, cache, projection, embed_labels(vocabulary, encoder, cache, projection), seconds


def _prepare_stores(
    run_dir: Path, parts: dict[str, list[Event]], encoder: TextEncoder, cache: EmbeddingCache
) -> list[Path]:
    from common.events import text_hash

    stores = []
    root = run_dir / "clients"
    root.mkdir(parents=True, exist_ok=True)
    for i, (_uid, evs) in enumerate(parts.items()):
        path = _store_path(root, i)
        with EventStore(path) as store:
            # Scaffolding, not device history: a crash here just restarts the preparation, so
            # skip the fsyncs (1,000 stores: minutes -> seconds). The ledger writes of the
            # rounds open the store afresh, with synchronous=FULL.
            store.connection.execute("PRAGMA synchronous=OFF")
            store.ingest(iter_records(evs), flag_quality=False)
            hashes = sorted({text_hash(e.text) for e in evs})
            found = cache.get(encoder.model_id, hashes)
            if found:
                store.embeddings.put(encoder.model_id, list(found), np.stack(list(found.values())))
        stores.append(path)
    return stores


def _with_canary_items(
    items: dict[str, str] | None, opts: SimulateOptions
) -> dict[str, str] | None:
    """The public catalogue, with the empirical audit's canary items (ids only)."""
    if not opts.canary_items:
        return items
    return {**(items or {}), **dict.fromkeys(opts.canary_items, "")}


def _store_path(root: Path, partition_id: int) -> Path:
    return root / f"client-{partition_id:05d}.db"


def _settings_resolver(
    root: Path,
    budget: float | None,
    allow_no_dp: bool,
    noise_seed: int | None,
    overrides: dict[int, float],
    policy: DevicePolicy,
    encoder: str,
) -> Callable[[Any], Any]:
    from client.app import DeviceSettings

    def settings_for(context: Any) -> DeviceSettings:
        pid = int(context.node_config["partition-id"])
        seed = None if noise_seed is None else noise_seed * 100_003 + pid
        eps = overrides.get(pid, budget) if budget is not None else None
        return DeviceSettings(
            _store_path(root, pid),
            budget_epsilon=eps,
            allow_no_dp=allow_no_dp,
            noise_seed=seed,
            encoder=encoder,
            policy=policy,
        )

    return settings_for


@dataclass(frozen=True)
class _DeviceRecipe:
    """How a Ray actor rebuilds the simulation's ClientApp (see :func:`_client_app`)."""

    token: str
    root: str
    budget: float | None
    allow_no_dp: bool
    noise_seed: int | None
    overrides: tuple[tuple[int, float], ...]
    mods: tuple[Any, ...]
    policy: DevicePolicy
    encoder: str = DEFAULT_ENCODER
    shards: bool = False


#: The ClientApps this process built, by recipe token (one per simulation per Ray actor).
_CLIENT_APPS: dict[str, Any] = {}


def _client_app(recipe: _DeviceRecipe) -> Any:
    """The simulation's ClientApp, built once per process.

    Flower's Ray backend pickles the ClientApp with *every* message it sends to an actor. A
    plain ClientApp pickles its handlers' closures by value (and, before, the list of every
    device's store path: O(devices) bytes per message, O(devices^2) per round); this one
    pickles as its small recipe and each actor keeps the app it built from it.
    """
    app = _CLIENT_APPS.get(recipe.token)
    if app is None:
        from client.app import build_client_app
        from simulations.flower_speedups import speedups_mod

        if recipe.shards:
            from client.shard_app import build_shard_app
            from simulations.engines.batched import shard_recipe_resolver

            app = build_shard_app(
                shard_recipe_resolver(
                    recipe.root, recipe.allow_no_dp, recipe.noise_seed, recipe.policy
                ),
                mods=list(recipe.mods),
            )
        else:
            app = build_client_app(
                _settings_resolver(
                    Path(recipe.root),
                    recipe.budget,
                    recipe.allow_no_dp,
                    recipe.noise_seed,
                    dict(recipe.overrides),
                    recipe.policy,
                    recipe.encoder,
                ),
                mods=[speedups_mod, *recipe.mods],
            )
        app.__class__ = _recipe_app_class()
        setattr(app, "_fedinterest_recipe", recipe)  # noqa: B010
        _CLIENT_APPS[recipe.token] = app
    return app


@functools.cache
def _recipe_app_class() -> type:
    from flwr.clientapp import ClientApp

    class _RecipeClientApp(ClientApp):
        def __reduce__(self) -> tuple[Any, ...]:
            return (_client_app, (getattr(self, "_fedinterest_recipe"),))  # noqa: B009

    return _RecipeClientApp


def _quiet_runtime(verbose: bool) -> None:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # each Ray actor has one CPU: one BLAS thread (see _single_threaded_blas)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread in this process (when threadpoolctl is installed).

    The driver's numpy work is many small matrix products (profiles, leaf statistics), done
    while the Ray actors keep every core busy: measured on the 2-core host under load, a
    2-thread OpenBLAS call spin-waits for its descheduled partner (a 257 x 128 norm took
    ~10 ms instead of ~30 us; the profile evaluation spent a quarter of its time there).
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def simulate(
    opts: SimulateOptions,
    *,
    progress: Callable[[str], None] | None = None,
    on_reply: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Runs one simulation; returns the metrics dict (also written to ``metrics.json``).

    Args:
        opts: what to run.
        progress: called with one human-readable line per step and round.
        on_reply: called with every reply message the server receives (egress tests).
    """
    with _single_threaded_blas():
        return _simulate(opts, progress=progress, on_reply=on_reply)


def _simulate(
    opts: SimulateOptions,
    *,
    progress: Callable[[str], None] | None,
    on_reply: Callable[[Any], None] | None,
) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    run = opts.run
    target = Path(opts.out)
    # everything is checked before the output is touched: a bad --out, taxonomy or dataset
    # fails here, with nothing written or removed
    if opts.resume:
        check_resumable(target)
    else:
        check_run_target(target, overwrite=opts.overwrite)
    vocabulary = load_taxonomy_tsv(opts.taxonomy) if opts.taxonomy else default_vocabulary()
    if run.privacy.no_dp:
        say(
            "WARNING: --no-dp: releases carry NO noise; epsilon is infinite. Never use this with real users."
        )
    table = None
    if opts.engine is Engine.BATCHED:
        _check_batched(opts)
        table, bundle = load_population(
            opts.dataset,
            clients=opts.clients,
            seed=run.seed,
            events_per_user=opts.events_per_user,
            max_events_per_client=opts.max_events_per_client,
        )
        users = table.num_users
    else:
        bundle = load_bundle(
            opts.dataset, clients=opts.clients, seed=run.seed, events_per_user=opts.events_per_user
        )
        parts = partition_by_user(bundle.events, max_events_per_client=opts.max_events_per_client)
        users = len(parts)
    if users < run.min_clients:
        raise ConfigError(f"the dataset has {users} users; a run needs at least {run.min_clients}.")
    staging = RunStaging(target, resume=opts.resume)
    rounds_started: list[bool] = []
    try:
        if table is not None:
            # handed over: the batched run drops the population once its shards are written
            population, table = [table], None
            metrics = _simulate_batched_into(
                staging.path,
                opts,
                vocabulary,
                bundle,
                population,
                say,
                t0,
                on_reply,
                rounds_started,
            )
        else:
            metrics = _simulate_into(
                staging.path, opts, vocabulary, bundle, parts, say, t0, on_reply, rounds_started
            )
    except BaseException as err:
        # a replacement never lands half-done; a fresh run that reached its rounds stays for
        # --resume (unless it failed with a plain error before them)
        keep = bool(rounds_started) or not isinstance(err, Exception)
        staging.abort(keep=keep)
        raise
    staging.commit()
    return metrics


def _simulate_into(
    out: Path,
    opts: SimulateOptions,
    vocabulary: Vocabulary,
    bundle: DatasetBundle,
    parts: dict[str, list[Event]],
    say: Callable[[str], None],
    t0: float,
    on_reply: Callable[[Any], None] | None,
    rounds_started: list[bool],
) -> dict[str, Any]:
    run = opts.run
    if opts.resume:
        say(f"resuming {out}")
    _quiet_runtime(opts.verbose)
    train, test = temporal_split(parts, opts.holdout)
    for idx, extra in opts.canaries.items():
        uid = list(train)[idx]
        kept = [] if opts.canary_devices else train[uid]
        train[uid] = sorted([*kept, *extra], key=lambda e: (e.timestamp, e.event_id))
    events = [e for evs in train.values() for e in evs]
    held = [e for evs in test.values() for e in evs]
    say(
        f"dataset {bundle.name}: {len(events)} training events of {len(parts)} users "
        f"({len(held)} held out), {len(bundle.items)} catalogue items"
    )

    texts = {e.text for e in events} | {e.text for e in held} | set(bundle.catalogue)
    encoder, cache, projection, labels, encode_seconds = _embed(opts, vocabulary, texts, say)
    if opts.resume:
        stores = sorted((out / "clients").glob("client-*.db"))
        if len(stores) != len(train):
            raise ConfigError(
                f"{str(out)!r} has {len(stores)} device stores; the run had {len(train)}."
            )
        rewrite_outputs_from_db(out)
    else:
        write_public_files(out, run, bundle.items, labels, encoder=encoder, cache=cache,
                    projection=projection, population=len(train))  # fmt: skip
        stores = _prepare_stores(out, train, encoder, cache)

    summaries: list[RoundSummary] = []
    on_round = round_printer(run, say, summaries)

    if not opts.resume:
        write_config(out, opts, run, len(parts), vocabulary)
    t_fl = time.perf_counter()
    rounds_started.append(True)
    _run_flower(
        run, labels, out, stores, opts, on_round, on_reply, _with_canary_items(bundle.items, opts)
    )
    fl_seconds = time.perf_counter() - t_fl
    data = RunData(
        opts, run, bundle, events, held, train, test, encoder, cache, projection, labels,
        len(parts), out,
    )  # fmt: skip
    return _finish(data, summaries, t0, encode_seconds, fl_seconds)


def _check_batched(opts: SimulateOptions) -> None:
    """What the batched engine does not simulate is refused, naming the option."""
    run = opts.run
    refusals = {
        "--adapter (the adapter trains per device with Opacus)": run.adapter.enabled,
        "client mods (fault injection acts on device messages)": bool(opts.client_mods),
        f"--robust {run.robust} (needs each device's release)": run.robust != "none",
    }
    bad = [name for name, on in refusals.items() if on]
    if bad:
        raise ConfigError(
            f"--engine batched does not support {'; '.join(bad)}. Use --engine devices."
        )
    if opts.workers is not None and not (isinstance(opts.workers, int) and opts.workers >= 1):
        raise ConfigError(f"`--workers` must be an int >= 1. Found {opts.workers!r}.")


def _simulate_batched_into(
    out: Path,
    opts: SimulateOptions,
    vocabulary: Vocabulary,
    bundle: DatasetBundle,
    population: list[EventTable],
    say: Callable[[str], None],
    t0: float,
    on_reply: Callable[[Any], None] | None,
    rounds_started: list[bool],
) -> dict[str, Any]:
    """The batched engine's run (:mod:`simulations.engines.batched`); ``population`` holds the
    population's table, taken out here so that it can be freed once the shards are written."""
    from server.batched import BatchedCollector
    from simulations.engines.batched import (
        EvaluationSample,
        default_workers,
        shard_path,
        write_shards,
    )

    run = opts.run
    if opts.resume:
        say(f"resuming {out}")
    _quiet_runtime(opts.verbose)
    table = population.pop()
    train_t, test_t = table.temporal_split(opts.holdout)
    # the empirical audit's canaries join their devices' training events (as in _simulate_into)
    train_t = train_t.with_events(opts.canaries, replace=opts.canary_devices)
    n_users = table.num_users
    say(
        f"dataset {bundle.name}: {len(train_t)} training events of {n_users} users "
        f"({0 if test_t is None else len(test_t)} held out), {len(bundle.items)} catalogue items"
    )
    texts = set(table.texts) | set(bundle.catalogue)
    encoder, cache, projection, labels, encode_seconds = _embed(opts, vocabulary, texts, say)
    workers = min(opts.workers or default_workers(), n_users)
    root = out / "clients"
    if opts.resume:
        shards = sorted(root.glob("shard-*.db"))
        if shards != [shard_path(root, i) for i in range(workers)]:
            raise ConfigError(
                f"{str(out)!r} has {len(shards)} shard stores; the run had {workers}."
            )
        rewrite_outputs_from_db(out)
    else:
        write_public_files(out, run, bundle.items, labels, encoder=encoder, cache=cache,
                    projection=projection, population=n_users)  # fmt: skip
        p = run.privacy
        budgets = np.full(n_users, np.nan if p.no_dp else p.device_budget_epsilon)
        for idx, eps in opts.device_budgets.items():
            if not 0 <= idx < n_users:
                raise ConfigError(f"a device budget names user {idx}; the run has {n_users}.")
            budgets[idx] = eps
        say(f"writing {workers} shard stores ({n_users} devices)")
        shards = write_shards(
            root, train_t, workers, cache=cache, model_id=encoder.model_id, budgets=budgets
        )
        # the resolved worker count: a resume needs the same shards on any machine
        write_config(out, replace(opts, workers=workers), run, n_users, vocabulary)
    # the evaluation sample, then the population's columns go (the shards hold them now)
    sample = EvaluationSample.draw(n_users, opts.eval_users, run.seed)
    train = train_t.take_users(sample.users).user_events()
    test: dict[str, list[Event]] = {u: [] for u in train}
    if test_t is not None:
        index = {u: i for i, u in enumerate(test_t.users)}
        picked = np.array([index[u] for u in train if u in index], dtype=np.int64)
        test.update(test_t.take_users(picked).user_events())
    train_events = len(train_t)
    del table, train_t, test_t
    summaries: list[RoundSummary] = []
    collectors: list[BatchedCollector] = []

    def collector(grid: Any) -> BatchedCollector:
        c = BatchedCollector(grid, timeout=run.round_timeout)
        collectors.append(c)
        return c

    t_fl = time.perf_counter()
    rounds_started.append(True)
    _run_flower(
        run,
        labels,
        out,
        shards,
        opts,
        round_printer(run, say, summaries),
        on_reply,
        _with_canary_items(bundle.items, opts),
        shards=True,
        collector=collector,
    )
    fl_seconds = time.perf_counter() - t_fl
    say(f"evaluating on {len(sample.users)} of {n_users} users")
    truth = bundle.truth
    if truth is not None:
        truth = [u for u in truth if getattr(u, "user_id", None) in train]
    data = RunData(
        opts, run, replace(bundle, truth=truth),
        [e for evs in train.values() for e in evs], [e for evs in test.values() for e in evs],
        train, test, encoder, cache, projection, labels, n_users, out,
    )  # fmt: skip
    extra = {
        "engine": {
            "name": Engine.BATCHED.value,
            "workers": collectors[-1].workers() if collectors else [],
            "not_simulated": "SecAgg+ masking, key agreement and per-stage dropouts "
            "(the secure sum is an exact sum); message bytes are per shard, not per device",
        },
        "events": train_events,
        "evaluation": sample.describe(),
        "bytes_up_per_client_per_round": None,
        "bytes_down_per_client_per_round": None,
    }
    return _finish(data, summaries, t0, encode_seconds, fl_seconds, extra)


def _finish(
    data: RunData,
    summaries: list[RoundSummary],
    t0: float,
    encode_seconds: float,
    fl_seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    opts, out = data.opts, data.out
    if opts.resume:
        rewrite_outputs_from_db(out)
        from server.storage import ServerStorage

        with ServerStorage(out / "server.db") as st:
            # metrics describe the whole run, the rounds before the crash included
            summaries = [
                RoundSummary(
                    **{k: v for k, v in r.items() if k in RoundSummary.__dataclass_fields__}
                )
                for r in st.rounds()
            ]
    h = Hierarchy.load(out / "hierarchy.json") if (out / "hierarchy.json").exists() else None
    if h is None:
        raise ConfigError(
            "the run produced no hierarchy (every round was skipped); see rounds.jsonl."
        )
    t_eval = time.perf_counter()
    metrics = run_metrics(data, h, summaries)
    metrics.update(extra or {"engine": {"name": Engine.DEVICES.value}})
    evaluate_seconds = time.perf_counter() - t_eval
    metrics["wall_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["timing"] = {
        "encode_seconds": round(encode_seconds, 2),
        "federated_seconds": round(fl_seconds, 2),
        "evaluate_seconds": round(evaluate_seconds, 2),
        "prepare_seconds": round(
            metrics["wall_seconds"] - encode_seconds - fl_seconds - evaluate_seconds, 2
        ),
    }
    atomic_write_text(
        out / "metrics.json", json.dumps(json_safe(metrics), indent=1, sort_keys=True) + "\n"
    )
    data.cache.close()
    return metrics


def _hashes(texts: list[str]) -> list[str]:
    from common.events import text_hash

    return [text_hash(t) for t in texts]


def _bar(total: int, desc: str) -> Callable[[int], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="text", file=sys.stderr, leave=False, disable=None)

    def tick(done: int) -> None:
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return tick


def _run_flower(
    run: RunConfig,
    labels: LabelSpace,
    out: Path,
    stores: list[Path],
    opts: SimulateOptions,
    on_round: Callable[[RoundSummary], None],
    on_reply: Callable[[Any], None] | None = None,
    items: dict[str, str] | None = None,
    *,
    shards: bool = False,
    collector: Callable[[Any], Any] | None = None,
) -> None:
    """Runs the rounds on Flower's simulation engine: one virtual node per store in
    ``stores`` (device stores, or the batched engine's shard stores with ``shards``)."""
    from flwr.simulation import run_simulation

    from server.app import build_server_app
    from simulations.flower_speedups import flower_speedups

    p = run.privacy
    budget = None if p.no_dp else p.device_budget_epsilon
    root = stores[0].parent if stores else out / "clients"
    if not shards and any(path != _store_path(root, i) for i, path in enumerate(stores)):
        raise ConfigError(f"device stores must be {root}/client-NNNNN.db, numbered from 0.")
    client = _client_app(
        _DeviceRecipe(
            token=uuid.uuid4().hex,
            root=str(root),
            budget=budget,
            allow_no_dp=p.no_dp,
            noise_seed=opts.noise_seed,
            overrides=tuple(sorted(opts.device_budgets.items())),
            mods=tuple(opts.client_mods),
            policy=simulated_device_policy(run, len(stores) if not shards else opts.clients),
            encoder=opts.encoder,
            shards=shards,
        )
    )
    catalogue = sorted(items) if items else None
    server = build_server_app(
        resolved_run(run, out),
        labels,
        out,
        expected_nodes=len(stores),
        on_round=on_round,
        on_reply=on_reply,
        catalogue=catalogue,
        collector=collector,
        seeds=load_seeds(out),
        names=load_names(out),
    )
    init_args: dict[str, Any] = {
        "logging_level": "ERROR" if not opts.verbose else "INFO",
        "log_to_driver": opts.verbose,
    }
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # an existing Ray cluster (docs/performance.md): one actor per CPU of every node; the
        # run directory must be on a filesystem all nodes share (the device stores live there)
        init_args["address"] = address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": init_args,
    }
    try:
        with flower_speedups():
            run_simulation(
                server_app=server,
                client_app=client,
                num_supernodes=len(stores),
                backend_config=backend,
                verbose_logging=opts.verbose,
            )
    finally:
        _CLIENT_APPS.clear()
