"""Anomaly detection on the reconstruction error: calibrate a threshold, measure detection.

The score is `runtime.reconstruction_error`, the one formula the device uses too. The
training side computes it from Keras reconstructions, the device from onnxruntime's; the
threshold is placed midway between calibration scores, never on one, so the tiny parity
error between the two cannot flip a calibration window from one side to the other.

Only numpy and the device runtime are needed here (Keras is reached through the training object passed in).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.checks import check_quantile, check_threshold, is_whole
from edgeae.contract.errors import DataError, UsageError
from edgeae.contract.records import Detector, thawed
from edgeae.data.windows import make_windows, window_labels
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


def _scored(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked scores and labels of the same windows."""
    scores, labels = check_scores(scores), check_labels(labels)
    if scores.shape != labels.shape:
        raise DataError(f"{len(scores)} scores but {len(labels)} labels")
    return scores, labels


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


def calibrate(training: Any, quantile: float) -> dict[str, Any]:
    """The manifest's `detector` record, calibrated on the validation windows if there are any."""
    quantile = check_quantile(quantile)  # before Keras reconstructs anything
    windows, on = calibration_windows(training)
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
    if on == "training":
        record["note"] = ("no validation windows: calibrated on the training windows, whose errors are optimistic, "
                          "so expect more flags on new data; train with --validation-fraction to calibrate honestly")
    return record


# ---------------------------------------------------------------- detection quality


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomalous window outscores a normal one (ties count half)."""
    scores, labels = _scored(scores, labels)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise DataError(f"ROC AUC needs anomalous and normal windows; got {positives} and {negatives}")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):  # tied scores share their average rank
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Precision averaged over the recall steps of the ranking by score (highest first)."""
    scores, labels = _scored(scores, labels)
    if not labels.any():
        raise DataError("average precision needs at least one anomalous window")
    order = np.argsort(-scores, kind="mergesort")
    hits = labels[order]
    # Tied scores are one threshold: evaluate only at the last window of each tie group.
    last = np.r_[scores[order][1:] != scores[order][:-1], True]
    tp = np.cumsum(hits)[last]
    seen = (np.arange(1, len(scores) + 1))[last]
    recall_steps = np.diff(np.r_[0, tp]) / labels.sum()
    return float(np.sum(recall_steps * tp / seen))


@dataclass(frozen=True)
class Detection:
    """How well flags and scores separate labelled anomalous windows from normal ones."""

    windows: int
    anomalous_windows: int
    threshold: float
    roc_auc: float
    average_precision: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    suggestions: Suggestions | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"{self.windows} windows, {self.anomalous_windows} labelled anomalous",
            f"ROC AUC {self.roc_auc:.4f}, average precision {self.average_precision:.4f}",
            (f"at threshold {self.threshold:.4g}: precision {self.precision:.4f}, recall {self.recall:.4f}, "
             f"F1 {self.f1:.4f} (TP {self.true_positives}, FP {self.false_positives}, "
             f"FN {self.false_negatives}, TN {self.true_negatives})"),
            *(self.suggestions.lines() if self.suggestions else []),
        ]


@dataclass(frozen=True)
class Choice:
    """One threshold and what it gives on the labelled windows it was chosen on."""

    threshold: float
    precision: float
    recall: float
    f1: float
    flagged: int

    def text(self) -> str:
        return (f"{self.threshold:.6g} (precision {self.precision:.4f}, recall {self.recall:.4f}, F1 {self.f1:.4f}, "
                f"{self.flagged} flagged)")


@dataclass(frozen=True)
class Suggestions:
    """Thresholds chosen from labels: the best F1, and the lowest reaching a target precision (the
    most recall at that precision; None when no threshold reaches it)."""

    best_f1: Choice
    target_precision: float
    for_precision: Choice | None

    def lines(self) -> list[str]:
        reach = (self.for_precision.text() if self.for_precision
                 else "none (no threshold reaches it on these labels)")
        return [f"suggested threshold, best F1: {self.best_f1.text()}",
                f"suggested threshold, lowest with precision >= {self.target_precision:g}: {reach}",
                "(chosen on these labels: check on other labelled data; export RUN --threshold VALUE records one)"]


def check_precision(precision: Any) -> float:
    """A target precision in (0, 1]; 0 is reached by any threshold, and True would pass for 1."""
    if (isinstance(precision, (bool, np.bool_)) or not isinstance(precision, (int, float, np.integer, np.floating))
            or not 0.0 < precision <= 1.0):
        raise UsageError(f"precision must be in (0, 1], got {precision!r}")
    return float(precision)


def suggest_thresholds(scores: Any, labels: Any, precision: float = 0.9) -> Suggestions:
    """Thresholds from labelled windows: the one with the best F1 (the highest, of ties), and the
    lowest whose precision reaches `precision`.

    Each candidate lies between two neighbouring distinct scores, never on one (the rule is
    score > threshold), so it flags exactly the windows scoring above it here.
    """
    precision = check_precision(precision)
    scores, labels = _scored(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        raise DataError("choosing a threshold from labels needs at least one anomalous window; got none")
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last window of each tie group
    tp = np.cumsum(hits)[last]
    flagged = last + 1
    above = ranked[last]  # the lowest score each candidate flags
    below = np.r_[ranked[last[:-1] + 1], -np.inf]  # the next lower score, left unflagged
    middle = np.where(np.isfinite(below), (above + below) / 2, above / 2)
    # Midway, or the score below where the two are adjacent floats (a score equal to it stays unflagged).
    threshold = np.where((middle >= above) | (middle < below), below, middle)
    usable = threshold >= 0  # a score of 0 cannot be flagged by a threshold, which is never negative
    if not usable.any():
        raise DataError("every score is 0 or below: no threshold (at least 0) separates any window")
    prec, rec = tp / flagged, tp / positives
    f1 = np.where(tp > 0, 2 * prec * rec / np.where(tp > 0, prec + rec, 1), 0.0)

    def choice(i: int) -> Choice:
        return Choice(float(threshold[i]), float(prec[i]), float(rec[i]), float(f1[i]), int(flagged[i]))

    best = int(np.flatnonzero(usable & (f1 == f1[usable].max()))[0])  # highest threshold among ties
    reaching = np.flatnonzero(usable & (prec >= precision))
    return Suggestions(choice(best), precision, choice(int(reaching[-1])) if len(reaching) else None)


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


def detection_quality(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Detection:
    """Ranking quality (ROC AUC, average precision) and flag quality at `threshold`."""
    threshold = check_threshold(threshold)
    scores, labels = _scored(scores, labels)
    flags = scores > threshold
    tp, fp = int((flags & labels).sum()), int((flags & ~labels).sum())
    fn, tn = int((~flags & labels).sum()), int((~flags & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Detection(len(scores), int(labels.sum()), float(threshold), roc_auc(scores, labels),
                     average_precision(scores, labels), precision, recall, f1, tp, fp, fn, tn)


def evaluate(model: Any, values: np.ndarray, labels: np.ndarray, stride: int | None = None,
             threshold: float | None = None, precision: float | None = None) -> tuple[Detection, np.ndarray]:
    """Score a labelled (time, features) series on the device runtime: (quality, window scores).

    A window counts as anomalous when any of its rows is labelled anomalous. `stride` None means
    the model's, as `score` cuts a series. With a target `precision` the result also suggests
    thresholds from the labels (`suggest_thresholds`).
    """
    if not callable(getattr(model, "score", None)) or not isinstance(getattr(model, "timesteps", None), int):
        raise UsageError(f"model must be a model set from edgeae.runtime.load, got {type(model).__name__}")
    stride = model.stride if stride is None else stride
    if precision is not None:
        precision = check_precision(precision)
    if not is_whole(stride, 1):
        raise UsageError(f"stride must be a whole number of at least 1, got {stride!r}")
    labels = check_labels(labels)
    try:
        values = np.asarray(values)
    except (TypeError, ValueError):
        raise DataError("values must be a (time, features) array of numbers; could not read them as one") from None
    windows = make_windows(values, model.timesteps, stride)  # refuses anything but a (time, features) series
    if len(values) != len(labels):
        raise DataError(f"{len(values)} rows of values but {len(labels)} labels")
    result = model.score(windows, threshold=threshold)
    if result.threshold is None:
        raise UsageError("this model set has no calibrated threshold; pass one, or export it again")
    truth = window_labels(labels, model.timesteps, stride)
    detection = detection_quality(result.scores, truth, result.threshold)
    if precision is not None:
        detection = replace(detection, suggestions=suggest_thresholds(result.scores, truth, precision))
    return detection, result.scores
