"""A reproducible training sample of windows across a fleet, drawn on a Dask cluster and written
as the .npy `edgeae train --data` reads, with each window's series and start beside it."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeae.contract.errors import DataError, ExportExistsError, UsageError, require
from edgeae.contract.files import as_path, atomic_write_bytes, check_output_file, dumps_json
from edgeae.contract.versions import environment
from edgeae.fleet.cluster import connect
from edgeae.fleet.options import FleetOptions, SampleOptions
from edgeae.fleet.record import FLEET_DISTRIBUTIONS, plain_id
from edgeae.fleet.source import prepared, source_frame
from edgeae.fleet.windows import FleetJob, cut_partition, series_runs, window_index


@dataclass(frozen=True)
class Sample:
    """A drawn sample: the windows and, per window, its series and start."""

    windows: np.ndarray  # float64 (n, timesteps, features), as the source holds them
    index: Any  # each window's series and window_start
    columns: tuple[str, ...]


def _stable_seed(seed: int, series: Any) -> list[int]:
    """A generator seed from the run's seed and the series id alone: the same windows however the
    fleet is partitioned or ordered."""
    digest = hashlib.sha256(str(plain_id(series)).encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def sample_partition(frame: Any, job: FleetJob, sample: SampleOptions) -> Any:
    """One partition of whole series -> the sampled windows, one row each (values flattened)."""
    pd = require("pandas", "dask")
    cut = cut_partition(frame, job, np.float64)
    keep = []
    for a, b in series_runs(cut.series):
        whole = a + np.flatnonzero(~cut.missing[a:b])  # a window holding a missing value is never drawn
        n = len(whole)
        k = min(sample.per_series, n) if sample.per_series is not None else round(n * sample.share)
        rng = np.random.default_rng(_stable_seed(sample.seed, cut.series[a]))
        keep.append(whole[np.sort(rng.choice(n, size=k, replace=False))])
    chosen = np.concatenate(keep) if keep else np.empty(0, np.int64)
    index = window_index(replace(cut, first=cut.first[chosen]), job)[[job.by, "window_start"]]
    width = job.timesteps * len(job.columns)
    values = pd.DataFrame(cut.windows[chosen].reshape(len(chosen), width), columns=[f"v{i}" for i in range(width)])
    return pd.concat([index, values], axis=1)


def sample_windows(source: Any, options: FleetOptions, sample: SampleOptions) -> Sample:
    """A reproducible sample of windows across the fleet, as `sample` says, sorted by series and
    start (a sample's stride defaults to 1; time, variant and threshold do not apply; a window still
    holding a missing value after `options.missing` is never drawn). Computed on the current Dask scheduler."""
    frame, chosen = source_frame(source, replace(options, time=None), None, None)
    job = FleetJob("", "", options.variant, options.by, options.order, chosen, sample.timesteps, options.stride or 1,
                   missing=options.missing, max_gap=options.max_gap)
    frame = prepared(frame, job)
    sampled = frame.map_partitions(sample_partition, job, sample,
                                   meta=sample_partition(frame._meta, job, sample)).compute()
    sampled = sampled.sort_values([options.by, "window_start"], kind="stable", ignore_index=True)
    values = sampled.drop(columns=[options.by, "window_start"]).to_numpy(np.float64)
    return Sample(values.reshape(len(sampled), sample.timesteps, len(chosen)), sampled[[options.by, "window_start"]],
                  chosen)


def write_sample(out: str | os.PathLike, source: Any, options: FleetOptions, sample: SampleOptions) -> dict:
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
        if target.exists() and not options.force:
            raise ExportExistsError(f"{target} exists; pass --force to replace it")
    with connect(options.scheduler, options.workers):
        drawn = sample_windows(source, options, sample)
    windows, index = drawn.windows, drawn.index
    if not len(windows):
        raise DataError(f"no series of {source} has a window of {sample.timesteps} steps; nothing to sample")
    buffer = io.BytesIO()
    np.save(buffer, windows)
    atomic_write_bytes(index_path, index.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(path, buffer.getvalue())
    record = {"source": str(source), "by": options.by, "order": options.order, "columns": list(drawn.columns),
              "timesteps": sample.timesteps, "stride": options.stride or 1, "per_series": sample.per_series,
              "share": sample.share, "seed": sample.seed, "missing": options.missing, "max_gap": options.max_gap,
              "windows": len(windows),
              "series": int(index[options.by].nunique()), "file": path.name, "index": index_path.name,
              "versions": environment(FLEET_DISTRIBUTIONS)}
    atomic_write_bytes(record_path, dumps_json(record).encode("utf-8"))
    return record
