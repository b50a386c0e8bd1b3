"""What a device holds for its own protection, whatever the server asks (fail closed).

A device never takes its privacy parameters from the server: the delta it accounts at, the
neighbouring relation its budget is kept in (its privacy unit) and the smallest secure-
aggregation cohort it will add a noise *share* to are its own (node config keys ``delta``,
``unit``, ``min-cohort``; :func:`client.app.store_from_node_config`). A round that would breach
any of them is refused with a :class:`~common.errors.RefusalCode` before anything is
computed or written (:meth:`DevicePolicy.admit`).

Why a minimum cohort: under secure aggregation each device adds only ``1 / sqrt(m)`` of the
noise, trusting that at least ``m`` devices' shares reach the sum (``min_cohort`` in the round
config). A server announcing ``m = 2`` and sampling one honest device with one device of its
own would see the honest release under noise ``sigma / sqrt(2)``. A device refuses a share for a
cohort below its own floor; in local mode it adds the full noise itself and the floor does not
apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.errors import ConfigError, RefusalCode, ReleaseRefusedError, coerce_enum
from common.privacy import PrivacyBudget, Scope
from common.records import ReleaseMode
from common.round_config import RoundConfig

__all__ = [
    "DEFAULT_DEVICE_DELTA",
    "DEFAULT_DEVICE_UNIT",
    "DEFAULT_MIN_COHORT",
    "DevicePolicy",
]

#: The delta a device accounts its budget at: well below 1 / population for every population
#: this project simulates (10^3-10^5); a round announcing a larger one is refused.
DEFAULT_DEVICE_DELTA: Final = 1e-6
#: The relation a device keeps its budget in.
DEFAULT_DEVICE_UNIT: Final = Scope.USER
#: The smallest secure-aggregation cohort a device adds a noise share to, by its unit: at user
#: level a share carries the whole device's data, so the floor is higher.
DEFAULT_MIN_COHORT: Final = {Scope.USER: 50, Scope.EVENT: 20}


@dataclass(frozen=True)
class DevicePolicy:
    """A device's own privacy parameters.

    Attributes:
        delta: the delta its budget is accounted at; a larger announced delta is refused.
        unit: the relation its ledger and budget are kept in (``user``: the device with all
            its data; ``event``). Every release is recorded in this unit, whatever unit the
            round was calibrated for, so a round calibrated for events costs a user-level
            device what it really costs a user.
        min_cohort: the fewest devices whose noise shares it trusts to make up the noise
            (``None``: :data:`DEFAULT_MIN_COHORT` of its unit).
    """

    delta: float = DEFAULT_DEVICE_DELTA
    unit: Scope = DEFAULT_DEVICE_UNIT
    min_cohort: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.delta, float) and 0 < self.delta < 1):
            raise ConfigError(f"the device's `delta` must be in (0, 1). Found {self.delta!r}.")
        coerce_enum(self, "unit", Scope, label="the device's ")
        if self.min_cohort is not None and not (
            isinstance(self.min_cohort, int)
            and not isinstance(self.min_cohort, bool)
            and self.min_cohort >= 2
        ):
            raise ConfigError(
                f"the device's `min_cohort` must be an int >= 2. Found {self.min_cohort!r}."
            )

    @property
    def cohort_floor(self) -> int:
        return self.min_cohort if self.min_cohort is not None else DEFAULT_MIN_COHORT[self.unit]

    def admit(self, params: RoundConfig) -> None:
        """Refuses a round that breaches this device's own parameters (nothing computed).

        Raises:
            ReleaseRefusedError: with :attr:`RefusalCode.DELTA` or :attr:`RefusalCode.MIN_COHORT`.
        """
        if params.delta > self.delta:
            raise ReleaseRefusedError(
                f"the round announces delta {params.delta:g}, above this device's "
                f"{self.delta:g}; refusing to release.",
                RefusalCode.DELTA,
            )
        if (
            params.mode is ReleaseMode.SECAGG
            and not params.non_private
            and params.min_cohort < self.cohort_floor
        ):
            raise ReleaseRefusedError(
                f"the round's noise shares assume a cohort of {params.min_cohort}, below this "
                f"device's minimum of {self.cohort_floor}; refusing to release.",
                RefusalCode.MIN_COHORT,
            )

    def budget(self, epsilon: float | None) -> PrivacyBudget | None:
        """The lifetime budget at this device's delta and unit (``None`` without one)."""
        return None if epsilon is None else PrivacyBudget(epsilon, self.delta, self.unit)
