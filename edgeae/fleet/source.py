"""A fleet's data: found (a file, folder or glob, local or an fsspec URL), read lazily by Dask,
its columns checked, and bound to an export as the job the workers run.

Series are gathered whole. The input partitions (files, row groups) are first checked for steps
that go backwards within a series, then shuffled on the series column, so each series lies in
exactly one partition and is sorted by its steps there: a window can never straddle a partition
or file boundary, so none is scored twice or lost.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeae.contract.errors import DataError, MissingDependencyError, ShapeError, UsageError, require
from edgeae.contract.files import as_path
from edgeae.contract.manifest import read_export_manifest
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


def read_source(source: Any, storage_options: dict | None = None) -> Any:
    """A Dask DataFrame of the source: one given as such, or the Parquet/CSV files it names."""
    dd = require("dask.dataframe", "dask")
    if isinstance(source, dd.DataFrame):
        return source
    kind, files = expand_source(as_path(source, "data") if not isinstance(source, str) else source, storage_options)
    try:
        if kind == "parquet":
            return dd.read_parquet(files, storage_options=storage_options)
        return dd.read_csv(files, storage_options=storage_options, blocksize="64MB")
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


def check_numeric(frame: Any, columns: tuple[str, ...]) -> None:
    """Refuse a feature column that does not hold numbers (as its type says), before any task runs."""
    for name in columns:
        dtype = frame._meta[name].dtype
        if dtype.kind not in "iuf":
            raise DataError(f"column {name!r} holds {dtype}, not numbers; choose the feature columns with --columns")


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
    frame = read_source(source, options.storage_options)
    chosen = feature_columns(frame.columns, options.by, options.order, options.time, options.columns,
                             manifest.columns, edge.features)
    check_numeric(frame, chosen)
    job = FleetJob(str(folder), manifest.checksum, options.variant, options.by, options.order, chosen,
                   edge.timesteps, options.stride or manifest.window.stride, limit, options.time)
    return Fleet(job, prepared(frame, job), manifest.units, graph)  # load() refused an export without units
