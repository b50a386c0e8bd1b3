"""One :func:`~simulations.datasets.synthetic.generate_table` in its own process, for the
``synthetic`` section:

    python -m simulations.benchmark.synthetic_process USERS

prints its seconds, peak resident memory in kB (VmHWM, as :mod:`.ingest_process`), the number
of events and the number of distinct texts."""

from __future__ import annotations

import sys
import time

__all__ = ["main"]


def main(argv: list[str]) -> int:
    from simulations.datasets.synthetic import SyntheticConfig, generate_table

    (users,) = argv
    t0 = time.perf_counter()
    syn = generate_table(SyntheticConfig(users=int(users)))
    secs = time.perf_counter() - t0
    with open("/proc/self/status", encoding="ascii") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    print(secs, hwm, len(syn.table), len(syn.table.texts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
