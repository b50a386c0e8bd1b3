"""A run directory read for the report (:func:`load_run`): its files, checked
(:mod:`simulations.report.validate`), the ledger audit, the user-level epsilon per round, and
the clustering metrics of every hierarchy version."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.errors import ConfigError
from common.hierarchy import Hierarchy
from simulations.report.validate import (
    AUDIT,
    CONFIG,
    METRICS,
    RUN_FILES,
    check_file,
    check_sqlite,
    check_versions,
    read_hierarchy,
    read_json,
    read_rounds,
)
from simulations.report.values import as_number

__all__ = ["DEFAULT_UTILITY_DEVICES", "Progress", "RunData", "load_run"]

Progress = Callable[[str], None]

#: device stores read for the per-version metrics (an even sample of the run's devices)
DEFAULT_UTILITY_DEVICES: Final = 300


@dataclass
class RunData:
    """Everything the report shows, read from one run directory.

    Attributes:
        versions: every hierarchy version (oldest first), from ``server.db`` or, without it,
            ``hierarchy.json`` alone.
        audit: the ledger audit (``audit.json``'s content), ``None`` when it could not be made.
        audit_source: where ``audit`` came from, or why it is missing.
        user_per_round: per user-level output, ``(round, cumulative epsilon)``.
        utility: per version, ``{"server_round", "version", metric: value}``.
        utility_note: how ``utility`` was computed, or why it is empty.
    """

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    rounds: list[dict[str, Any]]
    versions: list[Hierarchy]
    audit: dict[str, Any] | None
    audit_source: str
    user_per_round: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    utility: list[dict[str, Any]] = field(default_factory=list)
    utility_note: str = ""

    @property
    def privacy(self) -> dict[str, Any]:
        p: dict[str, Any] = self.config.get("run", {}).get("privacy", {})
        return p

    @property
    def latest(self) -> Hierarchy | None:
        return self.versions[-1] if self.versions else None


def _read_versions(run_dir: Path) -> list[Hierarchy]:
    db = run_dir / "server.db"
    if db.exists():
        from server.storage import ServerStorage

        check_sqlite(db)
        with ServerStorage(db) as st:
            found = []
            for v in st.versions():
                try:
                    found.append(st.version(v))
                except ConfigError as err:
                    raise ConfigError(f"{db}: hierarchy version {v}: {err}") from None
        versions = [h for h in found if h is not None]
        if versions:
            check_versions(versions, str(db))
            return versions
    if (run_dir / "hierarchy.json").exists():
        return [read_hierarchy(run_dir / "hierarchy.json")]
    return []


def _audit_is_stale(run_dir: Path) -> bool:
    path = run_dir / "audit.json"
    if not path.is_file():
        return True
    newest = max(
        (
            p.stat().st_mtime
            for p in (run_dir / "rounds.jsonl", run_dir / "config.json")
            if p.exists()
        ),
        default=0.0,
    )
    return path.stat().st_mtime < newest


def _read_audit(path: Path, *, can_recompute: bool) -> dict[str, Any]:
    try:
        audit: dict[str, Any] = read_json(path, AUDIT)
    except ConfigError as err:
        if not can_recompute:
            raise
        raise ConfigError(
            f"{str(err).rstrip('.')}; `fedinterest report --reaudit` recomputes it from the "
            "ledgers."
        ) from None
    return audit


def _is_batched(config: dict[str, Any]) -> bool:
    """A batched run (``--engine batched``): its users are in a few shard stores
    (``clients/shard-NNN.db``), not one device store each."""
    return config.get("engine") == "batched"


def _stored_audit(
    run_dir: Path, config: dict[str, Any], *, reaudit: bool
) -> tuple[dict[str, Any] | None, str] | None:
    """``audit.json``'s content, checked, when the report uses it as it is: ``(audit, source)``;
    ``None`` when it is to be recomputed from the ledgers (see :func:`_recomputed_audit`)."""
    have_stores = (
        any((run_dir / "clients").glob("*.db")) if (run_dir / "clients").is_dir() else False
    )
    stores = "shard stores" if _is_batched(config) else "device stores"
    path = run_dir / "audit.json"
    if not reaudit and not _audit_is_stale(run_dir):
        return _read_audit(path, can_recompute=have_stores), "audit.json"
    if have_stores:
        return None
    if path.is_file():
        return _read_audit(path, can_recompute=False), f"audit.json (no {stores} to recompute it)"
    return (
        None,
        f"no audit.json and no {stores} under clients/: event-level audit unavailable",
    )


def _recomputed_audit(
    run_dir: Path, config: dict[str, Any], say: Progress
) -> tuple[dict[str, Any], str]:
    from simulations.audit import audit_run

    n = len(list((run_dir / "clients").glob("*.db")))
    if _is_batched(config):
        say(
            f"auditing the ledgers of {config.get('clients')} users in {n} shard stores and the server"
        )
    else:
        say(f"auditing the ledgers of {n} devices and the server")
    t0 = time.perf_counter()
    report = audit_run(run_dir)
    say(f"audit done in {time.perf_counter() - t0:.1f}s (wrote {run_dir / 'audit.json'})")
    return report, "recomputed from the ledgers (written to audit.json)"


def _user_level_per_round(
    run_dir: Path, delta: float, accountant: str
) -> dict[str, list[tuple[int, float]]]:
    """Cumulative user-level epsilon after each round, per output, from the server ledger."""
    db = run_dir / "server.db"
    if not db.is_file():
        return {}
    from common.privacy import Scope, epsilon_of_entries
    from server.storage import ServerStorage

    with ServerStorage(db) as st:
        entries = [e for e in st.ledger() if e.scope is Scope.USER]
    out: dict[str, list[tuple[int, float]]] = {}
    outputs = sorted({str(e.details.get("output", e.mechanism.value)) for e in entries})
    rounds = sorted({e.server_round for e in entries if e.server_round is not None})
    for name in outputs:
        mine = [e for e in entries if str(e.details.get("output", e.mechanism.value)) == name]
        series = []
        for r in rounds:
            upto = [e for e in mine if e.server_round is not None and e.server_round <= r]
            if upto:
                series.append(
                    (
                        r,
                        epsilon_of_entries(
                            upto, delta=delta, scope=Scope.USER, accountant=accountant
                        ),
                    )
                )
        out[name] = series
    return out


def _utility_per_version(
    run_dir: Path,
    config: dict[str, Any],
    versions: Sequence[Hierarchy],
    *,
    max_devices: int,
    say: Progress,
) -> tuple[list[dict[str, Any]], str]:
    """Clustering metrics of every version on the devices' own (training) events.

    Evaluation only: it reads the simulation's device stores (ground-truth categories and the
    embeddings each device cached), which no deployed server could. A batched run's shard
    stores keep no categories: there, it says so.
    """
    if _is_batched(config):
        return [], (
            "a batched run: its shard stores (clients/shard-NNN.db) keep each user's events as "
            "text hashes and embeddings but no ground-truth categories, so the metrics of each "
            "version cannot be computed from them; the end-of-run metrics below are "
            "metrics.json's"
        )
    stores = sorted((run_dir / "clients").glob("*.db")) if (run_dir / "clients").is_dir() else []
    if not stores:
        return [], "no device stores under clients/: per-version metrics unavailable"
    if not versions:
        return [], "no hierarchy version"
    from client.store import EventStore
    from common.adapter import AdapterWeights
    from common.events import text_hash
    from common.projection import PublicProjection
    from simulations.evaluation import GroundTruth, clustering_metrics

    sampled = len(stores) > max_devices
    if sampled:
        idx = np.unique(np.linspace(0, len(stores) - 1, max_devices).round().astype(int))
        stores = [stores[i] for i in idx]
    model_id = _encoder_id(run_dir)
    events: list[Any] = []
    vectors: list[Any] = []
    say(f"reading events and cached embeddings of {len(stores)} device stores")
    for path in stores:
        with EventStore(path, create=False) as store:
            evs = store.events()
            if not evs:
                continue
            mid = model_id or _only_model_id(store)
            if mid is None:
                continue
            hashes = [text_hash(e.text) for e in evs]
            found = store.embeddings.get(mid, sorted(set(hashes)))
        keep = [i for i, h in enumerate(hashes) if h in found]
        events.extend(evs[i] for i in keep)
        vectors.extend(found[hashes[i]] for i in keep)
    truth = GroundTruth.from_events(events)
    if truth is None:
        return [], "the events carry no ground-truth categories: per-version metrics omitted"
    raw = np.stack(vectors).astype(np.float32)
    clustering = config.get("run", {}).get("clustering", {})
    dim, seed = clustering.get("projection_dim"), clustering.get("projection_seed")
    try:
        projection = PublicProjection(
            raw.shape[1],
            128 if dim is None else int(dim),
            0 if seed is None else int(seed),
            model_id or "",
        )
    except ConfigError as err:
        raise ConfigError(f"{run_dir / 'config.json'}: `run.clustering`: {err}") from None
    adapters = _adapters(run_dir, [h.server_round for h in versions])
    out = []
    for h in versions:
        if h.projection_fingerprint != projection.fingerprint:
            return [], (
                f"version {h.version} is in projection {h.projection_fingerprint}, the config's is "
                f"{projection.fingerprint}: per-version metrics omitted"
            )
        adapter = adapters.get(h.server_round)
        x = adapter.apply(raw) if isinstance(adapter, AdapterWeights) else raw
        row: dict[str, Any] = {"version": h.version, "server_round": h.server_round}
        row.update(clustering_metrics(projection(x), h, truth))
        out.append(row)
    users = len(stores)
    note = (
        f"on the training events of {users} devices"
        + (" (an even sample of the run's devices)" if sampled else "")
        + f", {len(events)} events; read from the simulation's device stores (evaluation only)"
    )
    return out, note


def _encoder_id(run_dir: Path) -> str | None:
    path = run_dir / "labels.npz"
    if not path.exists():
        return None
    check_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "encoder_id" not in z.files:
                return None
            value = z["encoder_id"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"{path} must be the label space numpy archive (.npz) the run wrote. Found an "
            f"unreadable file ({type(err).__name__}: {str(err).split('. ')[0].rstrip('.')})."
        ) from None
    if value.ndim != 0 or value.dtype.kind not in "US":
        raise ConfigError(
            f"{path}: `encoder_id` must be one string. Found an array of {value.dtype} "
            f"with shape {value.shape}."
        )
    return str(value)


def _only_model_id(store: Any) -> str | None:
    rows = store.connection.execute("SELECT DISTINCT model_id FROM embeddings LIMIT 2").fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def _adapters(run_dir: Path, rounds: Iterable[int]) -> dict[int, Any]:
    """The adapter after each round (``adapter:v{round}`` in ``server.db``), identity ones left
    out."""
    db = run_dir / "server.db"
    if not db.is_file():
        return {}
    from common.adapter import AdapterWeights
    from server.storage import ServerStorage

    out: dict[int, Any] = {}
    with ServerStorage(db) as st:
        for r in sorted(set(rounds)):
            arr = st.get_arrays(f"adapter:v{r}")
            if arr is not None:
                w = AdapterWeights.from_arrays(arr)
                if not w.is_identity():
                    out[r] = w
    return out


def load_run(
    run_dir: str | Path,
    *,
    reaudit: bool = False,
    utility: bool = True,
    utility_devices: int = DEFAULT_UTILITY_DEVICES,
    progress: Progress | None = None,
) -> RunData:
    """Reads a run directory written by ``fedinterest simulate``.

    Args:
        run_dir: the run directory.
        reaudit: recompute the ledger audit even when ``audit.json`` is up to date.
        utility: compute the clustering metrics of every version from the device stores.
        utility_devices: at most this many device stores are read for them (an even sample).
        progress: called with one line per long step.
    """
    say = progress or (lambda _m: None)
    d = Path(run_dir)
    # every file is read and checked before anything is computed or written
    if not d.exists():
        raise ConfigError(f"run directory {str(d)!r} does not exist.")
    if not d.is_dir():
        raise ConfigError(
            f"run directory {str(d)!r} is a file; give the directory `fedinterest simulate "
            "--out DIR` wrote."
        )
    for name in RUN_FILES:
        check_file(d / name)
    if (d / "clients").exists() and not (d / "clients").is_dir():
        raise ConfigError(
            f"{d / 'clients'} must be a directory of device (or shard) stores. Found a file."
        )
    if not (d / "config.json").exists():
        raise ConfigError(
            f"{str(d)!r} is not a run directory (no config.json); make one with "
            "`fedinterest simulate --out DIR`."
        )
    config: dict[str, Any] = read_json(d / "config.json", CONFIG)
    metrics: dict[str, Any] | None = (
        read_json(d / "metrics.json", METRICS) if (d / "metrics.json").exists() else None
    )
    rounds = read_rounds(d / "rounds.jsonl")
    versions = _read_versions(d)
    if not versions:
        raise ConfigError(
            f"{d / 'hierarchy.json'} must exist (or server.db hold a hierarchy version). Found "
            "neither: the run has no interest tree to report (it finished no round)."
        )
    stored = _stored_audit(d, config, reaudit=reaudit)
    if utility:
        _encoder_id(d)
    # every file checked: the long steps (the audit writes audit.json)
    data = RunData(d, config, metrics, rounds, versions, *(stored or (None, "")))
    if utility:
        data.utility, data.utility_note = _utility_per_version(
            d, config, versions, max_devices=utility_devices, say=say
        )
    else:
        data.utility_note = "not computed (--no-utility)"
    if stored is None:
        data.audit, data.audit_source = _recomputed_audit(d, config, say)
    audit, priv = data.audit, data.privacy
    delta = float(audit["delta"]) if audit else (as_number(priv.get("delta")) or 1e-5)
    accountant = str(audit["accountant"]) if audit else str(priv.get("accountant") or "pld")
    data.user_per_round = _user_level_per_round(d, delta, accountant)
    return data
