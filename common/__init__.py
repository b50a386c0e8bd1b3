"""fedinterest's pure core: schemas, privacy math, metrics. No torch or flwr at import time."""

from common.errors import (
    BudgetExceededError,
    ConfigError,
    EncoderError,
    FedInterestError,
    InvalidEventError,
    InvalidReleaseError,
    ReleaseRefusedError,
    StoreError,
)
from common.events import CleaningConfig, Event, EventType, IngestReport, parse_event
from common.features import WeightingConfig, event_weights

__all__ = [
    "BudgetExceededError",
    "CleaningConfig",
    "ConfigError",
    "EncoderError",
    "Event",
    "EventType",
    "FedInterestError",
    "IngestReport",
    "InvalidEventError",
    "InvalidReleaseError",
    "ReleaseRefusedError",
    "StoreError",
    "WeightingConfig",
    "event_weights",
    "parse_event",
]
