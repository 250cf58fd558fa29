"""Anomaly detection on the reconstruction error: calibrate the threshold, or set one chosen by the user.

The score is `runtime.reconstruction_error`, the one formula the device uses too. The
training side computes it from Keras reconstructions, the device from onnxruntime's; the
threshold is placed midway between calibration scores, never on one, so the tiny parity
error between the two cannot flip a calibration window from one side to the other.

Only numpy and the device runtime are needed here (Keras is reached through the training object passed in).
How well scores and flags find labelled anomalies is `detection.quality`'s.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.checks import check_quantile, check_threshold, is_whole
from edgeae.contract.errors import DataError, UsageError
from edgeae.contract.records import Detector, thawed
from edgeae.runtime.scoring import reconstruction_error
from edgeae.runtime.session import OnnxModel

SCORE_DESCRIPTION = "mean squared reconstruction error per window, each feature scaled as the model sees it"
RULE = "anomalous when score > threshold"


def _vector(values: Any, what: str, kinds: str, expected: str, per: str) -> np.ndarray:
    """`values` as a 1-D array of dtype kind in `kinds`, or a DataError that says which rule failed."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a 1-D array of {expected}; could not read them as one") from None
    if array.dtype.kind not in kinds:
        raise DataError(f"{what} must be {expected}, got dtype {array.dtype}")
    if array.ndim != 1:
        raise DataError(f"{what} must be one per {per} (1-D), got shape {array.shape}")
    return array


def check_scores(scores: Any) -> np.ndarray:
    """One finite score per window, as float64: a NaN sorts anywhere and would silently bend
    every measure (and the threshold) instead of failing."""
    array = _vector(scores, "scores", "iuf", "real numbers", "window")
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise DataError(f"score {array[bad[0]].item()!r} at index {bad[0]} is not a finite number")
    return array.astype(np.float64)


def check_labels(labels: Any) -> np.ndarray:
    """One 0/1 (or bool) label per row or window, as bool: 2, NaN or "1" would otherwise
    count as anomalous, or text as all normal, without a word."""
    array = _vector(labels, "labels", "biuf", "0/1 or true/false", "row or window")
    bad = np.flatnonzero((array != 0) & (array != 1))
    if len(bad):
        raise DataError(f"label {array[bad[0]].item()!r} at index {bad[0]} is not 0 or 1")
    return array.astype(bool)


def calibrate_threshold(scores: np.ndarray, quantile: float) -> float:
    """The threshold that leaves the lowest `quantile` of calibration scores unflagged.

    With n scores, k = ceil(quantile * n) of them stay at or below the threshold, which
    lies midway between the k-th smallest score and the next larger one (or, when none
    is larger, above the largest by half its gap to the one below), so at most
    (1 - quantile) of the calibration windows are flagged and none sits on the threshold.
    """
    quantile = check_quantile(quantile)
    s = np.sort(check_scores(scores))
    if len(s) == 0:
        raise DataError("no windows to calibrate the threshold on")
    k = min(max(math.ceil(quantile * len(s) - 1e-9), 1), len(s))
    kept = s[k - 1]
    above = s[k:][s[k:] > kept]
    if len(above):
        middle = (kept + above[0]) / 2
    else:
        below = s[s < kept]
        middle = kept + (kept - below[-1] if len(below) else max(abs(kept), 1e-12)) / 2
    return float(max(middle, np.nextafter(kept, np.inf)))  # scores a float apart have no middle


def keras_scores(training: Any, windows: np.ndarray) -> np.ndarray:
    """Scores of raw windows as the training side sees them: Keras reconstructions, same formula."""
    x = np.asarray(windows, dtype=np.float32)  # what the device's input check turns any input into
    return reconstruction_error(x, training.reconstruct(x), training.preprocessing.arrays()["scale"])


def calibration_windows(training: Any) -> tuple[np.ndarray, str]:
    """The validation windows, or the training windows (and a word saying so) when there are none."""
    if len(training.validation_windows):
        return training.validation_windows, "validation"
    return training.train_windows, "training"


def variant_thresholds(folder: Path, variants: dict[str, Any], training: Any, quantile: float) -> dict[str, Any]:
    """A threshold per published autoencoder variant, calibrated on that variant's own scores.

    fp16 and int8 reconstruct slightly differently from Keras; a threshold calibrated on
    Keras scores would flag a different share of the same windows on a device running them.
    """
    quantile = check_quantile(quantile)
    windows, _ = calibration_windows(training)
    x = np.asarray(windows, dtype=np.float32)
    scale = training.preprocessing.arrays()["scale"]
    out: dict[str, Any] = {}
    for name, entry in variants.items():
        if name == "fp32" or not entry.get("published"):
            continue
        scores = reconstruction_error(x, OnnxModel(Path(folder) / entry["file"], "cpu").run_windows(x), scale)
        threshold = calibrate_threshold(scores, quantile)
        out[name] = {"threshold": threshold, "flagged": int((scores > threshold).sum())}
    return out


# The fewest windows a threshold is calibrated on unless the user accepts fewer. A new normal window
# outscores every one of n calibration windows with chance 1/(n+1) (they are exchangeable): with 20
# windows under 5%, so the top of the calibration scores says something about normal data; with 3
# it is 25%, and at the default 0.99 quantile any n below 100 puts the threshold just above the
# largest score, so the count of windows is all that stands between the threshold and chance.
MIN_CALIBRATION_WINDOWS = 20
OUTSIDE_WARN_SHARE = 0.01  # calibration values beyond the training bounds past which the record warns


def check_calibration_size(count: int, on: str, minimum: int) -> None:
    """Refuse a threshold from fewer than `minimum` windows, naming what to do instead."""
    if not is_whole(minimum, 1):
        raise UsageError(f"the least number of calibration windows must be a whole number of at least 1, "
                         f"got {minimum!r}")
    if count < minimum:
        raise DataError(f"the threshold would be calibrated on {count} {on} window(s), fewer than {minimum} (a new "
                        f"normal window outscores all {count} with chance 1/{count + 1}); give a longer series or a "
                        f"larger --validation-fraction, or accept it with --min-calibration-windows {count}")


def outside_training(training: Any, windows: np.ndarray) -> dict[str, float]:
    """How much of the calibration data lies outside the range of the training data (as the model
    sees it: levels removed where they are): the share of values, and how far the farthest lies
    beyond, in training ranges. (Not the clip bounds: quantile clipping puts some training values
    outside those by design.)"""
    pre = training.preprocessing
    seen = np.asarray(training.train_windows, np.float32)
    seen = (seen - pre.levels(seen)).reshape(-1, seen.shape[-1]).astype(np.float64)
    x = np.asarray(windows, np.float32) - pre.levels(windows)
    low, high = seen.min(axis=0), seen.max(axis=0)
    span = np.maximum(high - low, 1e-30)
    distance = np.maximum(np.maximum(low - x, x - high), 0.0) / span
    return {"share": float((distance > 0).mean()) if distance.size else 0.0,
            "beyond": float(distance.max()) if distance.size else 0.0}


def calibrate(training: Any, quantile: float, min_windows: int = MIN_CALIBRATION_WINDOWS) -> dict[str, Any]:
    """The manifest's `detector` record, calibrated on the validation windows if there are any.

    A threshold from fewer than `min_windows` windows is refused (the seed's one window excepted:
    it is the notebook's demonstration, and its record says so), and calibration data that lies
    outside the training range is recorded, with a note saying how far.
    """
    quantile = check_quantile(quantile)  # before Keras reconstructs anything
    windows, on = calibration_windows(training)
    seed = training.data.get("source") == "seed"
    if not seed:
        check_calibration_size(len(windows), on, min_windows)
    scores = keras_scores(training, windows)
    threshold = calibrate_threshold(scores, quantile)
    record = {
        "score": SCORE_DESCRIPTION,
        "rule": RULE,
        "threshold": threshold,
        "quantile": float(quantile),
        "calibrated_on": on,
        "windows": len(scores),
        "flagged": int((scores > threshold).sum()),
        "scores": {"min": float(scores.min()), "median": float(np.median(scores)),
                   "mean": float(scores.mean()), "max": float(scores.max())},
    }
    notes = []
    if seed:
        notes.append(f"the seed's {len(scores)} window: a demonstration threshold, not a calibrated one")
    if on == "training":
        notes.append("no validation windows: calibrated on the training windows, whose errors are optimistic, "
                     "so expect more flags on new data; train with --validation-fraction to calibrate honestly")
    outside = outside_training(training, windows)
    record["outside_training"] = outside
    if outside["share"] > OUTSIDE_WARN_SHARE:
        notes.append(f"{outside['share']:.0%} of the calibration values lie outside the training range, up to "
                     f"{outside['beyond']:.2g} training ranges beyond: the threshold is set on data unlike what the "
                     "model learned" + ("; train with --level remove if the series drifts"
                                        if training.preprocessing.level == "keep" else ""))
    if notes:
        record["note"] = "; ".join(notes)
    return record


def set_threshold(record: dict[str, Any] | Detector, threshold: Any, source: str,
                  calibration_scores: Any = None) -> dict[str, Any]:
    """The manifest's `detector` record with a threshold the user chose (say from evaluate's
    suggestions), saying where it came from; the calibrated one is kept beside it. `record` is
    the detector section being written, or a read manifest's `detector` (its JSON is copied).

    Every variant and detector graph takes the same value: a threshold chosen on labelled data
    is a decision about what to flag, not a quantile of one variant's scores (rebuild the
    detector graphs with it: their threshold is inside). `calibration_scores`, where given,
    recounts `flagged` on the calibration windows; otherwise the stale counts are dropped.
    """
    value = check_threshold(threshold)
    if value < 0:
        raise UsageError(f"threshold must be at least 0 (scores are), got {threshold!r}")
    if not isinstance(source, str) or not source.strip():
        raise UsageError(f"say where the threshold comes from (a non-empty text), got {source!r}")
    if isinstance(record, Detector):  # a read manifest's: the writer's copy of what it holds
        record = thawed(record.details)
    if not isinstance(record, dict) or "threshold" not in record:
        raise UsageError("record must be a manifest's detector record (with its calibrated threshold)")
    out = {key: value_ for key, value_ in record.items() if key != "flagged"}
    chosen = record.get("chosen") or {}
    out["threshold"] = value
    out["chosen"] = {"by": "user", "source": source.strip(),
                     "calibrated_threshold": chosen.get("calibrated_threshold", record["threshold"])}
    if calibration_scores is not None:
        out["flagged"] = int((check_scores(calibration_scores) > value).sum())
    out["variants"] = {name: {"threshold": value} for name in record.get("variants") or {}}
    out["graphs"] = {name: {**graph, "threshold": value} for name, graph in (record.get("graphs") or {}).items()}
    return out
