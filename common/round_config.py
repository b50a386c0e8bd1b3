"""The round config: what the server asks of every device in one release round.

One frozen record for both sides of the network. The server builds it
(:meth:`RoundConfig.for_release`) and sends it as Flower's config record
(:meth:`RoundConfig.to_record`); the device parses and checks it (:meth:`RoundConfig.from_record`)
and refuses, failing closed, anything it cannot parse or that fails its checks
(:class:`~common.errors.ReleaseRefusedError`, answered with the ``refused`` reply status).

It is the one definition of the privacy contract of a release, used by the server and the
device alike:

- the noise each device adds, :attr:`RoundConfig.required_noise_std`: the full ``z * Delta`` in
  local mode, the secure-aggregation share ``z * Delta / sqrt(min_cohort)`` otherwise
  (:func:`common.privacy.mechanisms.secagg_share_std`; distributed Gaussian, Kairouz et al.
  2021, "The distributed discrete Gaussian mechanism", Sec. 4);
- the device's event-level ledger entry, :meth:`RoundConfig.ledger_entry`: what the device
  writes before releasing, and what the server composes to state a participating device's
  epsilon;
- the server's user-level record of the same release, :meth:`RoundConfig.user_ledger_entry`;
- the DP-SGD ledger entry of the adapter step, :func:`dpsgd_ledger_entry`.

Sensitivities, L2 over the whole release of one task:

- **user level** (add/remove one device with all its data; the default unit): each task's
  release of one device is clipped as a whole to ``user_clipping_norm`` (a histogram vector
  has norm 1, clipped likewise), so ``Delta_user = user_clipping_norm`` (``min(1, ...)`` for the
  histogram);
- **event level** (add/remove one event): the leaf sums ``clipping_norm * max_weight`` (one
  event lands in one row, vector norm <= C, weight <= the cap); the item counts 1 (one event
  adds 1 to one count); the histogram sqrt(2) (any two k-hot unit vectors). The user clip is a
  projection onto a ball, 1-Lipschitz, so it never increases these; and two points of a ball
  of radius ``B`` are at most ``2 B`` apart: ``Delta_event = min(event bound, 2 Delta_user)``.

The noise on the sum has std ``sigma = z * Delta_unit`` (``unit``: the relation the round is
calibrated for); the same release is recorded at either relation as a Gaussian with
multiplier ``sigma / Delta_scope`` (:meth:`RoundConfig.ledger_entry`).

**Joint bound of a device's round.** A device's round is several releases (leaf sums, item
counts, histogram), each clipped to its own bound ``B_t`` and noised with ``z_t * B_t``.
By the composition theorem of Gaussian DP (Dong, Roth and Su 2022, "Gaussian differential
privacy", Cor. 3.3; adaptive), the releases together are ``mu``-GDP with
``mu = sqrt(sum_t 1 / z_t^2)``: exactly one Gaussian mechanism on the concatenated release after
the public rescaling of task ``t``'s coordinates by ``1 / (z_t B_t)``. That is the joint L2 bound
of the whole round contribution, with the split between tasks fixed in public (the analytics
noise factors), and it is what the ledger's merged Gaussian composes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final, TypeVar

from common.adapter import DPSGD_GROUP_SIZE, event_level_dpsgd
from common.errors import ConfigError, RefusalCode, ReleaseRefusedError
from common.privacy.discrete import (
    DEFAULT_BETA,
    DEFAULT_CLIP_UNITS,
    ddg_multiplier,
    rounded_norm_bound,
)
from common.privacy.ledger import LedgerEntry, Mechanism, Scope
from common.privacy.mechanisms import secagg_share_std
from common.records import TASK_SENSITIVITY, NoiseKind, ReleaseMode, ReleaseTask, RoundKeys

_E = TypeVar("_E", bound=enum.Enum)

#: The privacy unit of a run: the neighbouring relation its noise is calibrated for.
PrivacyUnit = Scope

__all__ = [
    "TASK_MECHANISM",
    "PrivacyUnit",
    "RoundConfig",
    "dpsgd_ledger_entry",
    "min_cohort_for",
]

#: The ledger mechanism of each release task.
TASK_MECHANISM: Final = MappingProxyType(
    {
        ReleaseTask.LEAF_SUMS: Mechanism.GAUSSIAN_SUM,
        ReleaseTask.ITEM_COUNTS: Mechanism.GAUSSIAN_COUNT,
        ReleaseTask.HISTOGRAM: Mechanism.GAUSSIAN_HISTOGRAM,
    }
)

#: What each task's user-level ledger record calls its output.
_USER_OUTPUT: Final = MappingProxyType(
    {
        ReleaseTask.LEAF_SUMS: "leaf sums",
        ReleaseTask.ITEM_COUNTS: "item popularity",
        ReleaseTask.HISTOGRAM: "population histogram",
    }
)


def min_cohort_for(mode: ReleaseMode, sampled: int, min_cohort_fraction: float) -> int:
    """The fewest surviving devices whose noise shares add up to the calibrated noise.

    Secure aggregation: ``max(2, ceil(fraction * sampled))``, and the server aborts a round
    with fewer survivors before unmasking. Local mode: 1 (each device adds the full noise).
    """
    rules: dict[ReleaseMode, Callable[[], int]] = {
        ReleaseMode.SECAGG: lambda: max(2, math.ceil(min_cohort_fraction * sampled)),
        ReleaseMode.LOCAL: lambda: 1,
    }
    return rules[mode]()


@dataclass(frozen=True)
class RoundConfig:
    """One release round's parameters, as the server sends them and the device checks them.

    Attributes:
        server_round: the round (>= 1).
        hierarchy_version: the tree version whose public centroids come with the round.
        mode: secure aggregation (noise shares) or local (full noise on each device).
        clipping_norm: L2 bound of each event vector (``C``).
        max_weight: cap of each event's behaviour weight.
        noise_multiplier: ``z`` of this task's release (the tree's ``z`` times the task's
            noise factor).
        noise_std: the std each device adds (at least :attr:`required_noise_std`).
        min_cohort: fewest devices whose shares make the full noise (secagg; 1 in local mode).
        user_clipping_norm: bound of one device's whole release (Frobenius).
        residual_threshold: events below this cosine to every leaf go to the unassigned row.
        projection_seed / projection_dim / projection_fingerprint: the public projection.
        delta: the delta of the device's budget.
        task: what is released (leaf sums, item counts, histogram).
        top_k: the histogram's k (``None`` for the other tasks).
        unit: the neighbouring relation the noise is calibrated for (``user``: one device
            with all its data; ``event``: one event). A record without the key is event
            level (the earlier wire format); the device accounts in its own unit either way.
        noise: continuous Gaussian or integer noise (the distributed discrete Gaussian); with
            integer noise ``noise_std`` is the device's std in release units (``sigma x
            granularity``), ``clip_units`` the release's norm bound in integer units and
            ``release_dim`` its number of coordinates.
    """

    server_round: int
    hierarchy_version: int
    mode: ReleaseMode
    clipping_norm: float
    max_weight: float
    noise_multiplier: float
    noise_std: float
    min_cohort: int
    user_clipping_norm: float
    residual_threshold: float
    projection_seed: int
    projection_dim: int
    projection_fingerprint: str
    delta: float
    task: ReleaseTask = ReleaseTask.LEAF_SUMS
    top_k: int | None = None
    unit: Scope = Scope.EVENT
    noise: NoiseKind = NoiseKind.GAUSSIAN
    clip_units: float = DEFAULT_CLIP_UNITS
    release_dim: int | None = None

    # -- the privacy contract -------------------------------------------------------------------

    @property
    def non_private(self) -> bool:
        return self.noise_multiplier == 0

    @property
    def user_sensitivity(self) -> float:
        """User-level L2 sensitivity of this task's release (see the module docstring)."""
        if self.task is ReleaseTask.HISTOGRAM:
            return min(1.0, self.user_clipping_norm)
        return self.user_clipping_norm

    @property
    def event_sensitivity(self) -> float:
        """Event-level L2 sensitivity of this task's release (see the module docstring)."""
        bound = (
            self.clipping_norm * self.max_weight
            if self.task is ReleaseTask.LEAF_SUMS
            else TASK_SENSITIVITY[self.task]
        )
        return min(bound, 2.0 * self.user_sensitivity)

    def sensitivity_at(self, scope: Scope) -> float:
        return self.user_sensitivity if scope is Scope.USER else self.event_sensitivity

    @property
    def sensitivity(self) -> float:
        """The L2 sensitivity in the round's unit: what the noise is calibrated to."""
        return self.sensitivity_at(self.unit)

    @property
    def total_noise_std(self) -> float:
        """The std of the noise on the sum: ``z * Delta_unit``."""
        return self.noise_multiplier * self.sensitivity

    @property
    def noise_shares(self) -> int:
        """How many devices' noise makes up the full noise of the sum (1 in local mode)."""
        return {ReleaseMode.SECAGG: self.min_cohort, ReleaseMode.LOCAL: 1}[self.mode]

    @property
    def required_noise_std(self) -> float:
        """The std one device must add: ``z * Delta / sqrt(noise_shares)``; with integer
        noise, ``z * Delta_2 / sqrt(noise_shares)`` integer units (``Delta_2``: the rounded
        sensitivity at the round's unit), in release units."""
        if self.discrete and self.release_dim is not None:
            return (
                self.noise_multiplier
                * self.integer_sensitivity_at(self.unit)
                / math.sqrt(self.noise_shares)
                * self.granularity
            )
        return secagg_share_std(
            noise_multiplier=self.noise_multiplier,
            sensitivity=self.sensitivity,
            min_cohort=self.noise_shares,
        )

    def multiplier_at(self, scope: Scope) -> float:
        """The release's Gaussian multiplier at ``scope``: ``sigma / Delta_scope`` (integer
        noise: the distributed discrete Gaussian's, :meth:`discrete_multiplier_at`)."""
        if self.discrete:
            return self.discrete_multiplier_at(scope)
        return self.total_noise_std / self.sensitivity_at(scope)

    # -- integer noise (common/privacy/discrete.py) ---------------------------------------------

    @property
    def discrete(self) -> bool:
        return self.noise is NoiseKind.DISCRETE and not self.non_private

    @property
    def granularity(self) -> float:
        """One integer unit in release units: ``Delta_unit / clip_units``."""
        return self.sensitivity / self.clip_units

    @property
    def integer_sigma(self) -> float:
        """Each device's noise std in integer units."""
        return self.noise_std / self.granularity

    def _dim(self) -> int:
        if self.release_dim is None:
            raise ReleaseRefusedError(
                f"integer noise needs `{RoundKeys.RELEASE_DIM}` (the release's coordinates)."
            )
        return self.release_dim

    def integer_sensitivity_at(self, scope: Scope) -> float:
        """The L2 sensitivity of the integer sum at ``scope``.

        User unit: each release is rounded conditionally to norm ``Delta_2``
        (:func:`~common.privacy.discrete.rounded_norm_bound`; Kairouz, Liu and Steinke 2021,
        Thm. 1): ``Delta_2`` per device; one event moves a device's rounded vector within the
        ball of radius ``Delta_2``: at most ``2 Delta_2``. Event unit: each coordinate is
        rounded unconditionally with its own uniform threshold; coupling two neighbours' roundings
        through the same thresholds moves each coordinate by at most ``|x_i - x'_i| + 1``,
        so ``clip_units + sqrt(d)``, and Renyi divergence is jointly quasi-convex (van Erven and
        Harremoes 2014, "Renyi divergence and Kullback-Leibler divergence", Thm. 13), so the
        mixture over thresholds is bounded by the worst coupled pair; at user level a device's
        rounded release has norm at most ``B / gamma + sqrt(d)``."""
        d = self._dim()
        if self.unit is Scope.USER:
            d2 = rounded_norm_bound(self.clip_units, d, DEFAULT_BETA)
            return d2 if scope is Scope.USER else 2.0 * d2
        if scope is Scope.EVENT:
            return self.clip_units + math.sqrt(d)
        return self.user_sensitivity / self.granularity + math.sqrt(d)

    def discrete_multiplier_at(self, scope: Scope) -> float:
        """The Gaussian multiplier bounding the integer sum's Renyi DP at ``scope``
        (:func:`common.privacy.discrete.ddg_multiplier`, ``noise_shares`` devices)."""
        return ddg_multiplier(
            sensitivity=self.integer_sensitivity_at(scope),
            sigma=self.integer_sigma,
            n=self.noise_shares,
            dim=self._dim(),
        )

    @property
    def integer_range(self) -> int:
        """Every coordinate of a device's integer share lies in ``[-R, R]``: its rounded
        release plus 16 noise deviations (:func:`common.privacy.discrete.integer_range`)."""
        bound = (
            self.integer_sensitivity_at(Scope.USER)
            if self.unit is Scope.USER
            else self.user_sensitivity / self.granularity + math.sqrt(self._dim())
        )
        return math.ceil(bound + 16.0 * self.integer_sigma)

    def ledger_entry(self, scope: Scope = Scope.EVENT) -> LedgerEntry:
        """The device's record of this release at ``scope`` (its own unit; written before the
        release is sent): a Gaussian with multiplier ``sigma / Delta_scope``. The other
        relation's multiplier is kept in ``details`` (``event_noise_multiplier`` /
        ``user_noise_multiplier``), so an audit can state both. A release without noise is
        recorded as ``non_private`` (epsilon infinite)."""
        other = Scope.EVENT if scope is Scope.USER else Scope.USER
        return LedgerEntry(
            mechanism=self._mechanism,
            noise_multiplier=0.0 if self.non_private else self.multiplier_at(scope),
            sensitivity=(
                self.integer_sensitivity_at(scope) if self.discrete else self.sensitivity_at(scope)
            ),
            server_round=self.server_round,
            scope=scope,
            details={
                "task": self.task.value,
                "mode": self.mode.value,
                "unit": self.unit.value,
                "min_cohort": self.min_cohort,
                "noise_std": self.noise_std,
                "hierarchy_version": self.hierarchy_version,
                "user_clipping_norm": self.user_clipping_norm,
                f"{other.value}_noise_multiplier": (
                    0.0 if self.non_private else self.multiplier_at(other)
                ),
                **self._discrete_details,
            },
        )

    @property
    def _mechanism(self) -> Mechanism:
        if self.non_private:
            return Mechanism.NON_PRIVATE
        return Mechanism.DISCRETE_GAUSSIAN if self.discrete else TASK_MECHANISM[self.task]

    @property
    def _discrete_details(self) -> dict[str, Any]:
        if not self.discrete:
            return {}
        return {
            "noise": self.noise.value,
            "granularity": self.granularity,
            "clip_units": self.clip_units,
            "integer_sigma": self.integer_sigma,
            "release_dim": self.release_dim,
            "noise_shares": self.noise_shares,
        }

    def user_ledger_entry(self) -> LedgerEntry:
        """The server's user-level record of this release (add/remove one device): one
        device moves the sum by at most its user bound, so the multiplier is
        ``sigma / Delta_user``. A release without noise is recorded as ``non_private``."""
        details: dict[str, Any] = {
            "output": _USER_OUTPUT[self.task],
            "unit": self.unit.value,
            "event_noise_multiplier": 0.0 if self.non_private else self.multiplier_at(Scope.EVENT),
            **self._discrete_details,
        }
        if self.task is ReleaseTask.LEAF_SUMS:
            details["user_clipping_norm"] = self.user_clipping_norm
        if self.non_private:
            return LedgerEntry(
                Mechanism.NON_PRIVATE,
                0.0,
                self.user_sensitivity,
                server_round=self.server_round,
                scope=Scope.USER,
                details=details,
            )
        return LedgerEntry(
            self._mechanism,
            self.multiplier_at(Scope.USER),
            self.integer_sensitivity_at(Scope.USER) if self.discrete else self.user_sensitivity,
            server_round=self.server_round,
            scope=Scope.USER,
            details=details,
        )

    # -- the server builds ----------------------------------------------------------------------

    @classmethod
    def for_release(
        cls,
        *,
        server_round: int,
        hierarchy_version: int,
        mode: ReleaseMode,
        noise_multiplier: float,
        sampled: int,
        min_cohort_fraction: float,
        clipping_norm: float,
        max_weight: float,
        user_clipping_norm: float,
        residual_threshold: float,
        projection_seed: int,
        projection_dim: int,
        projection_fingerprint: str,
        delta: float,
        task: ReleaseTask = ReleaseTask.LEAF_SUMS,
        top_k: int | None = None,
        unit: Scope = Scope.EVENT,
        noise: NoiseKind = NoiseKind.GAUSSIAN,
        release_dim: int | None = None,
    ) -> RoundConfig:
        """The server's config of one release task for a cohort of ``sampled`` devices; the
        noise std is the share :attr:`required_noise_std` prescribes.

        Raises:
            ConfigError: when the result would not pass the device's own checks (a bug).
        """
        base = cls(
            server_round=server_round,
            hierarchy_version=hierarchy_version,
            mode=mode,
            clipping_norm=float(clipping_norm),
            max_weight=float(max_weight),
            noise_multiplier=float(noise_multiplier),
            noise_std=0.0,
            min_cohort=min_cohort_for(mode, sampled, min_cohort_fraction),
            user_clipping_norm=float(user_clipping_norm),
            residual_threshold=float(residual_threshold),
            projection_seed=int(projection_seed),
            projection_dim=int(projection_dim),
            projection_fingerprint=projection_fingerprint,
            delta=float(delta),
            task=task,
            top_k=top_k,
            unit=Scope(unit),
            noise=NoiseKind(noise),
            release_dim=release_dim,
        )
        out = replace(base, noise_std=float(base.required_noise_std))
        out.check(allow_no_dp=True)
        return out

    def to_record(self) -> dict[str, int | float | str]:
        """The flat config record that travels to the devices (keys: :class:`RoundKeys`)."""
        out: dict[str, int | float | str] = {
            RoundKeys.SERVER_ROUND: int(self.server_round),
            RoundKeys.HIERARCHY_VERSION: int(self.hierarchy_version),
            RoundKeys.TASK: self.task.value,
            RoundKeys.MODE: self.mode.value,
            RoundKeys.CLIPPING_NORM: float(self.clipping_norm),
            RoundKeys.MAX_WEIGHT: float(self.max_weight),
            RoundKeys.NOISE_MULTIPLIER: float(self.noise_multiplier),
            RoundKeys.NOISE_STD: float(self.noise_std),
            RoundKeys.MIN_COHORT: int(self.min_cohort),
            RoundKeys.USER_CLIPPING_NORM: float(self.user_clipping_norm),
            RoundKeys.RESIDUAL_THRESHOLD: float(self.residual_threshold),
            RoundKeys.PROJECTION_SEED: int(self.projection_seed),
            RoundKeys.PROJECTION_DIM: int(self.projection_dim),
            RoundKeys.PROJECTION_FINGERPRINT: self.projection_fingerprint,
            RoundKeys.DELTA: float(self.delta),
            RoundKeys.UNIT: self.unit.value,
        }
        if self.noise is NoiseKind.DISCRETE:
            out[RoundKeys.NOISE] = self.noise.value
            out[RoundKeys.CLIP_UNITS] = float(self.clip_units)
        if self.release_dim is not None:
            out[RoundKeys.RELEASE_DIM] = int(self.release_dim)
        if self.top_k is not None:
            out[RoundKeys.TOP_K] = int(self.top_k)
        return out

    # -- the device parses and checks -----------------------------------------------------------

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, allow_no_dp: bool = False) -> RoundConfig:
        """Parses and checks a received config record (unknown keys are ignored).

        A round without noise (``noise-multiplier`` 0) is refused unless this device was
        explicitly configured with ``allow_no_dp`` (simulation only).

        Raises:
            ReleaseRefusedError: naming the key that is missing, of the wrong type or out of
                range, or the check that failed; nothing may be released.
        """
        try:
            cfg = cls._parse(record)
            cfg.check(allow_no_dp=allow_no_dp)
        except ReleaseRefusedError:
            raise
        except (ConfigError, ArithmeticError) as err:
            raise ReleaseRefusedError(f"round config refused: {err}") from None
        return cfg

    #: Kept for callers that used ``client.release.ReleaseParams.from_config``.
    from_config = from_record

    @classmethod
    def _parse(cls, cfg: Mapping[str, Any]) -> RoundConfig:
        def get(key: str, kind: type) -> Any:
            if key not in cfg:
                raise ReleaseRefusedError(f"round config is missing `{key}`.")
            v: Any = cfg[key]
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise ReleaseRefusedError(
                    f"round config `{key}` must be {kind.__name__}. Found {v!r}."
                )
            if isinstance(v, float) and not math.isfinite(v):
                raise ReleaseRefusedError(f"round config `{key}` must be finite. Found {v!r}.")
            return v

        task = _enum(cfg, RoundKeys.TASK, ReleaseTask, ReleaseTask.LEAF_SUMS)
        mode = _enum(cfg, RoundKeys.MODE, ReleaseMode, None)
        top_k = get(RoundKeys.TOP_K, int) if RoundKeys.TOP_K in cfg else None
        unit = _enum(cfg, RoundKeys.UNIT, Scope, Scope.EVENT, RefusalCode.UNIT)
        noise = _enum(cfg, RoundKeys.NOISE, NoiseKind, NoiseKind.GAUSSIAN)
        extra: dict[str, Any] = {}
        if RoundKeys.CLIP_UNITS in cfg:
            extra["clip_units"] = get(RoundKeys.CLIP_UNITS, float)
        if RoundKeys.RELEASE_DIM in cfg:
            extra["release_dim"] = get(RoundKeys.RELEASE_DIM, int)
        return cls(
            server_round=get(RoundKeys.SERVER_ROUND, int),
            hierarchy_version=get(RoundKeys.HIERARCHY_VERSION, int),
            mode=mode,
            clipping_norm=get(RoundKeys.CLIPPING_NORM, float),
            max_weight=get(RoundKeys.MAX_WEIGHT, float),
            noise_multiplier=get(RoundKeys.NOISE_MULTIPLIER, float),
            noise_std=get(RoundKeys.NOISE_STD, float),
            min_cohort=get(RoundKeys.MIN_COHORT, int),
            user_clipping_norm=get(RoundKeys.USER_CLIPPING_NORM, float),
            residual_threshold=get(RoundKeys.RESIDUAL_THRESHOLD, float),
            projection_seed=get(RoundKeys.PROJECTION_SEED, int),
            projection_dim=get(RoundKeys.PROJECTION_DIM, int),
            projection_fingerprint=get(RoundKeys.PROJECTION_FINGERPRINT, str),
            delta=get(RoundKeys.DELTA, float),
            task=task,
            top_k=top_k,
            unit=unit,
            noise=noise,
            **extra,
        )

    def check(self, *, allow_no_dp: bool = False) -> None:
        """The device's fail-closed consistency checks.

        Refused: a round without noise (unless ``allow_no_dp``); a non-positive clipping norm,
        weight cap or user bound; a negative noise multiplier; a round below 1; a delta
        outside (0, 1); secure aggregation assuming fewer than 2 devices; a ``top_k`` below 1;
        a noise std below what ``noise_multiplier`` and the sensitivity require.

        Raises:
            ReleaseRefusedError: naming the check.
        """
        if self.non_private and not allow_no_dp:
            raise ReleaseRefusedError(
                "the round asks for a release without noise (noise-multiplier 0); this device "
                "does not allow non-private releases. Refusing to release.",
                RefusalCode.NO_DP,
            )
        for name in ("clipping_norm", "max_weight", "user_clipping_norm"):
            if not getattr(self, name) > 0:
                raise ReleaseRefusedError(f"`{name}` must be > 0. Found {getattr(self, name)!r}.")
        if self.noise_multiplier < 0:
            raise ReleaseRefusedError(
                f"`noise_multiplier` must be >= 0. Found {self.noise_multiplier!r}."
            )
        if self.server_round < 1:
            raise ReleaseRefusedError(f"`server_round` must be >= 1. Found {self.server_round}.")
        if not 0 < self.delta < 1:
            raise ReleaseRefusedError(f"`delta` must be in (0, 1). Found {self.delta!r}.")
        if self.mode is ReleaseMode.SECAGG and self.min_cohort < 2:
            raise ReleaseRefusedError(
                f"secagg mode needs `min_cohort` >= 2. Found {self.min_cohort}."
            )
        if self.top_k is not None and self.top_k < 1:
            raise ReleaseRefusedError(f"`top_k` must be >= 1. Found {self.top_k}.")
        if self.noise is NoiseKind.DISCRETE:
            if not 1 <= self.clip_units <= 1 << 20:
                raise ReleaseRefusedError(
                    f"`clip_units` must be in [1, 2^20]. Found {self.clip_units!r}."
                )
            if self.release_dim is None or self.release_dim < 1:
                raise ReleaseRefusedError(
                    f"integer noise needs `release_dim` >= 1. Found {self.release_dim!r}."
                )
            if not self.non_private and self.integer_range >= 1 << 24:
                # shares travel as float32, exact for integers below 2^24
                raise ReleaseRefusedError(
                    f"the integer range {self.integer_range} does not fit a float32 share."
                )
        if self.noise_std < self.required_noise_std * (1 - 1e-9):
            raise ReleaseRefusedError(
                f"`noise_std` {self.noise_std:.6g} is below the {self.required_noise_std:.6g} that "
                f"noise_multiplier {self.noise_multiplier:g} x sensitivity {self.sensitivity:g} requires "
                f"in {self.mode.value} mode; refusing to release."
            )


def _enum(
    cfg: Mapping[str, Any],
    key: str,
    kind: type[_E],
    default: _E | None,
    code: RefusalCode = RefusalCode.CONFIG,
) -> _E:
    """The enum value of ``key`` (``default`` when absent; required when ``None``), refused
    naming the key, the allowed values and what was found."""
    if key not in cfg and default is None:
        raise ReleaseRefusedError(f"round config is missing `{key}`.")
    raw = cfg.get(key, default.value if default is not None else None)
    try:
        return kind(raw)
    except ValueError:
        raise ReleaseRefusedError(
            f"round config `{key}` must be one of {[v.value for v in kind]}. Found {raw!r}.", code
        ) from None


def dpsgd_ledger_entry(
    *,
    noise_multiplier: float,
    sample_rate: float,
    max_grad_norm: float,
    steps: int,
    server_round: int | None,
) -> LedgerEntry:
    """The device's event-level record of one round of the adapter's DP-SGD.

    DP-SGD (Abadi et al. 2016) with per-example multiplier ``z`` and Poisson rate ``q``; one
    event touches up to :data:`~common.adapter.DPSGD_GROUP_SIZE` examples, so by group privacy
    (conservatively) the event-level mechanism is a Poisson-subsampled Gaussian with multiplier
    ``z / k`` at rate ``1 - (1 - q)^k`` and sensitivity ``k * max_grad_norm``
    (:func:`common.adapter.event_level_dpsgd`).
    """
    k = DPSGD_GROUP_SIZE
    z_event, q_event = event_level_dpsgd(noise_multiplier, sample_rate)
    return LedgerEntry(
        mechanism=Mechanism.DPSGD,
        noise_multiplier=z_event,
        sensitivity=k * max_grad_norm,
        sample_rate=q_event,
        steps=steps,
        server_round=server_round,
        scope=Scope.EVENT,
        details={
            "per_example_noise_multiplier": noise_multiplier,
            "per_example_sample_rate": sample_rate,
            "group_size": k,
            "max_grad_norm": max_grad_norm,
        },
    )
