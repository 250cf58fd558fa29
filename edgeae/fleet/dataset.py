"""Every window of a fleet scored or embedded: as a lazy Dask DataFrame, as one process computes
it (the reference a cluster must equal), or written as a Parquet folder.

A run writes Parquet parts into a staging folder, counts the windows written against the windows
expected (counted apart from the scoring), and publishes the folder only when they agree, with a
sealed record (manifest.json) of the export, threshold, counts and versions.
"""
from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeae.contract.errors import UsageError, require
from edgeae.contract.files import as_path, staged_folder
from edgeae.contract.manifest import write_manifest
from edgeae.fleet.cluster import connect
from edgeae.fleet.options import FleetOptions
from edgeae.fleet.record import run_record
from edgeae.fleet.scoring import encode_partition, score_partition
from edgeae.fleet.source import Fleet, plan, refuse_missing
from edgeae.fleet.windows import check_order, count_partition, cut_partition, window_index

ROLE_OF = {"score": "autoencoder", "encode": "encoder"}  # the model each command runs


def _meta(fleet: Fleet, command: str) -> Any:
    """The empty frame Dask is told each partition returns (built without loading a model)."""
    pd = require("pandas", "dask")
    if command == "score":
        flags = {} if fleet.job.threshold is None else {"anomaly": pd.array([], dtype="boolean")}
        results = pd.DataFrame({"score": np.empty(0)} | flags)
    else:
        results = pd.DataFrame(np.empty((0, fleet.units), np.float32),
                               columns=[f"embedding_{i}" for i in range(fleet.units)])
    index = window_index(cut_partition(fleet.frame._meta, fleet.job), fleet.job)
    return pd.concat([index, results], axis=1).assign(missing=np.empty(0, bool))


def score_dataset(export: str | os.PathLike, source: Any, options: FleetOptions) -> Any:
    """A lazy Dask DataFrame with a row per window of every series: the series, window_start and
    window_end (the order column's values), window_time (with `time`), score and anomaly.

    `source`: a Dask DataFrame, or a Parquet/CSV file, folder or glob, local or an fsspec URL.
    """
    fleet = plan("autoencoder", export, source, options)
    return fleet.frame.map_partitions(score_partition, fleet.job, meta=_meta(fleet, "score"))


def encode_dataset(export: str | os.PathLike, source: Any, options: FleetOptions) -> Any:
    """A lazy Dask DataFrame with a row per window: series, window_start, window_end, embedding_0..n."""
    fleet = plan("encoder", export, source, options)
    return fleet.frame.map_partitions(encode_partition, fleet.job, meta=_meta(fleet, "encode"))


def reference_frame(export: str | os.PathLike, frame: Any, options: FleetOptions, command: str = "score") -> Any:
    """What one process computes for a whole pandas frame, with no Dask: the numbers a cluster run must equal."""
    dd = require("dask.dataframe", "dask")
    fleet = plan(ROLE_OF[command], export, dd.from_pandas(frame, npartitions=1), options)
    check_order(frame, options.by, options.order)
    run = score_partition if command == "score" else encode_partition
    return run(frame, fleet.job)


def _check_apart(out: Path, export: Path, source: Any) -> None:
    """An output folder is never the export or the data it reads, nor inside them (even with --force)."""
    target = out.resolve()
    reads = [export.resolve()] + ([Path(source).resolve()] if isinstance(source, (str, os.PathLike))
                                  and "://" not in str(source) and Path(source).exists() else [])
    for path in reads:
        if target == path or path in target.parents or target in path.parents:
            raise UsageError(f"{out} overlaps {path}, which this run reads; write the result elsewhere")


def run_dataset(command: str, export: str | os.PathLike, source: Any, out: str | os.PathLike,
                options: FleetOptions) -> dict:
    """Score or encode every window into a Parquet folder `out` and return its record (also in
    out/manifest.json). The folder appears only whole, and only when the windows written are the
    windows expected; an existing one is replaced only with `options.force`.

    `out` must be reachable at the same path by every worker (a local cluster, or a shared file system).
    """
    if command not in ROLE_OF:
        raise UsageError(f"command must be 'score' or 'encode', got {command!r}")
    out_path = as_path(out, "output").absolute()
    export_path = as_path(export, "export").absolute()
    _check_apart(out_path, export_path, source)
    fleet = plan(ROLE_OF[command], export_path, source, options)
    run = score_partition if command == "score" else encode_partition
    with staged_folder(out_path, options.force) as stage, connect(options.scheduler, options.workers) as client:
        started = perf_counter()
        refuse_missing(fleet, source, client)
        windows = fleet.frame.map_partitions(run, fleet.job, meta=_meta(fleet, command))
        counts = fleet.frame.map_partitions(count_partition, fleet.job, meta=count_partition(fleet.frame._meta, fleet.job))
        write = windows.to_parquet(str(stage), write_index=False, compute=False,
                                   name_function=lambda i: f"part.{i:05d}.parquet")
        _, expected = client.compute([write, counts], sync=True)
        record = run_record(command, fleet, expected, stage, client, started, source)
        write_manifest(stage, record)
    return record
