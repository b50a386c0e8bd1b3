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

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from simulations.cli import add_run_settings

__all__ = [
    "SWEEP_FORMAT",
    "SweepOptions",
    "add_arguments",
    "format_table",
    "options_from_args",
    "parse_epsilons",
    "run_sweep",
    "sweep_page",
    "write_sweep_report",
]

SWEEP_FORMAT: Final = "fedinterest.sweep/1"
_PLOT_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")
_TABLE_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")

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


def _run_name(epsilon: float) -> str:
    return f"eps-{epsilon:g}"


@dataclass(frozen=True)
class SweepOptions:
    """A sweep: ``base`` (a :class:`simulations.simulate.SimulateOptions`) run once per epsilon.

    Attributes:
        epsilons: the total event-level epsilons to run, ascending.
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
    overwrite: bool = False
    run_reports: bool = False
    compress: bool = True

    def __post_init__(self) -> None:
        if not self.epsilons:
            raise ConfigError("a sweep needs at least one epsilon.")
        if any(not (e > 0 and math.isfinite(e)) for e in self.epsilons):
            raise ConfigError(f"every epsilon must be a finite number > 0. Found {self.epsilons}.")


def _settings(base: Any) -> dict[str, Any]:
    """What must match for a finished run to be reused (everything but epsilon)."""
    from server.strategy import json_safe

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
    out["epsilon_spent"] = metrics.get("epsilon_event_level_total")
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
            k: [v for r in ok if isinstance(v := _num((r.get(side) or {}).get(k)), float)]
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
            found = [x for row in rows if isinstance(x := _num(row.get(k)), float)]
            if found:
                means[k] = statistics.fmean(found)
        if means:
            ranking[side] = means
    if ranking:
        ref["ranking"] = ranking
    return ref


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        x = float(v)
        return x if math.isfinite(x) else None
    return None


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    from server.strategy import json_safe

    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(
            json.dumps(json_safe(dict(doc)), indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


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
            f"`--dataset` must be synthetic, movielens, mind:DIR or events:FILE. Found {spec!r}."
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
        "settings": settings,
        "runs": [],
        "reference": {},
        "complete": False,
    }
    t_all = time.perf_counter()
    n = len(opts.epsilons)
    for i, eps in enumerate(opts.epsilons, 1):
        name = _run_name(eps)
        run_dir = out / name
        record: dict[str, Any] = {"epsilon": eps, "run_dir": name, "error": None}
        t0 = time.perf_counter()
        reusable = not opts.overwrite and _run_settings(run_dir) == settings
        finished = _read_doc(run_dir / "metrics.json") if reusable else None
        if finished is not None and _same_epsilon(run_dir, eps):
            record.update(status="reused", **_summary(finished))
            say(f"[{i}/{n}] epsilon {eps:g}: reusing the finished run in {run_dir}")
        else:
            say(
                f"[{i}/{n}] epsilon {eps:g}: simulating {opts.base.clients} devices x {opts.base.run.rounds} rounds -> {run_dir}"
            )
            run = replace(opts.base.run, privacy=replace(opts.base.run.privacy, epsilon=eps))
            try:
                metrics = simulate(
                    replace(opts.base, out=run_dir, run=run, overwrite=True, resume=False),
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
    parts = [f"epsilon spent {_fmt(record.get('epsilon_spent'))}"]
    if "nmi_level1" in fed:
        parts.append(
            f"NMI level 1 {_fmt(fed['nmi_level1'])} ({_fmt(ratio.get('nmi_level1'), 2)}x centralized)"
        )
    rk = (record.get("ranking") or {}).get("federated") or {}
    if "recall10" in rk:
        parts.append(f"recall@10 {_fmt(rk['recall10'])}")
    return ", ".join(parts)


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(doc: Mapping[str, Any]) -> str:
    """The sweep as a plain-text table (one row per epsilon plus the baselines)."""
    head = [
        "epsilon",
        "spent",
        *_TABLE_METRICS,
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
                f"{r['epsilon']:g}",
                _fmt(r.get("epsilon_spent")),
                *(_fmt(fed.get(k)) for k in _TABLE_METRICS),
                _fmt((r.get("ratio") or {}).get("nmi_level1"), 2),
                _fmt(rk.get("recall10")),
                _fmt(rk.get("ndcg10")),
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
                    side,
                    "no DP",
                    *(_fmt(ref[side].get(k)) for k in _TABLE_METRICS),
                    "",
                    _fmt(rk.get("recall10")),
                    _fmt(rk.get("ndcg10")),
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


# --------------------------------------------------------------------------------------------
# the sweep's report
# --------------------------------------------------------------------------------------------


def _series(
    runs: Sequence[Mapping[str, Any]], side: str, key: str
) -> tuple[list[float], list[float | None]]:
    ok = [r for r in runs if r.get("status") in ("ok", "reused")]
    return [float(r["epsilon"]) for r in ok], [_num((r.get(side) or {}).get(key)) for r in ok]


def _reference_line(
    fig: Any, eps: list[float], value: float | None, side: str, color: str, dash: str, col: int
) -> None:
    """A baseline's value as a horizontal line across the epsilon range of subplot ``col``."""
    import plotly.graph_objects as go

    if value is None or not eps:
        return
    fig.add_trace(
        go.Scatter(
            x=[min(eps), max(eps)],
            y=[value, value],
            mode="lines",
            name=side,
            line={"color": color, "dash": dash},
            legendgroup=side,
            showlegend=col == 1,
        ),
        row=1,
        col=col,
    )


def sweep_page(doc: Mapping[str, Any]) -> Any:
    """The sweep's :class:`simulations.report.Page`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from simulations.evaluation import METRIC_KEYS
    from simulations.report import Page

    st = doc.get("settings", {})
    run = st.get("run", {})
    priv = run.get("privacy", {})
    runs = doc.get("runs", [])
    ok = [r for r in runs if r.get("status") in ("ok", "reused")]
    ref = doc.get("reference", {})
    eps = [float(r["epsilon"]) for r in ok]
    page = Page(
        title="fedinterest utility-privacy sweep",
        subtitle=(
            f"{st.get('dataset')} · {st.get('clients')} devices · {run.get('rounds')} rounds · "
            f"{priv.get('mode')} · δ={priv.get('delta')} · epsilons {', '.join(f'{e:g}' for e in doc.get('epsilons', []))}"
        ),
    )
    page.tile(
        "runs",
        f"{len(ok)}/{len(runs)}",
        "finished" + ("" if doc.get("complete") else " (sweep incomplete)"),
    )
    failed = [r for r in runs if r.get("status") == "failed"]
    if failed:
        page.tile("failed runs", str(len(failed)), ", ".join(f"ε={r['epsilon']:g}" for r in failed))
    best = max(ok, key=lambda r: float(r["epsilon"])) if ok else None
    if best and "nmi_level1" in (best.get("ratio") or {}):
        page.tile(
            f"NMI level 1 at ε={best['epsilon']:g}",
            _fmt((best.get("federated") or {}).get("nmi_level1")),
            f"{_fmt(best['ratio']['nmi_level1'], 2)}x centralized",
        )
    low = min(ok, key=lambda r: float(r["epsilon"])) if ok else None
    if low and low is not best and "nmi_level1" in (low.get("ratio") or {}):
        page.tile(
            f"NMI level 1 at ε={low['epsilon']:g}",
            _fmt((low.get("federated") or {}).get("nmi_level1")),
            f"{_fmt(low['ratio']['nmi_level1'], 2)}x centralized",
        )

    s = page.section("tradeoff", "Utility against epsilon")
    s.para(
        "Each point is one full federated run at that total event-level epsilon (same data, seed "
        "and settings). Dashed lines: the centralized baseline (all events pooled, no noise); "
        "dotted: the catalogue baseline (public item texts only, no behaviour data)."
    )
    have_clustering = any(isinstance(r.get("federated"), Mapping) for r in ok)
    if have_clustering:
        keys = [k for k in _PLOT_METRICS if any(k in (r.get("federated") or {}) for r in ok)]
        fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, shared_yaxes=True)
        for j, key in enumerate(keys, 1):
            x, y = _series(runs, "federated", key)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name="federated",
                    line={"color": "#1f77b4", "width": 3},
                    legendgroup="fed",
                    showlegend=j == 1,
                ),
                row=1,
                col=j,
            )
            for side, dash, color in (
                ("centralized", "dash", "#2ca02c"),
                ("catalogue", "dot", "#9467bd"),
            ):
                _reference_line(
                    fig, eps, _num((ref.get(side) or {}).get(key)), side, color, dash, j
                )
        fig.update_xaxes(type="log", title_text="total event-level epsilon", **_ticks(eps))
        fig.update_yaxes(range=[0, 1.05])
        fig.update_layout(
            height=440,
            margin={"l": 50, "r": 20, "t": 60, "b": 60},
            legend={"orientation": "h", "y": -0.25},
            title={"text": "Clustering quality against the ground truth"},
        )
        s.figure("fig-sweep-clustering", fig)
        fig = go.Figure()
        for key in METRIC_KEYS:
            x, y = _series(runs, "ratio", key)
            if any(v is not None for v in y):
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=key))
        if eps:
            fig.add_trace(
                go.Scatter(
                    x=[min(eps), max(eps)],
                    y=[1.0, 1.0],
                    mode="lines",
                    name="= centralized",
                    line={"color": "#000000", "dash": "dash", "width": 1},
                )
            )
        fig.update_layout(
            height=400,
            margin={"l": 50, "r": 20, "t": 50, "b": 60},
            title={"text": "Federated / centralized, per metric"},
            xaxis={"type": "log", "title": {"text": "total event-level epsilon"}, **_ticks(eps)},
            yaxis={"title": {"text": "ratio"}},
            legend={"orientation": "h", "y": -0.25},
        )
        s.figure("fig-sweep-ratio", fig)
    else:
        s.para("No ground-truth categories in this dataset: clustering metrics omitted.", "note")
    if any(isinstance((r.get("ranking") or {}).get("federated"), Mapping) for r in ok):
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=("recall@10", "nDCG@10"), shared_yaxes=True
        )
        for j, key in enumerate(("recall10", "ndcg10"), 1):
            x = [float(r["epsilon"]) for r in ok]
            y = [_num(((r.get("ranking") or {}).get("federated") or {}).get(key)) for r in ok]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name="federated",
                    line={"color": "#1f77b4", "width": 3},
                    legendgroup="fed",
                    showlegend=j == 1,
                ),
                row=1,
                col=j,
            )
            for side, dash, color in (
                ("centralized", "dash", "#2ca02c"),
                ("popularity", "dot", "#ff7f0e"),
                ("random", "dot", "#7f7f7f"),
            ):
                v = _num(((ref.get("ranking") or {}).get(side) or {}).get(key))
                _reference_line(fig, eps, v, side, color, dash, j)
        fig.update_xaxes(type="log", title_text="total event-level epsilon", **_ticks(eps))
        fig.update_yaxes(range=[0, 1.05])
        fig.update_layout(
            height=420,
            margin={"l": 50, "r": 20, "t": 60, "b": 60},
            legend={"orientation": "h", "y": -0.25},
            title={"text": "Ranking held-out events"},
        )
        s.figure("fig-sweep-ranking", fig)

    p = page.section("privacy", "Epsilon spent")
    fig = go.Figure()
    x = [float(r["epsilon"]) for r in ok]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[_num(r.get("epsilon_spent")) for r in ok],
            mode="markers",
            name="spent (accounted)",
            marker={"size": 11, "color": "#d62728"},
        )
    )
    if x:
        fig.add_trace(
            go.Scatter(
                x=[min(x), max(x)],
                y=[min(x), max(x)],
                mode="lines",
                name="target",
                line={"dash": "dash", "color": "#000000", "width": 1},
            )
        )
    fig.update_layout(
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 60},
        title={"text": "Accounted event-level epsilon against the target"},
        xaxis={"type": "log", "title": {"text": "target epsilon"}, **_ticks(x)},
        yaxis={"type": "log", "title": {"text": "spent"}, **_ticks(x)},
        legend={"orientation": "h", "y": -0.25},
    )
    p.figure("fig-sweep-epsilon", fig)

    r = page.section("runs", "Runs")
    rows = []
    from simulations.report import Raw

    for rec in runs:
        fed = rec.get("federated") or {}
        rk = (rec.get("ranking") or {}).get("federated") or {}
        link = rec.get("report")
        where = (
            Raw(f'<a href="{_attr(link)}">{_esc(rec["run_dir"])}</a>') if link else rec["run_dir"]
        )
        rows.append(
            (
                f"{rec['epsilon']:g}",
                rec.get("epsilon_spent"),
                rec.get("noise_multiplier"),
                *(fed.get(k) for k in _TABLE_METRICS),
                (rec.get("ratio") or {}).get("nmi_level1"),
                rk.get("recall10"),
                rk.get("ndcg10"),
                rec.get("status") + (f": {rec['error']}" if rec.get("error") else ""),
                rec.get("seconds"),
                where,
            )
        )
    r.table(
        [
            "ε target",
            "ε spent",
            "noise mult.",
            *_TABLE_METRICS,
            "nmi1 / central",
            "recall@10",
            "nDCG@10",
            "status",
            "seconds",
            "run",
        ],
        rows,
        caption="One row per run (sweep.json)",
    )
    for side in ("centralized", "catalogue"):
        if side in ref:
            r.table(
                ["metric", side],
                sorted(ref[side].items()),
                caption=f"{side} baseline (mean over the runs)",
            )

    q = page.section("parameters", "Sweep parameters")
    from simulations.report import flatten

    q.table(["setting", "value"], flatten(st), caption="Shared by every run (epsilon aside)")
    return page


def _ticks(values: Sequence[float]) -> dict[str, Any]:
    """Ticks at the swept epsilons (a log axis's default minor labels crowd a short range)."""
    vals = sorted(set(values))
    return {"tickvals": vals, "ticktext": [f"{v:g}" for v in vals]} if vals else {}


def _esc(s: Any) -> str:
    import html

    return html.escape(str(s))


def _attr(s: Any) -> str:
    import html

    return html.escape(str(s), quote=True)


def write_sweep_report(
    doc: Mapping[str, Any], path: str | Path, *, compress: bool = True
) -> tuple[int, int]:
    """Writes the sweep's report; returns ``(bytes, figures)``."""
    from simulations.report import write_page

    return write_page(sweep_page(doc), Path(path), compress=compress)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _epsilons(s: str) -> tuple[float, ...]:
    try:
        return parse_epsilons(s)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sweep`` flags: the epsilons, the sweep directory, and simulate's settings."""
    p.add_argument(
        "--epsilons",
        required=True,
        type=_epsilons,
        help="comma-separated totals, e.g. 0.25,0.5,1,2,4,8",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="sweep directory (one run per epsilon inside)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="re-run every epsilon (default: reuse finished runs)",
    )
    p.add_argument("--run-reports", action="store_true", help="also write each run's report.html")
    p.add_argument(
        "--no-compress", action="store_true", help="inline plotly.js uncompressed (bigger file)"
    )
    add_run_settings(p)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The :class:`SweepOptions` of parsed ``sweep`` arguments."""
    from common.config import (
        AdapterConfig,
        AnalyticsConfig,
        ClusteringConfig,
        PrivacyConfig,
        RunConfig,
    )
    from simulations.simulate import SimulateOptions

    run = RunConfig(
        rounds=args.rounds,
        fraction=args.fraction,
        seed=args.seed,
        privacy=PrivacyConfig(
            epsilon=max(args.epsilons),
            delta=args.delta,
            mode=args.mode,
            min_cohort_fraction=args.min_cohort_fraction,
        ),
        clustering=ClusteringConfig(tree_z=args.tree_z),
        adapter=AdapterConfig(enabled=args.adapter),
        analytics=AnalyticsConfig(
            popularity=not args.no_popularity,
            popularity_noise_factor=args.popularity_noise_factor,
        ),
    )
    base = SimulateOptions(
        dataset=args.dataset,
        clients=args.clients,
        out=Path(args.out),
        run=run,
        events_per_user=args.events_per_user,
        cache=Path(args.cache) if args.cache else None,
        taxonomy=Path(args.taxonomy) if args.taxonomy else None,
        verbose=args.verbose,
    )
    return SweepOptions(
        epsilons=tuple(args.epsilons),
        out=Path(args.out),
        base=base,
        overwrite=args.overwrite,
        run_reports=args.run_reports,
        compress=not args.no_compress,
    )
