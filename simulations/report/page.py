"""The report's page framework: a :class:`Page` of summary tiles and sections (text, tables,
Plotly charts), rendered as one self-contained HTML document.

Everything is inlined: Plotly's JavaScript once (gzip + base64, unpacked in the browser with
``DecompressionStream``; ``compress=False`` inlines it as plain text instead), each chart as a
JSON document, tables as plain HTML (readable without JavaScript). No request leaves the page,
so it opens offline. The page is written through a temporary file that is removed whatever
fails.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.errors import ConfigError
from simulations.files import atomic_write_text
from simulations.report.values import fmt

__all__ = [
    "Page",
    "Raw",
    "Section",
    "check_out",
    "flatten",
    "plotly_js",
    "render_page",
    "write_page",
]


@dataclass
class _Block:
    html: str = ""
    fig_id: str | None = None
    spec: dict[str, Any] | None = None


@dataclass
class Section:
    key: str
    title: str
    blocks: list[_Block] = field(default_factory=list)

    def text(self, markup: str) -> None:
        """Adds trusted markup (callers escape what they interpolate)."""
        self.blocks.append(_Block(html=markup))

    def para(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.blocks.append(_Block(html=f"<p{c}>{html.escape(text)}</p>"))

    def figure(self, fig_id: str, fig: Any, caption: str = "") -> None:
        self.blocks.append(_Block(fig_id=fig_id, spec=_fig_spec(fig), html=caption))

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[Any]],
        caption: str = "",
        cls: str = "",
    ) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        c = f' class="{cls}"' if cls else ""
        self.blocks.append(
            _Block(
                html=f'<div class="tbl"><table{c}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            )
        )


def _cell(v: Any) -> str:
    if isinstance(v, Raw):
        return v.markup
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return fmt(v)
    return html.escape("-" if v is None else str(v))


@dataclass(frozen=True)
class Raw:
    """Trusted markup for a table cell (everything else is escaped)."""

    markup: str


@dataclass
class Page:
    """A report page: a title, summary tiles and sections of text, tables and charts."""

    title: str
    subtitle: str = ""
    tiles: list[tuple[str, str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def section(self, key: str, title: str) -> Section:
        s = Section(key, title)
        self.sections.append(s)
        return s

    def tile(self, label: str, value: str, note: str = "") -> None:
        self.tiles.append((label, value, note))


def _fig_spec(fig: Any) -> dict[str, Any]:
    import plotly.io as pio

    spec: dict[str, Any] = json.loads(pio.to_json(fig, validate=False, pretty=False))
    spec.get("layout", {}).pop("template", None)
    return {"data": spec.get("data", []), "layout": spec.get("layout", {})}


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@functools.lru_cache(maxsize=2)
def plotly_js(compress: bool) -> tuple[str, str]:
    """``(version, payload)``: the plotly.js bundle, plain or gzip + base64."""
    try:
        import plotly
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ConfigError(
            "the report needs plotly: pip install 'fedinterest[report]' (the sim and dev extras "
            "include it)."
        ) from None
    js = get_plotlyjs()
    if not compress:
        return str(plotly.__version__), js.replace("</script", "<\\/script")
    packed = gzip.compress(js.encode("utf-8"), compresslevel=9, mtime=0)
    return str(plotly.__version__), base64.b64encode(packed).decode("ascii")


@functools.lru_cache(maxsize=1)
def _template_json() -> str:
    import plotly.io as pio
    from plotly.utils import PlotlyJSONEncoder

    tpl = json.loads(
        json.dumps(pio.templates["plotly_white"].to_plotly_json(), cls=PlotlyJSONEncoder)
    )
    tpl.get("layout", {}).update({"font": {"family": _FONT, "size": 13}})
    return _script_json(tpl)


_FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

_CSS: Final = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#1f77b4}
*{box-sizing:border-box}
body{margin:0;font-family:FONT;color:var(--fg);background:var(--bg);line-height:1.45}
header{background:#1d2330;color:#fff;padding:22px 32px 18px}
header h1{margin:0;font-size:24px;font-weight:600}
header .sub{color:#c9cfdb;margin-top:4px;font-size:14px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-size:14px}
main{max-width:1280px;margin:0 auto;padding:18px 32px 48px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin:6px 0 18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.tile .k{font-size:12px;color:var(--muted);letter-spacing:.02em}
.tile .v{font-size:22px;font-weight:600;margin-top:2px}
.tile .n{font-size:12px;color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 22px 18px;margin:0 0 18px}
section h2{font-size:19px;margin:14px 0 8px}
p{margin:6px 0 10px}
p.note{color:var(--muted);font-size:13px}
.fi-fig{width:100%;min-height:120px}
.fig-status{color:var(--muted);font-size:13px;padding:8px 0}
.tbl{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:13px;min-width:40%}
caption{text-align:left;font-weight:600;padding:4px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:#fafbfc;font-weight:600}
td.num,th.num{text-align:right}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.flag{color:#b00020;font-weight:600}
.ok{color:#1b7f3b;font-weight:600}
ul.g{margin:6px 0 10px;padding-left:20px;font-size:13px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
""".replace("FONT", _FONT)

_LOADER: Final = """
(async function () {
  const status = document.getElementById('fi-status');
  const figs = Array.from(document.querySelectorAll('div.fi-fig'));
  try {
    if (!window.Plotly) {
      const packed = document.getElementById('fi-plotly-gz');
      if (!packed) throw new Error('the page carries no plotly.js');
      if (typeof DecompressionStream === 'undefined') {
        throw new Error('this browser cannot unpack the embedded charts (it has no ' +
          'DecompressionStream); rebuild the report with --no-compress');
      }
      const bin = atob(packed.textContent.trim());
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
      const code = await new Response(stream).text();
      const s = document.createElement('script');
      s.textContent = code;
      document.head.appendChild(s);
    }
    const template = JSON.parse(document.getElementById('fi-template').textContent);
    let drawn = 0;
    for (const div of figs) {
      const spec = JSON.parse(document.getElementById(div.dataset.spec).textContent);
      spec.layout.template = template;
      await Plotly.newPlot(div, spec.data, spec.layout,
        {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d']});
      drawn++;
    }
    document.body.dataset.rendered = String(drawn);
    if (status) status.remove();
  } catch (err) {
    document.body.dataset.rendered = 'error';
    if (status) status.textContent = 'The charts could not be drawn: ' + err.message;
    console.error('fedinterest report: ' + err.message);
  }
})();
"""


def render_page(page: Page, *, compress: bool = True) -> str:
    """The page as one self-contained HTML document (Plotly inlined once)."""
    version, payload = plotly_js(compress)
    nav = "".join(
        f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in page.sections
    )
    tiles = "".join(
        f'<div class="tile"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
        f'<div class="n">{html.escape(n)}</div></div>'
        for k, v, n in page.tiles
    )
    body = []
    scripts = []
    for s in page.sections:
        parts = [
            f'<section id="{html.escape(s.key)}" data-section="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>'
        ]
        for b in s.blocks:
            if b.fig_id is not None:
                spec_id = f"{b.fig_id}-spec"
                # a fixed container height: Plotly's responsive resize sizes the chart to its
                # container, and an auto-height container lets a tall window stretch it
                height = int((b.spec or {}).get("layout", {}).get("height") or 450)
                parts.append(
                    f'<div class="fi-fig" id="{html.escape(b.fig_id)}" style="height:{height}px" '
                    f'data-spec="{html.escape(spec_id)}"></div>'
                )
                if b.html:
                    parts.append(f'<p class="note">{html.escape(b.html)}</p>')
                scripts.append(
                    f'<script type="application/json" id="{html.escape(spec_id)}">{_script_json(b.spec)}</script>'
                )
            else:
                parts.append(b.html)
        parts.append("</section>")
        body.append("".join(parts))
    if compress:
        lib = f'<script type="application/octet-stream" id="fi-plotly-gz">{payload}</script>'
    else:
        lib = f"<script>{payload}</script>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="fedinterest report (plotly.py {html.escape(version)})">'
        f"<title>{html.escape(page.title)}</title><style>{_CSS}</style></head>\n"
        f'<body><header><h1>{html.escape(page.title)}</h1><div class="sub">{html.escape(page.subtitle)}</div></header>'
        f"<nav>{nav}</nav><main>"
        f'<div id="fi-status" class="fig-status">Drawing the charts…</div>'
        '<noscript><p class="fig-status">The charts need JavaScript; every table below is '
        "complete without it.</p></noscript>"
        f'<div class="tiles">{tiles}</div>'
        + "\n".join(body)
        + "</main><footer>Self-contained report: no request leaves this page. "
        f"Charts: Plotly (plotly.py {html.escape(version)}), inlined.</footer>\n"
        + "\n".join(scripts)
        + f'\n<script type="application/json" id="fi-template">{_template_json()}</script>\n'
        + lib
        + f"\n<script>{_LOADER}</script>\n</body></html>\n"
    )


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as ``("a.b.c", value)`` rows."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, json.dumps(v) if isinstance(v, (list, dict)) else v))
    return out


def check_out(path: Path, flag: str | None = None) -> None:
    """Refuses an output path that cannot become a file, before anything is computed.

    Args:
        path: the report file to write.
        flag: the command-line flag that named it, for the message.
    """
    name = f"`{flag}` {str(path)!r}" if flag else repr(str(path))
    if path.is_dir():
        raise ConfigError(
            f"{name} is a directory; give a file path such as {str(path / 'report.html')!r}."
        )
    if path.exists() and not path.is_file():
        raise ConfigError(f"{name} must be a regular file path. Found something else there.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name}: {str(parent)!r} must be a directory. Found a file.")
            break


def _write(path: Path, text: str) -> int:
    """Writes ``text`` atomically (:mod:`simulations.files`); ``path`` is checked first."""
    check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def write_page(page: Page, out: Path, *, compress: bool = True) -> tuple[int, int]:
    """Renders and writes ``page``; returns ``(bytes, figures)``."""
    text = render_page(page, compress=compress)
    figures = sum(1 for sec in page.sections for b in sec.blocks if b.fig_id)
    return _write(out, text), figures
