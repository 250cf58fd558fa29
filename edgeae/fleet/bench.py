"""`edgeae fleet bench`: one synthetic fleet scored in one process, on one worker and on two,
timed and compared window by window, so that the cluster's cost and its sameness are measured."""
from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeae.contract.errors import require
from edgeae.contract.files import as_path
from edgeae.fleet.cluster import connect
from edgeae.fleet.dataset import reference_frame, run_dataset
from edgeae.fleet.options import FleetOptions
from edgeae.runtime import load

SYNTHETIC = FleetOptions(by="series", order="step")  # the columns synthetic_fleet writes


def synthetic_fleet(folder: Path, series: int, rows: int, features: int, files: int, seed: int = 0) -> Path:
    """Parquet files of `series` noisy sines of `rows` steps, in series order, the files and their
    row groups cut through series: data whose windows straddle every kind of boundary."""
    pd = require("pandas", "dask")
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
    pd = require("pandas", "dask")
    say = progress or (lambda message: None)
    export = as_path(export, "export").absolute()
    edge = load(export, "cpu", threads=1)
    features = edge.features
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgeae-fleet-bench-") as tmp:
        data = synthetic_fleet(Path(tmp) / "data", series, rows, features, files)
        warmup = synthetic_fleet(Path(tmp) / "warmup", 2, 300, features, 1)
        say(f"scoring {series} series x {rows} rows in one process")
        reference_frame(export, pd.read_parquet(warmup), SYNTHETIC)
        wall, cpu = perf_counter(), os.times()
        reference = reference_frame(export, pd.read_parquet(data), SYNTHETIC)
        reference.to_parquet(Path(tmp) / "one-process.parquet", index=False)
        runs = {"one process": (perf_counter() - wall, _cpu_since(cpu), len(reference))}
        same: dict[str, int] = {}
        for workers, name in ((1, "one worker"), (2, "two workers")):
            say(f"scoring on {name}")
            out = Path(tmp) / f"{workers}-workers"
            with connect(None, workers) as client:
                run_dataset("score", export, str(warmup), out, replace(SYNTHETIC, scheduler=client))
                before, wall, cpu = client.run(_process_cpu), perf_counter(), os.times()
                record = run_dataset("score", export, str(data), out, replace(SYNTHETIC, scheduler=client, force=True))
                seconds, driver = perf_counter() - wall, _cpu_since(cpu)
                after = client.run(_process_cpu)
            runs[name] = (seconds, driver + sum(after[w] - before[w] for w in after), record["windows_written"])
            same[name] = _same(pd.concat([pd.read_parquet(part) for part in sorted(out.glob("part.*.parquet"))]),
                               reference, SYNTHETIC.by)
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
