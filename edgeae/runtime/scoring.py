"""A loaded model set and what scoring it gives: per-window error, each feature's part, drift.

The score formula lives here once: the device scores with it, and the training side computes
its threshold with the same function, so both agree to the float64 step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.checks import check_threshold
from edgeae.contract.errors import IntegrityError, ShapeError, UsageError
from edgeae.contract.records import Manifest
from edgeae.contract.variants import DEFAULT_VARIANT
from edgeae.runtime.inputs import check_chunk, windows_and_gaps
from edgeae.runtime.session import OnnxModel


# A share of input values outside the training range above which `score` warns. Values beyond the clip
# bounds reach the network pruned to them, so a window full of them is scored as data the model never
# saw: its flag then says "unlike training", not "anomalous". Training data itself holds the clip
# quantiles' tails outside (none with the default 0/1, 0.2% with 0.001/0.999): 1% is five times that.
DRIFT_WARN_SHARE = 0.01


@dataclass(frozen=True)
class Drift:
    """How many input values lie below and above the training range (the export's clip bounds), per feature.

    Counted over the values handed in (every value of every window scored; a row that several
    overlapping windows hold counts once per window), in float32 as the graph compares them.
    """

    names: tuple[str, ...]
    below: np.ndarray  # (features,) counts
    above: np.ndarray
    values: int  # values counted per feature
    lowest: np.ndarray  # (features,) the extremes seen (NaN when no values were counted)
    highest: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    limit: float = DRIFT_WARN_SHARE

    @classmethod
    def count(cls, values: np.ndarray, clip_low: np.ndarray, clip_high: np.ndarray, names: tuple[str, ...],
              limit: float = DRIFT_WARN_SHARE) -> Drift:
        """Count checked float32 values (..., features) against the bounds."""
        flat = values.reshape(-1, values.shape[-1])
        empty = np.full(flat.shape[1], np.nan)
        return cls(names, (flat < clip_low).sum(axis=0), (flat > clip_high).sum(axis=0),
                   len(flat), flat.min(axis=0) if len(flat) else empty, flat.max(axis=0) if len(flat) else empty,
                   clip_low, clip_high, limit)

    def __add__(self, other: Drift) -> Drift:
        """The counts of both: a stream adds each chunk's."""
        return Drift(self.names, self.below + other.below, self.above + other.above, self.values + other.values,
                     np.fmin(self.lowest, other.lowest), np.fmax(self.highest, other.highest),
                     self.clip_low, self.clip_high, self.limit)

    @property
    def share(self) -> np.ndarray:
        """Per feature, the share of values outside the training range (0 when none were counted)."""
        return (self.below + self.above) / max(self.values, 1)

    @property
    def drifted(self) -> list[int]:
        """The features whose share outside passes the limit."""
        return [int(j) for j in np.flatnonzero(self.share > self.limit)]

    def __bool__(self) -> bool:
        """True when some feature drifted past the limit (a warning is due)."""
        return bool(self.drifted)

    def warning(self) -> str | None:
        """One line naming each drifted feature, or None."""
        parts = []
        for j in self.drifted:
            sides = [f"{self.above[j] / self.values:.1%} above (up to {self.highest[j]:.6g} > {self.clip_high[j]:.6g})"
                     if self.above[j] else "",
                     f"{self.below[j] / self.values:.1%} below (down to {self.lowest[j]:.6g} < {self.clip_low[j]:.6g})"
                     if self.below[j] else ""]
            parts.append(f"{self.names[j]!r} {', '.join(s for s in sides if s)}")
        if not parts:
            return None
        return (f"drift: values outside the training range ({'; '.join(parts)}; warns above {self.limit:.0%}): "
                "the model sees them pruned to the range it was trained on, so flags here mark data unlike "
                "training, not necessarily anomalies")

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "values_per_feature": self.values, "warning": self.warning(),
                "features": {name: {"share_outside": float(self.share[j]), "below": int(self.below[j]),
                                    "above": int(self.above[j]), "lowest": _number(self.lowest[j]),
                                    "highest": _number(self.highest[j]), "clip_low": float(self.clip_low[j]),
                                    "clip_high": float(self.clip_high[j])}
                             for j, name in enumerate(self.names)}}


def _number(value: float) -> float | None:
    """A float for JSON: NaN (nothing counted) as None."""
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class ScoreResult:
    """Per-window reconstruction error (mean squared, in model units) and anomaly flags.

    For one window the arrays are 0-d (`contributions` (features,)); for a batch they have one
    entry per window (`contributions` (n, features)). `contributions` splits each score into
    each feature's part, and its rows sum to the score exactly (that sum *is* the score), so
    after a flag it says which sensor caused it. `drift` counts the input values outside the
    training range, where the export records it (in the complete windows).

    `missing` is True for a window holding a missing value (NaN): it is not run through the model,
    and is neither flagged nor normal: score and contributions NaN, flag False.
    """

    scores: np.ndarray
    threshold: float | None
    flags: np.ndarray | None
    contributions: np.ndarray | None = None
    drift: Drift | None = None
    missing: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON's form: a window with a missing value has score null and flag null, and `missing`
        counts those windows; `flags` null without a threshold."""
        missing = np.zeros(np.shape(self.scores), bool) if self.missing is None else np.asarray(self.missing)
        scores = np.ma.masked_array(self.scores, missing)
        flags = None if self.flags is None else np.ma.masked_array(self.flags, missing).tolist()
        return {"scores": scores.tolist(), "flags": flags, "threshold": self.threshold, "missing": int(missing.sum())}


def error_parts(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each feature's part of each window's score: (n, features), each row summing to the score
    (within float64 rounding: the score itself is summed in the detector graph's order).

    The squared errors (features weighed by the model's scaling) summed over the window's steps
    and divided by the window's value count: the score, a mean over steps and features, is then
    these parts summed. The raw input is not clipped here: a value beyond the training range is
    exactly what an anomaly score must see.
    """
    diff = (np.asarray(x, np.float64) - np.asarray(reconstruction, np.float64)) * np.asarray(scale, np.float64)
    return np.einsum("ntf,ntf->nf", diff, diff) / (diff.shape[1] * diff.shape[2])


def reconstruction_error(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean squared error per window, features weighed by the model's scaling: the sum of `error_parts`.

    One mean over steps and features, as the detector graph's ReduceMean takes it: summed per
    feature first (einsum's vector kernels differ between AVX2 and AVX-512), a score could miss
    the graph's by a float64 step and a window exactly at the threshold be flagged by one only.
    """
    diff = (np.asarray(x, np.float64) - np.asarray(reconstruction, np.float64)) * np.asarray(scale, np.float64)
    return np.mean(diff * diff, axis=(1, 2))


def _scored_chunk(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reconstruction_error and error_parts of one chunk, from one reconstruction."""
    return reconstruction_error(x, reconstruction, scale), error_parts(x, reconstruction, scale)


def _spread(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """One row per window: `values` (the complete windows') at `where`, NaN elsewhere."""
    full = np.full((len(where), *values.shape[1:]), np.nan)
    full[where] = values
    return full


class EdgeModel:
    """An exported model set: autoencoder and/or encoder, plus what the manifest says."""

    def __init__(self, models: dict[str, OnnxModel], manifest: Manifest | None = None, folder: Path | None = None,
                 variant: str = DEFAULT_VARIANT, unpublished: dict[str, UsageError] | None = None) -> None:
        self.variant = variant
        self._unpublished = unpublished or {}  # role -> why its file of this variant is not there
        if not models:
            raise UsageError("no models to load")
        self.models = models
        self.manifest = manifest  # None: a single file, loaded without one
        self.folder = folder
        first = next(iter(models.values()))
        self.timesteps, self.features = first.timesteps, first.features
        for model in models.values():
            if (model.timesteps, model.features) != (self.timesteps, self.features):
                raise IntegrityError("autoencoder and encoder disagree on the window shape")
        recorded = manifest.preprocessing if manifest is not None else None
        pre = self._preprocessing(recorded or first.metadata.get("edgeae.preprocessing"))
        self.scale = self._vector(pre, "scale", [1.0] * self.features, positive=True)
        # The clip bounds the graph prunes its input to; None where neither manifest nor graph records them.
        self.clip_bounds = ((self._vector(pre, "clip_low", None), self._vector(pre, "clip_high", None))
                            if "clip_low" in pre and "clip_high" in pre else None)
        # The bounds hold for values with each window's level removed where the export removes it.
        self.removes_level = pre.get("level") == "remove"
        detector = manifest.detector if manifest is not None else None  # read_manifest checked its types and ranges
        threshold = None
        if detector is not None:  # a variant scores a little differently: it has its own threshold (or none)
            threshold = detector.threshold if variant == DEFAULT_VARIANT else detector.variant_thresholds.get(variant)
        self.threshold = None if threshold is None else float(threshold)

    @staticmethod
    def _preprocessing(record: dict | str | None) -> dict:
        """The preprocessing record (from the manifest, or the model's metadata as JSON text)."""
        try:
            pre = json.loads(record) if isinstance(record, str) else (record or {})
        except ValueError:
            pre = None
        if not isinstance(pre, dict):
            raise IntegrityError("the model's preprocessing record is unreadable")
        return pre

    def _vector(self, pre: dict, key: str, default: list[float] | None, positive: bool = False) -> np.ndarray:
        """One per-feature float32 vector of the preprocessing record, checked to fit the model."""
        try:
            with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused below
                vector = np.asarray(pre.get(key, default), dtype=np.float32)
        except (ValueError, TypeError):
            raise IntegrityError("the model's preprocessing record is unreadable") from None
        if vector.shape != (self.features,) or not np.isfinite(vector).all() or (positive and (vector <= 0).any()):
            raise IntegrityError(f"preprocessing {key} {vector.tolist()} does not fit {self.features} features")
        return vector

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The names of the columns the model was trained on, in the order it reads them
        (CSV header names, or indices of an .npy); None where the export does not record them (the seed)."""
        names = self.manifest.columns if self.manifest is not None else None
        return tuple(str(n) for n in names) if names and len(names) == self.features else None

    @property
    def window(self) -> int:
        """The window length in time steps (the same as `timesteps`)."""
        return self.timesteps

    @property
    def stride(self) -> int:
        """Rows between the starts of windows cut from a series: the export's (its training stride, 1 by
        default); scoring, evaluation, reports and streaming all cut with it unless told otherwise."""
        return int(self.manifest.window.stride) if self.manifest is not None else 1

    def drift(self, values: Any) -> Drift | None:
        """Values outside the training range in raw (..., features) input, counted per feature (in
        windows with their level removed, where the export removes it, as the graph compares them);
        None where the export records no clip bounds, or removes levels and `values` are rows, not windows."""
        array = np.asarray(values, np.float32)
        if self.clip_bounds is None or (self.removes_level and array.ndim < 3):
            return None
        if self.removes_level:
            with np.errstate(over="ignore", invalid="ignore"):
                array = array - array.mean(axis=-2, keepdims=True, dtype=np.float64).astype(np.float32)
        if array.ndim < 1 or array.shape[-1] != self.features:
            raise ShapeError(f"expected values with {self.features} features in the last axis, got {array.shape}")
        names = self.feature_names or tuple(str(j) for j in range(self.features))
        return Drift.count(array, *self.clip_bounds, names)

    @property
    def providers(self) -> list[str]:
        return next(iter(self.models.values())).providers

    def _model(self, role: str) -> OnnxModel:
        if role in self._unpublished:
            raise self._unpublished[role]
        if role not in self.models:
            raise UsageError(f"this model set has no {role} (it has: {', '.join(self.models)})")
        return self.models[role]

    def _run_complete(self, role: str, x: Any, chunk: int | None) -> np.ndarray:
        """The model's output for the windows without a missing value; NaN rows for those with one."""
        model = self._model(role)
        windows, single, gaps = windows_and_gaps(x, self.timesteps, self.features)
        if gaps is None:
            result = model.run_windows(windows, chunk)
        else:
            complete = model.run_windows(windows[~gaps], chunk)
            result = np.full((len(windows), *complete.shape[1:]), np.nan, np.float32)
            result[~gaps] = complete
        return result[0] if single else result

    def encode(self, x: Any, chunk: int | None = None) -> np.ndarray:
        """Raw window(s) -> embedding(s): (n, units), or (units,) for one window; a NaN row for a
        window with a missing value (NaN), which the model never sees."""
        return self._run_complete("encoder", x, chunk)

    def reconstruct(self, x: Any, chunk: int | None = None) -> np.ndarray:
        """Raw window(s) -> reconstruction(s) in raw units; NaN for a window with a missing value."""
        return self._run_complete("autoencoder", x, chunk)

    def score(self, x: Any, chunk: int | None = None, threshold: float | None = None) -> ScoreResult:
        """Per-window reconstruction error, each feature's part of it, drift, and flags where the
        model set has a threshold. `chunk` None: the windows per call the export measured.

        A window holding a missing value (NaN) is marked in `missing` and never run: its score and
        parts are NaN and its flag False; the complete windows' numbers are those they get alone.
        """
        model = self._model("autoencoder")
        limit = self.threshold if threshold is None else check_threshold(threshold)
        windows, single, gaps = windows_and_gaps(x, self.timesteps, self.features)
        complete = windows if gaps is None else windows[~gaps]
        chunk = model.chunk if chunk is None else check_chunk(chunk)
        scored = [_scored_chunk(part, model.run_windows(part, chunk), self.scale)  # no full-size reconstruction held
                  for part in (complete[i:i + chunk] for i in range(0, len(complete), chunk))]
        scores = np.concatenate([s for s, _ in scored]) if scored else np.empty(0)
        parts = np.concatenate([p for _, p in scored]) if scored else np.empty((0, self.features))
        missing = np.zeros(len(windows), bool) if gaps is None else gaps
        if gaps is not None:
            scores, parts = _spread(scores, ~gaps), _spread(parts, ~gaps)
        flags = scores > limit if limit is not None else None  # NaN (missing) is never above it
        drift = self.drift(complete)
        if single:  # one window in, one (0-d) score out, as encode/reconstruct do
            return ScoreResult(np.asarray(scores[0]), limit, None if flags is None else np.asarray(flags[0]),
                               parts[0], drift, np.asarray(missing[0]))
        return ScoreResult(scores, limit, flags, parts, drift, missing)

    def node_placement(self) -> dict[str, dict[str, str]]:
        return {role: model.node_placement() for role, model in self.models.items()}

