"""The sweep's page (:func:`sweep_page`): utility and epsilon spent against the target
epsilon, one point per run, with the baselines as lines; built on the report's page
framework (:mod:`simulations.report.page`)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from simulations.report.page import Page, Raw, flatten, write_page
from simulations.report.values import finite_number, fixed

__all__ = ["TABLE_METRICS", "sweep_page", "write_sweep_report"]

_PLOT_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")
#: the clustering metrics of the sweep's tables (also :func:`simulations.sweep.format_table`'s)
TABLE_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")


def _series(
    runs: Sequence[Mapping[str, Any]], side: str, key: str
) -> tuple[list[float], list[float | None]]:
    ok = [r for r in runs if r.get("status") in ("ok", "reused")]
    return [float(r["epsilon"]) for r in ok], [
        finite_number((r.get(side) or {}).get(key)) for r in ok
    ]


def _populations(runs: Sequence[Mapping[str, Any]]) -> dict[int | None, list[Mapping[str, Any]]]:
    """The runs by population (``clients``); one group ``None`` when the sweep has one."""
    sizes = sorted({int(r["clients"]) for r in runs if isinstance(r.get("clients"), int)})
    if len(sizes) <= 1:
        return {None: list(runs)}
    return {n: [r for r in runs if r.get("clients") == n] for n in sizes}


_POPULATION_COLORS = ("#1f77b4", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _federated_trace(
    x: Any, y: Any, *, first: bool, population: int | None = None, i: int = 0
) -> Any:
    """The federated run's line in a panel of the sweep (its legend entry shown once; one line
    per population when the sweep varies it)."""
    import plotly.graph_objects as go

    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers",
        name="federated" if population is None else f"federated, {population:,} devices",
        line={"color": _POPULATION_COLORS[i % len(_POPULATION_COLORS)], "width": 3},
        legendgroup=f"fed-{population}",
        showlegend=first,
    )


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
            fixed((best.get("federated") or {}).get("nmi_level1")),
            f"{fixed(best['ratio']['nmi_level1'], 2)}x centralized",
        )
    low = min(ok, key=lambda r: float(r["epsilon"])) if ok else None
    if low and low is not best and "nmi_level1" in (low.get("ratio") or {}):
        page.tile(
            f"NMI level 1 at ε={low['epsilon']:g}",
            fixed((low.get("federated") or {}).get("nmi_level1")),
            f"{fixed(low['ratio']['nmi_level1'], 2)}x centralized",
        )

    s = page.section("tradeoff", "Utility against epsilon")
    s.para(
        "Each point is one full federated run at that total epsilon, at the run's privacy unit (same data, seed "
        "and settings). Dashed lines: the centralized baseline (all events pooled, no noise); "
        "dotted: the catalogue baseline (public item texts only, no behaviour data)."
    )
    have_clustering = any(isinstance(r.get("federated"), Mapping) for r in ok)
    if have_clustering:
        keys = [k for k in _PLOT_METRICS if any(k in (r.get("federated") or {}) for r in ok)]
        fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, shared_yaxes=True)
        for j, key in enumerate(keys, 1):
            for i, (n, group) in enumerate(_populations(runs).items()):
                x, y = _series(group, "federated", key)
                fig.add_trace(_federated_trace(x, y, first=j == 1, population=n, i=i), row=1, col=j)
            for side, dash, color in (
                ("centralized", "dash", "#2ca02c"),
                ("catalogue", "dot", "#9467bd"),
            ):
                _reference_line(
                    fig, eps, finite_number((ref.get(side) or {}).get(key)), side, color, dash, j
                )
        fig.update_xaxes(type="log", title_text="total epsilon (the run's unit)", **_ticks(eps))
        fig.update_yaxes(range=[0, 1.05])
        fig.update_layout(
            height=440,
            margin={"l": 50, "r": 20, "t": 60, "b": 60},
            legend={"orientation": "h", "y": -0.25},
            title={"text": "Clustering quality against the ground truth"},
        )
        s.figure("fig-sweep-clustering", fig)
        fig = go.Figure()
        for n, group in _populations(runs).items():
            for key in METRIC_KEYS:
                x, y = _series(group, "ratio", key)
                if any(v is not None for v in y):
                    name = key if n is None else f"{key}, {n:,} devices"
                    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
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
            xaxis={
                "type": "log",
                "title": {"text": "total epsilon (the run's unit)"},
                **_ticks(eps),
            },
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
            for i, (n, group) in enumerate(_populations(ok).items()):
                x = [float(r["epsilon"]) for r in group]
                y = [
                    finite_number(((r.get("ranking") or {}).get("federated") or {}).get(key))
                    for r in group
                ]
                fig.add_trace(_federated_trace(x, y, first=j == 1, population=n, i=i), row=1, col=j)
            for side, dash, color in (
                ("centralized", "dash", "#2ca02c"),
                ("popularity", "dot", "#ff7f0e"),
                ("random", "dot", "#7f7f7f"),
            ):
                v = finite_number(((ref.get("ranking") or {}).get(side) or {}).get(key))
                _reference_line(fig, eps, v, side, color, dash, j)
        fig.update_xaxes(type="log", title_text="total epsilon (the run's unit)", **_ticks(eps))
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
            y=[finite_number(r.get("epsilon_spent")) for r in ok],
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
                *(fed.get(k) for k in TABLE_METRICS),
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
            *TABLE_METRICS,
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
    q.table(["setting", "value"], flatten(st), caption="Shared by every run (epsilon aside)")
    return page


def _ticks(values: Sequence[float]) -> dict[str, Any]:
    """Ticks at the swept epsilons (a log axis's default minor labels crowd a short range)."""
    vals = sorted(set(values))
    return {"tickvals": vals, "ticktext": [f"{v:g}" for v in vals]} if vals else {}


def _esc(s: Any) -> str:
    return html.escape(str(s))


def _attr(s: Any) -> str:
    return html.escape(str(s), quote=True)


def write_sweep_report(
    doc: Mapping[str, Any], path: str | Path, *, compress: bool = True
) -> tuple[int, int]:
    """Writes the sweep's report; returns ``(bytes, figures)``."""
    return write_page(sweep_page(doc), Path(path), compress=compress)
