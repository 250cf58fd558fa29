"""A fleet run's record (manifest.json): the export, threshold, counts and versions its numbers
depend on, written only when the windows written are the windows expected."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edgeae.contract.errors import IntegrityError, require
from edgeae.contract.manifest import file_entry
from edgeae.contract.versions import environment
from edgeae.fleet.scoring import FIXED_BATCH
from edgeae.fleet.source import Fleet

# The versions a fleet run's numbers depend on, beyond edgeae's own runtime and training ones.
FLEET_DISTRIBUTIONS = ("pandas", "pyarrow", "dask", "distributed", "fsspec")

PART_ROLE = "fleet-part"
SHOWN_SERIES = 20  # series named in a record's list of series without a window


def plain_id(value: Any) -> Any:
    """A series id as JSON can hold it."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, (int, float, str)) else str(value)


def _column_sum(parts: list[Path], column: str) -> int | None:
    """How many rows of the written parts are true in `column` (None where they have no such column)."""
    pq = require("pyarrow.parquet", "dask")
    pc = require("pyarrow.compute", "dask")
    total = 0
    for part in parts:
        if column not in pq.ParquetFile(part).schema_arrow.names:
            return None
        total += int(pc.sum(pq.read_table(part, columns=[column])[column]).as_py() or 0)
    return total


def window_counts(fleet: Fleet, counts: Any, parts: list[Path]) -> dict:
    """The windows flagged and missing (as written; the missing ones also as counted apart), and the
    missing values found and filled; refuses where the windows written as missing are not those expected."""
    missing = _column_sum(parts, "missing")
    expected = int(counts["missing_windows"].sum())
    if missing is not None and missing != expected:
        raise IntegrityError(f"wrote {missing} windows as missing, expected {expected}; nothing was published")
    return {"windows_flagged": _column_sum(parts, "anomaly"), "windows_missing": expected,
            "missing": {"policy": fleet.job.missing, "max_gap": fleet.job.max_gap,
                        "values": int(counts["missing_values"].sum()), "interpolated": int(counts["interpolated"].sum())}}


def run_record(command: str, fleet: Fleet, counts: Any, stage: Path, client: Any, started: float, source: Any) -> dict:
    """The run's record; refuses to publish when the windows written are not the windows expected."""
    pq = require("pyarrow.parquet", "dask")
    parts = sorted(stage.glob("part.*.parquet"))
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    expected = int(counts["windows"].sum())
    if written != expected:
        raise IntegrityError(f"wrote {written} windows, expected {expected}; nothing was published")
    tally = window_counts(fleet, counts, parts)
    short = counts[counts["windows"] == 0]["series"].map(plain_id).tolist()
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
        "windows_expected": expected, "windows_written": written, **tally,
        "engine": {"name": "dask", "scheduler": info.get("address"), "workers": len(info.get("workers", {})),
                   "onnxruntime_threads": 1, "seconds": round(perf_counter() - started, 3)},
        "versions": environment(FLEET_DISTRIBUTIONS),
        "files": {p.name: file_entry(p, PART_ROLE) for p in parts},
    }
