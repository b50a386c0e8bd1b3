"""Benchmarks that print one table and write ``bench.json``.

    python -m simulations.benchmark --quick          # under 5 minutes on 2 cores
    python -m simulations.benchmark                  # the full run (1,000-client simulation)
    python -m simulations.benchmark --only server    # one section (repeatable)

Each figure is the median of several runs (``runs`` says how many), with its ratio to a
baseline measured in the same run; every row carries the 1-minute load average before it was
taken (``load``), because on a shared machine contention, not the code, often dominates.
Sections, one module each (each has ``run(quick) -> rows``):

- ``encoder``: texts/s of the MiniLM encoder for short and long texts, cold (model calls) vs
  warm (embedding-cache hits); fp32 vs dynamic int8 quantisation (a faster path, with its
  cosine to fp32; not the default: it is below 0.99).
- ``ingest``: events/s and peak RSS of ``fedinterest ingest`` (a separate process).
- ``adapter``: DP-SGD vs plain SGD step time (and, full run only, the adapter's effect on
  the tree and recall in two simulations).
- ``client``: one device's round at 200 / 1,000 / 5,000 events: embedding the round's new
  events, local k-means, the DP release, the adapter's DP-SGD steps; peak RSS of a fresh
  device process with and without training (torch and Opacus load only for training).
- ``server``: validating and summing 100 / 1,000 / 10,000 local-mode releases of 257 x 128,
  then the DP-Lloyd aggregation and the tree build.
- ``secagg``: SecAgg+ crypto per device and the server's unmasking per device, Flower's
  stock Shamir vs the simulation's (:mod:`simulations.flower_speedups`).
- ``bytes``: upload per device per round at 256 leaves x 128 dims under SecAgg+ and in local
  mode, against FedAvg of the full MiniLM (its parameter count x 4 bytes).
- ``simulate``: end-to-end ``fedinterest simulate`` (a fresh process each, CPU seconds of
  its whole process tree included) for 100 clients x 5 rounds and, full run only, 1,000
  clients x 5 rounds, against the centralized non-private pipeline on the same data; with
  both sizes, a linear model of the round time extrapolated to 100,000 clients.
- ``synthetic``: seconds, peak RSS and distinct texts of the synthetic generator's column
  path (a separate process) at 1,000 / 10,000 users (quick) or 10,000 / 100,000 (full run).

Beside the sections: :mod:`.timing` (medians, load, CPU of a process tree, peak memory),
:mod:`.fixtures` (texts, device stores, round configs), and the entry points of the fresh
processes some sections measure (:mod:`.ingest_process`, :mod:`.device_process`,
:mod:`.simulation_process`, :mod:`.synthetic_process`); :mod:`.runner` holds :data:`SECTIONS`
and :func:`main`.
"""

from simulations.benchmark.runner import SECTIONS, main

__all__ = ["SECTIONS", "main"]
