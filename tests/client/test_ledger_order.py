"""Crash ordering: a release never leaves the device without its ledger entry.

A real process runs a release and is SIGKILLed at a checkpoint: before the ledger write, or
after it but before the release is "sent" (written to a file standing for the network).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from client.store import EventStore
from common.events import iter_records
from simulations.datasets.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from client.release import ReleaseParams, release_round
    from client.store import EventStore
    from common.privacy import PrivacyBudget
    from common.projection import normalize_rows
    from tests.client.test_release import HashEncoder, config

    store_path, kill_at, sent_path = sys.argv[1], sys.argv[2], sys.argv[3]

    def checkpoint(name):
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    with EventStore(store_path) as store:
        c = normalize_rows(np.random.default_rng(5).normal(size=(6, 16)).astype(np.float32))
        out = release_round(store, ReleaseParams.from_config(config()), c, encoder=HashEncoder(),
                            budget=PrivacyBudget(2.0, 1e-5), rng=np.random.default_rng(0), checkpoint=checkpoint)
    np.save(sent_path, out.sums)  # the send
    """
)


@pytest.mark.parametrize("kill_at", ["before_ledger", "after_ledger", "never"])
def test_kill_never_sends_without_ledger(tmp_path: Path, kill_at: str) -> None:
    """Killed before the ledger write: nothing recorded, nothing sent. Killed after it:
    recorded, not sent (over-counting is safe). Not killed: recorded and sent."""
    db = tmp_path / "d.db"
    with EventStore(db) as s:
        s.ingest(iter_records(generate(SyntheticConfig(users=1, seed=2)).events))
    sent = tmp_path / "sent.npy"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(db), kill_at, str(sent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    with EventStore(db) as s:
        entries = s.ledger()
        stored = s.get_state("release:1:0")
    if kill_at == "never":
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == -9
    assert (not sent.exists()) or len(entries) == 1, "a release was sent without its ledger entry"
    expected = {"before_ledger": (0, False), "after_ledger": (1, False), "never": (1, True)}[
        kill_at
    ]
    assert (len(entries), sent.exists()) == expected
    assert (stored is not None) == (
        len(entries) == 1
    )  # the stored release and its entry commit together
