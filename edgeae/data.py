"""Series in, windows out: load CSV/NPY, check them, learn clipping + scaling, window.

The seed's finding drives the preprocessing: with a large input range the absolute
precision drops, so extreme values are pruned (clipped) to bounds learned from the
training data, and those bounds travel with the model.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, ShapeError, UsageError

SCALINGS = ("none", "minmax", "standard")


def seed_sequence(timesteps: int = 10, features: int = 5) -> np.ndarray:
    """The seed notebook's data: arange(n)/n as one window of shape (1, timesteps, features)."""
    n = timesteps * features
    return (np.arange(n) / n).reshape(1, timesteps, features).astype(np.float32)


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Series:
    """Values as loaded: a (time, features) series, or ready-made (n, timesteps, features) windows."""

    values: np.ndarray
    columns: tuple[str, ...]
    source: str

    @property
    def is_windows(self) -> bool:
        return self.values.ndim == 3


def _select_columns(header: list[str], wanted: tuple[str, ...] | None, source: str) -> list[int]:
    if not wanted:
        return list(range(len(header)))
    picked = []
    for name in wanted:
        if name in header:
            picked.append(header.index(name))
        elif name.isdigit() and int(name) < len(header):
            picked.append(int(name))
        else:
            raise DataError(f"{source}: no column {name!r}; columns are {', '.join(header)}")
    return picked


def load_csv(path: Path, columns: tuple[str, ...] | None = None) -> Series:
    """Read a CSV with a header row, one column per feature and one row per time step."""
    source = Path(path).name
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise DataError(f"{source}: not a text CSV file") from None
    except csv.Error as exc:
        raise DataError(f"{source}: not a readable CSV file: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{source}: the file is empty")
    header = [h.strip() for h in rows[0]]
    if len(rows) == 1:
        raise DataError(f"{source}: a header row but no data rows")
    picked = _select_columns(header, columns, source)
    values = np.empty((len(rows) - 1, len(picked)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        line = i + 2  # 1-based, the header is line 1
        if len(row) != len(header):
            raise DataError(f"{source}: row {line} has {len(row)} cells, the header has {len(header)}")
        for j, col in enumerate(picked):
            cell = row[col].strip()
            name = header[col]
            if cell == "":
                raise DataError(f"{source}: row {line}, column {name!r}: missing value")
            try:
                number = float(cell)
            except ValueError:
                raise DataError(f"{source}: row {line}, column {name!r}: {cell!r} is not a number") from None
            if not math.isfinite(number):
                raise DataError(f"{source}: row {line}, column {name!r}: {cell!r} is not a finite number")
            values[i, j] = number
    return Series(values, tuple(header[c] for c in picked), source)


def load_npy(path: Path) -> Series:
    """Read an NPY array: (time,) or (time, features) series, or (n, timesteps, features) windows."""
    source = Path(path).name
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{source}: expected one array, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim not in (2, 3):
        raise ShapeError(f"{source}: expected (time, features) or (n, timesteps, features), got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{source}: the array is empty (shape {array.shape})")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        where = ", ".join(str(int(i)) for i in bad[0])
        raise DataError(f"{source}: value at index ({where}) is not finite ({array[tuple(bad[0])]})")
    columns = tuple(str(i) for i in range(array.shape[-1]))
    return Series(array, columns, source)


def load_series(path: Path, columns: tuple[str, ...] | None = None) -> Series:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, columns)
    if suffix == ".npy":
        if columns:
            picked = [int(c) for c in columns if c.isdigit()]
            series = load_npy(path)
            if len(picked) != len(columns) or any(c >= series.values.shape[-1] for c in picked):
                raise DataError(f"{path.name}: columns of an .npy file are indices 0..{series.values.shape[-1] - 1}")
            return Series(series.values[..., picked], tuple(columns), series.source)
        return load_npy(path)
    raise UsageError(f"{path.name}: expected a .csv or .npy file")


# ---------------------------------------------------------------- windowing and splits


def make_windows(series: np.ndarray, timesteps: int, stride: int = 1) -> np.ndarray:
    """Cut a (time, features) series into (n, timesteps, features) windows, `stride` apart."""
    if timesteps < 1 or stride < 1:
        raise UsageError(f"window length and stride must be at least 1, got {timesteps} and {stride}")
    if series.ndim != 2:
        raise ShapeError(f"expected a (time, features) series, got shape {series.shape}")
    if len(series) < timesteps:
        raise DataError(f"the series has {len(series)} rows, fewer than one window of {timesteps}")
    view = np.lib.stride_tricks.sliding_window_view(series, timesteps, axis=0)[::stride]
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def split_by_time(series: np.ndarray, validation_fraction: float, timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a series into an earlier training part and a later validation part."""
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    n_val = int(round(len(series) * validation_fraction))
    if n_val == 0:
        return series, series[:0]
    train, val = series[:-n_val], series[-n_val:]
    if len(train) < timesteps or len(val) < timesteps:
        raise DataError(
            f"splitting {len(series)} rows with validation fraction {validation_fraction} leaves "
            f"{len(train)} training and {len(val)} validation rows; each needs at least one window of {timesteps}"
        )
    return train, val


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Clip to learned bounds, then scale: x' = (clip(x, low, high) - offset) * scale, per feature."""

    clip_low: tuple[float, ...]
    clip_high: tuple[float, ...]
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    clip_quantiles: tuple[float, float] = (0.0, 1.0)
    scaling: str = "none"

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        quantiles: tuple[float, float] = (0.0, 1.0),
        scaling: str = "none",
        columns: tuple[str, ...] | None = None,
    ) -> Preprocessing:
        """Learn bounds at the given quantiles of the training values, then a scaling."""
        lo_q, hi_q = quantiles
        if not 0.0 <= lo_q < hi_q <= 1.0:
            raise UsageError(f"clip quantiles must satisfy 0 <= low < high <= 1, got {lo_q} and {hi_q}")
        if scaling not in SCALINGS:
            raise UsageError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
        if len(flat) == 0:
            raise DataError("no training values to learn the preprocessing from")
        low = np.quantile(flat, lo_q, axis=0)
        high = np.quantile(flat, hi_q, axis=0)
        names = columns or tuple(str(i) for i in range(flat.shape[1]))
        span = high - low
        if scaling != "none":
            flat_zero = np.flatnonzero(span <= 0)
            if len(flat_zero):
                raise DataError(f"column {names[flat_zero[0]]!r} is constant (zero range) in the training data; drop it")
        clipped = np.clip(flat, low, high)
        if scaling == "minmax":
            offset, scale = low, 1.0 / span
        elif scaling == "standard":
            std = clipped.std(axis=0)
            bad = np.flatnonzero(std <= 0)
            if len(bad):
                raise DataError(f"column {names[bad[0]]!r} is constant (zero spread) in the training data; drop it")
            offset, scale = clipped.mean(axis=0), 1.0 / std
        else:
            offset, scale = np.zeros_like(low), np.ones_like(low)
        as_tuple = lambda a: tuple(float(v) for v in np.asarray(a, dtype=np.float32))  # noqa: E731
        return cls(as_tuple(low), as_tuple(high), as_tuple(offset), as_tuple(scale), (float(lo_q), float(hi_q)), scaling)

    @property
    def features(self) -> int:
        return len(self.clip_low)

    def arrays(self) -> dict[str, np.ndarray]:
        """The four vectors as float32, the precision both numpy and the ONNX graph use."""
        return {k: np.asarray(getattr(self, k), dtype=np.float32) for k in ("clip_low", "clip_high", "offset", "scale")}

    @property
    def is_identity_scale(self) -> bool:
        return all(o == 0.0 for o in self.offset) and all(s == 1.0 for s in self.scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw values -> model space, computed in float32 exactly as the exported graph does."""
        a = self.arrays()
        y = np.maximum(np.minimum(np.asarray(x, dtype=np.float32), a["clip_high"]), a["clip_low"])
        if not self.is_identity_scale:
            y = (y - a["offset"]) * a["scale"]
        return y.astype(np.float32, copy=False)

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Model space -> raw units (the graph's Div and Add after the decoder)."""
        if self.is_identity_scale:
            return np.asarray(y, dtype=np.float32)
        a = self.arrays()
        return (np.asarray(y, dtype=np.float32) / a["scale"] + a["offset"]).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        try:
            pre = cls(
                tuple(float(v) for v in d["clip_low"]),
                tuple(float(v) for v in d["clip_high"]),
                tuple(float(v) for v in d["offset"]),
                tuple(float(v) for v in d["scale"]),
                tuple(float(v) for v in d.get("clip_quantiles", (0.0, 1.0))),
                str(d.get("scaling", "none")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"preprocessing record is incomplete or malformed: {exc}") from None
        lengths = {len(pre.clip_low), len(pre.clip_high), len(pre.offset), len(pre.scale)}
        if len(lengths) != 1:
            raise DataError("preprocessing vectors have different lengths")
        return pre
