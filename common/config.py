"""Run configuration: frozen dataclasses per concern, validated on construction.

Flower's ``run_config`` (flat, kebab-case keys; see ``[tool.flwr.app.config]`` in
pyproject.toml) is read in exactly one place: :meth:`RunConfig.from_run_config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError, coerce_enum
from common.privacy.ledger import Scope
from common.projection import DEFAULT_OUTPUT_DIM, DEFAULT_SEED
from common.records import NoiseKind, ReleaseMode

if TYPE_CHECKING:
    from common.vocabulary import Vocabulary

#: The user bound of each unit when none is given: a user-level run clips each device's
#: release to norm 1 (the noise is calibrated to it; the numpy study in the developers' brief
#: measured ~3x the signal of unit-mass weights at the same sensitivity); an event-level run
#: bounds a device's influence loosely (100 events' worth) and calibrates to one event.
DEFAULT_USER_CLIPPING_NORM = {Scope.USER: 1.0, Scope.EVENT: 100.0}

__all__ = [
    "DEFAULT_USER_CLIPPING_NORM",
    "SEEDINGS",
    "AdapterConfig",
    "AnalyticsConfig",
    "ClusteringConfig",
    "PrivacyConfig",
    "RunConfig",
]


def _pos(v: float, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"`{name}` must be > 0. Found {v!r}.")


@dataclass(frozen=True)
class PrivacyConfig:
    """The DP of a run's releases.

    Attributes:
        epsilon: total epsilon of the run's releases (all rounds and tasks together), at the
            run's ``unit``.
        delta: the delta it holds at (default 1e-6: well below 1 / population for the
            populations this project simulates).
        unit: ``user`` (default: neighbouring datasets differ by one device with all its
            data) or ``event`` (by one event; for comparison).
        mode: ``secagg`` (default: noise shares summed under SecAgg+) or ``local``.
        clipping_norm: L2 bound of each event vector (``C``).
        max_weight: cap of each event's behaviour weight; sensitivity = C x max_weight.
        user_clipping_norm: bound of one device's whole release of one task (Frobenius);
            default 1 at user level, 100 at event level (:data:`DEFAULT_USER_CLIPPING_NORM`).
        min_cohort_fraction: secagg noise shares are calibrated so that this share of the
            sampled devices carries the full noise; rounds with fewer survivors are aborted
            before unmasking.
        device_epsilon: each device's lifetime budget at the run's unit (default: ``epsilon``).
        noise: ``gaussian`` (continuous) or ``discrete-gaussian`` (integer noise added on the
            device: what SecAgg+ sums is exactly the accounted mechanism,
            :mod:`common.privacy.discrete`; composed with RDP). Default (``None``): integer
            noise under secure aggregation, where the protocol sums integers, and continuous
            noise in local mode, where nothing quantises it (:attr:`noise_kind`).
        no_dp: release without noise (insecure; for debugging and the empirical audit).
        accountant: ``pld`` (default) or ``rdp``.
    """

    epsilon: float = 2.0
    delta: float = 1e-6
    unit: Scope = Scope.USER
    mode: ReleaseMode = ReleaseMode.SECAGG
    clipping_norm: float = 1.0
    max_weight: float = 1.0
    user_clipping_norm: float | None = None
    min_cohort_fraction: float = 0.7
    device_epsilon: float | None = None
    no_dp: bool = False
    accountant: str = "pld"
    noise: NoiseKind | None = None

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", ReleaseMode)
        if self.noise is not None:
            coerce_enum(self, "noise", NoiseKind)
        coerce_enum(self, "unit", Scope)
        _pos(self.epsilon, "epsilon")
        if not 0 < self.delta < 1:
            raise ConfigError(f"`delta` must be in (0, 1). Found {self.delta!r}.")
        for name in ("clipping_norm", "max_weight"):
            _pos(getattr(self, name), name)
        if self.user_clipping_norm is not None:
            _pos(self.user_clipping_norm, "user_clipping_norm")
        if not 0 < self.min_cohort_fraction <= 1:
            raise ConfigError(
                f"`min_cohort_fraction` must be in (0, 1]. Found {self.min_cohort_fraction!r}."
            )
        if self.device_epsilon is not None:
            _pos(self.device_epsilon, "device_epsilon")
        if self.accountant not in ("pld", "rdp"):
            raise ConfigError(f"`accountant` must be 'pld' or 'rdp'. Found {self.accountant!r}.")

    @property
    def sensitivity(self) -> float:
        return self.clipping_norm * self.max_weight

    @property
    def noise_kind(self) -> NoiseKind:
        """The noise in force: ``noise``, or by default integer noise under secure
        aggregation and continuous noise in local mode."""
        if self.noise is not None:
            return self.noise
        return NoiseKind.DISCRETE if self.mode is ReleaseMode.SECAGG else NoiseKind.GAUSSIAN

    @property
    def composition_accountant(self) -> str:
        """The accountant the run's epsilon is calibrated and audited with: RDP for integer
        noise (a Renyi bound: :mod:`common.privacy.accounting`), else ``accountant``."""
        return "rdp" if self.noise_kind is NoiseKind.DISCRETE else self.accountant

    @property
    def user_bound(self) -> float:
        """The user clipping norm in force (the unit's default when none was given)."""
        return (
            self.user_clipping_norm
            if self.user_clipping_norm is not None
            else DEFAULT_USER_CLIPPING_NORM[self.unit]
        )

    @property
    def device_budget_epsilon(self) -> float:
        return self.device_epsilon if self.device_epsilon is not None else self.epsilon


#: What can seed the first round's leaves (:attr:`ClusteringConfig.seeding`).
SEEDINGS = ("auto", "vocabulary", "catalogue", "private")


@dataclass(frozen=True)
class ClusteringConfig:
    """The public space, the device's assignment, and the server's aggregation rules.

    Attributes:
        projection_dim / projection_seed: the public random projection.
        residual_threshold: events whose best cosine to every leaf is below this go to the
            unassigned row.
        memory / prior_strength / live_z / new_leaf_z / merge_cosine / split_mass /
            max_leaves: :class:`server.aggregation.AggregationConfig`.
        tree_z: significance a leaf needs to appear in the published tree (``None``, the
            default: Holm's test at family-wise error rate :attr:`tree_null_rate` over the
            leaves' chi-square null p-values, :func:`server.aggregation.listed_leaves`; the
            chance that any leaf without data is listed is at most that rate, measured on
            null rounds in tests/server/test_listing.py). 0 lists every leaf whose
            bias-corrected mass estimate is positive (pure noise passes half the time).
        tree_null_rate: the family-wise error rate of the default listing (1%: at 5%, one
            pure-noise leaf was published in 2 of 3 MovieLens event-level runs; the null's
            tail is a little heavier than the chi-square's there, docs/federated.md).
        cut: level-1 cut criterion (``labels``, ``silhouette``, ``gap`` or ``fixed``).
        level1_k: the number of level-1 nodes with ``fixed``.
        label_weight: weight of the public label prior in the level-1 linkage (0 = off).
        seeding: what seeds the first round's leaves: ``catalogue`` (spherical k-means++ then
            k-means on the public catalogue's embeddings, ``seed_leaves`` of them; simulations
            only in this version: :mod:`simulations.seeding`), ``private`` (round 1 releases
            over a public codebook and the server reduces the significant cells to
            ``seed_leaves`` leaves: :mod:`server.private_seeding`; no catalogue needed),
            ``vocabulary`` (one leaf per leaf label of the public vocabulary), or ``auto``
            (the default: with a catalogue, the vocabulary when it describes at least half
            of it, else the catalogue: :mod:`simulations.seeding`; without one, the
            vocabulary). A run states the seeding it used (``metrics.json``).
        seed_leaves: the number of catalogue (or private) seeds (``None``: as many as the vocabulary has
            leaf labels, 160 for the default vocabulary: measured on KuaiRec and the
            synthetic data against 256, docs/federated.md).
        codebook_size: ``private`` seeding: the public codebook's cells in round 1
            (:mod:`server.private_seeding`).
        snap_labels: move a catalogue seed onto its nearest vocabulary leaf label when that
            label is within the measured naming threshold (off by default: measured worse
            on the synthetic data, docs/federated.md).
    """

    projection_dim: int = DEFAULT_OUTPUT_DIM
    projection_seed: int = DEFAULT_SEED
    residual_threshold: float = 0.2
    memory: float = 1.0
    prior_strength: float = 3.0
    live_z: float = 2.0
    tree_z: float | None = None
    tree_null_rate: float = 0.01
    new_leaf_z: float = 6.0
    merge_cosine: float = 0.92
    split_mass: float | None = None
    max_leaves: int = 256
    cut: str = "labels"
    level1_k: int | None = None
    label_weight: float = 0.6
    seeding: str = "auto"
    seed_leaves: int | None = None
    snap_labels: bool = False
    codebook_size: int = 256

    def __post_init__(self) -> None:
        if self.seeding not in SEEDINGS:
            raise ConfigError(
                f"`seeding` must be one of {', '.join(SEEDINGS)}. Found {self.seeding!r}."
            )
        if not (
            isinstance(self.codebook_size, int)
            and not isinstance(self.codebook_size, bool)
            and 2 <= self.codebook_size <= self.max_leaves
        ):
            # at most max_leaves: the integer noise's accounting bounds a tree release's
            # dimension by (max_leaves + 1) x dim (server.round.device_epsilon)
            raise ConfigError(
                f"`codebook_size` must be an int in [2, max_leaves={self.max_leaves}]. "
                f"Found {self.codebook_size!r}."
            )
        if self.seed_leaves is not None and not (
            isinstance(self.seed_leaves, int)
            and not isinstance(self.seed_leaves, bool)
            and 2 <= self.seed_leaves <= self.max_leaves
        ):
            raise ConfigError(
                f"`seed_leaves` must be an int in [2, max_leaves={self.max_leaves}]. "
                f"Found {self.seed_leaves!r}."
            )
        if not (isinstance(self.projection_dim, int) and 2 <= self.projection_dim <= 4096):
            raise ConfigError(
                f"`projection_dim` must be an int in [2, 4096]. Found {self.projection_dim!r}."
            )
        if not -1 <= self.residual_threshold <= 1:
            raise ConfigError(
                f"`residual_threshold` must be in [-1, 1]. Found {self.residual_threshold!r}."
            )
        if self.cut not in ("labels", "silhouette", "gap", "fixed"):
            raise ConfigError(
                f"`cut` must be labels, silhouette, gap or fixed. Found {self.cut!r}."
            )
        if self.tree_z is not None and not (
            isinstance(self.tree_z, int | float) and math.isfinite(self.tree_z)
        ):
            raise ConfigError(f"`tree_z` must be a finite number. Found {self.tree_z!r}.")
        if not (isinstance(self.tree_null_rate, int | float) and 0 < self.tree_null_rate < 1):
            raise ConfigError(f"`tree_null_rate` must be in (0, 1). Found {self.tree_null_rate!r}.")

    def leaves_to_seed(self, vocabulary: Vocabulary) -> int:
        """How many leaves catalogue or private seeding starts from: :attr:`seed_leaves`,
        else as many as the vocabulary has leaf labels (all its labels if it has no leaf)."""
        return self.seed_leaves or len(vocabulary.leaves) or len(vocabulary.labels)


@dataclass(frozen=True)
class AdapterConfig:
    """The low-rank adapter trained with DP-SGD on the devices (:mod:`client.adapter`).

    Attributes:
        enabled: train and apply the adapter (its DP-SGD spend counts in the run's epsilon).
        rank: the adapter's rank.
        seed: public seed of its initial weights.
        noise_multiplier / max_grad_norm / sample_rate / steps / lr / temperature /
            expected_batch_size / update_clipping_norm: per-round DP-SGD settings.
        server_noise_multiplier: user-level DP-FedAvg noise added by the server (Flower's
            server-side fixed clipping wrapper); 0 disables it.
        server_clipping_norm: the server's per-device clipping of the weight change.
        server_user_epsilon: the server's user-level budget for the adapter; the run stops
            before a round would exceed it.
    """

    enabled: bool = False
    rank: int = 8
    seed: int = 7
    noise_multiplier: float = 12.0
    max_grad_norm: float = 1.0
    sample_rate: float = 0.05
    steps: int = 10
    lr: float = 0.05
    temperature: float = 0.1
    expected_batch_size: int = 16
    update_clipping_norm: float = 1.0
    server_noise_multiplier: float = 1.0
    server_clipping_norm: float = 1.0
    server_user_epsilon: float = 20.0

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and 1 <= self.rank <= 64):
            raise ConfigError(f"`rank` must be an int in [1, 64]. Found {self.rank!r}.")
        for name in (
            "noise_multiplier",
            "max_grad_norm",
            "lr",
            "temperature",
            "update_clipping_norm",
            "server_clipping_norm",
            "server_user_epsilon",
        ):
            _pos(getattr(self, name), name)
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"`sample_rate` must be in (0, 1]. Found {self.sample_rate!r}.")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"`steps` must be an int >= 1. Found {self.steps!r}.")
        if self.server_noise_multiplier < 0:
            raise ConfigError(
                f"`server_noise_multiplier` must be >= 0. Found {self.server_noise_multiplier!r}."
            )


@dataclass(frozen=True)
class AnalyticsConfig:
    """Population-level releases besides the tree (each one more Gaussian release in the
    run's event-level epsilon).

    Attributes:
        popularity: in the last round, release DP item counts over the public catalogue (the
            popularity prior of recommendation scoring).
        histogram: after every round, release each device's top-k broad interests (DP counts
            of devices per level-1 node: how interest shares change over rounds).
        top_k: the k of the histogram.
        popularity_noise_factor / histogram_noise_factor: these releases use the tree's noise
            multiplier times this factor (a release at ``f z`` costs ``1 / f^2`` of a tree
            round). Popularity defaults to 1: on MovieLens (610 devices) factor 3 left noise
            of sd 16 on every item count and the DP-popularity ranking lost to exact
            popularity; factor 1 (sd ~6) costs the tree ~8% more noise (docs/profiles.md).
    """

    popularity: bool = True
    histogram: bool = False
    top_k: int = 1
    popularity_noise_factor: float = 1.0
    histogram_noise_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ConfigError(f"`top_k` must be an int >= 1. Found {self.top_k!r}.")
        for name in ("popularity_noise_factor", "histogram_noise_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 1):
                raise ConfigError(f"`{name}` must be >= 1. Found {v!r}.")


@dataclass(frozen=True)
class RunConfig:
    """A federated run.

    Attributes:
        rounds: federated rounds.
        fraction: share of the registered devices sampled each round.
        min_clients: fewest devices a round needs (fewer: the round is skipped).
        seed: seeds everything that is not DP noise (sampling, splits, data).
        round_timeout: seconds to wait for replies in a round (``None``: wait for all).
        round_attempts: a round with too few usable replies is skipped and tried again, up
            to this many attempts in all.
        robust: ``none`` (sum), ``trimmed`` (coordinate-wise trimmed mean) or ``median`` over
            the individual releases (local mode) and adapter updates; bounds poisoning.
        trim_fraction: share trimmed at each end with ``trimmed``.
        max_replies: the most devices one round may sample (a resource limit).
        privacy / clustering / adapter / analytics: see those classes.
    """

    rounds: int = 5
    fraction: float = 1.0
    min_clients: int = 2
    seed: int = 0
    round_timeout: float | None = None
    round_attempts: int = 2
    robust: str = "none"
    trim_fraction: float = 0.1
    max_replies: int = 100_000
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)

    def gaussian_releases(self, *, popularity: bool) -> float:
        """Equivalent Gaussian releases a device makes over the run (tree rounds, popularity,
        histograms; a release at ``f z`` counts ``1 / f^2``): the tree's multiplier ``z`` is
        calibrated so that all of them together meet the run's epsilon."""
        a = self.analytics
        pop = (1.0 / a.popularity_noise_factor**2) if (popularity and a.popularity) else 0.0
        hist = (self.rounds / a.histogram_noise_factor**2) if a.histogram else 0.0
        return self.rounds + pop + hist

    def __post_init__(self) -> None:
        if self.adapter.enabled and self.privacy.unit is Scope.USER:
            raise ConfigError(
                "the adapter is refused at user level: its DP-SGD bounds one event's examples, "
                "its updates leave the device outside the secure sum, and no user-level bound "
                "covers them; run it with `unit` 'event' (--unit event) or without the adapter."
            )
        if not (
            isinstance(self.rounds, int) and not isinstance(self.rounds, bool) and self.rounds >= 1
        ):
            raise ConfigError(f"`rounds` must be an int >= 1. Found {self.rounds!r}.")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"`fraction` must be in (0, 1]. Found {self.fraction!r}.")
        if not (isinstance(self.min_clients, int) and self.min_clients >= 2):
            raise ConfigError(f"`min_clients` must be an int >= 2. Found {self.min_clients!r}.")
        if self.round_timeout is not None:
            _pos(self.round_timeout, "round_timeout")
        if not (isinstance(self.round_attempts, int) and self.round_attempts >= 1):
            raise ConfigError(
                f"`round_attempts` must be an int >= 1. Found {self.round_attempts!r}."
            )
        if self.robust not in ("none", "trimmed", "median"):
            raise ConfigError(f"`robust` must be none, trimmed or median. Found {self.robust!r}.")
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"`trim_fraction` must be in [0, 0.5). Found {self.trim_fraction!r}.")
        if not (isinstance(self.max_replies, int) and self.max_replies >= 2):
            raise ConfigError(f"`max_replies` must be an int >= 2. Found {self.max_replies!r}.")

    # -- Flower run_config: the one place its keys are read -------------------------------------

    def to_run_config(self) -> dict[str, Any]:
        """Flat kebab-case keys (``privacy.epsilon`` -> ``privacy-epsilon``); ``None`` omitted."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (PrivacyConfig, ClusteringConfig, AdapterConfig, AnalyticsConfig)):
                for k, sub in asdict(v).items():
                    if sub is not None:
                        out[f"{f.name}-{k}".replace("_", "-")] = (
                            sub.value if isinstance(sub, (ReleaseMode, Scope, NoiseKind)) else sub
                        )
            elif v is not None:
                out[f.name.replace("_", "-")] = v
        return out

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """Parses Flower's ``run_config``; unknown keys are an error (typos fail loudly)."""
        nested: dict[str, Any] = {
            "privacy": PrivacyConfig,
            "clustering": ClusteringConfig,
            "adapter": AdapterConfig,
            "analytics": AnalyticsConfig,
        }
        known: dict[str, tuple[str | None, str]] = {
            f.name.replace("_", "-"): (None, f.name) for f in fields(cls) if f.name not in nested
        }
        for nest, kind in nested.items():
            for f in fields(kind):
                known[f"{nest}-{f.name}".replace("_", "-")] = (nest, f.name)
        top: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {p: {} for p in nested}
        for key, value in cfg.items():
            if key not in known:
                raise ConfigError(f"unknown run config key {key!r}; known: {sorted(known)}.")
            prefix, name = known[key]
            (top if prefix is None else parts[prefix])[name] = value
        return cls(**top, **{p: kind(**parts[p]) for p, kind in nested.items()})
