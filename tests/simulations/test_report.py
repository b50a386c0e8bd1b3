"""The HTML reports: built from a real (tiny) sweep of Flower simulations and opened in headless
Chromium over the DevTools protocol; a console error, an uncaught exception or any network
request fails the test."""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import PrivacyConfig, RunConfig
from common.hierarchy import Hierarchy, Node, NodeChange
from simulations.options import Engine
from simulations.report import MAX_REPORT_BYTES, write_report
from simulations.simulate import SimulateOptions
from simulations.sweep import (
    SweepOptions,
    format_table,
    parse_epsilons,
    run_sweep,
    write_sweep_report,
)

# --------------------------------------------------------------------------------------------
# a minimal Chrome DevTools protocol client over --remote-debugging-pipe (fds 3 and 4)
# --------------------------------------------------------------------------------------------

_LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")


class _Chromium:
    """Headless Chromium driven over its DevTools pipe: NUL-separated JSON messages on fd 3
    (to the browser) and fd 4 (from it). No websocket, no downloaded browser."""

    def __init__(self, profile: Path, log: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise FileNotFoundError("chromium")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # the child's ends moved above fd 9, so `3<&N 4>&M` cannot clobber one with the other
        cr = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        cw = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        args = [
            exe,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # offline: any request the page might make goes nowhere (and is also recorded)
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "about:blank",
        ]
        self._log = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{cr} 4>&{cw} {cr}<&- {cw}>&-', "chromium", *args],
            pass_fds=(cr, cw),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(cr)
        os.close(cw)
        self._out = os.fdopen(to_child_w, "wb", buffering=0)
        self._in = from_child_r
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                self._queue.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._queue.put(json.loads(msg))

    def _next(self, deadline: float) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from chromium in time")
        msg = self._queue.get(timeout=left)
        if msg is None:
            raise RuntimeError(f"chromium exited (see {self._log.name})")
        return msg

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            got = self._next(deadline)
            if got.get("id") == self._next_id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                result: dict[str, Any] = got.get("result", {})
                return result
            self.events.append(got)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while True:
            got = self._next(deadline)
            self.events.append(got)
            if got.get("method") == method:
                return got

    def close(self) -> None:
        try:
            self._out.write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self._out.close()
            self._log.close()


_CHECKS = """JSON.stringify((() => {
  const box = (sel) => {
    const el = document.querySelector(sel);
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height};
  };
  const count = (sel) => document.querySelectorAll(sel).length;
  return {
    rendered: document.body.dataset.rendered || '',
    sections: Array.from(document.querySelectorAll('section[data-section]')).map(s => s.dataset.section),
    figures: count('div.fi-fig'),
    plotted: count('div.fi-fig.js-plotly-plot'),
    mainSvgs: count('div.fi-fig svg.main-svg'),
    treeSlices: count('#fig-tree g.slice'),
    treeLabels: Array.from(document.querySelectorAll('#fig-tree g.slice text')).map(t => t.textContent).filter(Boolean),
    epsilonTraces: count('#fig-epsilon g.scatterlayer g.trace'),
    deviceBars: count('#fig-devices g.barlayer g.point'),
    sweepTraces: count('#fig-sweep-clustering g.scatterlayer g.trace'),
    status: document.getElementById('fi-status') ? document.getElementById('fi-status').textContent : null,
    tree: box('#fig-tree'),
    epsilon: box('#fig-epsilon'),
    sweep: box('#fig-sweep-clustering'),
    height: document.documentElement.scrollHeight,
    boxes: Array.from(document.querySelectorAll('div.fi-fig')).map(d => {
      const r = d.getBoundingClientRect();
      const svg = d.querySelector('svg.main-svg');
      return {id: d.id, y: r.top + window.scrollY, height: r.height,
              svgHeight: svg ? svg.getBoundingClientRect().height : 0};
    }),
  };
})())"""


def _assert_no_overlap(checks: dict[str, Any]) -> None:
    """Every chart stays inside its own box, and the boxes do not overlap."""
    boxes = sorted(checks["boxes"], key=lambda b: b["y"])
    for b in boxes:
        assert b["height"] > 100 and b["svgHeight"] <= b["height"] + 1, b
    for a, b in itertools.pairwise(boxes):
        assert a["y"] + a["height"] <= b["y"] + 1, (a, b)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _open(path: Path, shots: Path) -> dict[str, Any]:
    """Opens ``path`` in headless Chromium, waits for the charts, saves screenshots under
    ``shots`` and returns the page checks, console problems and network requests."""
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        msg = "headless Chromium is needed (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    shots.mkdir(parents=True, exist_ok=True)
    browser = _Chromium(shots / "profile", shots / "chromium.log")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            browser.send(method, session=sid)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=sid)
        browser.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + 60
        rendered = ""
        while not rendered and time.monotonic() < deadline:
            rendered = browser.send(
                "Runtime.evaluate",
                {"expression": "document.body.dataset.rendered || ''", "returnByValue": True},
                session=sid,
            )["result"]["value"]
            if not rendered:
                time.sleep(0.2)
        evaluate = {"expression": _CHECKS, "returnByValue": True}
        checks = json.loads(
            browser.send("Runtime.evaluate", evaluate, session=sid)["result"]["value"]
        )
        # a window as tall as the page: the full-page screenshot is then what a person sees
        height = min(int(checks["height"]), 16000)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        time.sleep(1.0)  # Plotly's responsive resize
        checks = json.loads(
            browser.send("Runtime.evaluate", evaluate, session=sid)["result"]["value"]
        )
        shot = base64.b64decode(
            browser.send("Page.captureScreenshot", {"format": "png"}, session=sid)["data"]
        )
        (shots / f"{path.stem}.png").write_bytes(shot)
        checks["screenshot"] = str(shots / f"{path.stem}.png")
        checks["screenshot_size"] = _png_size(shot)
        for name in ("tree", "epsilon", "sweep"):
            box = checks.get(name)
            if box:
                part = base64.b64decode(
                    browser.send(
                        "Page.captureScreenshot",
                        {"format": "png", "clip": {**box, "scale": 1}},
                        session=sid,
                    )["data"]
                )
                (shots / f"{path.stem}-{name}.png").write_bytes(part)
                checks[f"{name}_png_bytes"] = len(part)
    finally:
        browser.close()
    problems = []
    requests = []
    for e in browser.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in (
            "error",
            "assert",
            "warning",
        ):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            problems.append(f"log: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(_LOCAL_SCHEMES):
                requests.append(url)
    checks["problems"] = problems
    checks["requests"] = requests
    return checks


# --------------------------------------------------------------------------------------------
# a real sweep of two tiny simulations
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A two-epsilon sweep (6 devices x 2 rounds each, SecAgg+) on a JSON Lines file of
    synthetic events with their categories: only those events' texts and the label vocabulary
    get encoded (into the session's shared cache), not the synthetic catalogue."""
    from simulations.datasets.synthetic import SyntheticConfig, generate, write_jsonl

    base = tmp_path_factory.mktemp("report")
    events = base / "events.jsonl"
    write_jsonl(generate(SyntheticConfig(users=6, seed=3, events_per_user=25)).events, events)
    run = RunConfig(rounds=2, seed=3, privacy=PrivacyConfig(epsilon=4.0))
    opts = SweepOptions(
        epsilons=(1.0, 4.0),
        out=base / "sweep",
        base=SimulateOptions(
            engine=Engine.DEVICES, dataset=f"events:{events}", clients=6, run=run, cache=cache
        ),
    )
    doc = run_sweep(opts)
    assert [r["status"] for r in doc["runs"]] == ["ok", "ok"], doc["runs"]
    return base / "sweep"


@pytest.mark.slow
def test_sweep_writes_json_report_and_resumes(sweep_dir: Path, cache: Path) -> None:
    """sweep.json has one finished run per epsilon with the spent epsilon and the baselines;
    running the same sweep again reuses both runs instead of simulating."""
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    assert doc["format"] == "fedinterest.sweep/1" and doc["complete"] is True
    assert [r["epsilon"] for r in doc["runs"]] == [1.0, 4.0]
    for r in doc["runs"]:
        assert r["epsilon_spent"] == pytest.approx(r["epsilon"], rel=0.01)
        assert {"nmi_level1", "dendrogram_purity"} <= set(r["federated"])
        assert (sweep_dir / r["run_dir"] / "metrics.json").is_file()
    assert "nmi_level1" in doc["reference"]["centralized"]
    assert (sweep_dir / "report.html").stat().st_size < MAX_REPORT_BYTES
    table = format_table(doc)
    assert "centralized" in table and "nmi_level1" in table
    settings = SimulateOptions(
        engine=Engine.DEVICES,
        dataset=doc["settings"]["dataset"],
        clients=6,
        run=RunConfig(rounds=2, seed=3, privacy=PrivacyConfig(epsilon=4.0)),
        cache=cache,
    )
    t0 = time.perf_counter()
    again = run_sweep(SweepOptions(epsilons=(1.0, 4.0), out=sweep_dir, base=settings))
    assert [r["status"] for r in again["runs"]] == ["reused", "reused"]
    assert time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_run_report_in_headless_chromium(sweep_dir: Path, tmp_path: Path) -> None:
    """The run report opens offline in Chromium without a console error; the tree (with
    labels), the epsilon chart and every section are drawn; screenshots are saved."""
    run_dir = sweep_dir / "eps-4"
    # the empirical audit's record as `fedinterest audit --empirical` writes it (a real one
    # needs another simulation; tests/simulations/test_audit.py covers the attack and bound)
    res = write_report(run_dir, tmp_path / "first.html")
    audit = json.loads((run_dir / "audit.json").read_text())
    audit["empirical"] = {
        "dp": {
            "canaries": 6,
            "guesses": 2,
            "correct": 1,
            "epsilon_lower_bound": 0.0,
            "epsilon_accounted_of_run": audit["event_level"]["epsilon_max"],
        }
    }
    (run_dir / "audit.json").write_text(json.dumps(audit))
    res = write_report(run_dir)
    assert res.path == run_dir / "report.html"
    assert res.bytes < MAX_REPORT_BYTES
    assert res.sections == ("tree", "privacy", "utility", "parameters")
    assert res.summary["empirical"] == ["dp"] and res.summary["utility_versions"] == 2
    checks = _open(res.path, tmp_path / "shots")
    assert checks["problems"] == [], checks["problems"]
    assert checks["requests"] == [], "the report made network requests"
    assert checks["rendered"] == str(res.figures) and checks["plotted"] == res.figures
    assert checks["status"] is None
    _assert_no_overlap(checks)
    assert checks["sections"] == ["tree", "privacy", "utility", "parameters"]
    h = Hierarchy.load(run_dir / "hierarchy.json")
    assert checks["treeSlices"] == 1 + len(h.level(1)) + len(h.level(2))
    assert {h.level(1)[0].label} <= set(checks["treeLabels"])
    assert checks["epsilonTraces"] >= 4  # server, device max, device median, budget, user level
    assert checks["deviceBars"] >= 1
    w, height = checks["screenshot_size"]
    assert w == 1280 and height >= checks["epsilon"]["y"] + checks["epsilon"]["height"]
    # the tree and the epsilon chart are in the screenshot and are not blank
    assert checks["tree_png_bytes"] > 20_000 and checks["epsilon_png_bytes"] > 10_000
    assert Path(checks["screenshot"]).is_file()


@pytest.mark.slow
def test_sweep_report_and_uncompressed_variant_in_chromium(sweep_dir: Path, tmp_path: Path) -> None:
    """The sweep report draws utility against epsilon; the --no-compress variant of a run
    report (plotly.js as a plain script) draws too."""
    checks = _open(sweep_dir / "report.html", tmp_path / "shots")
    assert checks["problems"] == [] and checks["requests"] == []
    assert checks["sections"] == ["tradeoff", "privacy", "runs", "parameters"]
    assert checks["rendered"] == str(checks["figures"]) and checks["sweepTraces"] >= 3
    _assert_no_overlap(checks)
    plain = write_report(sweep_dir / "eps-1", tmp_path / "plain.html", compress=False)
    assert plain.bytes > 4_000_000  # plotly.js as is
    checks = _open(plain.path, tmp_path / "shots")
    assert checks["problems"] == [] and checks["rendered"] == str(plain.figures)


@pytest.mark.slow
def test_report_cli_json(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fedinterest report RUN_DIR --json --out FILE` prints one JSON document."""
    from simulations.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(sweep_dir / "eps-1"), "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["out"] == str(out) and payload["bytes"] == out.stat().st_size
    assert payload["hierarchy_version"] == 2 and payload["audit_flags"] == 0


# --------------------------------------------------------------------------------------------
# fast: size bound, errors, parsing
# --------------------------------------------------------------------------------------------


def _big_run(d: Path, *, devices: int, versions: int, leaves: int, broad: int) -> None:
    """A run directory at the limits of a 1,000-device run: ``max_leaves`` leaves in every
    version, one ledger audit entry per device (no device stores)."""
    from server.storage import ServerStorage

    rng = np.random.default_rng(0)
    dim = 128
    d.mkdir(parents=True)
    config = {
        "dataset": "synthetic",
        "clients": devices,
        "run": {"rounds": versions, "privacy": {"epsilon": 2.0, "delta": 1e-5, "mode": "secagg"}},
        "device_budget_epsilon": 2.0,
    }
    (d / "config.json").write_text(json.dumps(config))
    fp = "f" * 16

    def unit() -> np.ndarray:
        v = rng.normal(size=dim).astype(np.float32)
        return v / np.linalg.norm(v)

    with ServerStorage(d / "server.db") as st:
        for v in range(1, versions + 1):
            nodes: dict[str, Node] = {}
            l1 = [f"g{j}" for j in range(broad)]
            kids: dict[str, list[str]] = {g: [] for g in l1}
            for i in range(leaves):
                kids[l1[i % broad]].append(f"n{i}")
            changes = sorted(NodeChange.ALL)
            for g in l1:
                nodes[g] = Node(
                    g,
                    1,
                    "root",
                    tuple(kids[g]),
                    unit(),
                    1 / broad,
                    (("Broad Interest Name > Something", 0.8),),
                    changes[rng.integers(4)],
                )
                for k in kids[g]:
                    nodes[k] = Node(
                        k,
                        2,
                        g,
                        (),
                        unit(),
                        1 / leaves,
                        tuple(
                            (f"Broad Interest Name > Fine Interest {k} > x{j}", 0.5)
                            for j in range(3)
                        ),
                        changes[rng.integers(4)],
                    )
            nodes["root"] = Node("root", 0, None, tuple(l1), unit(), 1.0)
            st.put_version(
                Hierarchy(v, dim, fp, nodes, server_round=v, parent_version=v - 1 or None)
            )
    rounds = [
        {
            "server_round": r,
            "status": "ok",
            "epsilon_event_level": 2.0 * r / versions,
            "sampled": devices,
            "usable": devices,
        }
        for r in range(1, versions + 1)
    ]
    (d / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    eps = rng.uniform(1.9, 2.0, size=devices)
    audit = {
        "delta": 1e-5,
        "accountant": "pld",
        "event_level": {
            "epsilon_max": float(eps.max()),
            "epsilon_median": float(np.median(eps)),
            "epsilon_min": float(eps.min()),
            "devices": devices,
            "over_budget": [],
            "per_device": [
                {
                    "device": f"client-{i:05d}",
                    "epsilon": float(e),
                    "entries": versions,
                    "per_round": {str(r): float(e) * r / versions for r in range(1, versions + 1)},
                }
                for i, e in enumerate(eps)
            ],
        },
        "per_round": {
            str(r): {"epsilon_max": 2.0 * r / versions, "epsilon_median": 1.9 * r / versions}
            for r in range(1, versions + 1)
        },
        "user_level": {"epsilon": 0.0, "per_output": {}},
        "mechanisms": {},
        "flags": [],
        "guarantees": [],
    }
    (d / "audit.json").write_text(json.dumps(audit))


def test_report_stays_under_5mb_at_1000_devices(tmp_path: Path) -> None:
    """1,000 devices, 20 versions of 256 leaves (the default max_leaves): under 5 MB, and
    nothing per device is embedded beyond the histogram."""
    run = tmp_path / "big"
    _big_run(run, devices=1000, versions=20, leaves=256, broad=40)
    res = write_report(run, utility=False)
    assert res.bytes < MAX_REPORT_BYTES, res.bytes
    text = res.path.read_text(encoding="utf-8")
    assert "client-00999" not in text and "client-00000" not in text
    assert text.count('id="fig-tree"') == 1 and text.count('id="fi-plotly-gz"') == 1
    assert "http://" not in text.split('id="fi-plotly-gz"')[0].replace("http://www.w3.org", "")


def test_report_errors_name_the_problem(tmp_path: Path) -> None:
    """A missing or foreign directory is a one-line error naming what is expected."""
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        write_report(tmp_path)


def test_parse_epsilons() -> None:
    """Comma-separated positive numbers, sorted; junk, zero and repeats are refused."""
    from common.errors import ConfigError

    assert parse_epsilons("1, 0.25,8") == (0.25, 1.0, 8.0)
    for bad in ("", "0", "-1", "x", "1,1", "inf"):
        with pytest.raises(ConfigError):
            parse_epsilons(bad)


def test_sweep_report_from_a_document(tmp_path: Path) -> None:
    """A sweep document with a failed run still renders (the failure is listed)."""
    doc = {
        "format": "fedinterest.sweep/1",
        "epsilons": [0.5, 2.0],
        "settings": {"dataset": "synthetic", "clients": 3, "run": {"rounds": 1, "privacy": {}}},
        "runs": [
            {"epsilon": 0.5, "run_dir": "eps-0.5", "status": "failed", "error": "ConfigError: x"},
            {
                "epsilon": 2.0,
                "run_dir": "eps-2",
                "status": "ok",
                "epsilon_spent": 2.0,
                "federated": {"nmi_level1": 0.5},
                "ratio": {"nmi_level1": 0.8},
            },
        ],
        "reference": {"centralized": {"nmi_level1": 0.62}},
        "complete": True,
    }
    size, figures = write_sweep_report(doc, tmp_path / "s.html")
    text = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert figures >= 2 and size < MAX_REPORT_BYTES and "ConfigError: x" in text
