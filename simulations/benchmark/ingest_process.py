"""One ``fedinterest ingest`` in its own process, for the ``ingest`` section:

    python -m simulations.benchmark.ingest_process STORE FILE

prints its seconds and peak resident memory in kB (VmHWM, not ``ru_maxrss``: Linux carries
``ru_maxrss`` over from the parent across ``exec``); exits with ingest's code."""

from __future__ import annotations

import sys
import time

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from simulations.cli import main as cli_main

    store, source = argv
    t0 = time.perf_counter()
    rc = cli_main(["ingest", "--store", store, source, "-q"])
    with open("/proc/self/status", encoding="ascii") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    print(time.perf_counter() - t0, hwm)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
