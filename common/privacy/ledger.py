"""Privacy ledger records: one frozen record per mechanism a party ran.

Records are plain data (the dp-accounting ``DpEvent`` model): what ran, with which noise
multiplier, sensitivity, sampling rate and number of steps, in which round, under which
neighbouring relation. :mod:`common.privacy.accounting` turns them into epsilon. A record of an
unknown kind is an error, never "free".
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError, coerce_enum

__all__ = ["LedgerEntry", "Mechanism", "Scope"]


class Mechanism(str, enum.Enum):
    """Mechanism kinds the accountant understands."""

    GAUSSIAN_SUM = "gaussian_sum"
    """Gaussian release of clipped, weighted leaf sums (one event moves one row)."""
    GAUSSIAN_COUNT = "gaussian_count"
    """Gaussian release of weighted counts."""
    DPSGD = "dpsgd"
    """Poisson-subsampled Gaussian (DP-SGD): ``steps`` steps at ``sample_rate``."""
    GAUSSIAN_HISTOGRAM = "gaussian_histogram"
    """Gaussian on a bounded top-k indicator vector (population analytics)."""
    SERVER_GAUSSIAN = "server_gaussian"
    """Server-side Gaussian noise on a clipped per-user aggregate (user level)."""
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    """The distributed discrete Gaussian (integer noise under secure aggregation; Kairouz, Liu
    and Steinke 2021): Renyi DP bounded by a Gaussian's with ``noise_multiplier``, composed with
    RDP only (:mod:`common.privacy.discrete`)."""
    NON_PRIVATE = "non_private"
    """A release without noise (``--no-dp``): epsilon is infinite."""


class Scope(str, enum.Enum):
    """The neighbouring relation a record protects."""

    EVENT = "event"
    USER = "user"


@dataclass(frozen=True)
class LedgerEntry:
    """One mechanism run.

    Attributes:
        mechanism: what ran.
        noise_multiplier: noise std / sensitivity (the Gaussian ``z``).
        sensitivity: the L2 sensitivity the noise was calibrated to.
        sample_rate: Poisson sampling rate (1.0 = no sampling).
        steps: how many times the mechanism ran (DP-SGD steps; 1 for a release).
        server_round: the round, when part of one.
        scope: the neighbouring relation (event or user level).
        created_at: unix seconds.
        details: anything else worth auditing (mode, min_cohort, hierarchy version...).
    """

    mechanism: Mechanism
    noise_multiplier: float
    sensitivity: float
    sample_rate: float = 1.0
    steps: int = 1
    server_round: int | None = None
    scope: Scope = Scope.EVENT
    created_at: float = field(default_factory=time.time)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_enum(self, "mechanism", Mechanism)
        coerce_enum(self, "scope", Scope)
        z = self.noise_multiplier
        floor_ok = self.mechanism is Mechanism.NON_PRIVATE and z == 0
        if not floor_ok and not (
            isinstance(z, (int, float)) and not isinstance(z, bool) and math.isfinite(z) and z > 0
        ):
            raise ConfigError(f"`noise_multiplier` must be > 0. Found {z!r}.")
        if not (
            isinstance(self.sensitivity, (int, float))
            and math.isfinite(self.sensitivity)
            and self.sensitivity > 0
        ):
            raise ConfigError(f"`sensitivity` must be > 0. Found {self.sensitivity!r}.")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"`sample_rate` must be in (0, 1]. Found {self.sample_rate!r}.")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"`steps` must be an int >= 1. Found {self.steps!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism.value,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "server_round": self.server_round,
            "scope": self.scope.value,
            "created_at": self.created_at,
            "details": dict(self.details),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerEntry:
        try:
            return cls(
                mechanism=d["mechanism"],
                noise_multiplier=float(d["noise_multiplier"]),
                sensitivity=float(d["sensitivity"]),
                sample_rate=float(d.get("sample_rate", 1.0)),
                steps=int(d.get("steps", 1)),
                server_round=None if d.get("server_round") is None else int(d["server_round"]),
                scope=d.get("scope", "event"),
                created_at=float(d.get("created_at", 0.0)),
                details=dict(d.get("details") or {}),
            )
        except KeyError as err:
            raise ConfigError(f"ledger entry is missing {err}. Found keys {sorted(d)}.") from None
