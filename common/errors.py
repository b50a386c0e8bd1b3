"""The one exception hierarchy of fedinterest.

Messages say what was expected and what was found, naming the field and, where it applies,
the line or row: "`clipping_norm` must be > 0. Found -1.0."
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DeviceRefusalError",
    "EncoderError",
    "FedInterestError",
    "InvalidEventError",
    "InvalidReleaseError",
    "RefusalCode",
    "ReleaseRefusedError",
    "StoreError",
    "coerce_enum",
]


_E = TypeVar("_E", bound=enum.Enum)


def coerce_enum(obj: object, name: str, kind: type[_E], *, label: str = "") -> None:
    """Turns a frozen dataclass's field ``name`` into a ``kind`` member in place (a string
    from JSON or a run config), or raises :class:`ConfigError` naming the field, the allowed
    values and what was found."""
    value = getattr(obj, name)
    if isinstance(value, kind):
        return
    try:
        object.__setattr__(obj, name, kind(value))
    except ValueError:
        raise ConfigError(
            f"{label}`{name}` must be one of {[m.value for m in kind]}. Found {value!r}."
        ) from None


class FedInterestError(Exception):
    """Base class of every error fedinterest raises on purpose."""


class ConfigError(FedInterestError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class InvalidEventError(FedInterestError, ValueError):
    """An input event failed validation.

    Attributes:
        field: the offending field (``None`` when the whole record is malformed).
        value: the offending value, as found.
        line: 1-based line or row number in the source, when known.
        reason: a short machine-friendly reason code (``"missing"``, ``"future_timestamp"``...).
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        line: int | None = None,
        reason: str = "invalid",
    ) -> None:
        self.field = field
        self.value = value
        self.line = line
        self.reason = reason
        self.detail = message
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")

    def at_line(self, line: int) -> InvalidEventError:
        """Returns the same error, located at ``line``."""
        return InvalidEventError(
            self.detail, field=self.field, value=self.value, line=line, reason=self.reason
        )


class StoreError(FedInterestError):
    """The device store cannot be opened or is inconsistent."""


class EncoderError(FedInterestError):
    """The text encoder cannot be loaded or used."""


class BudgetExceededError(FedInterestError):
    """A release would exceed the privacy budget; nothing was released."""


class InvalidReleaseError(FedInterestError, ValueError):
    """A client's reply failed the server's validation."""


class RefusalCode(str, enum.Enum):
    """Why a device refused a round: the only thing about a refusal that leaves the device
    (its reply carries the code, never the exception text, which may quote local state)."""

    CONFIG = "config"
    """The round config could not be parsed or failed a consistency check."""
    NO_DP = "no_dp"
    """A release without noise, to a device that does not allow one."""
    DELTA = "delta"
    """The round announces a larger delta than the device accounts at."""
    MIN_COHORT = "min_cohort"
    """The noise shares assume fewer devices than the device's own minimum cohort."""
    REPLAY = "replay_mismatch"
    """A release for this round and version was made under other mechanism parameters."""
    ENCODER = "encoder"
    """The round's projection fingerprint (encoder id, dimension, seed) is not this device's."""
    UNIT = "unit"
    """The round's privacy unit or mechanism is not one this device accepts."""
    BUDGET = "budget_exceeded"
    """The release would exceed the device's lifetime budget."""
    UNSUPPORTED = "unsupported"
    """The round needs something this install lacks (the adapter on an ``edge`` install)."""
    INTERNAL = "internal"
    """Anything else (the details stay in the device's own log)."""


class ReleaseRefusedError(ConfigError):
    """A device refused a round: its config could not be parsed or failed the device's checks
    (fail closed); nothing was released. The device answers with the ``refused`` status and
    :attr:`code` (a :class:`RefusalCode`), never with this message."""

    def __init__(self, message: str, code: RefusalCode = RefusalCode.CONFIG) -> None:
        super().__init__(message)
        self.code = code


class DeviceRefusalError(FedInterestError):
    """What a secure-aggregation handler raises in place of any error: its text is only a
    :class:`RefusalCode` (Flower forwards an exception's text to the server)."""

    def __init__(self, code: RefusalCode) -> None:
        super().__init__(code.value)
        self.code = code
