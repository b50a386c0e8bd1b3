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
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.encoder import EncoderConfig, MiniLMEncoder, TextEncoder, encode_cached
from client.release import RELEASE_WEIGHTING
from client.store import EmbeddingCache, EventStore
from common.adapter import AdapterWeights
from common.config import RunConfig
from common.errors import ConfigError
from common.events import Event, EventType, iter_records
from common.features import weights_for_events
from common.hierarchy import Hierarchy
from common.jsonio import atomic_write_text, json_safe
from common.privacy import gaussian_epsilon
from common.projection import PublicProjection
from common.vocabulary import LabelSpace, Vocabulary, default_vocabulary, load_taxonomy_tsv
from server.hierarchy_builder import CutCriterion, TreeConfig
from server.round import RoundSummary
from simulations.datasets.loaders import load_events, load_mind, load_movielens, partition_by_user
from simulations.evaluation import (
    METRIC_KEYS,
    GroundTruth,
    catalogue_baseline,
    centralized_baseline,
    clustering_metrics,
    next_event_recall,
)
from simulations.profile_eval import temporal_split
from simulations.run_dir import RunStaging, check_run_target

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


def default_cache_path() -> Path:
    """``$FEDINTEREST_CACHE``, else ``$XDG_CACHE_HOME/fedinterest``, else ``~/.cache/fedinterest``
    (``embeddings.db`` inside)."""
    env = os.environ.get("FEDINTEREST_CACHE")
    if env:
        return Path(env) / "embeddings.db"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedinterest" / "embeddings.db"


@dataclass(frozen=True)
class SimulateOptions:
    """What ``fedinterest simulate`` runs.

    Attributes:
        dataset: ``synthetic``, ``movielens``, ``mind:DIR`` or ``events:FILE.jsonl``.
        clients: virtual clients (one per user; the first ``clients`` users of a real dataset
            in a seeded random order).
        out: the run directory.
        run: the federated run's configuration.
        events_per_user: median events per synthetic user.
        max_events_per_client: each client keeps its latest events up to this cap.
        cache: the shared embedding cache file.
        taxonomy: a TSV label space instead of the project's vocabulary.
        overwrite: replace an existing run directory.
        noise_seed: seed the devices' DP noise (tests only: predictable noise is not private).
        canaries: extra events per client index (the empirical audit's canaries).
        device_budgets: per-client-index lifetime epsilon overriding the default budget.
        evaluate: compute the metrics against the baselines (off for audit runs).
        resume: continue the run in ``out`` from its last completed round (after a crash).
        client_mods: Flower mods wrapped around every virtual device (fault injection in tests:
            dropouts, poisoning).
        holdout: share of each user's latest events held out from the federated run and the
            baselines (the ranking and classification evaluation uses them).
    """

    dataset: str = "synthetic"
    clients: int = 100
    out: Path = Path("run")
    run: RunConfig = field(default_factory=RunConfig)
    events_per_user: int = 60
    max_events_per_client: int | None = 5000
    cache: Path | None = None
    taxonomy: Path | None = None
    overwrite: bool = False
    noise_seed: int | None = None
    verbose: bool = False
    holdout: float = 0.2
    canaries: dict[int, list[Event]] = field(default_factory=dict)
    resume: bool = False
    client_mods: tuple[Any, ...] = ()
    device_budgets: dict[int, float] = field(default_factory=dict)
    evaluate: bool = True


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


def load_bundle(spec: str, *, clients: int, seed: int, events_per_user: int = 60) -> DatasetBundle:
    """Loads ``synthetic``, ``movielens``, ``mind:DIR`` or ``events:FILE``."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from simulations.datasets.synthetic import SyntheticConfig, generate

        ds = generate(SyntheticConfig(users=clients, seed=seed, events_per_user=events_per_user))
        return DatasetBundle(
            "synthetic", ds.events, {it.item_id: it.text for it in ds.items}, truth=ds.users
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
    raise ConfigError(
        f"`--dataset` must be synthetic, movielens, mind:DIR or events:FILE. Found {spec!r}."
    )


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


def _store_path(root: Path, partition_id: int) -> Path:
    return root / f"client-{partition_id:05d}.db"


def _settings_resolver(
    root: Path,
    budget: float | None,
    allow_no_dp: bool,
    noise_seed: int | None,
    overrides: dict[int, float],
) -> Callable[[Any], Any]:
    from client.app import DeviceSettings

    def settings_for(context: Any) -> DeviceSettings:
        pid = int(context.node_config["partition-id"])
        seed = None if noise_seed is None else noise_seed * 100_003 + pid
        eps = overrides.get(pid, budget) if budget is not None else None
        return DeviceSettings(
            _store_path(root, pid), budget_epsilon=eps, allow_no_dp=allow_no_dp, noise_seed=seed
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

        app = build_client_app(
            _settings_resolver(
                Path(recipe.root),
                recipe.budget,
                recipe.allow_no_dp,
                recipe.noise_seed,
                dict(recipe.overrides),
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
        _check_resumable(target)
    else:
        check_run_target(target, overwrite=opts.overwrite)
    vocabulary = load_taxonomy_tsv(opts.taxonomy) if opts.taxonomy else default_vocabulary()
    if run.privacy.no_dp:
        say(
            "WARNING: --no-dp: releases carry NO noise; epsilon is infinite. Never use this with real users."
        )
    bundle = load_bundle(
        opts.dataset, clients=opts.clients, seed=run.seed, events_per_user=opts.events_per_user
    )
    parts = partition_by_user(bundle.events, max_events_per_client=opts.max_events_per_client)
    if len(parts) < run.min_clients:
        raise ConfigError(
            f"the dataset has {len(parts)} users; a run needs at least {run.min_clients}."
        )
    staging = RunStaging(target, resume=opts.resume)
    rounds_started: list[bool] = []
    try:
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
        train[uid] = sorted([*train[uid], *extra], key=lambda e: (e.timestamp, e.event_id))
    events = [e for evs in train.values() for e in evs]
    held = [e for evs in test.values() for e in evs]
    say(
        f"dataset {bundle.name}: {len(events)} training events of {len(parts)} users "
        f"({len(held)} held out), {len(bundle.items)} catalogue items"
    )

    encoder = MiniLMEncoder(EncoderConfig(num_threads=os.cpu_count() or 1))
    cache = EmbeddingCache.open(opts.cache or default_cache_path())
    projection = PublicProjection(
        encoder.dim, run.clustering.projection_dim, run.clustering.projection_seed
    )
    texts = sorted(
        {e.text for e in events}
        | {e.text for e in held}
        | set(bundle.catalogue)
        | {lab.text for lab in vocabulary.labels}
    )
    missing = len(texts) - len(cache.get(encoder.model_id, _hashes(texts)))
    say(f"embedding {missing} new texts ({len(texts) - missing} cached)")
    t_enc = time.perf_counter()
    encode_cached(encoder, cache, texts, progress=_bar(missing, "encode") if missing else None)
    encode_seconds = time.perf_counter() - t_enc
    labels = embed_labels(vocabulary, encoder, cache, projection)
    if opts.resume:
        stores = sorted((out / "clients").glob("client-*.db"))
        if len(stores) != len(train):
            raise ConfigError(
                f"{str(out)!r} has {len(stores)} device stores; the run had {len(train)}."
            )
        _rewrite_outputs_from_db(out)
    else:
        labels.save(out / "labels.npz")
        stores = _prepare_stores(out, train, encoder, cache)

    summaries: list[RoundSummary] = []

    def on_round(s: RoundSummary) -> None:
        summaries.append(s)
        eps = "inf" if not math.isfinite(s.epsilon_event_level) else f"{s.epsilon_event_level:.3f}"
        say(
            f"round {s.server_round}/{run.rounds}: {s.status}, {s.usable}/{s.sampled} releases, "
            f"{s.live_leaves} fine / {s.level1_nodes} broad interests, event-level epsilon {eps}, {s.seconds:.1f}s"
        )

    if not opts.resume:
        _write_config(out, opts, run, len(parts), vocabulary)
    t_fl = time.perf_counter()
    rounds_started.append(True)
    _run_flower(run, labels, out, stores, opts, on_round, on_reply, bundle.items)
    fl_seconds = time.perf_counter() - t_fl
    return _finish(
        opts,
        run,
        bundle,
        events,
        held,
        train,
        test,
        encoder,
        cache,
        projection,
        labels,
        summaries,
        len(parts),
        out,
        t0,
        encode_seconds,
        fl_seconds,
    )


def _write_config(
    out: Path, opts: SimulateOptions, run: RunConfig, clients: int, vocabulary: Vocabulary
) -> None:
    doc = {
        "dataset": opts.dataset,
        "clients": clients,
        "events_per_user": opts.events_per_user,
        "max_events_per_client": opts.max_events_per_client,
        "holdout": opts.holdout,
        "taxonomy": str(opts.taxonomy) if opts.taxonomy else None,
        "run": asdict(run),
        "vocabulary": vocabulary.name,
        "device_budget_epsilon": None if run.privacy.no_dp else run.privacy.device_budget_epsilon,
        "device_budgets": {str(k): v for k, v in opts.device_budgets.items()},
    }
    atomic_write_text(out / "config.json", json.dumps(json_safe(doc), indent=1, default=str) + "\n")


def _check_resumable(out: Path) -> None:
    for name in ("config.json", "server.db", "labels.npz", "clients"):
        if not (out / name).exists():
            raise ConfigError(
                f"cannot resume {str(out)!r}: it has no {name} (was it written by simulate?)."
            )


def _rewrite_outputs_from_db(out: Path) -> None:
    """After a crash, ``rounds.jsonl`` and ``hierarchy.json`` are rebuilt from the server's
    database (the source of truth, written in one transaction per round)."""
    from server.storage import ServerStorage

    with ServerStorage(out / "server.db") as st:
        rounds = st.rounds()
        h = st.latest_version()
    atomic_write_text(
        out / "rounds.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds)
    )
    if h is not None:
        h.save(out / "hierarchy.json")


def options_from_run_dir(run_dir: str | Path, **over: Any) -> SimulateOptions:
    """The options a run directory was written with (``config.json``), for resuming or
    re-running it (e.g. the empirical audit). A corrupt or foreign file is a
    :class:`ConfigError` naming the file and the field."""
    d = Path(run_dir)
    path = d / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(d)!r} has no config.json.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is not a JSON run config: {err}.") from err
    try:
        if not isinstance(cfg, dict) or not isinstance(cfg.get("run"), dict):
            raise ConfigError("it must be an object with a `run` object.")
        return _options_from_config(cfg, d, over)
    except ConfigError as err:
        raise ConfigError(f"{str(path)!r}: {err}") from err
    except KeyError as err:
        raise ConfigError(f"{str(path)!r} lacks the field {err}.") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{str(path)!r} has a field of the wrong type or value: {err}.") from err


def _options_from_config(cfg: dict[str, Any], d: Path, over: dict[str, Any]) -> SimulateOptions:
    from common.config import AdapterConfig, AnalyticsConfig, ClusteringConfig, PrivacyConfig

    r = cfg["run"]
    run = RunConfig(
        **{
            k: v for k, v in r.items() if k not in ("privacy", "clustering", "adapter", "analytics")
        },
        privacy=PrivacyConfig(**r["privacy"]),
        clustering=ClusteringConfig(**r["clustering"]),
        adapter=AdapterConfig(**r.get("adapter", {})),
        analytics=AnalyticsConfig(**r.get("analytics", {})),
    )
    base = SimulateOptions(
        dataset=cfg["dataset"],
        clients=int(cfg["clients"]),
        out=d,
        run=run,
        events_per_user=int(cfg.get("events_per_user", 60)),
        max_events_per_client=cfg.get("max_events_per_client", 5000),
        holdout=float(cfg.get("holdout", 0.2)),
        taxonomy=Path(cfg["taxonomy"]) if cfg.get("taxonomy") else None,
        device_budgets={int(k): float(v) for k, v in (cfg.get("device_budgets") or {}).items()},
    )
    return replace(base, **over)


def _finish(
    opts: SimulateOptions,
    run: RunConfig,
    bundle: DatasetBundle,
    events: list[Event],
    held: list[Event],
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
    labels: LabelSpace,
    summaries: list[RoundSummary],
    clients: int,
    out: Path,
    t0: float,
    encode_seconds: float,
    fl_seconds: float,
) -> dict[str, Any]:
    if opts.resume:
        _rewrite_outputs_from_db(out)
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
    metrics = _metrics(
        opts,
        run,
        bundle,
        events,
        held,
        train,
        test,
        encoder,
        cache,
        projection,
        labels,
        h,
        summaries,
        clients,
        out,
    )
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
    cache.close()
    return metrics


def _final_adapter(run_dir: Path) -> AdapterWeights | None:
    path = run_dir / "adapter.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        w = AdapterWeights(z["a"], z["b"])
    return None if w.is_identity() else w


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
) -> None:
    from flwr.simulation import run_simulation

    from server.app import build_server_app
    from simulations.flower_speedups import flower_speedups

    p = run.privacy
    budget = None if p.no_dp else p.device_budget_epsilon
    root = stores[0].parent if stores else out / "clients"
    if any(path != _store_path(root, i) for i, path in enumerate(stores)):
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
        )
    )
    catalogue = sorted(items) if items else None
    server = build_server_app(
        run,
        labels,
        out,
        expected_nodes=len(stores),
        on_round=on_round,
        on_reply=on_reply,
        catalogue=catalogue,
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


def _metrics(
    opts: SimulateOptions,
    run: RunConfig,
    bundle: DatasetBundle,
    events: list[Event],
    held: list[Event],
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    encoder: TextEncoder,
    cache: EmbeddingCache,
    projection: PublicProjection,
    labels: LabelSpace,
    h: Hierarchy,
    summaries: list[RoundSummary],
    clients: int,
    out_dir: Path,
) -> dict[str, Any]:
    p = run.privacy
    done = [s for s in summaries if s.status == "ok"]
    z = summaries[0].noise_multiplier if summaries else 0.0
    per_round = math.inf if z == 0 else gaussian_epsilon(z, p.delta, p.accountant)
    total = done[-1].epsilon_event_level if done else 0.0
    sampled_rounds = sum(s.sampled for s in summaries) or 1
    out: dict[str, Any] = {
        "dataset": bundle.name,
        "mode": p.mode.value,
        "no_dp": p.no_dp,
        "epsilon_event_level_total": total,
        "epsilon_event_level_per_round": per_round,
        "epsilon_budget": p.epsilon,
        "delta": p.delta,
        "noise_multiplier": z,
        "rounds": run.rounds,
        "rounds_completed": len(done),
        "clients": clients,
        "events": len(events),
        "catalogue_items": len(bundle.catalogue),
        "bytes_up_per_client_per_round": round(
            sum(s.bytes_up for s in summaries) / sampled_rounds, 1
        ),
        "bytes_down_per_client_per_round": round(
            sum(s.bytes_down for s in summaries) / sampled_rounds, 1
        ),
        "hierarchy_version": h.version,
        "level1_nodes": len(h.level(1)),
        "level2_nodes": len(h.level(2)),
    }
    raw = encode_cached(encoder, cache, [e.text for e in events])
    vectors = projection(raw)
    adapter = _final_adapter(out_dir)
    fed_vectors = projection(adapter.apply(raw)) if adapter is not None else vectors
    if run.adapter.enabled and adapter is not None:
        out["adapter"] = {
            "update_norm_total": round(
                adapter.minus(
                    AdapterWeights.initial(encoder.dim, run.adapter.rank, run.adapter.seed)
                ),
                6,
            ),
            "next_event_recall10": next_event_recall(events, fed_vectors, seed=run.seed),
            "next_event_recall10_without": next_event_recall(events, vectors, seed=run.seed),
        }
    if not opts.evaluate:
        return out
    weights = weights_for_events(
        events, reference_time=0.0, config=replace(RELEASE_WEIGHTING, max_weight=p.max_weight)
    )
    leaves = list(labels.vocabulary.leaves) or list(labels.vocabulary.labels)
    _, seeds = labels.subset(leaves)
    c = run.clustering
    tree = TreeConfig(
        criterion=CutCriterion(c.cut), level1_k=c.level1_k, label_weight=c.label_weight
    )
    # the centralized baseline sees the same training events as the federated run
    central = centralized_baseline(
        vectors, weights, seeds, labels=labels, fingerprint=projection.fingerprint, tree=tree
    )
    all_events = [*events, *held]
    truth = GroundTruth.from_events(all_events)
    if truth is not None:
        all_raw = encode_cached(encoder, cache, [e.text for e in all_events])
        all_vec = projection(all_raw)
        all_fed = projection(adapter.apply(all_raw)) if adapter is not None else all_vec
        results = {
            "federated": clustering_metrics(all_fed, h, truth),
            "centralized": clustering_metrics(all_vec, central, truth),
        }
        if bundle.catalogue:
            cat_vecs = projection(encode_cached(encoder, cache, bundle.catalogue))
            catalogue = catalogue_baseline(
                cat_vecs, seeds, labels=labels, fingerprint=projection.fingerprint, tree=tree
            )
            results["catalogue"] = clustering_metrics(all_vec, catalogue, truth)
        out.update(results)
        out["ratio"] = {
            k: (results["federated"][k] / results["centralized"][k])
            if results["centralized"].get(k)
            else None
            for k in METRIC_KEYS
            if k in results["federated"]
        }
    out.update(
        _profile_metrics(
            bundle, train, test, encoder, cache, h, central, adapter, out_dir, run.seed
        )
    )
    return out


def _profile_metrics(
    bundle: DatasetBundle,
    train: dict[str, list[Event]],
    test: dict[str, list[Event]],
    encoder: TextEncoder,
    cache: EmbeddingCache,
    h: Hierarchy,
    central: Hierarchy,
    adapter: AdapterWeights | None,
    out_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Ranking, classification and drift of the profiles (see :mod:`simulations.profile_eval`)."""
    from collections import Counter

    from simulations.profile_eval import (
        ProfileSide,
        classification_eval,
        drift_lags,
        node_labels,
        ranking_eval,
    )

    def vec(texts: list[str]) -> npt.NDArray[np.float32]:
        return (
            encode_cached(encoder, cache, texts)
            if texts
            else np.zeros((0, encoder.dim), np.float32)
        )

    train_pop: dict[str, float] = dict(
        Counter(e.item_id for evs in train.values() for e in evs if e.item_id)
    )
    dp_pop, dp_noise = _dp_popularity(out_dir)
    fed = ProfileSide("federated", h, adapter, dp_pop, dp_noise)
    cen = ProfileSide("centralized", central, None, train_pop if dp_pop is not None else None)
    out: dict[str, Any] = {}
    if bundle.items and any(test.values()):
        out["ranking"] = ranking_eval(
            train, test, bundle.items, vec, [fed, cen], train_popularity=train_pop, seed=seed
        )
        out["ranking"]["popularity_prior"] = "dp item counts" if dp_pop is not None else "none"
    events = [e for evs in train.values() for e in evs]
    if events and all(e.category for e in events):
        projection = fed.profile([], np.zeros((0, encoder.dim), np.float32)).projection
        raw = vec([e.text for e in events])
        f1, f2 = node_labels(
            h, events, projection(adapter.apply(raw) if adapter is not None else raw)
        )
        c1, c2 = node_labels(central, events, projection(raw))
        out["classification"] = {
            "federated": classification_eval(train, test, vec, fed, f1, f2),
            "centralized": classification_eval(train, test, vec, cen, c1, c2),
        }
        if bundle.truth is not None:
            by_user: dict[str, list[Event]] = {
                u: [*train.get(u, []), *test.get(u, [])] for u in train
            }
            lag = drift_lags(bundle.truth, by_user, vec, fed, f1)
            if lag:
                out["drift"] = {"federated": lag}
    return out


def _dp_popularity(run_dir: Path) -> tuple[dict[str, float] | None, float]:
    """The run's DP item counts and the standard deviation of their noise."""
    path = run_dir / "popularity.npz"
    if not path.exists():
        return None, 0.0
    with np.load(path) as z:
        counts = {str(i): float(c) for i, c in zip(z["items"], z["counts"], strict=True)}
        return counts, float(z["noise_std"])
