"""What commands print and write: JSON or lines on stdout, and result files."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeae.contract.files import (
    atomic_write_bytes, check_output_file, discard_staged, dumps_json, open_staged, publish_staged,
)
from edgeae.contract.manifest import read_manifest
from edgeae.contract.errors import ExportExistsError, UsageError
from edgeae.data.windows import LevelChoice


def require_stdout() -> None:
    """With its descriptor closed at start Python's sys.stdout is None, and click.echo would drop
    the result without a word: a command whose result goes to stdout refuses instead."""
    if sys.stdout is None:
        raise UsageError("cannot write the result: standard output is closed")


def emit(ctx: click.Context, payload: dict, lines: list[str]) -> None:
    """Machine-readable JSON on stdout with --json, otherwise human lines."""
    as_json = ctx.find_root().params.get("as_json") or ctx.params.get("as_json")
    if as_json or lines:
        require_stdout()
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=jsonable))
    else:
        for line in lines:
            click.echo(line)


def jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()  # a masked array's masked entries (a window not scored) become null
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def time_axis_lines(summary: dict) -> list[str]:
    """The columns training left out as the time axis, said once (they are never features by default)."""
    names = (summary.get("data") or {}).get("time_axis")
    if not names:
        return []
    return [f"column{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: the time axis, not "
            f"feature{'s' if len(names) > 1 else ''} (name columns with --columns to choose the features)"]


def level_lines(summary: dict) -> list[str]:
    """What training did with each window's level, and the measurement behind `auto`, said once."""
    level = (summary.get("data") or {}).get("level")
    return [LevelChoice(**level).text()] if level else []


def missing_lines(summary: dict) -> list[str]:
    """What training did with the data's missing values, said once (window_series' info["missing"])."""
    record = (summary.get("data") or {}).get("missing")
    if not record:
        return []
    columns = ", ".join(f"{name}: {count}" for name, count in record["columns"].items())
    filled = (f"{record['interpolated']} interpolated (gaps of up to {record['max_gap']} rows), "
              if record["policy"] == "interpolate" else "")
    return [f"missing values: {record['values']} ({columns}); {filled}{record['windows_left_out']} window(s) "
            f"holding a gap left out of training (--missing {record['policy']})"]


def early_stop_lines(summary: dict) -> list[str]:
    if summary["epochs_run"] >= summary["config"]["epochs"]:
        return []
    return [f"stopped early after {summary['epochs_run']} epochs; kept the weights of epoch {summary['best_epoch']}, "
            "the best validation loss"]


def detector_lines(folder: Path) -> list[str]:
    d = read_manifest(folder).detector
    if d is None:
        return []
    calibrated = f"the {d.quantile:g} quantile of the scores of {d.windows} {d.calibrated_on} window(s)"
    notes = [f"  note: {d.note}"] if d.note is not None else []
    if d.chosen is not None:  # detector.set_threshold's record
        return [f"anomaly threshold {d.threshold:.4g}: chosen by the user ({d.chosen.source}); "
                f"calibrated {d.chosen.calibrated_threshold}, {calibrated}", *notes]
    return [f"anomaly threshold {d.threshold:.4g}: {calibrated}", *notes]


OUTPUT_SUFFIXES = (".csv", ".npy", ".npz", ".json")


def check_output(output: Path | None, force: bool, single_array: bool,
                  suffixes: tuple[str, ...] = OUTPUT_SUFFIXES, reads: tuple[Path, ...] = ()) -> None:
    """Every way an --output can fail is found before any work is done. What the command
    `reads` (an export folder or model file, a data file) is never written, even with --force:
    one slip of the name would destroy the model or the data the result came from."""
    if output is None:
        require_stdout()  # the result goes there
        return
    check_output_file(output)
    target = output.resolve()
    for source in reads:
        source = source.resolve()
        if target == source or source in target.parents:
            what = "inside the export folder" if source.is_dir() else "the file"
            raise UsageError(f"{output} is {what} {source.name} this command reads; write the result elsewhere")
    suffix = output.suffix.lower()
    if suffix not in suffixes:
        raise UsageError(f"{output.name}: --output must end in {', '.join(suffixes)}")
    if suffix == ".npy" and not single_array:
        raise UsageError(f"{output.name}: this command writes several arrays; use .csv, .json or .npz")
    if output.exists() and not force:
        raise ExportExistsError(f"{output} exists; pass --force to replace it")


def _csv_columns(payload: dict[str, np.ndarray]) -> tuple[list[str], list[list[str]]]:
    """One row per window; integer columns (flags, start rows) stay integers, text (timestamps)
    as written, quoted where it holds a comma; a masked entry (a window not scored) an empty cell."""
    rows = len(next(iter(payload.values())))
    header: list[str] = []
    columns: list[list[str]] = []
    for key, value in payload.items():
        flat = np.asarray(value).reshape(rows, -1)
        masked = np.ma.getmaskarray(value).reshape(rows, -1)
        header += [key] if flat.shape[1] == 1 else [f"{key}_{i}" for i in range(flat.shape[1])]
        text = str if flat.dtype.kind in "iubU" else (lambda v: repr(float(v)))
        columns += [["" if m else text(v) for v, m in zip(flat[:, j], masked[:, j])] for j in range(flat.shape[1])]
    return header, columns


def write_result(ctx: click.Context, payload: dict[str, np.ndarray], output: Path | None,
                 info: dict[str, Any] | None = None) -> None:
    """Per-window arrays to stdout or a .json, .npz or .npy `output` (a .csv is ResultStream's);
    `info` (said once for all windows, such as drift) joins them in JSON and in the summary a
    file's --json prints."""
    info = info or {}
    if output is None:
        emit(ctx, {**payload, **info}, [json.dumps({**payload, **info}, default=jsonable)])
        return
    suffix = output.suffix.lower()
    if suffix in (".npy", ".npz"):
        buffer = io.BytesIO()
        if suffix == ".npy":
            np.save(buffer, next(iter(payload.values())))
        else:
            np.savez(buffer, **payload)
        atomic_write_bytes(output, buffer.getvalue())
    else:
        atomic_write_bytes(output, dumps_json({**{k: jsonable(v) for k, v in payload.items()}, **info}).encode())
    _wrote(ctx, output, len(next(iter(payload.values()))), list(payload), info)


def _wrote(ctx: click.Context, output: Path, rows: int, arrays: list[str], info: dict[str, Any]) -> None:
    """The summary of a result file: one line on stderr, and with --json on stdout."""
    emit(ctx, {"output": str(output), "rows": rows, "arrays": arrays, **info}, [])
    click.echo(f"wrote {rows} rows to {output}", err=True)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """One array of a key's chunks; masked where any chunk is (a window not scored), as one whole run masks it."""
    if any(isinstance(part, np.ma.MaskedArray) for part in parts):
        return np.ma.concatenate(parts)
    return np.concatenate(parts)


class ResultStream:
    """A run's per-window arrays, added chunk by chunk. A .csv `output` is written row by row to a
    staged file in its folder, moved into place once complete (memory stays bounded whatever the
    input's length; a failed run leaves the old file or none). JSON (stdout or .json), .npz and
    .npy hold one array per key, so those chunks are joined and written at the end: their memory
    grows with the windows (~60 bytes a window for score on 5 features), not with the input text.
    """

    def __init__(self, ctx: click.Context, output: Path | None) -> None:
        self.ctx, self.output = ctx, output
        self.rows = 0
        self._parts: dict[str, list[np.ndarray]] = {}
        self._writer: Any = None
        self._handle: Any = None
        self._staged: str | None = None

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, kind: Any, value: Any, trace: Any) -> None:
        if self._handle is not None:  # the run failed before close: nothing half-written stays
            discard_staged(self._handle, self._staged)

    def add(self, payload: dict[str, np.ndarray]) -> None:
        """One chunk of windows' arrays, the same keys each time."""
        self.rows += len(next(iter(payload.values())))
        if self.output is None or self.output.suffix.lower() != ".csv":
            for key, value in payload.items():
                self._parts.setdefault(key, []).append(value)
            return
        header, columns = _csv_columns(payload)
        if self._handle is None:
            self._open_csv()
            self._parts = {key: [] for key in payload}  # the names the summary lists
            self._writer.writerow(header)
        self._writer.writerows(zip(*columns))

    def _open_csv(self) -> None:
        self._handle, self._staged = open_staged(self.output, text=True)
        self._writer = csv.writer(self._handle, lineterminator="\n")

    def drop(self, key: str) -> None:
        """Leave out a joined result's array after all (encode's `missing` where no value was)."""
        self._parts.pop(key, None)

    def close(self, info: dict[str, Any], dtypes: dict[str, str] | None = None) -> None:
        """Write (or finish) the result, with `info` said once; `dtypes` recast joined keys (a
        time column's text width, as the whole file's)."""
        if self._handle is None:
            payload = {key: _joined(parts) for key, parts in self._parts.items()}
            for key, dtype in (dtypes or {}).items():
                if key in payload:
                    payload[key] = payload[key].astype(dtype)
            write_result(self.ctx, payload, self.output, info)
            return
        handle, self._handle = self._handle, None
        publish_staged(handle, self._staged, self.output)
        _wrote(self.ctx, self.output, self.rows, list(self._parts), info)
