"""``fedinterest report``: one self-contained HTML page per run, for people to look at.

The page shows the interest tree (a zoomable Plotly sunburst per version, with labels,
population weights and the new/grown/shrunk nodes of each version), the epsilon spent per
round (event level from the device ledgers, user level from the server's ledger, with the
budget) and its distribution over the devices, the utility against the baselines (clustering
metrics per version and at the end, ranking metrics), the empirical audit beside the
accounted epsilon, and the run's parameters.

Everything is inlined: Plotly's JavaScript once (gzip + base64, unpacked in the browser with
``DecompressionStream``; ``compress=False`` inlines it as plain text instead), each chart as a
JSON document, tables as plain HTML (readable without JavaScript). No request leaves the page,
so it opens offline. Nothing per device is embedded beyond a histogram, so the size does not
grow with the number of devices (about 2 MB; the tree is bounded by ``max_leaves``).

Sources, all in the run directory: ``config.json``, ``metrics.json``, ``rounds.jsonl``,
``hierarchy.json`` and every version in ``server.db``, ``audit.json`` (recomputed from the
ledgers in ``clients/*.db`` and ``server.db`` when missing or older than the run). The
clustering metrics per version read the simulation's device stores (their events' ground-truth
categories and cached embeddings): an evaluation-only view that a deployment does not have.

Every file is read and checked (its type, and the type of each field the report uses) before
anything is computed or written; a bad one is a :class:`common.errors.ConfigError` naming the
file, the field and the value found. An output path that is a directory is refused up front,
and the page is written through a temporary file that is removed whatever fails.

The package, one job per module:

- :mod:`.values`: numbers as the run's JSON files hold them, and as the pages write them;
- :mod:`.validate`: reading a run's files, each value checked;
- :mod:`.data`: :func:`load_run`, the run as :class:`RunData` (audit, per-version metrics);
- :mod:`.page`: the page framework (:class:`Page`, sections, tables, charts, the HTML);
- :mod:`.figures`: the run's charts;
- :mod:`.sections`: the run's page (:func:`run_page`);
- :mod:`.sweep_page`: the sweep's page, on the same framework;
- :mod:`.build`: :func:`write_report`.
"""

from simulations.report.build import MAX_REPORT_BYTES, ReportResult, write_report
from simulations.report.data import RunData, load_run
from simulations.report.page import Page, Raw, flatten, render_page, write_page
from simulations.report.sections import run_page

__all__ = [
    "MAX_REPORT_BYTES",
    "Page",
    "Raw",
    "ReportResult",
    "RunData",
    "flatten",
    "load_run",
    "render_page",
    "run_page",
    "write_page",
    "write_report",
]
