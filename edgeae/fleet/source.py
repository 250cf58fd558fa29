"""A fleet's data: found (a file, folder or glob, local or an fsspec URL), read lazily by Dask,
its columns checked, and bound to an export as the job the workers run.

Series are gathered whole. The input partitions (files, row groups) are first checked for steps
that go backwards within a series, then shuffled on the series column, so each series lies in
exactly one partition and is sorted by its steps there: a window can never straddle a partition
or file boundary, so none is scored twice or lost.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeae.contract.errors import DataError, MissingDependencyError, ShapeError, UsageError, require
from edgeae.contract.files import as_path
from edgeae.contract.manifest import read_export_manifest
from edgeae.data.series import HEADER_PEEK, SEPARATORS
from edgeae.fleet.missing import MISSING_CELLS, refusal
from edgeae.fleet.options import FleetOptions
from edgeae.fleet.scoring import FIXED_BATCH, role_model
from edgeae.fleet.windows import FleetJob, check_order
from edgeae.runtime import load

DATA_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Fleet:
    """A source bound to an export: the job the workers run and the lazy frame they read."""

    job: FleetJob
    frame: Any
    units: int
    graph: str  # the file every window runs through
    missing_counts: Any = None  # with --missing refuse: the missing values per feature column, lazily counted


def expand_source(source: str | os.PathLike, storage_options: dict | None = None) -> tuple[str, list[str]]:
    """A file, folder or glob, local or an fsspec URL -> (kind, the files' URLs), refusing no match
    and a mix of Parquet and CSV."""
    fsspec = require("fsspec", "dask")
    text = str(source)
    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
        if any(ch in root for ch in "*?["):
            found = fs.glob(root)
        elif fs.isdir(root):
            found = fs.find(root)
        elif fs.isfile(root):
            found = [root]
        else:
            raise UsageError(f"data not found: {text}")
    except ImportError as exc:
        raise MissingDependencyError(f"{text}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot list {text}: {exc}") from None
    files = sorted(f for f in found if Path(f).suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise UsageError(f"no Parquet or CSV files match {text}")
    kinds = {DATA_SUFFIXES[Path(f).suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise UsageError(f"{text} holds both Parquet and CSV files; give one kind")
    return kinds.pop(), [fs.unstrip_protocol(f) for f in files]


def _first_line(url: str, storage_options: dict | None = None) -> str:
    """A CSV file's first line (its header, where it has one), a byte-order mark dropped."""
    fsspec = require("fsspec", "dask")
    try:
        with fsspec.open(url, "r", encoding="utf-8-sig", **(storage_options or {})) as handle:
            return handle.readline(HEADER_PEEK)
    except UnicodeDecodeError:
        raise DataError(f"{url}: not a text CSV file (not UTF-8)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {url}: {exc}") from None


def sniff_separator(url: str, storage_options: dict | None = None) -> str:
    """A CSV file's separator, read from its header line as edgeae reads one file (data/series.py):
    a comma, else a semicolon, else a tab; a comma for one column."""
    line = _first_line(url, storage_options)
    return next((sep for sep in SEPARATORS if sep in line), ",")


def _is_number(cell: str) -> bool:
    """Whether a cell reads as a plain number, as edgeae reads one file (ASCII, no underscores)."""
    try:
        float(cell)
    except ValueError:
        return False
    return "_" not in cell and cell.isascii()


def csv_names(url: str, sep: str, header_row: bool, storage_options: dict | None = None) -> list[str] | None:
    """The column names of a CSV source without a header row: "1", "2", ... by position (1-based, as a
    user counts), as many as its first file's first line has cells; None where the header names them,
    which must then not be numbers only (the first line of a file without a header)."""
    line = _first_line(url, storage_options).rstrip("\r\n")
    cells = next(csv.reader([line], delimiter=sep), [])
    if not header_row:
        return [str(i + 1) for i in range(len(cells))]
    if all(_is_number(cell.strip()) for cell in cells):
        raise DataError(f"{url}: row 1 holds numbers, expected a header row naming the columns "
                        "(pass --no-header for a file without one)")
    return None


def read_source(source: Any, storage_options: dict | None = None, sep: str | None = None,
                floats: tuple[str, ...] = (), header_row: bool = True) -> Any:
    """A Dask DataFrame of the source: one given as such, or the Parquet/CSV files it names. A CSV's
    separator is `sep`, else its first file's header line's; a byte-order mark is dropped; a cell
    edgeae counts as missing (MISSING_CELLS) reads as NaN, and the columns in `floats` as float64 (a
    column of whole numbers with a gap further on than Dask's sample would else be refused). Without
    a `header_row`, every line of a CSV is data and its columns are named "1", "2", ... (csv_names)."""
    dd = require("dask.dataframe", "dask")
    if isinstance(source, dd.DataFrame):
        if not header_row:
            raise UsageError("--no-header applies to CSV files; a DataFrame names its columns")
        return source
    kind, files = expand_source(as_path(source, "data") if not isinstance(source, str) else source, storage_options)
    if kind == "parquet" and not header_row:
        raise UsageError(f"{source}: --no-header applies to CSV files; Parquet files name their columns")
    if kind == "csv":  # sniffed before Dask reads: their one-line errors are not its
        sep = sep or sniff_separator(files[0], storage_options)
        names = csv_names(files[0], sep, header_row, storage_options)
    try:
        if kind == "parquet":
            return dd.read_parquet(files, storage_options=storage_options)
        return dd.read_csv(files, storage_options=storage_options, blocksize="64MB", sep=sep, encoding="utf-8-sig",
                           keep_default_na=False, na_values=list(MISSING_CELLS),
                           dtype={name: "float64" for name in floats} or None,
                           **({"header": None, "names": names} if names is not None else {}))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _listing(names: Any) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def feature_columns(columns: Any, by: str, order: str, time: str | None, wanted: tuple[str, ...] | None,
                    trained: tuple[str, ...] | None, features: int | None) -> tuple[str, ...]:
    """The model's inputs: the columns asked for, else those it was trained on where all are there,
    else every column but the series, order and time columns."""
    present = [str(c) for c in columns]
    for name, what in ((by, "series (--by)"), (order, "order (--order)"), (time, "time (--time)")):
        if name is not None and name not in present:
            raise DataError(f"no {what} column {name!r}; columns are {_listing(present)}")
    if wanted:
        missing = [c for c in wanted if c not in present]
        if missing:
            raise DataError(f"no column {missing[0]!r}; columns are {_listing(present)}")
        chosen = tuple(wanted)
    elif trained and all(c in present for c in trained):
        chosen = tuple(trained)
    else:
        chosen = tuple(c for c in present if c not in (by, order, time))
    for name in chosen:
        if name in (by, order, time):
            raise UsageError(f"column {name!r} is the series, order or time column; it cannot be a feature")
    if features is not None and len(chosen) != features:
        raise ShapeError(f"{len(chosen)} feature column(s) ({_listing(chosen)}), the model expects {features} "
                         "(choose them with --columns)")
    return chosen


_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+([eE][+-]?\d+)?")


def check_numeric(frame: Any, columns: tuple[str, ...]) -> None:
    """Refuse a feature column that does not hold numbers (as its type says), before any task runs;
    one of numbers written with a decimal comma is named as such."""
    for name in columns:
        dtype = frame._meta[name].dtype
        if dtype.kind not in "iuf":
            head = frame[name].head(1000, npartitions=1) if frame.npartitions else []
            comma = next((str(cell) for cell in head if _DECIMAL_COMMA.fullmatch(str(cell).strip())), None)
            if comma is not None:
                raise DataError(f"column {name!r}: {comma.strip()!r} has a decimal comma; edgeae reads a point as the "
                                f"decimal mark ({comma.strip().replace(',', '.')!r})")
            raise DataError(f"column {name!r} holds {dtype}, not numbers; choose the feature columns with --columns")


def source_frame(source: Any, options: FleetOptions, trained: tuple[str, ...] | None,
                 features: int | None) -> tuple[Any, tuple[str, ...]]:
    """The source read (CSV features as float64) and its feature columns, checked. Without a header
    row the model's trained names cannot be found: its features are the columns given by position."""
    dd = require("dask.dataframe", "dask")
    frame = read_source(source, options.storage_options, options.sep, header_row=options.header_row)
    chosen = feature_columns(frame.columns, options.by, options.order, options.time, options.columns,
                             trained if options.header_row else None, features)
    check_numeric(frame, chosen)
    if not isinstance(source, dd.DataFrame) and any(frame._meta[c].dtype.kind in "iu" for c in chosen):
        frame = read_source(source, options.storage_options, options.sep, chosen, options.header_row)
    return frame, chosen


def refuse_missing(fleet: Fleet, source: Any, client: Any) -> None:
    """refuse's check over the whole source, before a task scores: one line with the count of
    missing values per feature column (a lazy run's workers refuse each series on their own)."""
    if fleet.missing_counts is None:
        return
    counts = client.compute(fleet.missing_counts, sync=True)
    if counts.sum():
        where = str(source) if isinstance(source, (str, os.PathLike)) else "the data"
        raise refusal(where, fleet.job.columns, counts.reindex(list(fleet.job.columns)).to_numpy())


def prepared(frame: Any, job: FleetJob) -> Any:
    """The source's needed columns, order-checked per input partition, then shuffled so that
    every series lies whole in one partition."""
    needed = list(dict.fromkeys([job.by, job.order, *([job.time] if job.time else []), *job.columns]))
    frame = frame[needed]
    frame = frame.map_partitions(check_order, job.by, job.order, meta=frame._meta)
    return frame.shuffle(on=job.by)


def plan(role: str, export: str | os.PathLike, source: Any, options: FleetOptions) -> Fleet:
    """Read the manifest (its checksum is what workers must find), check the columns, build the job.
    Only a scoring run flags with the caller's threshold; the job of any other keeps the export's."""
    folder = as_path(export, "export").absolute()
    manifest = read_export_manifest(folder)
    edge = load(folder, "cpu", threads=1, variant=options.variant)  # fails here, once, for a variant or file that is wrong
    graph = role_model(edge, role).graph_for(FIXED_BATCH).name
    limit = edge.threshold if options.threshold is None or role != "autoencoder" else options.threshold
    frame, chosen = source_frame(source, options, manifest.columns, edge.features)
    job = FleetJob(str(folder), manifest.checksum, options.variant, options.by, options.order, chosen,
                   edge.timesteps, options.stride or manifest.window.stride, limit, options.time, options.missing,
                   options.max_gap)
    counts = frame[list(chosen)].isna().sum() if options.missing == "refuse" else None
    return Fleet(job, prepared(frame, job), manifest.units, graph, counts)  # load() refused an export without units
