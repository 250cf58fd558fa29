"""Missing values: counted per column, short gaps filled by a straight line, windows with a gap found.

A loaded series holds NaN where a value is missing (data/series.py reads them); what a gap then
does is the caller's policy, one of MISSING_POLICIES:

- "refuse": stop, naming the count of every column that has any;
- "skip": a window holding a missing value is left out of training, and in scoring reported as
  missing (neither flagged nor normal), never silently dropped;
- "interpolate": gaps of at most `max_gap` consecutive rows inside a column are filled on the
  straight line between their neighbours; a gap at the very start or end (one neighbour only) or
  a longer one stays, and the windows touching it are treated as with "skip".
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

from edgeae.contract.errors import DataError, UsageError

MISSING_POLICIES = ("refuse", "skip", "interpolate")
# Training fills short gaps by default: a sensor file with a few dropped readings then trains as it
# is, while a long outage still leaves its windows out instead of teaching the model a made-up ramp.
TRAIN_MISSING = "interpolate"
# Scoring fills nothing by default: a score is about the values that were read, and a window with a
# gap is reported as missing rather than judged on values edgeae made up.
SCORE_MISSING = "skip"
# The longest gap (consecutive missing rows in one column) "interpolate" fills. A straight line over
# a few steps stays close to a smooth signal; over longer gaps it is a made-up flat ramp, the very
# shape a flat-segment anomaly has, which training would learn as normal and scoring would judge.
# 5 fills the short dropouts real logs have (in the weekly Mauna Loa CO2 file: 14 single gaps and
# runs of 2 to 5 weeks, 33 of its 59 missing values) and leaves the outages (8 and 18 weeks).
MAX_INTERPOLATED_GAP = 5
HINT = "pass --missing skip or --missing interpolate"


def check_policy(missing: str, max_gap: int) -> None:
    """Refuse a policy or gap limit that is not one of ours (a typo would otherwise pick a default)."""
    if missing not in MISSING_POLICIES:
        raise UsageError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise UsageError(f"max gap must be a whole number of rows, at least 0, got {max_gap!r}")


def row_chunks(values: np.ndarray, rows: int = 1 << 16) -> Iterator[np.ndarray]:
    """`values` a block of rows at a time (first axis). A memory-mapped file (an .npy a command streams)
    gives back the pages read after each block: the kernel would otherwise count every page ever
    touched in this process's memory until it needs them, while each is read again from the file if used."""
    for first in range(0, len(values), rows):
        yield values[first:first + rows]
        drop_pages(values)


def drop_pages(values: np.ndarray) -> None:
    """Release the resident pages of a read-only memory-mapped array (nothing for any other array)."""
    mapping = getattr(values, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def missing_counts(values: np.ndarray, columns: tuple[str, ...]) -> dict[str, int]:
    """The number of missing values (NaN) of each column that has any, in column order."""
    counts = sum((np.isnan(part).reshape(-1, values.shape[-1]).sum(axis=0) for part in row_chunks(values)),
                 np.zeros(values.shape[-1], np.int64))
    return {name: int(count) for name, count in zip(columns, counts) if count}


def counts_text(counts: dict[str, int], source: str) -> str:
    """'co2.csv: 59 missing values (co2: 59)': the total and every column's count (missing_counts', or a chunked
    read's added up chunk by chunk), capped at 10 columns."""
    total = sum(counts.values())
    parts = [f"{name}: {count}" for name, count in counts.items()]
    shown = ", ".join(parts[:10]) + (f", ... ({len(parts)} columns in all)" if len(parts) > 10 else "")
    return f"{source}: {total} missing value{'s' if total != 1 else ''} ({shown})"


def refuse_missing(values: np.ndarray, columns: tuple[str, ...], source: str, hint: str = HINT) -> None:
    """One DataError naming the count of every column with a missing value; nothing when there is none."""
    counts = missing_counts(values, columns)
    if counts:
        raise DataError(f"{counts_text(counts, source)}; {hint}")


def fill_gaps(values: np.ndarray, max_gap: int) -> tuple[np.ndarray, int]:
    """A (time, features) copy with each column's gaps of at most `max_gap` rows filled on the straight
    line between the rows either side, and how many values were filled. A gap at the start or end
    has one side only and is left, as is a longer one."""
    filled = np.array(values, dtype=np.float64)
    count = 0
    rows = len(filled)
    for j in np.flatnonzero(np.isnan(filled).any(axis=0)) if max_gap > 0 else ():
        column = filled[:, j]
        edges = np.diff(np.concatenate([[0], np.isnan(column).astype(np.int8), [0]]))
        for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):  # [start, end) missing
            if start == 0 or end == rows or end - start > max_gap:
                continue
            column[start:end] = np.interp(np.arange(start, end), [start - 1, end], [column[start - 1], column[end]])
            count += int(end - start)
    return filled, count


def gap_windows(windows: np.ndarray) -> np.ndarray:
    """(n,) bool: the windows of (n, timesteps, features) that hold a missing value."""
    return np.isnan(windows).any(axis=(1, 2))
