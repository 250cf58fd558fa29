"""Score a sensor as it is read: rows in, one result each time a window completes.

Runtime layer (numpy + onnxruntime, through `edgeae.runtime`): a device that reads a sensor row
by row, or in chunks of any size, gets the windows batch scoring would cut from the whole
series (the same starts and stride) and the same numbers for each.

The same numbers: the fp32 autoencoder runs each call on a graph chosen by its batch size (one
window, 2-127, 128+), and their reconstructions differ by up to a float32 step (measured on the
seed export: 1.2e-7 in model units, hence scores 7e-9 apart, 1.1e-6 relative). So a stream
scores every window alone, on the one-window graph (what a device reading one row at a time
runs anyway), whatever the chunk it completed in: its results never depend on how the rows
arrived, and equal `EdgeModel.score(windows, chunk=1)` bit for bit. Against a plain
`EdgeModel.score(windows)` a score s differs by at most 2·sqrt(s)·d + d² (d that float32 step),
so a flag can differ only for a score that close to the threshold.

A row may hold missing values (NaN): a window that holds one is reported, marked `missing`, and
never run (a stream cannot look ahead to interpolate, so it skips, as batch scoring's default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeae.contract.checks import check_threshold, is_whole
from edgeae.contract.errors import DataError, ShapeError, UsageError
from edgeae.runtime.inputs import real_array
from edgeae.runtime.scoring import Drift, EdgeModel


@dataclass(frozen=True)
class WindowScore:
    """One completed window: its first and last row (0-based, counted from the stream's first row),
    score, flag (None without a threshold) and each feature's part of the score. A window holding
    a missing value is `missing`: neither flagged nor normal (flag None, score and parts NaN)."""

    start: int
    end: int
    score: float
    anomaly: bool | None
    contributions: np.ndarray
    missing: bool = False


def _rows(x: Any, features: int) -> np.ndarray:
    """One row (features,) or a chunk (rows, features) as checked float32 (rows, features); NaN is a
    missing value, infinity is refused."""
    array = real_array(x, f"a row of {features} numbers or a (rows, {features}) array")
    rows = array[None] if array.ndim == 1 else array
    if rows.ndim != 2 or rows.shape[1] != features:
        raise ShapeError(f"expected ({features},) or (rows, {features}), got {tuple(array.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(rows, dtype=np.float32)
    bad = np.argwhere(np.isinf(converted))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        value = rows[i, j].item()
        reason = "does not fit in float32" if np.isfinite(value) else "is not finite"
        raise DataError(f"row {i} of this chunk, feature {j}: {value!r} {reason}")
    return converted


class StreamScorer:
    """Rows in (`push`), a `WindowScore` out for each window they complete.

    Holds only the rows a future window still needs (fewer than one window). `stride` None means
    the model's, as batch scoring cuts a series; `threshold` None the model's.
    """

    def __init__(self, model: EdgeModel, stride: int | None = None, threshold: float | None = None) -> None:
        if not isinstance(model, EdgeModel):
            raise UsageError(f"model must be a model set from edgeae.runtime.load, got {type(model).__name__}")
        if stride is not None and not is_whole(stride, 1):
            raise UsageError(f"stride must be a whole number of at least 1, got {stride!r}")
        self.model = model
        self.stride = model.stride if stride is None else int(stride)
        self.threshold = model.threshold if threshold is None else check_threshold(threshold)
        self.rows_seen = 0
        self._held = np.empty((0, model.features), np.float32)  # rows from `_held_from` on
        self._held_from = 0
        self._next_start = 0
        self._drift: Drift | None = None

    @property
    def drift(self) -> Drift | None:
        """Values pushed so far outside the training range (each row once); None before any row,
        or where the export records no clip bounds."""
        return self._drift

    def push(self, rows: Any) -> list[WindowScore]:
        """Take one row or a chunk of rows; score every window they complete, in order."""
        rows = _rows(rows, self.model.features)
        counted = self.model.drift(rows[~np.isnan(rows).any(axis=1)])  # a row with a gap is not counted
        self._drift = counted if self._drift is None or counted is None else self._drift + counted
        held = np.concatenate([self._held, rows]) if len(self._held) else rows
        self.rows_seen += len(rows)
        timesteps = self.model.timesteps
        starts = range(self._next_start, self.rows_seen - timesteps + 1, self.stride)
        results: list[WindowScore] = []
        if len(starts):
            windows = np.stack([held[s - self._held_from:s - self._held_from + timesteps] for s in starts])
            scored = self.model.score(windows, chunk=1, threshold=self.threshold)
            flags = scored.flags if scored.flags is not None else [None] * len(starts)
            results = [WindowScore(s, s + timesteps - 1, float(score), None if flag is None or gap else bool(flag),
                                   parts, bool(gap))
                       for s, score, flag, parts, gap in zip(starts, scored.scores, flags, scored.contributions,
                                                              scored.missing)]
            self._next_start = starts[-1] + self.stride
        keep_from = min(max(self._next_start, self._held_from), self.rows_seen)  # rows before it are never needed
        self._held = held[keep_from - self._held_from:].copy()
        self._held_from = keep_from
        return results
