"""Small validators several stages share: whole and real numbers, thresholds, quantiles.

Python counts True as 1 and numpy scalars are not Python numbers; each check here says
exactly which values it takes, so a bool or a string is refused the same way everywhere.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from edgeae.contract.errors import UsageError


def is_whole(value: Any, low: int, high: int | None = None) -> bool:
    """A whole number within [low, high] (no limit: None), Python's or numpy's; never a bool."""
    return (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def is_real(value: Any) -> bool:
    """A finite Python int or float, never a bool or a string (what JSON writes back as a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_threshold(threshold: Any) -> float:
    """A caller's threshold: a finite real number; True or "0.5" would be taken as 1.0 and 0.5."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise UsageError(f"threshold must be a number, got {threshold!r}")
    try:
        value = float(threshold)
    except OverflowError:  # an int past float's range
        value = math.inf
    if not math.isfinite(value):
        raise UsageError(f"threshold must be a finite number, got {threshold!r}"[:200])
    return value


def check_quantile(quantile: Any) -> float:
    """A quantile in (0, 1]; True would pass for 1 and a string fail deep inside numpy."""
    if (isinstance(quantile, (bool, np.bool_)) or not isinstance(quantile, numbers.Real)
            or not 0.0 < quantile <= 1.0):
        raise UsageError(f"threshold quantile must be in (0, 1], got {quantile!r}")
    return float(quantile)


def check_flag(value: Any, name: str) -> bool:
    """A yes/no argument: True or False only; "no" or 0 would be read as what they are not."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return bool(value)
