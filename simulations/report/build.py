"""``write_report``: a run directory read, laid out and written as ``report.html``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from simulations.report.data import DEFAULT_UTILITY_DEVICES, Progress, load_run
from simulations.report.page import check_out, plotly_js, write_page
from simulations.report.sections import run_page

__all__ = ["MAX_REPORT_BYTES", "ReportResult", "write_report"]

MAX_REPORT_BYTES: Final = 5_000_000
"""The size the report must stay under (tested with a 1,000-device, 256-leaf worst case)."""


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    path: Path
    bytes: int
    sections: tuple[str, ...]
    figures: int
    summary: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.path),
            "bytes": self.bytes,
            "sections": list(self.sections),
            "figures": self.figures,
            "seconds": round(self.seconds, 2),
            **self.summary,
        }


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    reaudit: bool = False,
    utility: bool = True,
    utility_devices: int = DEFAULT_UTILITY_DEVICES,
    compress: bool = True,
    progress: Progress | None = None,
) -> ReportResult:
    """Writes the run's report (default ``RUN_DIR/report.html``)."""
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    plotly_js(compress)  # fail early, before the audit, when plotly is missing
    if out is not None:
        check_out(Path(out), "--out")
    data = load_run(
        run_dir, reaudit=reaudit, utility=utility, utility_devices=utility_devices, progress=say
    )
    say("drawing the report")
    page = run_page(data)
    path = Path(out) if out is not None else data.run_dir / "report.html"
    size, figures = write_page(page, path, compress=compress)
    h = data.latest
    ev = (data.audit or {}).get("event_level", {})
    m = data.metrics or {}
    summary: dict[str, Any] = {
        "run_dir": str(data.run_dir),
        "hierarchy_version": h.version if h else None,
        "level1_nodes": len(h.level(1)) if h else 0,
        "level2_nodes": len(h.level(2)) if h else 0,
        "versions": len(data.versions),
        "rounds": len(data.rounds),
        "epsilon_event_level_max": ev.get("epsilon_max", m.get("epsilon_event_level_total")),
        "epsilon_user_level": ((data.audit or {}).get("headline") or {}).get(
            "epsilon_user_level",
            (data.audit or {})
            .get("user_level", {})
            .get("epsilon", m.get("epsilon_user_level_total")),
        ),
        "audit_flags": len((data.audit or {}).get("flags", [])),
        "audit_source": data.audit_source,
        "empirical": sorted(((data.audit or {}).get("empirical") or {}).keys()),
        "nmi_level1": (m.get("federated") or {}).get("nmi_level1"),
        "nmi_level1_ratio": (m.get("ratio") or {}).get("nmi_level1"),
        "utility_versions": len(data.utility),
    }
    return ReportResult(
        path,
        size,
        tuple(sec.key for sec in page.sections),
        figures,
        summary,
        time.perf_counter() - t0,
    )
