"""How well scores and flags find labelled anomalies: the ranking (ROC AUC, average precision),
the flags at the threshold (precision, recall, F1), thresholds suggested by the labels, and the
range-based measures of `detection.ranges` (VUS, event-wise, affiliation, point-adjusted F1).

The model scores windows, the labels mark rows. The window measures count a window anomalous when
any of its rows is labelled; the range measures run on the rows, each row taking the highest score
(and so the flag) of the windows that cover it: a row is flagged when any window holding it is, and
an anomaly is found where a flagged window overlaps it, which is what a user looking at the flagged
windows sees.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgeae.contract.checks import check_threshold, is_whole
from edgeae.contract.errors import DataError, UsageError
from edgeae.data.windows import make_windows, window_labels, window_starts
from edgeae.detection.ranges import RangeQuality, range_quality
from edgeae.detection.threshold import check_labels, check_scores


def _scored(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked scores and labels of the same windows."""
    scores, labels = check_scores(scores), check_labels(labels)
    if scores.shape != labels.shape:
        raise DataError(f"{len(scores)} scores but {len(labels)} labels")
    return scores, labels


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
    ranges: RangeQuality | None = None  # the same scores and flags on the row timeline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"{self.windows} windows, {self.anomalous_windows} labelled anomalous",
            f"ROC AUC {self.roc_auc:.4f}, average precision {self.average_precision:.4f}",
            (f"at threshold {self.threshold:.4g}: precision {self.precision:.4f}, recall {self.recall:.4f}, "
             f"F1 {self.f1:.4f} (TP {self.true_positives}, FP {self.false_positives}, "
             f"FN {self.false_negatives}, TN {self.true_negatives})"),
            *(self.ranges.lines() if self.ranges else []),
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


@dataclass(frozen=True)
class Timeline:
    """Scores and labels per row, in time order, for the range measures; `buffer` is the longest
    VUS buffer, in rows."""

    scores: np.ndarray
    labels: np.ndarray
    buffer: int


def row_timeline(window_scores: Any, labels: Any, timesteps: int, stride: int) -> Timeline:
    """The rows' timeline of windows cut from a labelled series (`make_windows`' order).

    Each row takes the highest score of the windows covering it, so a row is flagged exactly when
    a window holding it is. Rows no window covers (after the last window; between windows when the
    stride exceeds the window) are left out. The VUS buffers run up to one window: a window's
    score rises for every row it holds, so flags near an anomaly are credited up to that far.
    """
    scores, labels = check_scores(window_scores), check_labels(labels)
    starts = window_starts(len(labels), timesteps, stride)
    if len(starts) != len(scores):
        raise DataError(f"{len(scores)} window scores, but {len(labels)} rows cut {timesteps} long and {stride} "
                        f"apart make {len(starts)} windows")
    rows = np.full(len(labels), -np.inf)
    for offset in range(timesteps):  # each row once per offset: plain indexing takes the maximum
        rows[starts + offset] = np.maximum(rows[starts + offset], scores)
    covered = np.isfinite(rows)
    return Timeline(rows[covered], labels[covered], timesteps)


def detection_quality(scores: np.ndarray, labels: np.ndarray, threshold: float,
                      timeline: Timeline | None = None) -> Detection:
    """Ranking quality (ROC AUC, average precision) and flag quality at `threshold`, and the range
    measures on `timeline` (the same model's scores per row; `row_timeline`). Without one, the scores
    are taken as one per time step in time order, with no VUS buffer."""
    threshold = check_threshold(threshold)
    scores, labels = _scored(scores, labels)
    flags = scores > threshold
    tp, fp = int((flags & labels).sum()), int((flags & ~labels).sum())
    fn, tn = int((~flags & labels).sum()), int((~flags & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc, ap = roc_auc(scores, labels), average_precision(scores, labels)  # their refusals name windows: first
    timeline = timeline or Timeline(scores, labels, 0)
    ranges = range_quality(timeline.scores, timeline.labels, threshold, timeline.buffer)
    return Detection(len(scores), int(labels.sum()), float(threshold), auc, ap, precision, recall, f1, tp, fp, fn, tn,
                     ranges=ranges)


def evaluate(model: Any, values: np.ndarray, labels: np.ndarray, stride: int | None = None,
             threshold: float | None = None, precision: float | None = None) -> tuple[Detection, np.ndarray]:
    """Score a labelled (time, features) series on the device runtime: (quality, window scores).

    A window counts as anomalous when any of its rows is labelled anomalous; the range measures run
    on the rows (`row_timeline`). `stride` None means the model's, as `score` cuts a series. With a
    target `precision` the result also suggests thresholds from the labels (`suggest_thresholds`).
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
    timeline = row_timeline(result.scores, labels, model.timesteps, stride)
    detection = detection_quality(result.scores, truth, result.threshold, timeline)
    if precision is not None:
        detection = replace(detection, suggestions=suggest_thresholds(result.scores, truth, precision))
    return detection, result.scores
