"""The run report's charts (Plotly figures; plotly is imported when one is drawn)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from common.hierarchy import Hierarchy, NodeChange
from simulations.report.data import RunData
from simulations.report.values import as_number, finite_number, fmt

__all__ = [
    "CHANGE_COLORS",
    "MAX_TREE_VERSIONS",
    "changes_figure",
    "device_histogram",
    "empirical_figure",
    "epsilon_figure",
    "metrics_bar_figure",
    "ranking_figure",
    "tree_figure",
    "utility_trend_figure",
]

CHANGE_COLORS: Final = {
    NodeChange.NEW: "#2ca02c",
    NodeChange.GROWN: "#1f77b4",
    NodeChange.SHRUNK: "#ff7f0e",
    NodeChange.STABLE: "#c7c7c7",
}
_SERIES_COLORS: Final = {
    "federated": "#1f77b4",
    "centralized": "#2ca02c",
    "catalogue": "#9467bd",
    "popularity": "#ff7f0e",
    "random": "#7f7f7f",
}
_TREND_METRICS: Final = ("nmi_level1", "nmi_level2", "dendrogram_purity")
_RANKING_METRICS: Final = ("recall10", "ndcg10", "auc")
MAX_TREE_VERSIONS: Final = 12
_HIST_BINS: Final = 20


def _units(weight: float) -> int:
    return max(0, round(weight * 1_000_000))


def _round(v: float, sig: int = 5) -> float:
    return float(f"{v:.{sig}g}")


def _layout(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "legend": {"orientation": "h", "y": -0.2},
        "height": 420,
    }
    base.update(kw)
    return base


def tree_figure(versions: Sequence[Hierarchy]) -> Any:
    import plotly.graph_objects as go

    shown = list(versions)[-MAX_TREE_VERSIONS:]
    fig = go.Figure()
    for i, h in enumerate(shown):
        ids, labels, parents, values, colors, hover = [], [], [], [], [], []
        level1 = h.level(1)
        total = 0
        rows = []
        for n1 in level1:
            kids = [h.nodes[c] for c in n1.children if c in h.nodes]
            # integer units (1e-6 of the level's mass): a parent's value is then exactly the
            # sum of its children's, which Plotly's branchvalues='total' requires
            kid_sum = sum(_units(k.weight) for k in kids)
            v1 = max(kid_sum, _units(n1.weight))
            total += v1
            rows.append((n1, v1, kids))
        ids.append("root")
        labels.append(f"v{h.version}")
        parents.append("")
        values.append(total)
        colors.append("#ffffff")
        hover.append(f"version {h.version} (round {h.server_round})")
        for n1, v1, kids in rows:
            ids.append(n1.node_id)
            labels.append(html.escape(n1.label))
            parents.append("root")
            values.append(v1)
            colors.append(CHANGE_COLORS.get(n1.change, "#c7c7c7"))
            hover.append(_node_hover(h, n1))
            for k in kids:
                ids.append(k.node_id)
                labels.append(html.escape(k.label))
                parents.append(n1.node_id)
                values.append(_units(k.weight))
                colors.append(CHANGE_COLORS.get(k.change, "#c7c7c7"))
                hover.append(_node_hover(h, k))
        fig.add_trace(
            go.Sunburst(
                ids=ids,
                labels=labels,
                parents=parents,
                values=values,
                branchvalues="total",
                marker={"colors": colors, "line": {"color": "#ffffff", "width": 1}},
                hovertext=hover,
                hoverinfo="text",
                insidetextorientation="radial",
                maxdepth=3,
                name=f"v{h.version}",
                visible=i == len(shown) - 1,
            )
        )
    buttons = [
        {
            "label": f"version {h.version} (round {h.server_round})",
            "method": "update",
            "args": [{"visible": [j == i for j in range(len(shown))]}],
        }
        for i, h in enumerate(shown)
    ]
    fig.update_layout(
        height=640,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        updatemenus=[
            {
                "buttons": buttons,
                "active": len(shown) - 1,
                "x": 0.0,
                "y": 1.06,
                "xanchor": "left",
                "yanchor": "top",
                "showactive": True,
            }
        ]
        if len(shown) > 1
        else [],
    )
    return fig


def _node_hover(h: Hierarchy, n: Any) -> str:
    best = "<br>".join(f"{html.escape(p)} ({s:.2f})" for p, s in list(n.labels)[:3]) or "(no label)"
    level = "broad interest" if n.level == 1 else "fine interest"
    return (
        f"<b>{html.escape(h.path_labels(n.node_id))}</b><br>{level} {html.escape(n.node_id)}, "
        f"{n.change}<br>population weight {100 * n.weight:.2f}% of its level<br>labels: {best}"
    )


def changes_figure(versions: Sequence[Hierarchy]) -> Any:
    import plotly.graph_objects as go

    xs = [f"v{h.version}" for h in versions]
    fig = go.Figure()
    for change in (NodeChange.NEW, NodeChange.GROWN, NodeChange.SHRUNK, NodeChange.STABLE):
        fig.add_trace(
            go.Bar(
                x=xs,
                y=[
                    sum(1 for n in h.nodes.values() if n.level > 0 and n.change == change)
                    for h in versions
                ],
                name=change,
                marker_color=CHANGE_COLORS[change],
            )
        )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[len(h.merged) + len(h.gone) for h in versions],
            name="merged or gone",
            mode="lines+markers",
            line={"color": "#d62728"},
        )
    )
    fig.update_layout(
        **_layout(
            barmode="stack",
            title={"text": "Nodes per version by change from the previous version"},
            yaxis={"title": {"text": "nodes (broad + fine)"}},
            height=360,
        )
    )
    return fig


def epsilon_figure(data: RunData) -> tuple[Any, list[str]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    notes: list[str] = []
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Event level (per device)", "User level (server ledger)"),
        horizontal_spacing=0.1,
    )
    rounds = [int(r["server_round"]) for r in data.rounds]
    server_eps = [as_number(r.get("epsilon_event_level")) for r in data.rounds]
    if any(x is not None and math.isinf(x) for x in server_eps):
        notes.append("No noise in this run (--no-dp): the event-level epsilon is infinite.")
    if rounds:
        fig.add_trace(
            go.Scatter(
                x=rounds,
                y=[x if x is not None and math.isfinite(x) else None for x in server_eps],
                name="accounted by the server (rounds.jsonl)",
                mode="lines+markers",
                line={"color": "#1f77b4", "width": 3},
            ),
            row=1,
            col=1,
        )
    if data.audit and data.audit.get("per_round"):
        pr = data.audit["per_round"]
        rs = sorted(pr, key=int)
        fig.add_trace(
            go.Scatter(
                x=[int(r) for r in rs],
                y=[finite_number(pr[r].get("epsilon_max")) for r in rs],
                name="max over devices (ledger audit)",
                mode="lines+markers",
                line={"color": "#d62728", "dash": "dash"},
                marker={"symbol": "diamond", "size": 9},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[int(r) for r in rs],
                y=[finite_number(pr[r].get("epsilon_median")) for r in rs],
                name="median over devices",
                mode="lines+markers",
                line={"color": "#9467bd", "dash": "dot"},
            ),
            row=1,
            col=1,
        )
    budget = finite_number(data.config.get("device_budget_epsilon")) or finite_number(
        data.privacy.get("epsilon")
    )
    xs = rounds or [1]
    if budget is not None:
        fig.add_trace(
            go.Scatter(
                x=[min(xs) - 0.3, max(xs) + 0.3],
                y=[budget, budget],
                name=f"event-level budget ε={budget:g}",
                mode="lines",
                line={"color": "#000000", "dash": "longdash", "width": 1.5},
            ),
            row=1,
            col=1,
        )
    user_vals = []
    palette = ["#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
    for i, (name, series) in enumerate(sorted(data.user_per_round.items())):
        ys = [v if math.isfinite(v) else None for _, v in series]
        user_vals += [v for v in ys if v is not None and v > 0]
        fig.add_trace(
            go.Scatter(
                x=[r for r, _ in series],
                y=ys,
                name=f"user level: {name}",
                mode="lines+markers",
                line={"color": palette[i % len(palette)]},
            ),
            row=1,
            col=2,
        )
    adapter = data.config.get("run", {}).get("adapter", {})
    if adapter.get("enabled") and finite_number(adapter.get("server_user_epsilon")):
        ub = float(adapter["server_user_epsilon"])
        user_vals.append(ub)
        fig.add_trace(
            go.Scatter(
                x=[min(xs) - 0.3, max(xs) + 0.3],
                y=[ub, ub],
                name=f"adapter user-level budget ε={ub:g}",
                mode="lines",
                line={"color": "#444444", "dash": "longdash", "width": 1.5},
            ),
            row=1,
            col=2,
        )
    if not data.user_per_round:
        notes.append("The server's ledger records no user-level mechanism.")
    log_user = bool(user_vals) and max(user_vals) / max(min(user_vals), 1e-12) > 30
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_yaxes(title_text="epsilon (cumulative)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(
        title_text="epsilon (cumulative)" + (", log scale" if log_user else ""),
        type="log" if log_user else "linear",
        row=1,
        col=2,
    )
    delta = data.audit.get("delta") if data.audit else data.privacy.get("delta")
    fig.update_layout(
        **_layout(
            title={"text": f"Epsilon spent per round (δ={fmt(delta, 2)})", "y": 0.98},
            height=480,
            margin={"l": 60, "r": 20, "t": 90, "b": 50},
            legend={"orientation": "h", "y": -0.25},
        )
    )
    return fig, notes


def device_histogram(audit: Mapping[str, Any], budget: float | None) -> tuple[Any, str]:
    import plotly.graph_objects as go

    per = audit.get("event_level", {}).get("per_device", [])
    vals = np.array([v for v in (finite_number(d.get("epsilon")) for d in per) if v is not None])
    fig = go.Figure()
    if len(vals) == 0:
        return fig, "no finite per-device epsilon"
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):
        counts, edges = np.array([len(vals)]), np.array([lo - 0.01, hi + 0.01])
    else:
        counts, edges = np.histogram(vals, bins=_HIST_BINS)
    centers = (edges[:-1] + edges[1:]) / 2
    fig.add_trace(
        go.Bar(
            x=[_round(c) for c in centers],
            y=counts.tolist(),
            width=[_round(w) for w in np.diff(edges)],
            name="devices",
            marker_color="#1f77b4",
            hovertemplate="ε %{x}<br>%{y} devices<extra></extra>",
        )
    )
    if budget is not None:
        fig.add_vline(
            x=budget,
            line_dash="longdash",
            line_color="#000000",
            annotation_text=f"budget {budget:g}",
        )
    fig.update_layout(
        **_layout(
            title={"text": f"Event-level epsilon over {len(vals)} devices (histogram)"},
            xaxis={"title": {"text": "epsilon at the end of the run"}},
            yaxis={"title": {"text": "devices"}},
            height=360,
            showlegend=False,
        )
    )
    summary = (
        f"min {lo:.4g}, median {float(np.median(vals)):.4g}, max {hi:.4g} over {len(vals)} devices"
        + (f" ({len(per) - len(vals)} infinite)" if len(per) > len(vals) else "")
    )
    return fig, summary


def empirical_figure(emp: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    names = {"dp": "with the run's noise", "nodp": "without noise (--no-dp)"}
    kinds = [k for k in ("dp", "nodp") if k in emp]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[names[k] for k in kinds],
            y=[
                finite_number(
                    emp[k].get("epsilon_accounted_of_run", emp[k].get("epsilon_accounted"))
                )
                for k in kinds
            ],
            name="accounted epsilon (ledgers)",
            marker_color="#1f77b4",
            texttemplate="%{y:.3f}",
            textposition="outside",
        )
    )
    fig.add_trace(
        go.Bar(
            x=[names[k] for k in kinds],
            y=[finite_number(emp[k].get("epsilon_lower_bound")) for k in kinds],
            name="empirical lower bound (95%)",
            marker_color="#d62728",
            texttemplate="%{y:.3f}",
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Empirical audit: one-run lower bound beside the accounted epsilon"},
            yaxis={"title": {"text": "epsilon"}},
            height=360,
        )
    )
    return fig


def metrics_bar_figure(metrics: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    from simulations.evaluation import METRIC_KEYS

    fig = go.Figure()
    for side in ("federated", "centralized", "catalogue"):
        vals = metrics.get(side)
        if not isinstance(vals, Mapping):
            continue
        keys = [k for k in METRIC_KEYS if k in vals]
        fig.add_trace(
            go.Bar(
                x=keys,
                y=[finite_number(vals[k]) for k in keys],
                name=side,
                marker_color=_SERIES_COLORS[side],
            )
        )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Clustering quality against the ground truth (end of run)"},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
        )
    )
    return fig


def utility_trend_figure(
    utility: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any] | None
) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    xs = [int(u["server_round"]) for u in utility]
    for i, key in enumerate(
        k for k in _TREND_METRICS if any(finite_number(u.get(k)) is not None for u in utility)
    ):
        color = palette[i % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[finite_number(u.get(key)) for u in utility],
                name=f"federated {key}",
                mode="lines+markers",
                line={"color": color, "width": 3},
            )
        )
        central = (metrics or {}).get("centralized", {}).get(key) if metrics else None
        if finite_number(central) is not None and xs:
            fig.add_trace(
                go.Scatter(
                    x=[min(xs), max(xs)],
                    y=[finite_number(central)] * 2,
                    name=f"centralized {key}",
                    mode="lines",
                    line={"color": color, "dash": "dash", "width": 1.5},
                )
            )
    fig.update_layout(
        **_layout(
            title={
                "text": "Clustering quality per version (federated) and the centralized baseline"
            },
            xaxis={"title": {"text": "round"}, "dtick": 1},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
            height=440,
        )
    )
    return fig


def ranking_figure(ranking: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for side in ("federated", "centralized", "popularity", "random"):
        vals = ranking.get(side)
        if not isinstance(vals, Mapping):
            continue
        keys = [k for k in _RANKING_METRICS if k in vals]
        fig.add_trace(
            go.Bar(
                x=keys,
                y=[finite_number(vals[k]) for k in keys],
                name=side,
                marker_color=_SERIES_COLORS.get(side, "#888888"),
            )
        )
    fig.update_layout(
        **_layout(
            barmode="group",
            title={"text": "Ranking the held-out events (per user, temporal split)"},
            yaxis={"title": {"text": "score"}, "range": [0, 1.05]},
        )
    )
    return fig
