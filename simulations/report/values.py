"""Numbers read from a run's JSON files, and how the pages write them."""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["as_number", "finite_number", "fixed", "fmt"]


def as_number(v: Any) -> float | None:
    """A float from a metrics value (``json_safe`` writes non-finite floats as strings)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, str)):
        try:
            return float(v)
        except (OverflowError, ValueError):  # an int beyond float's range; a non-number
            return None
    return None


def finite_number(v: Any) -> float | None:
    """:func:`as_number`, finite, else ``None``."""
    x = as_number(v)
    return x if x is not None and math.isfinite(x) else None


def fmt(v: Any, digits: int = 3) -> str:
    """A number for an HTML page (escaped): ``digits`` decimals, or significant digits when
    very large or small; ``∞``, ``n/a``, ``-`` for none, the text itself for a non-number."""
    x = as_number(v)
    if x is None:
        return "-" if v is None else html.escape(str(v))
    if math.isinf(x):
        return "∞"
    if math.isnan(x):
        return "n/a"
    if x != 0 and (abs(x) >= 10_000 or abs(x) < 10**-(digits)):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def fixed(v: Any, digits: int = 3) -> str:
    """A number as plain text with ``digits`` decimals; ``-`` when it is not a finite one."""
    x = finite_number(v)
    return "-" if x is None else f"{x:.{digits}f}"
