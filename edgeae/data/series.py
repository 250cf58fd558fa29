"""Series in: load CSV/NPY (separator, header, time axis, columns, missing values) and check them.

Every check here fails with one line naming the file, and the row and column where it
can, before anything is trained or written. A missing value is read as NaN; what a gap does
(refuse, skip, interpolate) lives in gaps.py. Windowing and preprocessing live in windows.py.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgeae.contract.errors import DataError, ShapeError, UsageError
from edgeae.contract.records import Manifest
from edgeae.data.gaps import check_policy, fill_gaps, missing_counts, refuse_missing, row_chunks

FLOAT32_MAX = float(np.finfo(np.float32).max)
CHECK_ROWS = 1 << 16  # rows of an .npy checked at a time


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Series:
    """Values as loaded: a (time, features) series, or ready-made (n, timesteps, features) windows;
    NaN where a value is missing."""

    values: np.ndarray
    columns: tuple[str, ...]
    source: str
    time_axis: tuple[str, ...] = ()  # columns left out as the time axis, not features (time_axis_columns)

    @property
    def is_windows(self) -> bool:
        return self.values.ndim == 3

    @property
    def missing(self) -> dict[str, int]:
        """The number of missing values of each column that has any (empty when none is)."""
        return missing_counts(self.values, self.columns)


def _listing(names: list[str], limit: int = 10) -> str:
    """Names for a message, capped: a header of thousands of columns must still fit one line."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _select_columns(header: list[str], wanted: tuple[str, ...] | None, source: str) -> list[int]:
    """Column indices by name (or index); the names kept must be unambiguous.

    Counts and positions are looked up in dicts, so a header of 200,000 columns costs
    linear time, not quadratic.
    """
    counts = Counter(header)
    if wanted:
        first: dict[str, int] = {}
        for index, name in enumerate(header):
            first.setdefault(name, index)
        picked = []
        for name in wanted:
            if counts[name] > 1:
                raise DataError(f"{source}: column name {name!r} appears {counts[name]} times in the header")
            if name in first:
                picked.append(first[name])
            elif name.isascii() and name.isdigit() and int(name) < len(header):
                picked.append(int(name))
            else:
                raise DataError(f"{source}: no column {name!r}; columns are {_listing(header)}")
    else:
        picked = list(range(len(header)))
    names = [header[c] for c in picked]
    used = Counter(names)
    for col, name in zip(picked, names):
        if not name:
            raise DataError(f"{source}: column {col + 1} has no name in the header row")
        if used[name] > 1:
            raise DataError(f"{source}: column {name!r} is used twice; name each feature column once")
        if counts[name] > 1:  # a model records its columns by name: this one could not be found again
            raise DataError(f"{source}: the column at index {col} is named {name!r}, as another column is; "
                            "give each feature column its own name")
    return picked


def _parse_number(cell: str) -> float | None:
    """The cell as a float, or None when it is not a plain number.

    Python's float() also takes '1_000' and non-ASCII digits; a data file means neither,
    so both count as text like any other.
    """
    if "_" in cell or not cell.isascii():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


# Cells that mean "no value here" (compared lowercased, after stripping spaces): an empty cell and
# what spreadsheets, R, pandas and databases write for one. Infinity is not missing: it is refused.
MISSING_MARKS = frozenset({"", "na", "nan", "null", "n/a"})
SEPARATORS = (",", ";", "\t")  # in the order a header line is searched for them
HEADER_PEEK = 1 << 16  # characters of the first line read to find the separator (a huge line is csv's to refuse)
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+([eE][+-]?\d+)?")


def _separator(header_line: str) -> str:
    """The column separator of a CSV, read from its header line: a comma, else a semicolon (as
    spreadsheets write where the comma is the decimal mark), else a tab; a comma for one column."""
    return next((sep for sep in SEPARATORS if sep in header_line), ",")


def csv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """A CSV's rows with their line numbers, one at a time (a chunked reader holds only a few)."""
    source = Path(path).name
    if Path(path).stat().st_size == 0:
        raise DataError(f"{source}: the file is empty")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is dropped
            reader = csv.reader(handle, delimiter=_separator(handle.readline(HEADER_PEEK)))
            handle.seek(0)  # the decoder starts again, dropping the mark again
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise DataError(f"{source}: not a text CSV file (not UTF-8)") from None
    except csv.Error as exc:
        raise DataError(f"{source}: not a readable CSV file: {exc}") from None


def _csv_table(path: Path, header_row: bool = True) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """A CSV's name, header and data rows (each with its line number), checked
    to hold a header and data; trailing blank lines dropped. Without a `header_row`, every
    line is data and the columns are named by position, 1-based as a user counts them."""
    source = Path(path).name
    lines = list(csv_lines(path))
    while lines and not any(cell.strip() for cell in lines[-1][1]):
        lines.pop()
    if not lines:
        raise DataError(f"{source}: the file is empty")
    header = csv_header(source, lines[0], header_row)
    if not header_row:
        return source, header, lines
    if len(lines) == 1:
        raise DataError(f"{source}: a header row but no data rows")
    return source, header, lines[1:]


def csv_header(source: str, first: tuple[int, list[str]], header_row: bool) -> list[str]:
    """The column names from a CSV's first row (checked to name, not hold numbers), or without a
    `header_row` its positions 1, 2, ... as a user counts them."""
    header_line, cells = first
    if not header_row:
        return [str(i + 1) for i in range(len(cells))]
    header = [h.strip() for h in cells]
    if all(_parse_number(h) is not None for h in header):
        raise DataError(f"{source}: row {header_line} holds numbers, expected a header row naming the columns "
                        "(pass --no-header for a file without one)")
    return header


# A column is the time axis rather than a feature where its name is one of these words (alone or as a
# word of it: "Date", "time_s", "YEAR") and its numbers strictly increase, or where it holds dates.
TIME_WORDS = frozenset({"time", "date", "datetime", "timestamp", "year", "step", "index", "ds", "t", "ts"})
_DATE = re.compile(r"\d{4}-\d{1,2}(-\d{1,2})?([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?"
                   r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}( \d{1,2}:\d{2}(:\d{2})?)?")


def time_axis_columns(header: list[str], rows: Iterable[tuple[int, list[str]]]) -> tuple[str, ...]:
    """The columns of a CSV that are its time axis, never features unless chosen by name: dates or
    timestamps (the first data row decides), or strictly increasing numbers under a time-like name.

    A rising series (a trend) is not taken for time by its values alone: its name must say so too.
    The rows are read once, and only while a time-like column still rises.
    """
    lines = iter(rows)
    first_row = next(lines, (0, []))[1]
    dates, last = set(), {}  # last: the number a still-rising time-like column reached
    for col, name in enumerate(header):
        first = first_row[col].strip() if col < len(first_row) else ""
        if _DATE.fullmatch(first):
            dates.add(col)
        elif first and set(re.split(r"[^a-z]+", name.lower())) & TIME_WORDS:  # only these are read further
            last[col] = _parse_number(first)
    last = {col: number for col, number in last.items() if number is not None}
    more = False
    for _, row in lines if last else ():
        more = True
        for col, before in list(last.items()):
            number = _parse_number(row[col].strip()) if col < len(row) else None
            if number is None or not before < number:
                del last[col]
            else:
                last[col] = number
        if not last:
            break
    return tuple(name for col, name in enumerate(header) if col in dates or (more and col in last))


def load_csv(path: Path, columns: tuple[str, ...] | None = None, header_row: bool = True,
             time_column: str | None = None) -> Series:
    """Read a CSV with a header row (or without: columns named 1, 2, ...), one column per feature
    and one row per time step; a missing value (MISSING_MARKS) is read as NaN.

    Rows are numbered as lines of the file (the header is row 1); blank lines may only
    trail the data, since one inside it would silently drop a time step (in a one-column file
    a blank line is its empty cell: a missing value). Without `columns`,
    a time axis (time_axis_columns, and `time_column` where given) is left out of the features and
    named in `time_axis`.
    """
    source, header, rows = _csv_table(path, header_row)
    picked, time_axis = csv_columns(source, header, rows, columns, time_column)
    return Series(parse_rows(rows, header, picked, source), tuple(header[c] for c in picked), source, time_axis)


def csv_columns(source: str, header: list[str], rows: Iterable[tuple[int, list[str]]],
                columns: tuple[str, ...] | None, time_column: str | None) -> tuple[list[int], tuple[str, ...]]:
    """load_csv's feature columns (indices) and time axis; `rows` read only where a time-like column must rise."""
    time_axis: tuple[str, ...] = ()
    if time_column is not None:
        if time_column not in header:
            raise DataError(f"{source}: no column {time_column!r} to take as the time axis (it has: {_listing(header)})")
        if columns and time_column in columns:
            raise UsageError(f"column {time_column!r} is given as the time axis and as a feature; it can be one")
        time_axis = (time_column,)
    if not columns:
        time_axis = tuple(dict.fromkeys(time_axis + time_axis_columns(header, rows)))
        if time_axis and len(time_axis) < len(header) and all(header.count(name) == 1 for name in time_axis):
            columns = tuple(name for name in header if name not in time_axis)
        else:
            time_axis = ()
    return _select_columns(header, columns, source), time_axis


def parse_rows(rows: list[tuple[int, list[str]]], header: list[str], picked: list[int], source: str) -> np.ndarray:
    """The `picked` columns of data rows as (rows, columns) float64, NaN where missing; a bad cell,
    short row or blank line refused naming its line (shared with the chunked reader)."""
    values = np.empty((len(rows), len(picked)), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        if not row and len(header) == 1:  # a one-column file writes a missing value as an empty line
            row = [""]
        if not any(cell.strip() for cell in row) and len(row) != len(header):  # a blank line, not empty cells
            raise DataError(f"{source}: row {line} is empty (a missing time step?)")
        if len(row) != len(header):
            raise DataError(f"{source}: row {line} has {len(row)} cells, the header has {len(header)}")
        for j, col in enumerate(picked):
            cell = row[col].strip()
            name = header[col]
            if cell.lower() in MISSING_MARKS:
                values[i, j] = math.nan
                continue
            number = _parse_number(cell)
            if number is None and _DECIMAL_COMMA.fullmatch(cell):
                raise DataError(f"{source}: row {line}, column {name!r}: {cell!r} has a decimal comma; edgeae "
                                f"reads a point as the decimal mark ({cell.replace(',', '.')!r})")
            if number is None:
                raise DataError(f"{source}: row {line}, column {name!r}: {cell!r} is not a number")
            if not math.isfinite(number):
                raise DataError(f"{source}: row {line}, column {name!r}: {cell!r} is not a finite number")
            if abs(number) > FLOAT32_MAX:
                raise DataError(f"{source}: row {line}, column {name!r}: {cell} does not fit in float32")
            values[i, j] = number
    return values


def _where(index: tuple[int, ...]) -> str:
    """An array position in the words a user thinks in (0-based, as numpy counts)."""
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"window {index[0]}, step {index[1]}, column {index[2]}"


def _memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _npy_header(path: Path, source: str, mapped: bool = False) -> tuple[int, ...]:
    """The shape an .npy header claims, checked (with its dtype) against the bytes the file holds.

    np.load allocates what the header claims before it reads a byte, so a 500-byte file
    claiming 1e10 rows would exhaust memory: every claim is checked here first.
    """
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            if version not in readers:  # 3.0 exists only for structured dtypes with non-ASCII field names
                raise ValueError(f"format version {version[0]}.{version[1]} holds no plain numbers")
            shape, _, dtype = readers[version](handle)
            have = os.fstat(handle.fileno()).st_size - handle.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npy array: {exc}") from None
    if dtype.kind not in "iuf":
        raise DataError(f"{source}: expected numbers, got dtype {dtype}")
    if len(shape) not in (1, 2, 3):
        raise ShapeError(f"{source}: expected (time, features) or (n, timesteps, features), got shape {shape}")
    count = math.prod(shape)
    if count == 0:
        raise DataError(f"{source}: the array is empty (shape {shape})")
    need = count * dtype.itemsize
    if need != have:
        only = "only " if have < need else ""
        raise DataError(f"{source}: the header claims shape {shape}, {count} values ({need} bytes), "
                        f"but the file holds {only}{have} bytes of data (truncated or corrupt)")
    need += 0 if dtype == np.float64 else count * 8  # the float64 copy load_npy makes of any other dtype
    memory = None if mapped else _memory_bytes()
    if memory is not None and need > memory:
        raise DataError(f"{source}: {count} values are too many to load: they need {need / 1e9:.1f} GB, "
                        f"this machine has {memory / 1e9:.1f} GB")
    return shape


def load_npy(path: Path, mapped: bool = False) -> Series:
    """Read an NPY array: (time,) or (time, features) series, or (n, timesteps, features) windows;
    NaN is a missing value. `mapped`: memory-map the file instead (a command that reads it in chunks
    holds only those); its values keep the file's dtype, each chunk made float64 where it is read."""
    source = Path(path).name
    if Path(path).stat().st_size == 0:
        raise DataError(f"{source}: the file is empty")
    shape = _npy_header(Path(path), source, mapped)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None)
        array = array if mapped else array.astype(np.float64, copy=False)
    except MemoryError:
        raise DataError(f"{source}: shape {shape} is too large to load into this machine's free memory") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npy array: {exc}") from None
    array = array[:, None] if array.ndim == 1 else array
    for first, block in zip(range(0, len(array), CHECK_ROWS), row_chunks(array, CHECK_ROWS)):  # bounded temporaries
        part = np.asarray(block, np.float64)
        for bad, what in ((np.isinf(part), "is not a finite number"), (np.abs(part) > FLOAT32_MAX, "does not fit in "
                                                                       "float32")):
            if bad.any():  # NaN is a missing value
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DataError(f"{source}: {_where((index[0] + first, *index[1:]))} (0-based): {part[index]} {what}")
    return Series(array, tuple(str(i) for i in range(array.shape[-1])), source)


def load_series(path: Path, columns: tuple[str, ...] | None = None, missing_ok: bool = False,
                header_row: bool = True, time_column: str | None = None, mapped: bool = False) -> Series:
    """A CSV or NPY file's series or windows, the `columns` chosen (never `time_column`, a CSV's time
    axis). A missing value is refused (naming every column's count) unless `missing_ok`: then it
    is NaN, for the caller's policy."""
    series = _load_series(Path(path), columns, header_row, time_column, mapped)
    if not missing_ok:
        refuse_missing(series.values, series.columns, series.source,
                       "fill the gaps first (train, score, encode and reconstruct take --missing)")
    return series


def check_data_file(path: Path) -> None:
    """Refuse a data file that is not there, or is a folder, pipe or device: reading it would fail or never end."""
    if not path.is_file():
        if path.exists():
            raise UsageError(f"data file is not a regular file: {path}")
        raise UsageError(f"data file not found: {path}")


def _load_series(path: Path, columns: tuple[str, ...] | None, header_row: bool,
                 time_column: str | None = None, mapped: bool = False) -> Series:
    """load_series without the check for missing values; `mapped` as for load_npy."""
    check_data_file(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, columns, header_row, time_column)
    if not header_row:
        raise UsageError(f"{path.name}: --no-header applies to a CSV file")
    if time_column is not None:
        raise UsageError(f"{path.name}: --time-column applies to a CSV file (an .npy holds its features only)")
    if suffix == ".npy":
        series = load_npy(path, mapped)
        if not columns or list(columns) == [str(i) for i in range(series.values.shape[-1])]:
            return series
        picked = [int(c) for c in columns if c.isascii() and c.isdigit()]  # not '²': a digit int() refuses
        if len(picked) != len(columns) or any(c >= series.values.shape[-1] for c in picked):
            raise DataError(f"{path.name}: columns of an .npy file are indices 0..{series.values.shape[-1] - 1}")
        if len(set(picked)) != len(picked):
            raise DataError(f"{path.name}: a column is chosen twice ({','.join(columns)})")
        return Series(series.values[..., picked], tuple(columns), series.source)
    raise UsageError(f"{path.name}: expected a .csv or .npy file")


def trained_columns(manifest: Manifest | None, path: Path) -> tuple[str, ...] | None:
    """The columns a model was trained on, as its manifest records them, where `path` is the
    same kind of file: CSV names for a CSV, indices for an .npy (None otherwise, for the seed, or
    for a model with no manifest: a single .onnx file)."""
    names = manifest.columns if manifest is not None else None
    if not names:
        return None
    source = manifest.training.source or ""
    if Path(str(source)).suffix.lower() == Path(path).suffix.lower():
        return tuple(str(n) for n in names)
    return None


def with_missing(series: Series, missing: str, max_gap: int) -> tuple[Series, int]:
    """The series under a missing-value policy (gaps.py): refused with every column's count,
    left as it is ("skip"), or with gaps of up to `max_gap` rows filled ("interpolate"); and how
    many values were filled. Ready-made windows have no neighbours across windows: none is filled."""
    check_policy(missing, max_gap)
    if missing == "refuse":
        refuse_missing(series.values, series.columns, series.source)
    if missing != "interpolate" or series.is_windows or not series.missing:
        return series, 0
    filled, count = fill_gaps(series.values, max_gap)
    return replace(series, values=filled), count


def load_features(path: Path, features: int, columns: tuple[str, ...] | None = None,
                  trained: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
                  missing_ok: bool = False, header_row: bool = True, mapped: bool = False) -> Series:
    """A model's input columns from a data file, checked against the feature count it expects.

    The columns asked for win, put in the model's order where they are its `trained` names in
    another order (`match_trained`); else the columns the model was trained on (`trained_columns`,
    found by name wherever the header has them); else every column but `exclude` (a label or time
    column is never a feature). `missing_ok`, `header_row` and `mapped` as for load_series.
    """
    path = Path(path)
    chosen = columns or trained
    series = match_trained(load_series(path, chosen, missing_ok, header_row, mapped=mapped), trained)
    if not chosen and exclude and set(exclude) & set(series.columns):
        series = load_series(path, tuple(c for c in series.columns if c not in exclude), missing_ok, header_row)
    if series.values.shape[-1] != features:
        raise ShapeError(f"{series.source}: {series.values.shape[-1]} feature column(s), the model expects {features}"
                         " (choose them with --columns)")
    return series


def match_trained(series: Series, trained: tuple[str, ...] | None) -> Series:
    """The series with its columns in the model's order where they are the model's own names in
    another order; refused where a model's column would reach the network as another feature.

    Names the model was not trained on (another file's names for the same signals) pass as given:
    only a name the model knows can be checked, and only its position is.
    """
    if not trained or series.columns == trained or series.is_windows:
        return series
    if len(series.columns) == len(trained) and sorted(series.columns) == sorted(trained):
        order = [series.columns.index(name) for name in trained]
        return Series(series.values[:, order], trained, series.source)
    for position, name in enumerate(series.columns):
        if name in trained and trained.index(name) != position:
            raise DataError(f"{series.source}: column {name!r} would be the model's feature {position + 1}, but it "
                            f"was trained as feature {trained.index(name) + 1}; the model reads "
                            f"{_listing(list(trained))} in that order (name them all, in any order)")
    return series


def time_column_index(source: str, header: list[str], column: str) -> int:
    """A CSV's time column, by name only (an index would read as a column named by digits)."""
    if column not in header:
        raise DataError(f"{source}: no time column {column!r}; columns are {_listing(header)}")
    [index] = _select_columns(header, (column,), source)  # refuses a name the header repeats
    return index


def _labels(labels: Series, column: str, path: Path) -> np.ndarray:
    """One labels column, checked: one 0/1 value per row, as bool (true = anomalous)."""
    if labels.is_windows:
        raise DataError(f"{labels.source}: labels must be one value per row, not windows")
    values = labels.values[:, 0]
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        where = f"row {bad[0] + 2}" if Path(path).suffix.lower() == ".csv" else f"row {bad[0]} (0-based)"
        raise DataError(f"{labels.source}: {where}, column {column!r}: label {values[bad[0]]:g} is not 0 or 1")
    return values.astype(bool)


def load_labels(path: Path, column: str) -> np.ndarray:
    """A 0/1 anomaly label per row, from one CSV column (true = anomalous)."""
    return _labels(load_series(path, (column,)), column, path)


def load_labelled(path: Path, features: int, columns: tuple[str, ...] | None, trained: tuple[str, ...] | None,
                  label: str) -> tuple[Series, np.ndarray]:
    """A series' model inputs and its labels, from one file; the label column is never an input,
    however either was named (a label fed to the model makes every detection figure meaningless)."""
    labelled = load_series(path, (label,))  # first: a label column that is not there is named as such
    if labelled.is_windows:
        raise UsageError(f"{labelled.source}: labels mark rows of a series (one row per time step), not ready-made windows")
    series = load_features(path, features, columns, trained, exclude=(label,))
    name = labelled.columns[0]  # by name, however `label` named it
    if name in series.columns:
        raise UsageError(f"column {name!r} is both the --labels column and a model input ({', '.join(series.columns)}); "
                         "a label must not be a feature")
    return series, _labels(labelled, label, path)

