"""A fleet's history on a Dask cluster: every window scored or embedded, and a training sample,
with the numbers one process gives.

Why it is built this way:

- Series are gathered whole. The input partitions (files, row groups) are first checked for
  steps that go backwards within a series, then shuffled on the series column, so each series
  lies in exactly one partition and is sorted by its steps there: a window can never straddle
  a partition or file boundary, so none is scored twice or lost.
- A window never spans two series or a gap. A series' *usual step* is the most common
  difference between consecutive steps (the smallest of equally common ones); any other
  difference is a gap, and windows restart after it, `stride` apart, as `edgeae score` cuts
  one series.
- Results do not depend on partitioning. The runtime hands batch sizes to different graphs (as
  the export measured), whose scores differ by up to 1.6e-8; here every window goes through the
  one graph the runtime gives FIXED_BATCH windows, in batches of exactly that many (the
  last padded with copies of its first window), on the workers and in `reference_frame` alike.
  A window's score, and its flag, are the same however the fleet was partitioned.
- One model per worker process, verified: loaded once with one onnxruntime thread (one worker
  process per core; the default thread pool doubled the CPU time), and refused where its
  manifest checksum is not the one the driver read.
- A run writes Parquet parts into a staging folder, counts the windows written against the
  windows expected (counted apart from the scoring), and publishes the folder only when they
  agree, with a sealed record (manifest.json) of the export, threshold, counts and versions.

Dask, pandas, pyarrow and fsspec are imported inside the functions that need them (the
`edgeae[dask]` extra): importing edgeae.runtime never pulls them in.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeae.contract.files import as_path, atomic_write_bytes, check_output_file, dumps_json, file_entry, read_export_manifest, \
    staged_folder, write_manifest
from edgeae.data.series import FLOAT32_MAX
from edgeae.contract.errors import EXIT_RUNTIME, DataError, EdgeAEError, ExportExistsError, IntegrityError, MissingDependencyError, \
    ShapeError, UsageError, require
from edgeae.runtime import DEFAULT_CHUNK, DEFAULT_VARIANT, EdgeModel, as_windows, load, reconstruction_error
from edgeae.contract.versions import environment

# The versions a fleet run's numbers depend on, beyond edgeae's own runtime and training ones.
FLEET_DISTRIBUTIONS = ("pandas", "pyarrow", "dask", "distributed", "fsspec")

FIXED_BATCH = DEFAULT_CHUNK  # every session.run gets exactly this many windows
DATA_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
PART_ROLE = "fleet-part"
SHOWN_SERIES = 20  # series named in a record's list of series without a window
ROLE_OF = {"score": "autoencoder", "encode": "encoder"}  # the model each command runs


class ClusterError(EdgeAEError, ConnectionError):
    """The Dask scheduler cannot be reached or the cluster cannot be started."""

    exit_code = EXIT_RUNTIME


# ---------------------------------------------------------------- windows of one series


def plan_series(steps: np.ndarray, timesteps: int, stride: int, series: Any) -> tuple[np.ndarray, int]:
    """The rows (of one series sorted by step) where its windows start, and its number of gaps."""
    diffs = np.diff(steps)
    if (diffs == 0).any():
        raise DataError(f"series {series!r}: step {steps[np.argmax(diffs == 0)]} appears twice")
    if len(steps) < timesteps:
        return np.empty(0, np.int64), 0
    values, counts = np.unique(diffs, return_counts=True)
    usual = values[np.argmax(counts)] if len(values) else 0  # argmax: the first, the smallest of the most common
    breaks = np.flatnonzero(diffs != usual) + 1
    bounds = [0, *breaks.tolist(), len(steps)]
    starts = [np.arange(a, b - timesteps + 1, stride) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(starts).astype(np.int64), len(breaks)


def _steps(column: Any, name: str) -> np.ndarray:
    """An order column as int64 (timestamps in their own unit): steps must be whole numbers or times."""
    import pandas as pd

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


@dataclass(frozen=True)
class Cut:
    """The windows of one partition and, per window, its series and first and last rows."""

    windows: np.ndarray  # (n, timesteps, features), checked finite
    series: np.ndarray
    first: np.ndarray  # row positions in `frame`, sorted by series and step
    frame: Any


def _features(frame: Any, columns: tuple[str, ...], ids: np.ndarray, order: str) -> np.ndarray:
    """The feature columns as float64, refusing a value that is not a finite float32 (naming series and step)."""
    values = frame[list(columns)].to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"series {ids[row]!r}, step {frame[order].iloc[row]}: column {columns[col]!r} is "
                        f"{float(values[row, col])!r}, not a finite float32 number")
    return values


def cut_partition(frame: Any, job: FleetJob, dtype: type = np.float32) -> Cut:
    """Every window of every series in `frame` (which holds whole series), in series and step order,
    as `dtype` (float32: what the model reads, as `edgeae score` casts; float64: the values as stored)."""
    frame = frame.sort_values([job.by, job.order], kind="stable", ignore_index=True)
    ids, steps = _series_ids(frame, job.by), _steps(frame[job.order], job.order)
    values = _features(frame, job.columns, ids, job.order).astype(dtype, copy=False)
    starts = [plan_series(steps[a:b], job.timesteps, job.stride, ids[a])[0] + a for a, b in series_runs(ids)]
    first = np.concatenate(starts) if starts else np.empty(0, np.int64)
    if len(frame) >= job.timesteps:
        view = np.lib.stride_tricks.sliding_window_view(values, job.timesteps, axis=0)[first]
        windows = np.ascontiguousarray(view.transpose(0, 2, 1))
    else:
        windows = np.empty((0, job.timesteps, len(job.columns)), dtype)
    return Cut(windows, ids[first], first, frame)


# ---------------------------------------------------------------- the model, fixed batches


_MODELS: dict[tuple[str, str, str], EdgeModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(job: FleetJob) -> EdgeModel:
    """This process's model for `job`: loaded once, one onnxruntime thread, its checksum the driver's."""
    key = (job.export, job.checksum, job.variant)
    with _MODELS_LOCK:
        if key not in _MODELS:
            edge = load(job.export, "cpu", threads=1, variant=job.variant)
            found = edge.manifest.get("checksum", "")
            if found != job.checksum:
                raise IntegrityError(f"{job.export}: manifest checksum {found[:12]}… on this worker, the run started "
                                     f"with {job.checksum[:12]}… (the export changed, or differs on this machine)")
            _MODELS[key] = edge
        return _MODELS[key]


def _role_model(edge: EdgeModel, role: str) -> Any:
    if role not in edge.models:
        raise UsageError(f"this export's {edge.variant} variant has no {role}")
    return edge.models[role]


def run_fixed(edge: EdgeModel, role: str, windows: np.ndarray) -> np.ndarray:
    """`role`'s output for each window, FIXED_BATCH windows per call through one graph (the last
    batch padded), so that no window's numbers depend on how many windows came with it."""
    graph = _role_model(edge, role).graph_for(FIXED_BATCH)
    if not len(windows):
        return graph.run_windows(windows)
    windows, _ = as_windows(windows, edge.timesteps, edge.features)
    parts = []
    for start in range(0, len(windows), FIXED_BATCH):
        part = windows[start:start + FIXED_BATCH]
        count = len(part)
        if count < FIXED_BATCH:
            part = np.concatenate([part, np.repeat(part[:1], FIXED_BATCH - count, axis=0)])
        parts.append(graph.run_windows(part, FIXED_BATCH)[:count])
    return np.concatenate(parts)


def fixed_scores(edge: EdgeModel, windows: np.ndarray) -> np.ndarray:
    """Scores as EdgeModel.score computes them, from run_fixed's reconstructions."""
    if not len(windows):
        return np.empty(0)
    return reconstruction_error(windows, run_fixed(edge, "autoencoder", windows), edge.scale)


def _index(cut: Cut, job: FleetJob) -> Any:
    """Series, window start and end (the order column's values), and the time column's start value."""
    import pandas as pd

    frame, last = cut.frame, cut.first + job.timesteps - 1
    at = lambda column, rows: frame[column].take(rows).reset_index(drop=True)  # noqa: E731  (keeps the column's type)
    index = {job.by: at(job.by, cut.first), "window_start": at(job.order, cut.first), "window_end": at(job.order, last)}
    if job.time:
        index["window_time"] = at(job.time, cut.first)
    return pd.DataFrame(index)


def score_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per window: series, start, end, score, anomaly."""
    cut = cut_partition(frame, job)
    result = _index(cut, job)
    result["score"] = fixed_scores(worker_model(job), cut.windows)
    if job.threshold is not None:
        result["anomaly"] = result["score"].to_numpy() > job.threshold
    return result


def encode_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per window: series, start, end, embedding_0..n."""
    import pandas as pd

    cut = cut_partition(frame, job)
    embedding = run_fixed(worker_model(job), "encoder", cut.windows)
    columns = pd.DataFrame(embedding, columns=[f"embedding_{i}" for i in range(embedding.shape[1])])
    return pd.concat([_index(cut, job), columns], axis=1)


def count_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per series: rows, gaps and windows expected."""
    import pandas as pd

    frame = frame.sort_values([job.by, job.order], kind="stable", ignore_index=True)
    ids, steps = _series_ids(frame, job.by), _steps(frame[job.order], job.order)
    rows = []
    for a, b in series_runs(ids):
        starts, gaps = plan_series(steps[a:b], job.timesteps, job.stride, ids[a])
        rows.append((ids[a], b - a, gaps, len(starts)))
    counts = pd.DataFrame(rows, columns=["series", "rows", "gaps", "windows"])
    return counts.astype({"series": object, "rows": "int64", "gaps": "int64", "windows": "int64"})


# ---------------------------------------------------------------- sources


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


# ---------------------------------------------------------------- the API


@dataclass(frozen=True)
class Fleet:
    """A source bound to an export: the job the workers run and the lazy frame they read."""

    job: FleetJob
    frame: Any
    units: int
    graph: str  # the file every window runs through


def _plan(role: str, export: str | os.PathLike, source: Any, by: str, order: str, columns: tuple[str, ...] | None,
          time: str | None, stride: int | None, variant: str, threshold: float | None,
          storage_options: dict | None) -> Fleet:
    """Read the manifest (its checksum is what workers must find), check the columns, build the job."""
    from edgeae.contract.checks import check_threshold
    from edgeae.runtime import manifest_sizes

    folder = as_path(export, "export").absolute()
    manifest = read_export_manifest(folder)
    edge = load(folder, "cpu", threads=1, variant=variant)  # fails here, once, for a variant or file that is wrong
    graph = _role_model(edge, role).graph_for(FIXED_BATCH).name
    if stride is not None and (type(stride) is not int or stride < 1):
        raise UsageError(f"stride must be a whole number of at least 1, got {stride!r}")
    limit = edge.threshold if threshold is None else check_threshold(threshold)
    frame = read_source(source, storage_options)
    trained = tuple(str(c) for c in ((manifest["training"].get("data") or {}).get("columns") or ())) or None
    chosen = feature_columns(frame.columns, by, order, time, columns, trained, edge.features)
    check_numeric(frame, chosen)
    job = FleetJob(str(folder), manifest["checksum"], variant, by, order, chosen, edge.timesteps,
              stride or int(manifest["window"].get("stride", 1)), limit, time)
    return Fleet(job, prepared(frame, job), manifest_sizes(manifest)["units"], graph)


def _meta(fleet: Fleet, command: str) -> Any:
    """The empty frame Dask is told each partition returns (built without loading a model)."""
    import pandas as pd

    if command == "score":
        values = {"score": np.empty(0)} | ({} if fleet.job.threshold is None else {"anomaly": np.empty(0, bool)})
        results = pd.DataFrame(values)
    else:
        results = pd.DataFrame(np.empty((0, fleet.units), np.float32),
                               columns=[f"embedding_{i}" for i in range(fleet.units)])
    return pd.concat([_index(cut_partition(fleet.frame._meta, fleet.job), fleet.job), results], axis=1)


def score_dataset(export: str | os.PathLike, source: Any, by: str, order: str, *, columns: tuple[str, ...] | None = None,
                  time: str | None = None, stride: int | None = None, variant: str = DEFAULT_VARIANT,
                  threshold: float | None = None, storage_options: dict | None = None) -> Any:
    """A lazy Dask DataFrame with a row per window of every series: the series, window_start and
    window_end (the order column's values), window_time (with `time`), score and anomaly.

    `source`: a Dask DataFrame, or a Parquet/CSV file, folder or glob, local or an fsspec URL.
    """
    fleet = _plan("autoencoder", export, source, by, order, columns, time, stride, variant, threshold, storage_options)
    return fleet.frame.map_partitions(score_partition, fleet.job, meta=_meta(fleet, "score"))


def encode_dataset(export: str | os.PathLike, source: Any, by: str, order: str, *,
                   columns: tuple[str, ...] | None = None, time: str | None = None, stride: int | None = None,
                   variant: str = DEFAULT_VARIANT, storage_options: dict | None = None) -> Any:
    """A lazy Dask DataFrame with a row per window: series, window_start, window_end, embedding_0..n."""
    fleet = _plan("encoder", export, source, by, order, columns, time, stride, variant, None, storage_options)
    return fleet.frame.map_partitions(encode_partition, fleet.job, meta=_meta(fleet, "encode"))


def reference_frame(export: str | os.PathLike, frame: Any, by: str, order: str, *, command: str = "score",
                    columns: tuple[str, ...] | None = None, time: str | None = None, stride: int | None = None,
                    variant: str = DEFAULT_VARIANT, threshold: float | None = None) -> Any:
    """What one process computes for a whole pandas frame, with no Dask: the numbers a cluster run must equal."""
    dd = require("dask.dataframe", "dask")
    fleet = _plan(ROLE_OF[command], export, dd.from_pandas(frame, npartitions=1), by, order, columns, time, stride,
                  variant, threshold, None)
    check_order(frame, by, order)
    run = score_partition if command == "score" else encode_partition
    return run(frame, fleet.job)


@contextlib.contextmanager
def connect(scheduler: Any = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: to `scheduler` (an address, or a Client, kept open), else to a local cluster
    of `workers` processes (default: one per core) with one thread each."""
    distributed = require("distributed", "dask")
    # The scheduler logs each shuffle's start and end as a warning: two lines per run that say nothing is wrong.
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    try:
        if scheduler is not None:
            client = distributed.Client(scheduler, timeout="10s")
        else:
            cluster = distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                               processes=True, dashboard_address=":0")
            client = distributed.Client(cluster)
    except (OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a local worker process failed to start
        where = f"the Dask scheduler at {scheduler}" if scheduler is not None else "a local Dask cluster"
        raise ClusterError(f"cannot reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    try:
        yield client
    finally:
        client.close()
        if scheduler is None:
            cluster.close()


def _check_apart(out: Path, export: Path, source: Any) -> None:
    """An output folder is never the export or the data it reads, nor inside them (even with --force)."""
    target = out.resolve()
    reads = [export.resolve()] + ([Path(source).resolve()] if isinstance(source, (str, os.PathLike))
                                  and "://" not in str(source) and Path(source).exists() else [])
    for path in reads:
        if target == path or path in target.parents or target in path.parents:
            raise UsageError(f"{out} overlaps {path}, which this run reads; write the result elsewhere")


def _plain(value: Any) -> Any:
    """A series id as JSON can hold it."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, (int, float, str)) else str(value)


def run_dataset(command: str, export: str | os.PathLike, source: Any, out: str | os.PathLike, by: str, order: str, *,
                columns: tuple[str, ...] | None = None, time: str | None = None, stride: int | None = None,
                variant: str = DEFAULT_VARIANT, threshold: float | None = None, scheduler: Any = None,
                workers: int | None = None, storage_options: dict | None = None, force: bool = False) -> dict:
    """Score or encode every window into a Parquet folder `out` and return its record (also in
    out/manifest.json). The folder appears only whole, and only when the windows written are the
    windows expected; an existing one is replaced only with `force`.

    `out` must be reachable at the same path by every worker (a local cluster, or a shared file system).
    """
    if command not in ROLE_OF:
        raise UsageError(f"command must be 'score' or 'encode', got {command!r}")
    out_path = as_path(out, "output").absolute()
    export_path = as_path(export, "export").absolute()
    _check_apart(out_path, export_path, source)
    fleet = _plan(ROLE_OF[command], export_path, source, by, order, columns, time, stride, variant,
                  threshold if command == "score" else None, storage_options)
    run = score_partition if command == "score" else encode_partition
    with staged_folder(out_path, force) as stage, connect(scheduler, workers) as client:
        started = perf_counter()
        windows = fleet.frame.map_partitions(run, fleet.job, meta=_meta(fleet, command))
        counts = fleet.frame.map_partitions(count_partition, fleet.job, meta=count_partition(fleet.frame._meta, fleet.job))
        write = windows.to_parquet(str(stage), write_index=False, compute=False,
                                   name_function=lambda i: f"part.{i:05d}.parquet")
        _, expected = client.compute([write, counts], sync=True)
        record = _record(command, fleet, expected, stage, client, started, source)
        write_manifest(stage, record)
    return record


def _record(command: str, fleet: Fleet, counts: Any, stage: Path, client: Any, started: float, source: Any) -> dict:
    """The run's record; refuses to publish when the windows written are not the windows expected."""
    pq = require("pyarrow.parquet", "dask")
    parts = sorted(stage.glob("part.*.parquet"))
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    expected = int(counts["windows"].sum())
    if written != expected:
        raise IntegrityError(f"wrote {written} windows, expected {expected}; nothing was published")
    short = counts[counts["windows"] == 0]["series"].map(_plain).tolist()
    job = fleet.job
    info = client.scheduler_info()
    return {
        "kind": "fleet", "command": command, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export": {"folder": job.export, "checksum": job.checksum, "variant": job.variant,
                   "graph": fleet.graph,
                   "fixed_batch": FIXED_BATCH},
        "threshold": job.threshold,
        "source": str(source) if isinstance(source, (str, os.PathLike)) else "a Dask DataFrame",
        "by": job.by, "order": job.order, "time": job.time, "columns": list(job.columns),
        "window": {"timesteps": job.timesteps, "stride": job.stride},
        "series": len(counts), "rows": int(counts["rows"].sum()), "gaps": int(counts["gaps"].sum()),
        "series_without_windows": {"count": len(short), "first": short[:SHOWN_SERIES]},
        "windows_expected": expected, "windows_written": written,
        "engine": {"name": "dask", "scheduler": info.get("address"), "workers": len(info.get("workers", {})),
                   "onnxruntime_threads": 1, "seconds": round(perf_counter() - started, 3)},
        "versions": environment(FLEET_DISTRIBUTIONS),
        "files": {p.name: file_entry(p, PART_ROLE) for p in parts},
    }


# ---------------------------------------------------------------- a training sample


def _stable_seed(seed: int, series: Any) -> list[int]:
    """A generator seed from the run's seed and the series id alone: the same windows however the
    fleet is partitioned or ordered."""
    digest = hashlib.sha256(str(_plain(series)).encode("utf-8")).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


@dataclass(frozen=True)
class SampleSpec:
    per_series: int | None
    share: float | None
    seed: int


@dataclass(frozen=True)
class Sample:
    windows: np.ndarray  # float64 (n, timesteps, features), as the source holds them
    index: Any  # each window's series and window_start
    columns: tuple[str, ...]


def sample_partition(frame: Any, job: FleetJob, spec: SampleSpec) -> Any:
    """One partition of whole series -> the sampled windows, one row each (values flattened)."""
    import pandas as pd

    cut = cut_partition(frame, job, np.float64)
    keep = []
    for a, b in series_runs(cut.series):
        n = b - a
        k = min(spec.per_series, n) if spec.per_series is not None else round(n * spec.share)
        rng = np.random.default_rng(_stable_seed(spec.seed, cut.series[a]))
        keep.append(a + np.sort(rng.choice(n, size=k, replace=False)))
    chosen = np.concatenate(keep) if keep else np.empty(0, np.int64)
    index = _index(replace(cut, first=cut.first[chosen]), job)[[job.by, "window_start"]]
    width = job.timesteps * len(job.columns)
    values = pd.DataFrame(cut.windows[chosen].reshape(len(chosen), width), columns=[f"v{i}" for i in range(width)])
    return pd.concat([index, values], axis=1)


def sample_windows(source: Any, by: str, order: str, timesteps: int, *, per_series: int | None = None,
                   share: float | None = None, seed: int = 0, columns: tuple[str, ...] | None = None,
                   stride: int = 1, storage_options: dict | None = None) -> Sample:
    """A reproducible sample of windows across the fleet: `per_series` windows of each series (all
    of a series that has fewer) or a `share` of each series' windows, chosen by `seed` and the
    series id, sorted by series and start. Computed on the current Dask scheduler."""
    if (per_series is None) == (share is None):
        raise UsageError("give either per_series (windows per series) or share (a fraction of each series' windows)")
    if per_series is not None and (type(per_series) is not int or per_series < 1):
        raise UsageError(f"per_series must be a whole number of at least 1, got {per_series!r}")
    if share is not None and not (isinstance(share, (int, float)) and 0 < share <= 1):
        raise UsageError(f"share must be a fraction in (0, 1], got {share!r}")
    for name, value in (("timesteps", timesteps), ("stride", stride)):
        if type(value) is not int or value < 1:
            raise UsageError(f"{name} must be a whole number of at least 1, got {value!r}")
    frame = read_source(source, storage_options)
    chosen = feature_columns(frame.columns, by, order, None, columns, None, None)
    check_numeric(frame, chosen)
    job = FleetJob("", "", DEFAULT_VARIANT, by, order, chosen, timesteps, stride)
    spec = SampleSpec(per_series, None if share is None else float(share), int(seed))
    frame = prepared(frame, job)
    sampled = frame.map_partitions(sample_partition, job, spec, meta=sample_partition(frame._meta, job, spec)).compute()
    sampled = sampled.sort_values([by, "window_start"], kind="stable", ignore_index=True)
    values = sampled.drop(columns=[by, "window_start"]).to_numpy(np.float64)
    return Sample(values.reshape(len(sampled), timesteps, len(chosen)), sampled[[by, "window_start"]], chosen)


def write_sample(out: str | os.PathLike, source: Any, by: str, order: str, timesteps: int, *,
                 per_series: int | None = None, share: float | None = None, seed: int = 0,
                 columns: tuple[str, ...] | None = None, stride: int = 1, scheduler: Any = None,
                 workers: int | None = None, storage_options: dict | None = None, force: bool = False) -> dict:
    """Write a sample `edgeae train --data` reads: OUT.npy (n, timesteps, features), sorted by series
    and start, so that --validation-fraction holds out whole series (the last ones) and no
    validation window overlaps a training window; OUT.windows.csv names each window's series and
    start; OUT.json records how it was drawn."""
    path = check_output_file(as_path(out, "output"))
    if path.suffix.lower() != ".npy":
        raise UsageError(f"{path.name}: the sample is written as .npy (what edgeae train --data reads)")
    index_path, record_path = path.with_suffix(".windows.csv"), path.with_suffix(".json")
    for target in (path, index_path, record_path):
        check_output_file(target)
        if target.exists() and not force:
            raise ExportExistsError(f"{target} exists; pass --force to replace it")
    with connect(scheduler, workers):
        sample = sample_windows(source, by, order, timesteps, per_series=per_series, share=share, seed=seed,
                                columns=columns, stride=stride, storage_options=storage_options)
    windows, index = sample.windows, sample.index
    if not len(windows):
        raise DataError(f"no series of {source} has a window of {timesteps} steps; nothing to sample")
    import io

    buffer = io.BytesIO()
    np.save(buffer, windows)
    atomic_write_bytes(index_path, index.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(path, buffer.getvalue())
    record = {"source": str(source), "by": by, "order": order, "columns": list(sample.columns),
              "timesteps": timesteps, "stride": stride, **asdict(SampleSpec(per_series, share, seed)),
              "windows": len(windows), "series": int(index[by].nunique()), "file": path.name,
              "index": index_path.name, "versions": environment(FLEET_DISTRIBUTIONS)}
    atomic_write_bytes(record_path, dumps_json(record).encode("utf-8"))
    return record


# ---------------------------------------------------------------- the benchmark


def synthetic_fleet(folder: Path, series: int, rows: int, features: int, files: int, seed: int = 0) -> Path:
    """Parquet files of `series` noisy sines of `rows` steps, in series order, the files and their
    row groups cut through series: data whose windows straddle every kind of boundary."""
    import pandas as pd

    pa = require("pyarrow", "dask")
    pq = require("pyarrow.parquet", "dask")
    rng = np.random.default_rng(seed)
    steps = np.arange(rows)
    frames = []
    for index in range(series):
        phase = rng.uniform(0, 2 * np.pi, features)
        values = 0.5 + 0.4 * np.sin(steps[:, None] * (2 * np.pi / 50) + phase) + rng.normal(0, 0.02, (rows, features))
        frames.append(pd.DataFrame({"series": f"s{index:05d}", "step": steps,
                                    **{f"f{j}": values[:, j] for j in range(features)}}))
    frame = pd.concat(frames, ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        table = pa.Table.from_pandas(frame.iloc[part], preserve_index=False)
        pq.write_table(table, folder / f"part-{number:04d}.parquet", row_group_size=max(1, rows // 3 + 7))
    return folder


def _cpu_model() -> str:
    """The CPU's model name and the vector extensions onnxruntime's kernels care about."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    found = [f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags]
    return f"{name} ({', '.join(found) or 'no AVX2/AVX-512 listed'}), {os.cpu_count()} cores"


def _same(result: Any, reference: Any, by: str) -> int:
    """How many windows have exactly the reference's score and flag (0 if the windows differ)."""
    keys = [by, "window_start"]
    a = result.sort_values(keys, ignore_index=True)
    b = reference.sort_values(keys, ignore_index=True)
    if len(a) != len(b) or not (a[keys].to_numpy() == b[keys].to_numpy()).all():
        return 0
    same = a["score"].to_numpy() == b["score"].to_numpy()
    if "anomaly" in b:
        same &= a["anomaly"].to_numpy() == b["anomaly"].to_numpy()
    return int(same.sum())


def run_fleet_bench(export: str | os.PathLike, series: int = 20, rows: int = 5000, files: int = 8,
                    progress: Any = None) -> dict:
    """Score one synthetic fleet into Parquet in one process, on one worker and on two worker
    processes (one onnxruntime thread each), the way a user runs it (`run_dataset`: the workers
    write the parts), timing wall and CPU seconds (the driver, which holds the scheduler, plus
    every worker), then compare every window with the one process's score and flag. Each is timed
    after an untimed run on a small fleet (imports, model loads): the steady cost per window."""
    import tempfile

    import pandas as pd

    say = progress or (lambda message: None)
    export = as_path(export, "export").absolute()
    edge = load(export, "cpu", threads=1)
    features = edge.features
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgeae-fleet-bench-") as tmp:
        data = synthetic_fleet(Path(tmp) / "data", series, rows, features, files)
        warmup = synthetic_fleet(Path(tmp) / "warmup", 2, 300, features, 1)
        say(f"scoring {series} series x {rows} rows in one process")
        reference_frame(export, pd.read_parquet(warmup), "series", "step")
        wall, cpu = perf_counter(), os.times()
        reference = reference_frame(export, pd.read_parquet(data), "series", "step")
        reference.to_parquet(Path(tmp) / "one-process.parquet", index=False)
        runs = {"one process": (perf_counter() - wall, _cpu_since(cpu), len(reference))}
        same: dict[str, int] = {}
        for workers, name in ((1, "one worker"), (2, "two workers")):
            say(f"scoring on {name}")
            out = Path(tmp) / f"{workers}-workers"
            with connect(None, workers) as client:
                run_dataset("score", export, str(warmup), out, "series", "step", scheduler=client)
                before, wall, cpu = client.run(_process_cpu), perf_counter(), os.times()
                record = run_dataset("score", export, str(data), out, "series", "step", scheduler=client, force=True)
                seconds, driver = perf_counter() - wall, _cpu_since(cpu)
                after = client.run(_process_cpu)
            runs[name] = (seconds, driver + sum(after[w] - before[w] for w in after), record["windows_written"])
            same[name] = _same(pd.concat([pd.read_parquet(part) for part in sorted(out.glob("part.*.parquet"))]),
                               reference, "series")
    load_after = os.getloadavg()[0]
    table = {name: {"seconds": s, "cpu_seconds": c, "windows": n, "windows_per_s": n / s, "cpu_us_per_window": 1e6 * c / n}
             for name, (s, c, n) in runs.items()}
    cpu_ratio = table["two workers"]["cpu_us_per_window"] / table["one process"]["cpu_us_per_window"]
    speedup = table["two workers"]["windows_per_s"] / table["one worker"]["windows_per_s"]
    windows = table["one process"]["windows"]
    lines = [f"machine: {_cpu_model()}; load average {load_before:.2f} before, {load_after:.2f} after",
             f"data: {series} series x {rows} rows x {features} features in {files} Parquet files, "
             f"{windows:,} windows of {edge.timesteps} steps",
             f"{'':14}{'wall s':>9}{'windows/s':>11}{'CPU s':>9}{'CPU µs/window':>15}"]
    lines += [f"{name:14}{row['seconds']:9.2f}{row['windows_per_s']:11,.0f}{row['cpu_seconds']:9.2f}"
              f"{row['cpu_us_per_window']:15.1f}" for name, row in table.items()]
    lines += [f"CPU per window, two workers / one process: {cpu_ratio:.2f}x (goal: at most 1.2x)",
              f"throughput, two workers / one worker: {speedup:.2f}x (goal: at least 1.6x where two cores are free)",
              *(f"identical to one process ({name}): {n:,} of {windows:,} windows' scores and flags"
                for name, n in same.items())]
    return {"machine": _cpu_model(), "load_average": [load_before, load_after], "series": series, "rows": rows,
            "features": features, "files": files, "runs": table, "cpu_ratio": cpu_ratio, "speedup": speedup,
            "identical": same, "lines": lines}


def _process_cpu() -> float:
    """This process's CPU seconds (all its threads), as a worker reports them."""
    times = os.times()
    return times.user + times.system


def _cpu_since(start: os.times_result) -> float:
    now = os.times()
    return (now.user - start.user) + (now.system - start.system)
