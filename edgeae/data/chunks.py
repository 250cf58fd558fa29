"""A series read, gap-filled and cut into windows a chunk of rows at a time, for bounded memory.

`score`, `encode` and `reconstruct` on a 10M-row CSV held every row as Python text and every
window as float64 (about 1.7 KB a row). Here each step holds one chunk (CHUNK_ROWS rows) and
carries over only what the next needs: the rows a later window still covers, and the rows a
gap still open at the chunk's end may be filled from. Every step gives what the whole-file
load gives for the same rows, bit for bit, and refuses what it refuses naming the same line:
it runs the same code (csv_lines, parse_rows, fill_gaps, make_windows) on each chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeae.contract.errors import DataError, ShapeError, UsageError
from edgeae.data.gaps import fill_gaps, row_chunks
from edgeae.data.series import (
    Series, csv_columns, csv_header, csv_lines, match_trained, parse_rows, time_column_index,
)
from edgeae.data.windows import make_windows

# Data rows read and parsed per chunk: 16,384 rows of 5 columns are ~7 MB as Python text and their
# windows ~7 MB (float64, 10 steps); a 10M-row CSV scores at ~0.3 GB peak. Tests set it small to
# put chunk boundaries everywhere.
CHUNK_ROWS = 1 << 14


@dataclass(frozen=True)
class Rows:
    """Consecutive data rows: the 0-based index of the first, values (rows, features) float64 with
    NaN where missing, and the time column's text where one is read."""

    start: int
    values: np.ndarray
    times: np.ndarray | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.values)

    def part(self, first: int, stop: int) -> Rows:
        """The rows from absolute index `first` to `stop` (exclusive)."""
        a, b = first - self.start, stop - self.start
        return Rows(first, self.values[a:b], None if self.times is None else self.times[a:b])

    def then(self, later: Rows) -> Rows:
        """These rows followed by `later`, which must start where these end."""
        times = None if self.times is None else np.concatenate([self.times, later.times])
        return Rows(self.start, np.concatenate([self.values, later.values]), times)


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive windows: (n, timesteps, features) float64, the row each starts at (None for
    ready-made windows), and the time text of each window's first and last row."""

    windows: np.ndarray
    starts: np.ndarray | None
    start_times: np.ndarray | None = None
    end_times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def part(self, first: int, stop: int) -> WindowBatch:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[first:stop]
        return WindowBatch(self.windows[first:stop], cut(self.starts), cut(self.start_times), cut(self.end_times))

    def then(self, later: WindowBatch) -> WindowBatch:
        def join(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.concatenate([a, b])
        return WindowBatch(np.concatenate([self.windows, later.windows]), join(self.starts, later.starts),
                           join(self.start_times, later.start_times), join(self.end_times, later.end_times))


def _data_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """csv_lines with blank lines held back until a later line holds a value: trailing ones are
    dropped, as the whole-file reader drops them, and only they are ever held."""
    held: list[tuple[int, list[str]]] = []
    for line in csv_lines(path):
        if any(map(str.strip, line[1])):
            yield from held
            held.clear()
            yield line
        else:
            held.append(line)


class CsvSeries:
    """A CSV's model inputs read in chunks: header, columns (as load_features chooses and orders
    them) and time column resolved first; the rows, on each pass over the file.

    What the whole-file run reports after reading every row (a column in the wrong place for the
    model, the wrong feature count) is reported after reading every row here too, so a bad cell
    before it is named first, as there.
    """

    def __init__(self, path: Path, features: int, columns: tuple[str, ...] | None, trained: tuple[str, ...] | None,
                 exclude: tuple[str, ...] = (), header_row: bool = True) -> None:
        self.path, self.source, self.header_row = Path(path), Path(path).name, header_row
        lines = _data_lines(self.path)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{self.source}: the file is empty")
        self.header = csv_header(self.source, first, header_row)
        if header_row and next(lines, None) is None:
            raise DataError(f"{self.source}: a header row but no data rows")
        lines.close()
        chosen = columns or trained
        self.picked, _ = csv_columns(self.source, self.header, self._rows(), chosen, None)
        names = tuple(self.header[c] for c in self.picked)
        if not chosen and exclude and set(exclude) & set(names):
            self.picked, _ = csv_columns(self.source, self.header, self._rows(),
                                         tuple(c for c in names if c not in exclude), None)
        self.order = list(range(len(self.picked)))
        self.columns = tuple(self.header[c] for c in self.picked)
        self.time_index: int | None = None
        try:  # the column order: match_trained's, found on one row of positions
            matched = match_trained(Series(np.arange(len(self.picked), dtype=float)[None], self.columns, self.source),
                                    trained)
            self.order, self.columns = [int(i) for i in matched.values[0]], matched.columns
            if len(self.columns) != features:
                raise ShapeError(f"{self.source}: {len(self.columns)} feature column(s), the model expects {features}"
                                 " (choose them with --columns)")
        except (DataError, ShapeError):
            for _ in self.chunks():  # a bad cell anywhere is named first, as the whole-file load names it
                pass
            raise

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """The data lines, on a fresh pass."""
        lines = _data_lines(self.path)
        if self.header_row:
            next(lines, None)
        return lines

    def chunks(self, time_column: str | None = None) -> Iterator[Rows]:
        """The rows, CHUNK_ROWS at a time (read when called: a test may set it), with each row's
        text in `time_column` where one is named. What is wrong with the time column is kept in
        `time_error` for the caller to raise once every value was read and windowed, as the
        whole-file run reads the times last."""
        size, start, batch = CHUNK_ROWS, 0, []
        self.time_error: DataError | None = None
        self.time_width = 1  # the longest time text: numpy's str dtype of the whole column, as whole-file runs keep it
        index = None
        if time_column is not None:
            try:
                index = time_column_index(self.source, self.header, time_column)
            except DataError as exc:
                self.time_error = exc
        for line in self._rows():
            batch.append(line)
            if len(batch) == size:
                yield self._parsed(batch, start, index, time_column)
                start, batch = start + size, []
        if batch:
            yield self._parsed(batch, start, index, time_column)

    def _parsed(self, batch: list[tuple[int, list[str]]], start: int, index: int | None, column: str | None) -> Rows:
        """One chunk's values in the model's column order, and its time texts."""
        values = parse_rows(batch, self.header, self.picked, self.source)[:, self.order]
        if index is None:
            return Rows(start, values)
        times = [row[index].strip() if index < len(row) else "" for _, row in batch]
        self.time_width = max(self.time_width, *map(len, times))
        if self.time_error is None and not all(times):
            line = batch[times.index("")][0]
            self.time_error = DataError(f"{self.source}: row {line}, column {column!r}: missing time")
        return Rows(start, values, np.asarray(times, dtype=object))


def series_chunks(series: Series) -> Iterator[Rows]:
    """An .npy file's series (in memory, or memory-mapped in its own dtype) as float64 chunks, as a CSV's."""
    for start, part in zip(range(0, len(series.values), CHUNK_ROWS), row_chunks(series.values, CHUNK_ROWS)):
        yield Rows(start, np.array(part, np.float64))  # a copy: the mapped pages are given back as it goes


def count_missing(chunks: Iterator[Rows], columns: tuple[str, ...]) -> dict[str, int]:
    """The missing values of each column that has any, over a whole pass (missing_counts' form)."""
    total = np.zeros(len(columns), np.int64)
    for rows in chunks:
        total += np.isnan(rows.values).sum(axis=0)
    return {name: int(count) for name, count in zip(columns, total) if count}


class GapFiller:
    """--missing interpolate over chunks, with fill_gaps' values.

    fill_gaps runs on the rows held plus each chunk. A gap still open at the chunk's end that a
    later row may close (at most `max_gap` rows so far) is held back, with the row before it, its
    left neighbour; so is any short gap that holds the first row held back. A gap running into the
    held rows' first row is one fill_gaps leaves as it is (it started the file or is already too
    long), and so it is in the whole file.
    """

    def __init__(self, max_gap: int) -> None:
        self.max_gap = max_gap
        self.filled = 0  # values filled in the rows handed on
        self._held: Rows | None = None
        self._done = 0  # absolute index of the first row not yet handed on

    def push(self, rows: Rows) -> Rows:
        """The rows settled by this chunk, filled."""
        held = rows if self._held is None else self._held.then(rows)
        settled = self._settled(held.values)
        out = self._hand_on(held, held.start + settled)
        keep = self._keep_from(held.values, settled)
        self._held = held.part(held.start + keep, held.end)
        return out

    def finish(self) -> Rows | None:
        """The rows still held, filled: at the end of the file a gap reaching it stays, as in fill_gaps."""
        return None if self._held is None else self._hand_on(self._held, self._held.end)

    def _hand_on(self, held: Rows, stop: int) -> Rows:
        filled, _ = fill_gaps(held.values, self.max_gap)
        first = self._done
        raw = held.part(first, stop)
        values = filled[first - held.start:stop - held.start]
        self.filled += int((np.isnan(raw.values) & ~np.isnan(values)).sum())
        self._done = max(stop, first)
        return Rows(first, values, raw.times)

    def _settled(self, values: np.ndarray) -> int:
        """Rows (from the first held) whose gaps no later row can change: up to the first open short gap."""
        n = len(values)
        settled = n
        for j in np.flatnonzero(np.isnan(values[-1])) if n else ():
            known = np.flatnonzero(~np.isnan(values[:, j]))
            begin = int(known[-1]) + 1 if len(known) else 0
            if begin > 0 and n - begin <= self.max_gap:
                settled = min(settled, begin)
        return settled

    def _keep_from(self, values: np.ndarray, settled: int) -> int:
        """The first row to hold: the left neighbour of each short gap holding row `settled`, and
        the last row, the left neighbour of a gap the next chunk may open."""
        keep = min(settled, len(values) - 1)
        for j in np.flatnonzero(np.isnan(values[settled])) if settled < len(values) else ():
            column = np.isnan(values[:, j])
            before = np.flatnonzero(~column[:settled])
            begin = int(before[-1]) + 1 if len(before) else 0
            after = np.flatnonzero(~column[settled:])
            end = settled + int(after[0]) if len(after) else len(values)
            if begin > 0 and end - begin <= self.max_gap:
                keep = min(keep, begin - 1)
        return keep


class WindowCutter:
    """make_windows over rows arriving in chunks: the same windows, `stride` apart from row 0,
    holding only the rows a later window still covers (fewer than one window's)."""

    def __init__(self, timesteps: int, stride: int) -> None:
        self.timesteps, self.stride = timesteps, stride
        self.rows = 0  # rows seen
        self._held: Rows | None = None
        self._next = 0  # the next window's first row

    def push(self, rows: Rows) -> WindowBatch | None:
        """The windows these rows complete, or None."""
        held = rows if self._held is None else self._held.then(rows)
        self.rows = held.end
        starts = np.arange(self._next, held.end - self.timesteps + 1, self.stride)
        batch = None
        if len(starts):
            first = self._next - held.start
            windows = make_windows(held.values[first:], self.timesteps, self.stride)
            times = held.times
            batch = WindowBatch(windows, starts, None if times is None else times[starts - held.start],
                                None if times is None else times[starts - held.start + self.timesteps - 1])
            self._next = int(starts[-1]) + self.stride
        self._held = held.part(min(max(self._next, held.start), held.end), held.end)
        return batch

    def finish(self, source: str) -> None:
        """Refuse a series shorter than one window, as make_windows does the whole file."""
        if self.rows < self.timesteps:
            raise DataError(f"{source} has {self.rows} rows, fewer than one window of {self.timesteps}")


def windows_of(chunks: Iterator[Rows], timesteps: int, stride: int, source: str,
               filler: GapFiller | None = None) -> Iterator[WindowBatch]:
    """The windows of a chunked series, gaps filled first where a `filler` is given."""
    cutter = WindowCutter(timesteps, stride)
    for rows in chunks:
        batch = cutter.push(filler.push(rows) if filler is not None else rows)
        if batch is not None:
            yield batch
    last = filler.finish() if filler is not None else None
    if last is not None and len(last.values):
        batch = cutter.push(last)
        if batch is not None:
            yield batch
    cutter.finish(source)


def ready_windows(series: Series, stride: int | None) -> Iterator[WindowBatch]:
    """A file of ready-made windows in batches of CHUNK_ROWS windows; a stride for them is refused."""
    if stride is not None:
        raise UsageError(f"{series.source}: a stride applies to a series; this file holds ready-made windows")
    for part in row_chunks(series.values, CHUNK_ROWS):
        yield WindowBatch(np.array(part, np.float64), None)
