"""Privacy: mechanisms (clip, Gaussian noise and its calibration), ledger records, and
accounting with dp-accounting (PLD by default, RDP as an option), budgets."""

from common.privacy.accounting import (
    Accountant,
    PrivacyBudget,
    check_budget,
    epsilon_of_entries,
    gaussian_epsilon,
    to_dp_event,
)
from common.privacy.ledger import LedgerEntry, Mechanism, Scope
from common.privacy.mechanisms import (
    calibrate_release_multiplier,
    clip_rows,
    clip_total,
    gaussian_noise,
    noise_multiplier_for_rounds,
    secagg_share_std,
)

__all__ = [
    "Accountant",
    "LedgerEntry",
    "Mechanism",
    "PrivacyBudget",
    "Scope",
    "calibrate_release_multiplier",
    "check_budget",
    "clip_rows",
    "clip_total",
    "epsilon_of_entries",
    "gaussian_epsilon",
    "gaussian_noise",
    "noise_multiplier_for_rounds",
    "secagg_share_std",
    "to_dp_event",
]
