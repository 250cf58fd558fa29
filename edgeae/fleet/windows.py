"""The windows of a partition that holds whole series, and the counts a run is checked against.

A window never spans two series or a gap. A series' *usual step* is the most common difference
between consecutive steps (the smallest of equally common ones); any other difference is a gap,
and windows restart after it, `stride` apart, as `edgeae score` cuts one series. Missing values
are refused, kept or filled per series as the job's `missing` says (fleet/missing.py); a window
that still holds one is marked missing and never reaches the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeae.contract.errors import DataError, require
from edgeae.data.series import FLOAT32_MAX
from edgeae.fleet.missing import DEFAULT_MAX_GAP, DEFAULT_MISSING, fill_gaps, missing_windows, refusal


@dataclass(frozen=True)
class FleetJob:
    """What every task needs, small and picklable: read once by the driver, shipped to the workers."""

    export: str
    checksum: str
    variant: str
    by: str
    order: str
    columns: tuple[str, ...]
    timesteps: int
    stride: int
    threshold: float | None = None
    time: str | None = None
    missing: str = DEFAULT_MISSING  # skip, refuse or interpolate (fleet/missing.py)
    max_gap: int = DEFAULT_MAX_GAP  # interpolate: the longest run of missing rows filled


@dataclass(frozen=True)
class Cut:
    """The windows of one partition and, per window, its series and first and last rows."""

    windows: np.ndarray  # (n, timesteps, features), finite but where `missing` (NaN there)
    series: np.ndarray
    first: np.ndarray  # row positions in `frame`, sorted by series and step
    frame: Any
    missing: np.ndarray  # per window: it holds a missing value, so it is not scored


def plan_series(steps: np.ndarray, timesteps: int, stride: int, series: Any) -> tuple[np.ndarray, list[int]]:
    """The rows (of one series sorted by step) where its windows start, and the bounds of its regular
    stretches (0, the row after each gap, ..., its length): one gap fewer than stretches."""
    diffs = np.diff(steps)
    if (diffs == 0).any():
        raise DataError(f"series {series!r}: step {steps[np.argmax(diffs == 0)]} appears twice")
    if len(steps) < timesteps:
        return np.empty(0, np.int64), [0, len(steps)]
    values, counts = np.unique(diffs, return_counts=True)
    usual = values[np.argmax(counts)] if len(values) else 0  # argmax: the first, the smallest of the most common
    breaks = np.flatnonzero(diffs != usual) + 1
    bounds = [0, *breaks.tolist(), len(steps)]
    starts = [np.arange(a, b - timesteps + 1, stride) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(starts).astype(np.int64), bounds


def _steps(column: Any, name: str) -> np.ndarray:
    """An order column as int64 (timestamps in their own unit): steps must be whole numbers or times."""
    pd = require("pandas", "dask")
    if column.isna().any():
        raise DataError(f"order column {name!r} has empty values")
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_integer_dtype(column):
        return column.to_numpy().view("int64") if column.dtype.kind == "M" else column.to_numpy(np.int64)
    raise DataError(f"order column {name!r} holds {column.dtype}; expected whole numbers or timestamps")


def _series_ids(frame: Any, by: str) -> np.ndarray:
    if frame[by].isna().any():
        raise DataError(f"series column {by!r} has empty values")
    return frame[by].to_numpy()


def series_runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """(first row, end row) of each series in `ids`, which holds each series' rows together."""
    if not len(ids):
        return []
    bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
    return list(zip(bounds[:-1], bounds[1:]))


def check_order(frame: Any, by: str, order: str) -> Any:
    """Refuse an input partition where a series' steps do not increase row by row: a wrong --order
    column or a shuffled file, which one process would have scored in file order."""
    if frame.empty:
        return frame
    ids, steps = _series_ids(frame, by), _steps(frame[order], order)
    rank = np.argsort(ids, kind="stable")  # rows of one series together, in file order
    same = ids[rank][1:] == ids[rank][:-1]
    back = np.flatnonzero(same & (np.diff(steps[rank]) <= 0))
    if len(back):
        before, after = frame[order].iloc[rank[back[0]]], frame[order].iloc[rank[back[0] + 1]]
        series = ids[rank][back[0]]
        if before == after:
            raise DataError(f"series {series!r}: step {after} appears twice")
        raise DataError(f"series {series!r}: step {after} follows step {before}; the rows of a series must be in "
                        f"increasing {order!r} order within each file")
    return frame


def _features(frame: Any, columns: tuple[str, ...], ids: np.ndarray, order: str) -> np.ndarray:
    """The feature columns as float64 (NaN where missing), refusing a value that is infinite or does not
    fit in float32 (naming series and step)."""
    values = frame[list(columns)].to_numpy(np.float64, na_value=np.nan)
    bad = np.isinf(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"series {ids[row]!r}, step {frame[order].iloc[row]}: column {columns[col]!r} is "
                        f"{float(values[row, col])!r}, not a finite float32 number")
    return values


@dataclass(frozen=True)
class SeriesRows:
    """One series of a partition: its rows [begin, end), its windows' first rows (in the partition),
    its gaps in steps, and its missing values before and after the job's `missing` policy."""

    begin: int
    end: int
    first: np.ndarray
    gaps: int
    missing_values: int
    interpolated: int


def read_rows(frame: Any, job: FleetJob) -> tuple[Any, np.ndarray, np.ndarray, list[SeriesRows]]:
    """`frame` sorted by series and step, its series ids, its feature values (float64, after the
    missing policy: refused, kept as NaN, or short runs filled) and its series."""
    frame = frame.sort_values([job.by, job.order], kind="stable", ignore_index=True)
    ids, steps = _series_ids(frame, job.by), _steps(frame[job.order], job.order)
    values = _features(frame, job.columns, ids, job.order)
    found = []
    for a, b in series_runs(ids):
        starts, bounds = plan_series(steps[a:b], job.timesteps, job.stride, ids[a])
        holes = np.isnan(values[a:b]).sum(axis=0)
        if holes.any() and job.missing == "refuse":
            raise refusal(f"series {ids[a]!r}", job.columns, holes)
        filled = fill_gaps(values[a:b], bounds, job.max_gap) if holes.any() and job.missing == "interpolate" else 0
        found.append(SeriesRows(a, b, starts + a, len(bounds) - 2, int(holes.sum()), filled))
    return frame, ids, values, found


def cut_partition(frame: Any, job: FleetJob, dtype: type = np.float32) -> Cut:
    """Every window of every series in `frame` (which holds whole series), in series and step order,
    as `dtype` (float32: what the model reads, as `edgeae score` casts; float64: the values as stored),
    each marked missing where it still holds a missing value."""
    frame, ids, values, found = read_rows(frame, job)
    first = np.concatenate([rows.first for rows in found]) if found else np.empty(0, np.int64)
    missing = missing_windows(values, first, job.timesteps)
    values = values.astype(dtype, copy=False)
    if len(frame) >= job.timesteps:
        view = np.lib.stride_tricks.sliding_window_view(values, job.timesteps, axis=0)[first]
        windows = np.ascontiguousarray(view.transpose(0, 2, 1))
    else:
        windows = np.empty((0, job.timesteps, len(job.columns)), dtype)
    return Cut(windows, ids[first], first, frame, missing)


def window_index(cut: Cut, job: FleetJob) -> Any:
    """Series, window start and end (the order column's values), and the time column's start value."""
    pd = require("pandas", "dask")
    frame, last = cut.frame, cut.first + job.timesteps - 1
    at = lambda column, rows: frame[column].take(rows).reset_index(drop=True)  # noqa: E731  (keeps the column's type)
    index = {job.by: at(job.by, cut.first), "window_start": at(job.order, cut.first), "window_end": at(job.order, last)}
    if job.time:
        index["window_time"] = at(job.time, cut.first)
    return pd.DataFrame(index)


COUNTS = {"series": object, "rows": "int64", "gaps": "int64", "windows": "int64", "missing_values": "int64",
          "interpolated": "int64", "missing_windows": "int64"}


def count_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per series: rows, gaps, windows expected, missing values,
    values interpolated and windows left missing, counted apart from the scoring so that a run can
    check what it wrote."""
    pd = require("pandas", "dask")
    _, ids, values, found = read_rows(frame, job)
    first = np.concatenate([s.first for s in found]) if found else np.empty(0, np.int64)
    left = np.concatenate([[0], np.cumsum(missing_windows(values, first, job.timesteps))])
    ends = np.cumsum([len(s.first) for s in found]).astype(np.int64)
    rows = [(ids[s.begin], s.end - s.begin, s.gaps, len(s.first), s.missing_values, s.interpolated,
             int(left[end] - left[end - len(s.first)])) for s, end in zip(found, ends)]
    return pd.DataFrame(rows, columns=list(COUNTS)).astype(COUNTS)
