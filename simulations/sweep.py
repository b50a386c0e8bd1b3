"""``fedinterest sweep``: the utility-privacy trade-off, one simulation per epsilon.

Each epsilon runs ``fedinterest simulate`` with the same data, seed and settings into
``DIR/eps-<epsilon>/``, all sharing one embedding cache (each text is encoded once for the whole
sweep). ``DIR/sweep.json`` is rewritten after every run, so an interrupted sweep resumes: a run
directory that finished with the same settings is reused. ``DIR/report.html`` plots the
federated utility against epsilon with the centralized (non-private) baseline as a line.

``sweep.json`` keys (stable): ``format``, ``epsilons``, ``settings``, ``runs`` (per epsilon:
``epsilon``, ``run_dir``, ``status`` ok/reused/failed, ``error``, ``seconds``,
``epsilon_spent``, ``federated``, ``centralized``, ``catalogue``, ``ratio``, ``ranking``),
``reference`` (the baselines, mean over the runs), ``complete`` (true when every epsilon has a
finished run: never with a failed run, nor with none).

The dataset, taxonomy, embedding cache and ``--out`` are checked before anything is written: a
bad one is a :class:`common.errors.ConfigError` naming the flag and the value.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from simulations.files import atomic_write_json
from simulations.report.sweep_page import TABLE_METRICS, sweep_page, write_sweep_report
from simulations.report.values import finite_number, fixed

__all__ = [
    "SWEEP_FORMAT",
    "SweepOptions",
    "format_table",
    "parse_epsilons",
    "run_sweep",
    "sweep_page",
    "write_sweep_report",
]

SWEEP_FORMAT: Final = "fedinterest.sweep/1"

Progress = Callable[[str], None]


def parse_epsilons(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``, sorted; each must be a finite number > 0."""
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            v = float(p)
        except ValueError:
            raise ConfigError(
                f"`--epsilons` must be numbers > 0 separated by commas. Found {p!r}."
            ) from None
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"`--epsilons` must be numbers > 0 separated by commas. Found {p!r}.")
        out.append(v)
    if not out:
        raise ConfigError("`--epsilons` is empty; give e.g. 0.25,0.5,1,2,4,8.")
    if len(set(out)) != len(out):
        raise ConfigError(f"`--epsilons` lists a value twice: {text!r}.")
    return tuple(sorted(out))


def _run_name(epsilon: float, clients: int | None = None) -> str:
    return f"eps-{epsilon:g}" if clients is None else f"n-{clients}-eps-{epsilon:g}"


@dataclass(frozen=True)
class SweepOptions:
    """A sweep: ``base`` (a :class:`simulations.simulate.SimulateOptions`) run once per epsilon.

    Attributes:
        epsilons: the total epsilons to run (at the run's privacy unit), ascending.
        clients: populations to run each epsilon at (``--clients 1000,10000,100000``): how
            many devices a given epsilon needs; empty: the base's one population.
        out: the sweep directory.
        base: the simulation settings; ``out``, ``overwrite`` and the privacy ``epsilon`` are
            set per run.
        overwrite: re-run every epsilon even when a finished run with the same settings exists.
        run_reports: also write each run's own ``report.html``.
        compress: inline Plotly gzipped (see :mod:`simulations.report`).
    """

    epsilons: tuple[float, ...]
    out: Path
    base: Any
    clients: tuple[int, ...] = ()
    overwrite: bool = False
    run_reports: bool = False
    compress: bool = True

    def __post_init__(self) -> None:
        if not self.epsilons:
            raise ConfigError("a sweep needs at least one epsilon.")
        if any(not (e > 0 and math.isfinite(e)) for e in self.epsilons):
            raise ConfigError(f"every epsilon must be a finite number > 0. Found {self.epsilons}.")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 2 for c in self.clients):
            raise ConfigError(f"every population must be an int >= 2. Found {self.clients}.")
        if len(set(self.clients)) != len(self.clients):
            raise ConfigError(f"`--clients` lists a population twice: {self.clients}.")

    @property
    def populations(self) -> tuple[int | None, ...]:
        """The populations to run (``None``: the base's, the runs named ``eps-E``)."""
        return tuple(sorted(self.clients)) if len(self.clients) > 1 else (None,)


def _settings(base: Any) -> dict[str, Any]:
    """What must match for a finished run to be reused (everything but epsilon)."""
    from common.jsonio import json_safe

    run = asdict(base.run)
    run["privacy"].pop("epsilon", None)
    doc = {
        "dataset": base.dataset,
        "clients": base.clients,
        "events_per_user": base.events_per_user,
        "max_events_per_client": base.max_events_per_client,
        "holdout": base.holdout,
        "taxonomy": str(base.taxonomy) if base.taxonomy else None,
        "run": run,
    }
    out: dict[str, Any] = json.loads(json.dumps(json_safe(doc), default=str))
    return out


def _run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings a finished run was made with (``None`` when it did not finish)."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
        return None
    from simulations.simulate import options_from_run_dir

    try:
        return _settings(options_from_run_dir(run_dir))
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("federated", "centralized", "catalogue", "ratio", "ranking")
    out = {k: metrics[k] for k in keep if isinstance(metrics.get(k), dict)}
    unit = metrics.get("unit", "event")
    out["unit"] = unit
    out["epsilon_spent"] = metrics.get(f"epsilon_{unit}_level_total")
    out["epsilon_event_level"] = metrics.get("epsilon_event_level_total")
    out["rounds_completed"] = metrics.get("rounds_completed")
    out["noise_multiplier"] = metrics.get("noise_multiplier")
    out["wall_seconds"] = metrics.get("wall_seconds")
    return out


def _reference(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The baselines (no DP: the same for every run up to float noise), mean over the runs."""
    ok = [r for r in runs if r.get("status") in ("ok", "reused")]
    ref: dict[str, Any] = {}
    for side in ("centralized", "catalogue"):
        keys = sorted({k for r in ok for k in (r.get(side) or {})})
        vals = {
            k: [v for r in ok if isinstance(v := finite_number((r.get(side) or {}).get(k)), float)]
            for k in keys
        }
        if keys:
            ref[side] = {k: statistics.fmean(v) for k, v in vals.items() if v}
    ranking: dict[str, dict[str, float]] = {}
    for side in ("centralized", "popularity", "random"):
        rows = [(r.get("ranking") or {}).get(side) or {} for r in ok]
        keys = sorted({k for row in rows for k in row if k != "users"})
        means = {}
        for k in keys:
            found = [x for row in rows if isinstance(x := finite_number(row.get(k)), float)]
            if found:
                means[k] = statistics.fmean(found)
        if means:
            ranking[side] = means
    if ranking:
        ref["ranking"] = ranking
    return ref


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    atomic_write_json(path, doc, indent=1, sort_keys=True)


def _read_doc(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or ``None`` when it cannot be read as one."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, RecursionError, ValueError):  # ValueError: JSON and UTF-8 errors
        return None
    return doc if isinstance(doc, dict) else None


def _check_dataset(spec: str) -> None:
    """The cheap part of :func:`simulations.simulate.load_bundle`'s checks: the kind of
    dataset and the files it names (their content is checked by each run)."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return
    if kind == "movielens":
        from simulations.datasets.loaders import default_movielens_dir

        d = Path(arg) if arg else default_movielens_dir()
        needs: tuple[str, ...] = ("ratings.csv", "movies.csv")
        form = "movielens[:DIR]"
    elif kind == "mind":
        d = Path(arg)
        needs = ("news.tsv", "behaviors.tsv")
        form = "mind:DIR"
    elif kind in ("kuairec", "catalogue"):
        from simulations.datasets.catalogue import default_kuairec_file

        if kind == "catalogue" and not arg:
            raise ConfigError(
                f"`--dataset` catalogue:FILE must name a catalogue file. Found {spec!r}."
            )
        path = Path(arg) if arg else default_kuairec_file()
        if not path.is_file():
            raise ConfigError(
                f"`--dataset` {kind} needs the catalogue file {str(path)!r}. Found {spec!r} "
                "(no such file)."
            )
        return
    elif kind == "events":
        path = Path(arg)
        if not arg or not path.is_file():
            why = (
                "no file name"
                if not arg
                else (f"{arg!r} is a directory" if path.is_dir() else f"no such file {arg!r}")
            )
            raise ConfigError(
                f"`--dataset` events:FILE must name an events file. Found {spec!r} ({why})."
            )
        return
    else:
        raise ConfigError(
            "`--dataset` must be synthetic, kuairec[:FILE], catalogue:FILE, movielens, "
            f"mind:DIR or events:FILE. Found {spec!r}."
        )
    if kind == "mind" and not arg:
        raise ConfigError(
            f"`--dataset` {form} must name the directory with news.tsv and behaviors.tsv. "
            f"Found {spec!r} (no directory)."
        )
    if not d.is_dir():
        raise ConfigError(
            f"`--dataset` {form} must name a directory with {' and '.join(needs)}. Found "
            f"{spec!r} ({str(d)!r} is not a directory)."
        )
    missing = [n for n in needs if not (d / n).is_file()]
    if missing:
        raise ConfigError(
            f"`--dataset` {form} must name a directory with {' and '.join(needs)}. Found "
            f"{spec!r} ({str(d)!r} has no {' and no '.join(missing)})."
        )


def _check_inputs(opts: SweepOptions) -> None:
    """Everything a run would refuse that can be checked cheaply, before anything is written:
    the sweep directory, the dataset, the taxonomy and the embedding cache."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"`--out` must be a directory for the sweep's runs. Found {str(out)!r}, a file."
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"`--out` {str(out)!r}: {str(parent)!r} must be a directory. Found a file."
                )
            break
    base = opts.base
    _check_dataset(str(base.dataset))
    if base.taxonomy is not None:
        from common.vocabulary import load_taxonomy_tsv

        load_taxonomy_tsv(base.taxonomy)  # its errors name the file and the problem
    if base.cache is not None and Path(base.cache).is_dir():
        raise ConfigError(
            f"`--cache` must be an embedding cache file. Found {str(base.cache)!r}, a directory."
        )


def run_sweep(
    opts: SweepOptions,
    *,
    progress: Progress | None = None,
    simulate_progress: Progress | None = None,
) -> dict[str, Any]:
    """Runs the sweep; returns the ``sweep.json`` document (also written, with ``report.html``).

    Args:
        opts: the sweep.
        progress: one line per run (start, end, reuse, failure).
        simulate_progress: the simulations' own lines (dataset, rounds).

    A run that fails is recorded (``status`` ``failed`` with the error) and the sweep goes on.
    """
    from common.errors import FedInterestError
    from simulations.simulate import simulate

    say = progress or (lambda _m: None)
    out = Path(opts.out)
    # every input is checked before anything is written
    _check_inputs(opts)
    settings = _settings(opts.base)
    if opts.populations != (None,):
        settings["clients"] = list(opts.populations)
    sweep_json = out / "sweep.json"
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        if not sweep_json.is_file():
            raise ConfigError(
                f"{str(out)!r} is not empty and holds no sweep.json; pass --overwrite or choose another --out."
            )
        old = _read_doc(sweep_json)
        if old is None:
            raise ConfigError(
                f"{sweep_json} must be the JSON object a sweep wrote. Found an unreadable file; "
                "pass --overwrite to replace the sweep, or choose another --out."
            )
        if old.get("settings") != settings:
            raise ConfigError(
                f"{str(out)!r} holds a sweep with other settings; pass --overwrite to replace its "
                "runs, or choose another --out."
            )
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "format": SWEEP_FORMAT,
        "epsilons": list(opts.epsilons),
        "clients": [c for c in opts.populations if c is not None] or [opts.base.clients],
        "settings": settings,
        "runs": [],
        "reference": {},
        "complete": False,
    }
    t_all = time.perf_counter()
    grid = [(c, eps) for c in opts.populations for eps in opts.epsilons]
    n = len(grid)
    for i, (population, eps) in enumerate(grid, 1):
        base = opts.base if population is None else replace(opts.base, clients=population)
        name = _run_name(eps, population)
        run_dir = out / name
        record: dict[str, Any] = {
            "epsilon": eps,
            "clients": base.clients,
            "run_dir": name,
            "error": None,
        }
        t0 = time.perf_counter()
        reusable = not opts.overwrite and _run_settings(run_dir) == _settings(base)
        finished = _read_doc(run_dir / "metrics.json") if reusable else None
        if finished is not None and _same_epsilon(run_dir, eps):
            record.update(status="reused", **_summary(finished))
            say(f"[{i}/{n}] epsilon {eps:g}: reusing the finished run in {run_dir}")
        else:
            say(
                f"[{i}/{n}] epsilon {eps:g}: simulating {base.clients} devices x {base.run.rounds} rounds -> {run_dir}"
            )
            run = replace(base.run, privacy=replace(base.run.privacy, epsilon=eps))
            try:
                metrics = simulate(
                    replace(base, out=run_dir, run=run, overwrite=True, resume=False),
                    progress=simulate_progress,
                )
            except (FedInterestError, OSError, RuntimeError, ValueError) as err:
                record.update(status="failed", error=f"{type(err).__name__}: {err}")
                say(f"[{i}/{n}] epsilon {eps:g}: FAILED: {err}")
            else:
                record.update(status="ok", **_summary(metrics))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        if record["status"] != "failed":
            if opts.run_reports:
                from simulations.report import write_report

                res = write_report(run_dir, compress=opts.compress)
                record["report"] = f"{name}/{res.path.name}"
            if record["status"] == "ok":
                say(
                    f"[{i}/{n}] epsilon {eps:g}: done in {record['seconds']:.0f}s; {_one_line(record)}"
                )
        doc["runs"].append(record)
        doc["reference"] = _reference(doc["runs"])
        _write_json(sweep_json, doc)
    # complete: every epsilon has a finished run (never with a failed one, nor with none)
    doc["complete"] = bool(doc["runs"]) and all(
        r["status"] in ("ok", "reused") for r in doc["runs"]
    )
    doc["seconds"] = round(time.perf_counter() - t_all, 1)
    _write_json(sweep_json, doc)
    write_sweep_report(doc, out / "report.html", compress=opts.compress)
    return doc


def _same_epsilon(run_dir: Path, eps: float) -> bool:
    cfg = _read_doc(run_dir / "config.json") or {}
    run = cfg.get("run")
    privacy = run.get("privacy") if isinstance(run, dict) else None
    got = privacy.get("epsilon") if isinstance(privacy, dict) else None
    return isinstance(got, (int, float)) and math.isclose(float(got), eps, rel_tol=1e-12)


def _one_line(record: Mapping[str, Any]) -> str:
    fed = record.get("federated") or {}
    ratio = record.get("ratio") or {}
    parts = [f"epsilon spent {fixed(record.get('epsilon_spent'))}"]
    if "nmi_level1" in fed:
        parts.append(
            f"NMI level 1 {fixed(fed['nmi_level1'])} ({fixed(ratio.get('nmi_level1'), 2)}x centralized)"
        )
    rk = (record.get("ranking") or {}).get("federated") or {}
    if "recall10" in rk:
        parts.append(f"recall@10 {fixed(rk['recall10'])}")
    return ", ".join(parts)


def format_table(doc: Mapping[str, Any]) -> str:
    """The sweep as a plain-text table (one row per epsilon plus the baselines)."""
    head = [
        "clients",
        "epsilon",
        "spent",
        *TABLE_METRICS,
        "nmi1/central",
        "recall@10",
        "ndcg@10",
        "status",
        "seconds",
    ]
    rows = []
    for r in doc.get("runs", []):
        fed = r.get("federated") or {}
        rk = (r.get("ranking") or {}).get("federated") or {}
        rows.append(
            [
                str(r.get("clients", "")),
                f"{r['epsilon']:g}",
                fixed(r.get("epsilon_spent")),
                *(fixed(fed.get(k)) for k in TABLE_METRICS),
                fixed((r.get("ratio") or {}).get("nmi_level1"), 2),
                fixed(rk.get("recall10")),
                fixed(rk.get("ndcg10")),
                str(r.get("status")),
                f"{r.get('seconds', 0):.0f}",
            ]
        )
    ref = doc.get("reference", {})
    for side in ("centralized", "catalogue"):
        if side in ref:
            rk = (ref.get("ranking") or {}).get(side) or {}
            rows.append(
                [
                    "",
                    side,
                    "no DP",
                    *(fixed(ref[side].get(k)) for k in TABLE_METRICS),
                    "",
                    fixed(rk.get("recall10")),
                    fixed(rk.get("ndcg10")),
                    "",
                    "",
                ]
            )
    widths = [
        max(len(h), *(len(row[j]) for row in rows)) if rows else len(h) for j, h in enumerate(head)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
