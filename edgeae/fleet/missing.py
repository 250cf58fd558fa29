"""Missing values in a fleet's series: refused, kept (skip) or filled (interpolate), and the
windows that still hold one, which are reported as missing and never reach the model.

- `skip` (the default): a missing value stays missing; a window holding one is written as a row
  marked missing (score NaN, anomaly NA), so no window is dropped silently.
- `refuse`: a run with any missing value stops with one line naming the count per column.
- `interpolate`: a run of at most `max_gap` missing rows in a column, with a value on both sides
  in the same regular stretch of the same series, is filled on the line between those values; a
  run at a stretch's start or end, or a longer one, stays missing as with skip.

A missing value is an empty cell, NA, NaN, nan, null, NULL or N/A (in any case) in a CSV, and NaN or
null in Parquet.
"""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import DataError, UsageError

MISSING_CHOICES = ("skip", "refuse", "interpolate")
DEFAULT_MISSING = "skip"
DEFAULT_MAX_GAP = 5
MISSING_MARKS = ("", "na", "nan", "null", "n/a")  # a CSV cell holding no value, in any case (as data/series.py)


def _cases(word: str) -> list[str]:
    """Every upper/lower-case spelling of `word` (pandas compares missing markers exactly)."""
    spellings = [""]
    for ch in word:
        spellings = [s + c for s in spellings for c in dict.fromkeys((ch.lower(), ch.upper()))]
    return spellings


MISSING_CELLS = tuple(spelling for mark in MISSING_MARKS for spelling in _cases(mark))


def check_missing_options(missing: str, max_gap: int) -> None:
    if missing not in MISSING_CHOICES:
        raise UsageError(f"missing must be skip, refuse or interpolate, got {missing!r}")
    if type(max_gap) is not int or max_gap < 0:
        raise UsageError(f"max_gap must be a whole number of rows, at least 0, got {max_gap!r}")


def refusal(where: str, columns: tuple[str, ...], counts: np.ndarray) -> DataError:
    """refuse's one line: the count of missing values per column, for every column that has any."""
    parts = [f"{name}: {int(n)}" for name, n in zip(columns, counts) if n]
    per = ", ".join(parts[:10]) + (f", ... ({len(parts)} columns in all)" if len(parts) > 10 else "")
    total = int(np.sum(counts))
    return DataError(f"{where}: {total} missing value{'s' if total != 1 else ''} ({per}); "
                     "pass --missing skip or --missing interpolate")


def fill_gaps(values: np.ndarray, bounds: list[int], max_gap: int) -> int:
    """Fill, in place, each column's runs of at most `max_gap` NaN rows lying inside one stretch
    [bounds[i], bounds[i+1]) of rows with a value on both sides, on the line between those two
    values; return how many values were filled."""
    filled = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        for j in range(values.shape[1]):
            column = values[a:b, j]  # a view: filled in place
            known = np.flatnonzero(~np.isnan(column))
            if len(known) < 2:
                continue
            for left, right in zip(known[:-1], known[1:]):
                gap = right - left - 1
                if 0 < gap <= max_gap:
                    k = np.arange(1, gap + 1)
                    column[left + 1:right] = column[left] + (column[right] - column[left]) * (k / (gap + 1))
                    filled += int(gap)
    return filled


def missing_windows(values: np.ndarray, first: np.ndarray, timesteps: int) -> np.ndarray:
    """Per window (starting at the rows `first`), whether any of its rows holds a NaN."""
    if not len(first):
        return np.zeros(0, bool)
    before = np.concatenate([[0], np.cumsum(np.isnan(values).any(axis=1))])  # rows with a hole before each row
    return before[first + timesteps] > before[first]
