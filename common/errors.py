"""The one exception hierarchy of fedinterest.

Messages say what was expected and what was found, naming the field and, where it applies,
the line or row: "`clipping_norm` must be > 0. Found -1.0."
"""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "EncoderError",
    "FedInterestError",
    "InvalidEventError",
    "InvalidReleaseError",
    "ReleaseRefusedError",
    "StoreError",
]


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


class ReleaseRefusedError(ConfigError):
    """A device refused a round: its config could not be parsed or failed the device's checks
    (fail closed); nothing was released. The device answers with the ``refused`` status."""
