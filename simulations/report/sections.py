"""The run report's page (:func:`run_page`): summary tiles and the tree, privacy, utility and
parameters sections."""

from __future__ import annotations

import html
from collections.abc import Mapping

from simulations.report.data import RunData
from simulations.report.figures import (
    CHANGE_COLORS,
    MAX_TREE_VERSIONS,
    changes_figure,
    device_histogram,
    empirical_figure,
    epsilon_figure,
    metrics_bar_figure,
    ranking_figure,
    tree_figure,
    utility_trend_figure,
)
from simulations.report.page import Page, Raw, flatten
from simulations.report.values import as_number, finite_number, fmt

__all__ = ["run_page"]


def run_page(data: RunData) -> Page:
    """The report of one run as a :class:`Page`."""
    cfg = data.config
    run = cfg.get("run", {})
    priv = data.privacy
    m = data.metrics or {}
    h = data.latest
    mode = priv.get("mode")
    mode = mode.get("value", mode) if isinstance(mode, Mapping) else mode
    page = Page(
        title=f"fedinterest run report: {data.run_dir.name}",
        subtitle=(
            f"{cfg.get('dataset', '?')} · {cfg.get('clients', '?')} devices · "
            f"{len(data.rounds)}/{run.get('rounds', '?')} rounds · {mode} · "
            f"target ε={fmt(priv.get('epsilon'), 2)}, δ={fmt(priv.get('delta'), 2)}"
            + (" · NO DP" if priv.get("no_dp") else "")
        ),
    )
    ev = (data.audit or {}).get("event_level", {})
    head = (data.audit or {}).get("headline") or {}
    if head:
        page.tile(
            "user-level ε (max over devices)",
            fmt(head.get("epsilon_user_level")),
            f"target {fmt(head.get('target_epsilon'), 2)} at {head.get('unit', '?')} level",
        )
    elif m.get("epsilon_user_level_total") is not None:
        page.tile(
            "user-level ε (accounted)", fmt(m.get("epsilon_user_level_total")), "no ledger audit"
        )
    if ev:
        page.tile(
            "event-level ε (max over devices)",
            fmt(ev.get("epsilon_max")),
            f"budget {fmt(cfg.get('device_budget_epsilon'), 2)}",
        )
    elif m:
        page.tile(
            "event-level ε (accounted)", fmt(m.get("epsilon_event_level_total")), "no ledger audit"
        )
    if data.audit:
        page.tile(
            "user-level ε (server's records)",
            fmt(data.audit.get("user_level", {}).get("epsilon")),
            "all outputs composed",
        )
        flags = data.audit.get("flags", [])
        page.tile(
            "audit flags",
            str(len(flags)),
            "ledgers consistent" if not flags else "see privacy section",
        )
    if h is not None:
        page.tile(
            "interest tree", f"v{h.version}", f"{len(h.level(1))} broad, {len(h.level(2))} fine"
        )
    if isinstance(m.get("federated"), Mapping) and "nmi_level1" in m["federated"]:
        ratio = (m.get("ratio") or {}).get("nmi_level1")
        page.tile("NMI level 1", fmt(m["federated"]["nmi_level1"]), f"{fmt(ratio, 2)}x centralized")
    ranking = m.get("ranking") if isinstance(m.get("ranking"), Mapping) else None
    if ranking and isinstance(ranking.get("federated"), Mapping):
        page.tile(
            "recall@10",
            fmt(ranking["federated"].get("recall10")),
            f"centralized {fmt((ranking.get('centralized') or {}).get('recall10'))}",
        )

    _tree_section(page, data)
    _privacy_section(page, data)
    _utility_section(page, data)
    _parameters_section(page, data)
    return page


def _tree_section(page: Page, data: RunData) -> None:
    s = page.section("tree", "Interest tree")
    if not data.versions:
        s.para("The run produced no hierarchy version.", "note")
        return
    h = data.versions[-1]
    shown = data.versions[-MAX_TREE_VERSIONS:]
    s.para(
        f"Version {h.version} after round {h.server_round}: {len(h.level(1))} broad and "
        f"{len(h.level(2))} fine interests. Sector sizes are population weights (the DP mass "
        "released by the devices); colours show how each node changed from the previous version. "
        "Click a sector to zoom in; pick another version in the menu."
        + (
            f" The menu holds the last {len(shown)} of {len(data.versions)} versions."
            if len(shown) < len(data.versions)
            else ""
        )
    )
    s.text(_legend(CHANGE_COLORS))
    s.figure("fig-tree", tree_figure(data.versions))
    if len(data.versions) > 1:
        s.figure("fig-changes", changes_figure(data.versions))
    rows = []
    for n1 in h.level(1):
        kids = [h.nodes[c] for c in n1.children if c in h.nodes]
        kids.sort(key=lambda k: -k.weight)
        rows.append(
            (
                n1.label,
                f"{100 * n1.weight:.1f}%",
                n1.change,
                ", ".join(f"{k.label} ({100 * k.weight:.1f}%, {k.change})" for k in kids[:8])
                + (f" +{len(kids) - 8}" if len(kids) > 8 else ""),
            )
        )
    s.table(
        ["broad interest", "weight", "change", "fine interests (weight, change)"],
        rows,
        caption=f"Version {h.version}",
    )
    if h.merged or h.gone:
        merged = [
            f"{h.path_labels(b) or b} absorbed {a}" for a, b in h.merged.items() if b in h.nodes
        ]
        s.para(
            f"Since version {h.parent_version}: {len(h.merged)} node(s) merged"
            + (f" ({'; '.join(merged[:10])}{' …' if len(merged) > 10 else ''})" if merged else "")
            + f", {len(h.gone)} gone (no longer supported by the DP evidence).",
            "note",
        )


def _privacy_section(page: Page, data: RunData) -> None:
    s = page.section("privacy", "Privacy: epsilon spent")
    fig, notes = epsilon_figure(data)
    s.para(
        "Event level: each device's ledger composed with dp-accounting (add/remove one event). "
        "User level: the server's ledger (add/remove one user's whole contribution). "
        f"Audit source: {data.audit_source}."
    )
    for n in notes:
        s.para(n, "note")
    s.figure("fig-epsilon", fig)
    audit = data.audit
    if audit is None:
        return
    budget = finite_number(data.config.get("device_budget_epsilon"))
    hist, summary = device_histogram(audit, budget)
    s.figure("fig-devices", hist, caption=f"Distribution over devices: {summary}.")
    ev = audit.get("event_level", {})
    over = ev.get("over_budget", [])
    flags = audit.get("flags", [])
    status = (
        Raw('<span class="ok">no flags</span>')
        if not flags
        else Raw(f'<span class="flag">{len(flags)} flag(s)</span>')
    )
    s.table(
        ["devices", "ε min", "ε median", "ε max", "over budget", "ledger checks"],
        [
            (
                ev.get("devices"),
                ev.get("epsilon_min"),
                ev.get("epsilon_median"),
                ev.get("epsilon_max"),
                len(over),
                status,
            )
        ],
        caption=f"Event level at δ={fmt(audit.get('delta'), 2)} ({audit.get('accountant')} accountant)",
    )
    mech = audit.get("mechanisms", {})
    if mech:
        s.table(
            ["mechanism", "ledger entries", "ε max", "ε median"],
            [
                (k, v.get("entries"), v.get("epsilon_max"), v.get("epsilon_median"))
                for k, v in mech.items()
            ],
            caption="Per mechanism (event level)",
        )
    per_out = audit.get("user_level", {}).get("per_output", {})
    if per_out:
        s.table(
            ["output", "user-level ε"], sorted(per_out.items()), caption="User level, per output"
        )
    if flags:
        s.text(
            '<ul class="g">'
            + "".join(f'<li class="flag">{html.escape(f)}</li>' for f in flags[:50])
            + "</ul>"
        )
    g = audit.get("guarantees", [])
    if g:
        s.text(
            '<p><b>What the audit states</b></p><ul class="g">'
            + "".join(f"<li>{html.escape(x)}</li>" for x in g)
            + "</ul>"
        )
    emp = audit.get("empirical")
    if isinstance(emp, Mapping) and any(k in emp for k in ("dp", "nodp")):
        s.figure("fig-empirical", empirical_figure(emp))
        s.table(
            ["run", "canaries", "guesses", "correct", "lower bound", "accounted"],
            [
                (
                    k,
                    emp[k].get("canaries"),
                    emp[k].get("guesses"),
                    emp[k].get("correct"),
                    emp[k].get("epsilon_lower_bound"),
                    emp[k].get("epsilon_accounted_of_run", emp[k].get("epsilon_accounted")),
                )
                for k in ("dp", "nodp")
                if k in emp
            ],
            caption="Empirical audit (Steinke, Nasr and Jagielski 2023, one run)",
        )
    else:
        s.para(
            "No empirical audit in audit.json; `fedinterest audit RUN_DIR --empirical` (and "
            "`--empirical --no-dp`) adds the canary lower bound beside the accounted epsilon.",
            "note",
        )


def _utility_section(page: Page, data: RunData) -> None:
    from simulations.evaluation import METRIC_KEYS

    s = page.section("utility", "Utility against the baselines")
    m = data.metrics
    if m is None:
        s.para("No metrics.json: the run did not finish.", "note")
    if data.utility:
        s.figure(
            "fig-utility-rounds",
            utility_trend_figure(data.utility, m),
            caption=f"Per version: {data.utility_note}. Dashed: the centralized baseline at the end "
            "of the run (metrics.json, training and held-out events).",
        )
    else:
        s.para(f"Per-version metrics: {data.utility_note}.", "note")
    sample = (m or {}).get("evaluation")
    if isinstance(sample, Mapping) and sample.get("users") != sample.get("population"):
        # the batched engine's metrics on a seeded sample of a large population
        s.para(f"End-of-run metrics: {sample.get('note')}.", "note")
    if m and isinstance(m.get("federated"), Mapping):
        s.figure("fig-utility", metrics_bar_figure(m))
        ratio = m.get("ratio") or {}
        s.table(
            ["metric", "federated", "centralized", "catalogue", "fed / central"],
            [
                (
                    k,
                    m["federated"].get(k),
                    (m.get("centralized") or {}).get(k),
                    (m.get("catalogue") or {}).get(k),
                    ratio.get(k),
                )
                for k in METRIC_KEYS
                if k in m["federated"]
            ],
            caption="End of run (metrics.json)",
        )
    elif m:
        s.para("No ground-truth categories in this dataset: clustering metrics omitted.", "note")
    ranking = (m or {}).get("ranking")
    if isinstance(ranking, Mapping):
        s.figure(
            "fig-ranking",
            ranking_figure(ranking),
            caption=f"Popularity prior: {ranking.get('popularity_prior', 'n/a')}.",
        )
    cls = (m or {}).get("classification")
    if isinstance(cls, Mapping):
        rows = []
        for side, levels in cls.items():
            for level, vals in (levels or {}).items():
                rows.append((side, level, vals.get("accuracy"), vals.get("macro_f1")))
        s.table(
            ["profile", "level", "accuracy", "macro F1"],
            rows,
            caption="Interest classification of held-out events",
        )
    drift = (m or {}).get("drift", {}).get("federated") if m else None
    if isinstance(drift, Mapping):
        s.table(
            ["drifting users", "switched", "never switched", "median lag (events)", "p90 lag"],
            [
                (
                    drift.get("users"),
                    drift.get("switched"),
                    drift.get("never_switched"),
                    drift.get("median_events"),
                    drift.get("p90_events"),
                )
            ],
            caption="Drift: events until the profile follows a user's new interest",
        )
    adapter = (m or {}).get("adapter")
    if isinstance(adapter, Mapping) and adapter:
        s.table(["adapter", "value"], sorted(adapter.items()), caption="Low-rank adapter (DP-SGD)")
    if data.rounds:
        s.table(
            [
                "round",
                "status",
                "releases",
                "fine",
                "broad",
                "event ε",
                "noise std",
                "KiB up / device",
                "seconds",
            ],
            [
                (
                    r.get("server_round"),
                    r.get("status"),
                    f"{r.get('usable')}/{r.get('sampled')}",
                    r.get("live_leaves"),
                    r.get("level1_nodes"),
                    r.get("epsilon_event_level"),
                    r.get("noise_std"),
                    (as_number(r.get("bytes_up")) or 0.0)
                    / 1024
                    / max(1, int(r.get("sampled") or 1)),
                    r.get("seconds"),
                )
                for r in data.rounds
            ],
            caption="Rounds (rounds.jsonl)",
        )


def _parameters_section(page: Page, data: RunData) -> None:
    s = page.section("parameters", "Run parameters")
    m = data.metrics or {}
    batched = data.config.get("engine") == "batched"
    # the batched engine measures message bytes per shard, not per device (metrics.json: null)
    unmeasured = "not measured (batched engine: bytes per shard)" if batched else None
    facts = [
        ("run directory", str(data.run_dir)),
        ("dataset", m.get("dataset", data.config.get("dataset"))),
        ("devices", m.get("clients", data.config.get("clients"))),
        (
            "engine",
            f"batched: {data.config.get('workers')} shard stores (clients/shard-NNN.db)"
            if batched
            else data.config.get("engine"),
        ),
        ("training events", m.get("events")),
        ("catalogue items", m.get("catalogue_items")),
        (
            "rounds completed",
            f"{m.get('rounds_completed', len(data.rounds))}/{m.get('rounds', data.config.get('run', {}).get('rounds'))}",
        ),
        ("noise multiplier", m.get("noise_multiplier")),
        (
            "KiB up per device per round",
            (unmeasured or (as_number(m.get("bytes_up_per_client_per_round")) or 0) / 1024)
            if m
            else None,
        ),
        (
            "KiB down per device per round",
            (unmeasured or (as_number(m.get("bytes_down_per_client_per_round")) or 0) / 1024)
            if m
            else None,
        ),
        ("wall seconds", m.get("wall_seconds")),
        (
            "encode / federated seconds",
            f"{fmt((m.get('timing') or {}).get('encode_seconds'), 1)} / {fmt((m.get('timing') or {}).get('federated_seconds'), 1)}"
            if m
            else None,
        ),
    ]
    s.table(["", "value"], [(k, v) for k, v in facts if v is not None], caption="Run")
    s.table(["setting", "value"], flatten(data.config), caption="config.json")


def _legend(items: Mapping[str, str]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><i style="background:{c}"></i>{html.escape(k)}</span>' for k, c in items.items()
        )
        + "</div>"
    )
