"""Windows out of a loaded series, and the clipping + scaling the model is fed through.

The seed's finding drives the preprocessing: with a large input range the absolute
precision drops, so extreme values are pruned (clipped) to bounds learned from the
training data, and those bounds travel with the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeae.contract.errors import DataError, IntegrityError, ShapeError, UsageError
from edgeae.data.gaps import MAX_INTERPOLATED_GAP, gap_windows
from edgeae.data.series import FLOAT32_MAX, Series, with_missing

SCALINGS = ("none", "minmax", "standard")
# What happens to each window's level (its mean over time, per feature) before the network:
# "keep" feeds values as they are; "remove" subtracts the level first and adds it back to the
# reconstruction, so the model learns a window's shape and a drifting series stays in range.
LEVELS = ("keep", "remove")
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32; below it precision drains away
# The largest value the model may be fed. Training squares reconstruction errors in float32,
# which overflows beyond 1.8e19, and sums hundreds of squares per batch: past 1e18 the loss
# is inf or a few batches from it. Standard or min-max scaling brings any float32 series far below.
MODEL_INPUT_LIMIT = 1e18


def seed_sequence(timesteps: int = 10, features: int = 5) -> np.ndarray:
    """The seed notebook's data: arange(n)/n as one window of shape (1, timesteps, features)."""
    n = timesteps * features
    return (np.arange(n) / n).reshape(1, timesteps, features).astype(np.float32)


# ---------------------------------------------------------------- windowing and splits


def make_windows(series: np.ndarray, timesteps: int, stride: int = 1, source: str = "the series") -> np.ndarray:
    """Cut a (time, features) series into (n, timesteps, features) windows, `stride` apart.

    Window i covers rows [i * stride, i * stride + timesteps); rows after the last full
    window are not covered.
    """
    if timesteps < 1 or stride < 1:
        raise UsageError(f"window length and stride must be at least 1, got {timesteps} and {stride}")
    if series.ndim != 2:
        raise ShapeError(f"expected a (time, features) series, got shape {series.shape}")
    if len(series) < timesteps:
        raise DataError(f"{source} has {len(series)} rows, fewer than one window of {timesteps}")
    view = np.lib.stride_tricks.sliding_window_view(series, timesteps, axis=0)[::stride]
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def window_starts(rows: int, timesteps: int, stride: int = 1) -> np.ndarray:
    """The first row of each window `make_windows` cuts from `rows` rows."""
    return np.arange(0, rows - timesteps + 1, stride)


def cut_windows(series: Series, timesteps: int, stride: int | None,
                default_stride: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """The windows a model scores from a file's series, and the 0-based row each starts at; a file
    of ready-made windows as it is (no starts). `stride` None means `default_stride`; one given for
    ready-made windows is refused, not ignored."""
    if series.is_windows:
        if stride is not None:
            raise UsageError(f"{series.source}: a stride applies to a series; this file holds ready-made windows")
        return series.values, None
    stride = default_stride if stride is None else stride
    return (make_windows(series.values, timesteps, stride, series.source),
            window_starts(len(series.values), timesteps, stride))


def window_labels(labels: np.ndarray, timesteps: int, stride: int = 1) -> np.ndarray:
    """A window is anomalous when any of its rows is labelled anomalous."""
    labels = np.asarray(labels, dtype=bool)
    return make_windows(labels[:, None].astype(np.int8), timesteps, stride, "the labels").any(axis=(1, 2))


def split_by_time(series: np.ndarray, validation_fraction: float, timesteps: int,
                  source: str = "the series") -> tuple[np.ndarray, np.ndarray]:
    """Split a series into an earlier training part and a later validation part.

    Splitting rows before windowing means no window straddles the two parts, so nothing
    the model trained on leaks into the windows the threshold is calibrated on.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return series, series[:0]
    n_val = round(len(series) * validation_fraction)
    train, val = series[:len(series) - n_val], series[len(series) - n_val:]
    if len(train) < timesteps or len(val) < timesteps:
        raise DataError(
            f"{source}: splitting {len(series)} rows with validation fraction {validation_fraction} leaves "
            f"{len(train)} training and {len(val)} validation rows; each needs at least one window of {timesteps} "
            "(change --validation-fraction; 0 holds nothing out)"
        )
    return train, val


@dataclass(frozen=True)
class Windows:
    """Raw windows ready for training, and the values the preprocessing learns from."""

    train: np.ndarray
    validation: np.ndarray  # possibly empty
    fit_values: np.ndarray  # the training part only: (rows, features) or its windows
    info: dict[str, Any]


def _without_gaps(train: np.ndarray, val: np.ndarray, fit_values: np.ndarray,
                  source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Training and validation windows without those holding a missing value, the values the
    preprocessing learns from without rows holding one, and how many windows were left out."""
    train_gaps, val_gaps = gap_windows(train), gap_windows(val)
    if train_gaps.all():
        raise DataError(f"{source}: every training window holds a missing value; fill the gaps, or pass "
                        "--missing interpolate with a larger --max-gap")
    if len(val) and val_gaps.all():
        raise DataError(f"{source}: every validation window holds a missing value; fill the gaps, pass "
                        "--missing interpolate with a larger --max-gap, or change --validation-fraction")
    kept_values = fit_values[~np.isnan(fit_values).any(axis=tuple(range(1, fit_values.ndim)))]
    return train[~train_gaps], val[~val_gaps], kept_values, int(train_gaps.sum() + val_gaps.sum())


def window_series(series: Series, timesteps: int, features: int, stride: int | None = None,
                  validation_fraction: float = 0.0, missing: str = "refuse",
                  max_gap: int = MAX_INTERPOLATED_GAP) -> Windows:
    """Check a loaded series fits the model, split it by time, and cut it into windows
    `stride` apart (None: 1). Ready-made windows take no stride: one given is refused, not ignored.

    Missing values (NaN) go by the `missing` policy (data/gaps.py): refused, or the windows
    holding one left out ("skip"), after gaps of up to `max_gap` rows are filled ("interpolate");
    `info["missing"]` records what was done.
    """
    found = series.values.shape[-1]
    if found != features:
        raise ShapeError(
            f"{series.source}: has {found} feature column(s), the model expects {features} "
            f"(pass --features {found} or choose columns)"
        )
    counts, (series, interpolated) = series.missing, with_missing(series, missing, max_gap)
    if series.is_windows:
        if stride is not None:
            raise UsageError(f"{series.source}: a stride applies to a series; this file holds ready-made windows")
        windows = series.values
        if windows.shape[1] != timesteps:
            raise ShapeError(f"{series.source}: windows of {windows.shape[1]} steps, the model expects {timesteps}")
        if not 0.0 <= validation_fraction < 1.0:
            raise UsageError(f"validation fraction must be in [0, 1), got {validation_fraction}")
        n_val = round(len(windows) * validation_fraction)
        if validation_fraction > 0 and (n_val == 0 or n_val == len(windows)):
            raise DataError(f"{series.source}: {len(windows)} window(s) cannot be split with validation "
                            f"fraction {validation_fraction} into training and validation windows "
                            "(change --validation-fraction; 0 holds nothing out)")
        train, val = windows[:len(windows) - n_val], windows[len(windows) - n_val:]
        fit_values = train
    else:
        train_part, val_part = split_by_time(series.values, validation_fraction, timesteps, series.source)
        stride = 1 if stride is None else stride
        train = make_windows(train_part, timesteps, stride, series.source)
        val = make_windows(val_part, timesteps, stride, series.source) if len(val_part) else train[:0]
        fit_values = train_part
    left_out = 0
    if counts:
        train, val, fit_values, left_out = _without_gaps(train, val, fit_values, series.source)
    info = {"source": series.source, "columns": list(series.columns), "rows": int(series.values.shape[0]),
            "windows": len(train), "validation_windows": len(val)}
    if series.time_axis:
        info["time_axis"] = list(series.time_axis)
    if counts:
        info["missing"] = {"policy": missing, "max_gap": max_gap, "values": sum(counts.values()),
                           "columns": counts, "interpolated": interpolated, "windows_left_out": left_out}
    return Windows(train, val, fit_values, info)


# ---------------------------------------------------------------- the level rule

# `auto` removes each window's level when more than this share of the held-out windows lie at a
# level (mean over time, any feature) outside the range of the training windows' levels. On a
# stationary series a held-out window falls outside the extremes of n training windows with
# chance about 2/(n+1), a few percent at most; a drifting series (a trend, a sensor that warms
# up, a step change) puts most of its held-out tail there, where the model never saw such values.
LEVEL_OUTSIDE_SHARE = 0.1
LEVEL_CHOICES = ("auto", *LEVELS)


@dataclass(frozen=True)
class LevelChoice:
    """The level the model is fed at, and the measurement `auto` decided it on."""

    level: str  # "keep" or "remove"
    asked: str  # "auto", "keep" or "remove"
    outside_share: float | None  # held-out windows whose level lies outside the training windows' levels
    beyond: float | None  # how far the farthest lies beyond them, in training level ranges

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """One line for the terminal: what was done, and why."""
        done = "removed from each window (the model learns shapes)" if self.level == "remove" else "kept"
        if self.asked != "auto":
            return f"level: {done} (--level {self.asked})"
        if self.outside_share is None:
            return f"level: {done} (auto: no held-out windows to measure drift on)"
        return (f"level: {done} (auto: {self.outside_share:.0%} of the held-out windows lie at levels outside the "
                f"training windows', up to {self.beyond:.2g} training ranges beyond; the rule removes it above "
                f"{LEVEL_OUTSIDE_SHARE:.0%})")


def window_levels(windows: np.ndarray) -> np.ndarray:
    """(n, features): each window's mean over time."""
    return np.asarray(windows, dtype=np.float64).mean(axis=1)


def choose_level(asked: str, train: np.ndarray, validation: np.ndarray) -> LevelChoice:
    """Keep or remove the windows' level: as asked, or by the LEVEL_OUTSIDE_SHARE rule on `auto`."""
    if asked not in LEVEL_CHOICES:
        raise UsageError(f"level must be one of {', '.join(LEVEL_CHOICES)}, got {asked!r}")
    if not len(validation) or not len(train):
        return LevelChoice("keep" if asked == "auto" else asked, asked, None, None)
    trained, held = window_levels(train), window_levels(validation)
    low, high = trained.min(axis=0), trained.max(axis=0)
    span = np.where(high > low, high - low, np.maximum(np.abs(high), 1e-12))
    distance = np.maximum(np.maximum(low - held, held - high), 0.0) / span
    share = float((distance > 0).any(axis=1).mean())
    level = ("remove" if share > LEVEL_OUTSIDE_SHARE else "keep") if asked == "auto" else asked
    return LevelChoice(level, asked, share, float(distance.max()))


# ---------------------------------------------------------------- preprocessing


def _f32(values: np.ndarray) -> tuple[float, ...]:
    """Round to float32 now, so the manifest holds exactly what the graph computes with."""
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32))


@dataclass(frozen=True)
class Preprocessing:
    """Clip to learned bounds, then scale: x' = (clip(x - level, low, high) - offset) * scale, per feature,
    where level is the window's mean over time with `level` "remove" and 0 with "keep"."""

    clip_low: tuple[float, ...]
    clip_high: tuple[float, ...]
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    clip_quantiles: tuple[float, float] = (0.0, 1.0)
    scaling: str = "none"
    level: str = "keep"

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        quantiles: tuple[float, float] = (0.0, 1.0),
        scaling: str = "none",
        columns: tuple[str, ...] | None = None,
        level: str = "keep",
    ) -> Preprocessing:
        """Learn bounds at the given quantiles of the training values, then a scaling; with `level`
        "remove", `values` are the training windows with their levels already removed.

        A column without range (constant, or made constant by the quantiles) is refused:
        the model could learn nothing from it and min-max or standard scaling would divide
        by zero. So is a column float32 cannot carry through the scaling and training.
        """
        lo_q, hi_q = quantiles
        if not 0.0 <= lo_q < hi_q <= 1.0:
            raise UsageError(f"clip quantiles must satisfy 0 <= low < high <= 1, got {lo_q} and {hi_q}")
        if scaling not in SCALINGS:
            raise UsageError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if level not in LEVELS:
            raise UsageError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        flat = np.asarray(values, dtype=np.float64).reshape(-1, values.shape[-1])
        if len(flat) == 0:
            raise DataError("no training values to learn the preprocessing from")
        names = columns or tuple(str(i) for i in range(flat.shape[1]))
        raw_low, raw_high = flat.min(axis=0), flat.max(axis=0)
        low = np.quantile(flat, lo_q, axis=0)
        high = np.quantile(flat, hi_q, axis=0)
        for j in range(flat.shape[1]):
            if raw_high[j] == raw_low[j]:
                raise DataError(f"column {names[j]!r} is constant ({raw_low[j]:g}) in the training data "
                                f"(zero range); leave it out with --columns")
            if high[j] <= low[j]:
                raise DataError(f"column {names[j]!r}: clip quantiles {lo_q:g} and {hi_q:g} of the training data are "
                                f"both {low[j]:g} (zero range); widen --clip-quantiles")
        clipped = np.clip(flat, low, high)
        with np.errstate(divide="ignore", over="ignore"):  # a scale beyond float32 is refused just below
            if scaling == "minmax":
                offset, scale = low, 1.0 / (high - low)
            elif scaling == "standard":
                offset, scale = clipped.mean(axis=0), 1.0 / clipped.std(axis=0)
            else:
                offset, scale = np.zeros_like(low), np.ones_like(low)
        narrow = np.flatnonzero(~(scale <= FLOAT32_MAX))
        if len(narrow):
            j = narrow[0]
            raise DataError(f"column {names[j]!r}: its training range ({low[j]:g} to {high[j]:g}) is too narrow to "
                            f"scale in float32 (as good as zero range); leave it out with --columns")
        pre = cls(_f32(low), _f32(high), _f32(offset), _f32(scale), (float(lo_q), float(hi_q)), scaling, level)
        pre._check_float32(names)
        return pre

    def _check_float32(self, names: tuple[str, ...]) -> None:
        """Refuse what the float32 graph and training cannot compute, before anything is trained.

        The model only ever sees inputs clipped to the bounds, so the scaled bounds are the
        whole range it meets: they must survive float32 (no range rounded away, no overflow
        in x - offset, no subnormal scale) and stay below MODEL_INPUT_LIMIT.
        """
        a = self.arrays()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as inf, refused by name
            ends = np.abs(self._clip_scale(np.stack([a["clip_low"], a["clip_high"]])))
        for j, name in enumerate(names):
            low, high = a["clip_low"][j], a["clip_high"][j]
            if not high > low:
                raise DataError(f"column {name!r}: its training range ({low:g} to {high:g}) rounds to zero range in "
                                "float32; leave it out with --columns or rescale it")
            if not np.isfinite(ends[:, j]).all() or (self.scaling != "none" and a["scale"][j] < FLOAT32_TINY):
                raise DataError(f"column {name!r}: its training range ({low:g} to {high:g}) is too wide to scale in "
                                "float32; rescale the data")
            if ends[:, j].max() > MODEL_INPUT_LIMIT:
                raise DataError(f"column {name!r}: values as large as {ends[:, j].max():g} would reach the model, "
                                f"beyond the {MODEL_INPUT_LIMIT:g} float32 training can square without overflow; "
                                "use --scaling standard or rescale the data")

    @property
    def features(self) -> int:
        return len(self.clip_low)

    def arrays(self) -> dict[str, np.ndarray]:
        """The four vectors as float32, the precision both numpy and the ONNX graph use."""
        return {k: np.asarray(getattr(self, k), dtype=np.float32) for k in ("clip_low", "clip_high", "offset", "scale")}

    @property
    def is_identity_scale(self) -> bool:
        return all(o == 0.0 for o in self.offset) and all(s == 1.0 for s in self.scale)

    def levels(self, windows: np.ndarray) -> np.ndarray:
        """Each window's level as the graph takes it: its mean over time per feature of the float32
        input, taken in float64 and rounded once to float32, (n, 1, features); zeros where it is kept."""
        x = np.asarray(windows, dtype=np.float32)
        if self.level == "keep":
            return np.zeros((*x.shape[:-2], 1, x.shape[-1]), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # as in the graph: past float32 it is inf, then clipped
            return x.mean(axis=-2, keepdims=True, dtype=np.float64).astype(np.float32)

    def _clip_scale(self, x: np.ndarray) -> np.ndarray:
        a = self.arrays()
        y = np.maximum(np.minimum(np.asarray(x, dtype=np.float32), a["clip_high"]), a["clip_low"])
        if not self.is_identity_scale:
            y = (y - a["offset"]) * a["scale"]
        return y.astype(np.float32, copy=False)

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows -> model space, computed in float32 exactly as the exported graph does."""
        x = np.asarray(windows, dtype=np.float32)
        if self.level == "remove":
            with np.errstate(over="ignore", invalid="ignore"):
                x = x - self.levels(x)
        return self._clip_scale(x)

    def invert(self, y: np.ndarray, windows: np.ndarray | None = None) -> np.ndarray:
        """Model space -> raw units (the graph's Div and Add after the decoder, then the level of
        the raw `windows` the model read added back where it was removed)."""
        a = self.arrays()
        with np.errstate(over="ignore"):  # as in the graph, an overflow is inf; callers check outputs are finite
            out = np.asarray(y, dtype=np.float32)
            if not self.is_identity_scale:
                out = out / a["scale"] + a["offset"]
            if self.level == "remove":
                if windows is None:
                    raise UsageError("a level-removing preprocessing needs the raw windows to restore their level")
                out = out + self.levels(windows)
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "manifest.json") -> Preprocessing:
        """A stored preprocessing record, read back from `source`: one that is incomplete or
        was rewritten (and resealed) by hand is a bad file, named."""
        try:
            pre = cls(
                tuple(float(v) for v in d["clip_low"]),
                tuple(float(v) for v in d["clip_high"]),
                tuple(float(v) for v in d["offset"]),
                tuple(float(v) for v in d["scale"]),
                tuple(float(v) for v in d.get("clip_quantiles", (0.0, 1.0))),
                str(d.get("scaling", "none")),
                str(d.get("level", "keep")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{source}: preprocessing record is incomplete or malformed: {exc}") from None
        lengths = {len(pre.clip_low), len(pre.clip_high), len(pre.offset), len(pre.scale)}
        if len(lengths) != 1:
            raise IntegrityError(f"{source}: preprocessing vectors have different lengths")
        values = np.array([pre.clip_low, pre.clip_high, pre.offset, pre.scale])
        if not np.isfinite(values).all() or (values[3] <= 0).any() or (values[0] > values[1]).any():
            raise IntegrityError(f"{source}: preprocessing record must hold finite numbers, clip_low <= clip_high "
                                 "and scale > 0")
        if pre.scaling not in SCALINGS:
            raise IntegrityError(f"{source}: preprocessing scaling must be one of {', '.join(SCALINGS)}, "
                                 f"got {pre.scaling!r}")
        if pre.level not in LEVELS:
            raise IntegrityError(f"{source}: preprocessing level must be one of {', '.join(LEVELS)}, got {pre.level!r}")
        return pre
