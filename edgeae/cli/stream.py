"""A data file's windows for encode, reconstruct and score, a chunk at a time (data/chunks.py).

A .csv is read in chunks, so memory stays bounded whatever its length; an .npy is memory-mapped and
read a chunk at a time too (whole only where its columns are picked out of order or its gaps filled). The windows are regrouped
into the batches one whole-file call would run, so every window gets the same numbers, bit for
bit: the runtime picks a graph by batch size, and graphs differ by a float32 step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeae.cli.progress import estimated_rows
from edgeae.contract.errors import DataError, UsageError
from edgeae.data.chunks import (
    CsvSeries, GapFiller, Rows, WindowBatch, count_missing, ready_windows, series_chunks, windows_of,
)
from edgeae.data.gaps import HINT, check_policy, counts_text, gap_windows
from edgeae.data.series import check_data_file, load_features, trained_columns, with_missing


@dataclass(frozen=True)
class ReadOptions:
    """How a runtime command reads its data file (its options, as given)."""

    stride: int | None
    columns: tuple[str, ...] | None
    time_column: str | None
    missing: str
    max_gap: int
    header_row: bool


class StreamInput:
    """A data file's windows in batches, its feature columns, and what its missing values were
    (`gaps`, complete once the batches are read)."""

    def __init__(self, edge: Any, path: Path, read: ReadOptions) -> None:
        self.edge, self.path, self.read = edge, Path(path), read
        trained = trained_columns(edge.manifest, self.path)
        exclude = (read.time_column,) if read.time_column else ()
        self.csv: CsvSeries | None = None
        self.series = None
        if self.path.suffix.lower() == ".csv":
            check_data_file(self.path)
            self.csv = CsvSeries(self.path, edge.features, read.columns, trained, exclude, read.header_row)
            self.columns, self.source = self.csv.columns, self.csv.source
        else:
            self.series = load_features(self.path, edge.features, read.columns, trained, exclude, missing_ok=True,
                                        header_row=read.header_row, mapped=True)
            self.columns, self.source = self.series.columns, self.series.source
        self.counts: dict[str, int] | None = None if self.series is None else self.series.missing
        self.interpolated = 0

    def count(self) -> dict[str, int]:
        """Every column's missing values, reading a CSV once more where not yet counted."""
        if self.counts is None:
            self.counts = count_missing(self.csv.chunks(), self.columns)
        return self.counts

    @property
    def gaps(self) -> dict[str, Any]:
        """What the data's missing values were, counted before the policy applied (the run's record)."""
        counts = self.counts or {}
        return {"policy": self.read.missing, "max_gap": self.read.max_gap, "values": sum(counts.values()),
                "columns": counts, "interpolated": self.interpolated}

    def batches(self) -> Iterator[WindowBatch]:
        """The windows, `stride` apart (None: the model's), the missing-value policy applied."""
        read, edge = self.read, self.edge
        check_policy(read.missing, read.max_gap)
        stride = edge.stride if read.stride is None else read.stride
        if self.series is not None:
            filled, self.interpolated = with_missing(self.series, read.missing, read.max_gap)
            if filled.is_windows:
                yield from ready_windows(filled, read.stride)
            else:
                yield from windows_of(series_chunks(filled), edge.timesteps, stride, self.source)
            self._check_times()
            return
        if read.missing == "refuse" and self.count():  # one pass first: the message names every column's count
            raise DataError(f"{counts_text(self.counts, self.source)}; {HINT}")
        filler = GapFiller(read.max_gap) if read.missing == "interpolate" else None
        chunks = self.csv.chunks(read.time_column)
        yield from windows_of(chunks if self.counts is not None else self._counted(chunks), edge.timesteps, stride,
                              self.source, filler)
        self.interpolated = filler.filled if filler is not None else 0
        self._check_times()

    def estimate(self) -> int | None:
        """About how many windows `batches` yields, for a progress bar: exact for an .npy, from the
        file's size and its first lines for a CSV (None where that says nothing)."""
        stride = self.edge.stride if self.read.stride is None else self.read.stride
        if self.series is not None and self.series.is_windows:
            return len(self.series.values)
        rows = len(self.series.values) if self.series is not None else estimated_rows(self.path, self.read.header_row)
        return None if rows is None else max(0, (rows - self.edge.timesteps) // stride + 1)

    def _counted(self, chunks: Iterator[Rows]) -> Iterator[Rows]:
        """The chunks, their missing values added up on the way (before any is filled)."""
        total = np.zeros(len(self.columns), np.int64)
        for rows in chunks:
            total += np.isnan(rows.values).sum(axis=0)
            yield rows
        self.counts = {name: int(count) for name, count in zip(self.columns, total) if count}

    def _check_times(self) -> None:
        """What is wrong with --time-column, said after the values, as the whole-file run read it last."""
        if self.read.time_column is None:
            return
        if self.csv is None:
            raise UsageError(f"{self.path.name}: a time column is read from a CSV file's header")
        if self.csv.time_error is not None:
            raise self.csv.time_error

    @property
    def time_dtype(self) -> str:
        """numpy's str dtype of the whole time column (its longest text)."""
        return f"<U{self.csv.time_width}" if self.csv is not None else "<U1"


def aligned(batches: Iterator[WindowBatch], size: int) -> Iterator[WindowBatch]:
    """The batches regrouped to hold whole multiples of `size` complete windows (the last the rest):
    one whole-file call runs its complete windows `size` at a time, and a graph is picked by that
    count, so each window here runs in the same group on the same graph, with the same result."""
    held: WindowBatch | None = None
    for batch in batches:
        held = batch if held is None else held.then(batch)
        complete = np.cumsum(~gap_windows(held.windows))
        whole = int(complete[-1]) // size * size
        if whole:
            cut = int(np.searchsorted(complete, whole)) + 1
            yield held.part(0, cut)
            held = held.part(cut, len(held))
    if held is not None and len(held):
        yield held
