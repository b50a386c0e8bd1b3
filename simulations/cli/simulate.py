"""``fedinterest simulate`` and ``fedinterest sweep``: the run flags they share, mapped to
:class:`common.config.RunConfig` in one place (:func:`run_config_from_args`).

Every default is read from the dataclass that owns it: the run's settings from
:class:`~common.config.RunConfig` and its parts; the dataset, population and events per user
from :class:`simulations.simulate.SimulateOptions` (passed on only when given, so its default
applies: that module loads Flower, which the parser must not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import (
    DEFAULT_USER_CLIPPING_NORM,
    SEEDINGS,
    AdapterConfig,
    AnalyticsConfig,
    ClusteringConfig,
    PrivacyConfig,
    RunConfig,
)
from common.privacy.ledger import Scope
from common.records import NoiseKind, ReleaseMode
from simulations import options as _options
from simulations.cli.base import (
    Parser,
    UsageError,
    add_encoder_flag,
    emit,
    finite_float,
    fraction,
    open_share,
    positive_float,
    positive_int,
    rate,
    stderr_lines,
)

if TYPE_CHECKING:  # both load Flower: imported when a command runs, not to build the parser
    from simulations.simulate import SimulateOptions
    from simulations.sweep import SweepOptions

__all__ = [
    "ROBUST_CHOICES",
    "add_parser",
    "add_run_settings",
    "run",
    "run_config_from_args",
    "simulate_options_from_args",
    "sweep_options_from_args",
]

#: RunConfig.robust's values (a string there; validated by RunConfig itself)
ROBUST_CHOICES = ("none", "trimmed", "median")

#: flags mapped onto RunConfig fields of the same name, per part (``None``: the top level);
#: a flag the command lacks keeps the dataclass default
_RUN_FLAGS: dict[str | None, tuple[str, ...]] = {
    None: ("rounds", "fraction", "seed", "robust", "round_attempts"),
    "privacy": (
        "epsilon",
        "delta",
        "unit",
        "noise",
        "user_clipping_norm",
        "mode",
        "no_dp",
        "min_cohort_fraction",
    ),
    "clustering": (
        "tree_z",
        "seeding",
        "seed_leaves",
        "snap_labels",
        "level1_k",
        "codebook_size",
    ),
    "analytics": ("histogram", "top_k", "popularity_noise_factor"),
    "adapter": (),
}
_PARTS: dict[str, type] = {
    "privacy": PrivacyConfig,
    "clustering": ClusteringConfig,
    "analytics": AnalyticsConfig,
    "adapter": AdapterConfig,
}
#: SimulateOptions fields whose flags default to None: the dataclass's default applies
_OPTION_FLAGS = (
    "dataset",
    "clients",
    "events_per_user",
    "engine",
    "workers",
    "eval_users",
    "encoder",
)


def run_config_from_args(args: argparse.Namespace, *, epsilon: float | None = None) -> RunConfig:
    """The :class:`RunConfig` of parsed run flags: the one place flags become a run config.

    Args:
        args: ``simulate`` or ``sweep`` arguments.
        epsilon: the total epsilon, overriding ``--epsilon`` (a sweep's largest).
    """
    given = vars(args)

    def picked(names: tuple[str, ...]) -> dict[str, Any]:
        return {n: given[n] for n in names if n in given}

    parts: dict[str, dict[str, Any]] = {p: picked(_RUN_FLAGS[p]) for p in _PARTS}
    if epsilon is not None:
        parts["privacy"]["epsilon"] = epsilon
    if "no_popularity" in given:
        parts["analytics"]["popularity"] = not given["no_popularity"]
    if "adapter" in given:
        parts["adapter"]["enabled"] = given["adapter"]
    if given.get("level1_k") is not None:
        parts["clustering"]["cut"] = "fixed"
    return RunConfig(
        **picked(_RUN_FLAGS[None]), **{p: kind(**parts[p]) for p, kind in _PARTS.items()}
    )


def simulate_options_from_args(
    args: argparse.Namespace, run: RunConfig, **over: Any
) -> SimulateOptions:
    """The :class:`simulations.simulate.SimulateOptions` of parsed run flags and ``run``."""
    from simulations.simulate import SimulateOptions

    given = {k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None}
    if "engine" in given:
        given["engine"] = _options.Engine(given["engine"])
    return SimulateOptions(
        out=Path(args.out),
        run=run,
        cache=Path(args.cache) if args.cache else None,
        taxonomy=Path(args.taxonomy) if args.taxonomy else None,
        verbose=args.verbose,
        **given,
        **over,
    )


def sweep_options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The :class:`simulations.sweep.SweepOptions` of parsed ``sweep`` arguments."""
    from simulations.sweep import SweepOptions

    run = run_config_from_args(args, epsilon=max(args.epsilons))
    populations: tuple[int, ...] = args.clients or ()
    args.clients = min(populations) if populations else None
    return SweepOptions(
        epsilons=tuple(args.epsilons),
        out=Path(args.out),
        base=simulate_options_from_args(args, run),
        clients=populations if len(populations) > 1 else (),
        overwrite=args.overwrite,
        run_reports=args.run_reports,
        compress=not args.no_compress,
    )


# -- simulate -----------------------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    from simulations.faults import dropout_mod
    from simulations.simulate import options_from_run_dir, simulate

    mods = [dropout_mod(args.dropout, args.seed)] if args.dropout else []
    if args.resume:
        _refuse_flags_with_resume(args)
        opts = options_from_run_dir(
            args.resume,
            resume=True,
            cache=Path(args.cache) if args.cache else None,
            verbose=args.verbose,
            client_mods=tuple(mods),
        )
        args.out = args.resume
    else:
        opts = simulate_options_from_args(
            args, run_config_from_args(args), overwrite=args.overwrite, client_mods=tuple(mods)
        )
    if args.no_dp:
        print(
            "WARNING: --no-dp releases every device's leaf sums WITHOUT noise. Epsilon is infinite.",
            file=sys.stderr,
        )
    _warn_large_delta(opts.run.privacy.delta, opts.clients)
    quiet = args.quiet or args.json
    metrics = simulate(
        opts, progress=None if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    if args.json:
        from common.jsonio import json_safe

        json.dump(json_safe(metrics), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif not args.quiet:
        _print_run_summary(Path(args.out), metrics)
    return 0


#: flags that --resume may take: the rest of the run's settings come from its config.json
_RESUME_FLAGS = frozenset({"resume", "cache", "verbose", "quiet", "json", "dropout", "handler"})


def _refuse_flags_with_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues a run with its own settings; a flag that would change them is a
    usage error, never silently ignored."""
    from simulations.simulate import SimulateOptions

    p = Parser(prog="fedinterest")
    add_parser(p.add_subparsers(dest="command"), [])
    defaults = vars(p.parse_args(["simulate"]))
    for name in _OPTION_FLAGS:  # the flags whose default is the dataclass's
        defaults[name] = getattr(SimulateOptions(), name)
    given = sorted(
        k
        for k, v in vars(args).items()
        if k not in _RESUME_FLAGS and v is not None and v != defaults.get(k, v)
    )
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)!r}" for k in given)
        raise UsageError(
            f"--resume continues {args.resume!r} with the settings in its config.json; it takes "
            f"no run settings. Found {flags}."
        )


def _warn_large_delta(delta: float, population: int) -> None:
    """Delta is the chance the epsilon guarantee fails outright; above 1/population a
    mechanism may publish some user's data whole and still meet it (Dwork & Roth 2014, 2.3)."""
    if delta > 1.0 / max(population, 1):
        print(
            f"fedinterest: warning: --delta {delta:g} is above 1/population "
            f"(1/{population} = {1.0 / max(population, 1):.2g}): the guarantee allows a "
            "release that exposes a user outright with that probability; use delta well "
            "below 1/population (e.g. 1e-5 or smaller).",
            file=sys.stderr,
        )


def _or_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _print_genres(genres: dict[str, Any]) -> None:
    """The genre check's table (flat multi-label genres; see :mod:`simulations.genres`)."""
    cols = [c for c in ("federated", "centralized", "seed_method") if c in genres]
    ratios = [("ratio", "fed/central"), ("seed_method_ratio", "fed/seed")]
    ratios = [(k, name) for k, name in ratios if k in genres]
    print(
        f"\ngenre check: the tree's nodes against the items' flat genres ({genres['events']} "
        "events, 1/G per genre of an event with G)"
    )
    print(
        f"{'genres':<20}"
        + "".join(f"{c.replace('_', ' '):>13}" for c in cols)
        + "".join(f"{name:>13}" for _, name in ratios)
    )
    for key in genres["federated"]:
        row = "".join(f"{_or_nan(genres[c].get(key)):>13.3f}" for c in cols)
        row += "".join(f"{_or_nan(genres[k].get(key)):>13.3f}" for k, _ in ratios)
        print(f"{key:<20}{row}")


def _print_run_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    from common.hierarchy import Hierarchy

    h = Hierarchy.load(run_dir / "hierarchy.json")
    leaves = h.level(2)
    print(f"\ninterest tree v{h.version}: {len(h.level(1))} broad and {len(leaves)} fine interests")
    for node in h.level(1):
        kids = ", ".join(h.nodes[c].label for c in node.children[:6])
        more = f" +{len(node.children) - 6}" if len(node.children) > 6 else ""
        print(f"  {node.label:<22} {100 * node.weight:5.1f}%  {kids}{more}")
    if "federated" in metrics:
        cols = [c for c in ("federated", "centralized", "catalogue", "seed_method") if c in metrics]
        ratios = [("ratio", "fed/central"), ("seed_method_ratio", "fed/seed")]
        ratios = [(k, name) for k, name in ratios if k in metrics]
        print(
            "\n"
            + f"{'metric':<20}"
            + "".join(f"{c.replace('_', ' '):>13}" for c in cols)
            + "".join(f"{name:>13}" for _, name in ratios)
        )
        nan = float("nan")
        for key in metrics["federated"]:
            row = "".join(f"{metrics[c].get(key, nan):>13.3f}" for c in cols)
            row += "".join(f"{_or_nan(metrics[k].get(key)):>13.3f}" for k, _ in ratios)
            print(f"{key:<20}{row}")
    elif "genres" not in metrics:
        print("\n(no ground-truth categories in this dataset: clustering metrics omitted)")
    if isinstance(metrics.get("genres"), dict):
        _print_genres(metrics["genres"])
    ranking = metrics.get("ranking") or {}
    sides = [c for c in ("federated", "centralized", "popularity", "random") if c in ranking]
    if sides:
        users = ranking[sides[0]]["users"]
        print(
            f"\neach user's held-out items ranked among 100 items it never touched ({users} users)"
        )
        print(f"{'ranking':<20}" + "".join(f"{c:>13}" for c in sides))
        for key, name in (("auc", "AUC"), ("ndcg10", "nDCG@10"), ("recall10", "recall@10")):
            print(f"{name:<20}" + "".join(f"{ranking[c][key]:>13.3f}" for c in sides))

    def fmt(eps: Any) -> str:
        return eps if isinstance(eps, str) else f"{eps:.3f}"

    eps_s = (
        f"user-level epsilon {fmt(metrics.get('epsilon_user_level_total', 'n/a'))}, event level "
        f"{fmt(metrics['epsilon_event_level_total'])}"
    )
    up = metrics.get("bytes_up_per_client_per_round")
    engine = metrics.get("engine") or {}
    cost = (
        f"{up / 1024:.1f} KiB up per client per round"
        if up is not None
        else f"{engine.get('name', '?')} engine on {len(engine.get('workers') or [])} shard nodes"
    )
    print(
        f"\nmode {metrics['mode']}, {eps_s} (delta {metrics['delta']:g}) over "
        f"{metrics['rounds_completed']}/{metrics['rounds']} rounds, {metrics['clients']} clients, "
        f"{cost}, {metrics['wall_seconds']:.0f}s"
    )
    sample = metrics.get("evaluation") or {}
    if sample and sample.get("users") != sample.get("population"):
        print(f"evaluation: {sample['note']} (seed {sample['seed']})")
    print(f"wrote {run_dir}/hierarchy.json, metrics.json, rounds.jsonl")


# -- sweep --------------------------------------------------------------------------------------


def _sweep(args: argparse.Namespace) -> int:
    from simulations.sweep import format_table, run_sweep

    opts = sweep_options_from_args(args)
    doc = run_sweep(opts, progress=stderr_lines(args), simulate_progress=stderr_lines(args, "    "))
    failed = [r for r in doc["runs"] if r["status"] == "failed"]

    def human() -> None:
        print(format_table(doc))
        print(
            f"wrote {opts.out}/sweep.json and {opts.out}/report.html "
            f"({len(doc['runs']) - len(failed)}/{len(doc['runs'])} runs, {doc['seconds']:.0f}s)"
        )

    emit(args, doc, human)
    if failed:
        print(
            f"fedinterest: error: {len(failed)} run(s) failed: "
            + "; ".join(f"epsilon {r['epsilon']:g}: {r['error']}" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


def _epsilons(s: str) -> tuple[float, ...]:
    from common.errors import ConfigError
    from simulations.sweep import parse_epsilons

    try:
        return parse_epsilons(s)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# -- parsers ------------------------------------------------------------------------------------

_COMMANDS = {"simulate": _simulate, "sweep": _sweep}


def run(args: argparse.Namespace) -> int:
    """Runs ``simulate`` or ``sweep``."""
    return _COMMANDS[args.command](args)


def _short(v: float) -> str:
    """``1e-05`` as people write it: ``1e-5``."""
    return f"{v:g}".replace("e-0", "e-").replace("e+0", "e+")


def _populations(text: str) -> tuple[int, ...]:
    """``--clients`` of a sweep: one population or several, comma-separated."""
    out = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be integers >= 2 separated by commas. Found {part!r}."
            ) from None
        if n < 2:
            raise argparse.ArgumentTypeError(f"must be integers >= 2. Found {n}.")
        out.append(n)
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"lists a population twice: {text!r}.")
    return tuple(out)


def add_run_settings(p: argparse.ArgumentParser, *, populations: bool = False) -> None:
    """The run settings ``simulate`` and ``sweep`` share (dataset, population, privacy mode,
    tree and analytics settings); defaults from :class:`RunConfig`. With ``populations``
    (``sweep``), ``--clients`` takes a comma-separated list."""
    d = RunConfig()
    o = _options.SimulateOptions()
    p.add_argument(
        "--dataset",
        default=None,
        help="synthetic (default); kuairec[:FILE] (the KuaiRec catalogue, Chinese, users "
        "simulated over it); catalogue:FILE (any catalogue with item_id, text, category); "
        "movielens; mind:DIR; events:FILE.jsonl",
    )
    p.add_argument(
        "--clients",
        type=_populations if populations else positive_int,
        default=None,
        help=(
            "populations, comma-separated (e.g. 1000,10000,100000 with --engine batched): "
            f"each epsilon runs at each (default {o.clients})"
            if populations
            else f"virtual clients, one per user (default {o.clients})"
        ),
    )
    add_encoder_flag(p, model_dir=False)  # the devices' and the server's
    p.add_argument(
        "--engine",
        choices=[e.value for e in _options.Engine],
        default=None,
        help="devices: one Flower node per device, real SecAgg+ (~70 ms a device and round); "
        "batched: one node per worker hosting a shard of devices, the secure sum simulated "
        f"exactly (10^3-10^5 devices; docs/performance.md) (default {o.engine.value})",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="batched engine: shard nodes (default: one per CPU; with RAY_ADDRESS, set it to the "
        "cluster's CPUs)",
    )
    p.add_argument(
        "--eval-users",
        type=positive_int,
        default=None,
        help="batched engine: metrics on a seeded sample of this many users when the population "
        f"is larger (default {o.eval_users})",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=d.rounds,
        help=f"federated rounds (default {d.rounds})",
    )
    p.add_argument(
        "--delta",
        type=open_share,
        default=d.privacy.delta,
        help=f"delta, in (0, 1) (default {_short(d.privacy.delta)})",
    )
    p.add_argument(
        "--unit",
        choices=[u.value for u in Scope],
        default=d.privacy.unit.value,
        help="privacy unit: user (neighbours differ by one device with all its data) or event "
        f"(by one event; for comparison) (default {d.privacy.unit.value})",
    )
    p.add_argument(
        "--noise",
        choices=[n.value for n in NoiseKind],
        default=None,
        help="gaussian (continuous) or discrete-gaussian (integer noise on the device: what "
        "SecAgg+ sums is exactly the accounted mechanism, composed with RDP) (default: "
        "discrete-gaussian with --mode secagg, gaussian with --mode local)",
    )
    p.add_argument(
        "--user-clipping-norm",
        type=positive_float,
        default=None,
        help="L2 bound of one device's release of one task (default: "
        + ", ".join(f"{v:g} at {k.value} level" for k, v in DEFAULT_USER_CLIPPING_NORM.items())
        + ")",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in ReleaseMode],
        default=d.privacy.mode.value,
        help=f"how releases reach the server: {' or '.join(m.value for m in ReleaseMode)} "
        f"(default {d.privacy.mode.value})",
    )
    p.add_argument(
        "--fraction",
        type=fraction,
        default=d.fraction,
        help=f"share of clients sampled per round, in (0, 1] (default {d.fraction:g})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for data, sampling and splits (DP noise is never seeded)",
    )
    p.add_argument(
        "--events-per-user",
        type=positive_int,
        default=None,
        help="synthetic: median events per user",
    )
    p.add_argument(
        "--cache", help="shared embedding cache file (default ~/.cache/fedinterest/embeddings.db)"
    )
    p.add_argument(
        "--taxonomy",
        help="label space TSV (e.g. ../shared/taxonomies/chrome-topics/taxonomy_v2.tsv)",
    )
    p.add_argument(
        "--adapter",
        action="store_true",
        help="train the low-rank adapter with DP-SGD (its spend counts in --epsilon)",
    )
    p.add_argument(
        "--no-popularity",
        action="store_true",
        help="skip the DP item-popularity release of the last round",
    )
    p.add_argument(
        "--tree-z",
        type=finite_float,
        default=None,
        help="significance a leaf needs to be listed in the published tree (default: Holm's "
        f"test, under which any leaf without data is listed at most {d.clustering.tree_null_rate * 100:g}%% "
        "of the time; 0 lists every leaf with a positive estimated mass)",
    )
    p.add_argument(
        "--seeding",
        choices=list(SEEDINGS),
        default=d.clustering.seeding,
        help="what seeds the first round's leaves: catalogue: k-means on the public "
        "catalogue's embeddings; private: round 1 over a public codebook, its significant "
        "cells reduced by k-means on the server (no catalogue needed); vocabulary: the label "
        "vocabulary's leaf labels; auto: the vocabulary when it describes at least half the "
        f"catalogue, else the catalogue (default {d.clustering.seeding})",
    )
    p.add_argument(
        "--codebook-size",
        type=positive_int,
        default=d.clustering.codebook_size,
        help=f"private seeding: the codebook's cells in round 1 (default {d.clustering.codebook_size})",
    )
    p.add_argument(
        "--seed-leaves",
        type=positive_int,
        default=None,
        help="catalogue or private seeding: the number of seeds (default: the vocabulary's "
        "leaf count)",
    )
    p.add_argument(
        "--snap-labels",
        action="store_true",
        help="catalogue seeding: move a seed whose nearest vocabulary label is within the "
        "measured naming threshold onto that label (default off: measured worse)",
    )
    p.add_argument(
        "--broad",
        dest="level1_k",
        type=positive_int,
        default=None,
        help="the number of broad interests (default: chosen from the tree, see docs/federated.md)",
    )
    p.add_argument(
        "--popularity-noise-factor",
        type=positive_float,
        default=d.analytics.popularity_noise_factor,
        help="noise of the popularity release as a multiple of a tree round's (>= 1; default "
        f"{d.analytics.popularity_noise_factor:g}: it costs one round's budget; 3 costs 1/9 of a"
        " round for 3x the noise on the counts)",
    )
    p.add_argument(
        "--min-cohort-fraction",
        type=fraction,
        default=d.privacy.min_cohort_fraction,
        help="secagg: share of sampled devices the noise shares are calibrated for (default "
        f"{d.privacy.min_cohort_fraction:g})",
    )
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Adds ``simulate`` and ``sweep``."""
    d = RunConfig()
    sim = sub.add_parser(
        "simulate", parents=parents, help="run the federated pipeline on Flower's simulation engine"
    )
    add_run_settings(sim)
    sim.add_argument(
        "--epsilon",
        type=positive_float,
        default=d.privacy.epsilon,
        help="total epsilon of the run at its --unit, every release together (default "
        f"{d.privacy.epsilon:g})",
    )
    sim.add_argument("--out", default="run", help="run directory (default ./run)")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sim.add_argument("--no-dp", action="store_true", help="INSECURE: release without noise")
    sim.add_argument(
        "--histogram",
        action="store_true",
        help="population analytics: DP counts of devices per broad interest, each round",
    )
    sim.add_argument(
        "--top-k",
        type=positive_int,
        default=d.analytics.top_k,
        help=f"interests per device in the histogram (default {d.analytics.top_k})",
    )
    sim.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a crashed run from its last completed round"
    )
    sim.add_argument(
        "--robust",
        choices=ROBUST_CHOICES,
        default=d.robust,
        help="robust aggregation (local mode releases, adapter)",
    )
    sim.add_argument(
        "--round-attempts",
        type=positive_int,
        default=d.round_attempts,
        help=f"tries per round when too few devices answer (default {d.round_attempts})",
    )
    sim.add_argument(
        "--dropout",
        type=rate,
        default=0.0,
        help="fault injection: each device drops out of each round with this probability, in"
        " [0, 1)",
    )
    sim.set_defaults(handler=run)

    swp = sub.add_parser(
        "sweep", parents=parents, help="simulate once per epsilon; utility against epsilon"
    )
    swp.add_argument(
        "--epsilons",
        required=True,
        type=_epsilons,
        help="comma-separated totals, e.g. 0.25,0.5,1,2,4,8",
    )
    swp.add_argument(
        "--out", required=True, type=Path, help="sweep directory (one run per epsilon inside)"
    )
    swp.add_argument(
        "--overwrite",
        action="store_true",
        help="re-run every epsilon (default: reuse finished runs)",
    )
    swp.add_argument("--run-reports", action="store_true", help="also write each run's report.html")
    swp.add_argument(
        "--no-compress", action="store_true", help="inline plotly.js uncompressed (bigger file)"
    )
    add_run_settings(swp, populations=True)
    swp.set_defaults(handler=run)
