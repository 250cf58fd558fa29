"""Detection quality on a timeline of rows, as the time-series anomaly benchmarks measure it.

A labelled anomaly is usually a stretch of rows, and a detector that flags part of it, or flags
just before it, has still found it; point-wise precision and recall cannot say so. These measures
can (each written here from its paper; the PyPI packages that carry them pull in TensorFlow or
PyTorch, see docs/how-to/thresholds.md):

- VUS-PR and VUS-ROC (Paparrizos et al., "Volume Under the Surface", VLDB 2022; TSB-AD ranks by
  VUS-PR): range-AUCs averaged over buffer lengths 0..`buffer`; a buffer lets a score that rises
  just before or after an anomaly count in part, and the average removes the choice of one length.
- Event-wise F1 (the overlapping-segment F1 of Hundman et al., KDD 2018, as Orion reports it).
- Affiliation precision, recall and F1 (Huet, Navarro and Rossi, KDD 2022): how close flags lie
  to each anomaly, as a probability against flags drawn at random in the anomaly's zone.
- Point-adjusted F1 (Xu et al., WWW 2018): optimistic, a random score reaches a high one, so it is
  only ever shown marked as such.

Every function takes one score, flag or label per row, in time order; row t is the interval
[t, t + 1) where a measure works in continuous time (affiliation).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeae.contract.errors import DataError, UsageError
from edgeae.contract.checks import is_whole
from edgeae.detection.threshold import check_labels, check_scores


def segments(flags: Any) -> np.ndarray:
    """The runs of true values as (k, 2) [start, stop) row pairs, in time order."""
    flags = np.asarray(flags, dtype=bool)
    edges = np.diff(np.r_[0, flags.astype(np.int8), 0])
    return np.column_stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)])


def _events(labels: np.ndarray, measure: str) -> np.ndarray:
    """The labelled anomalies as segments, refusing a timeline without one (the measure is undefined)."""
    events = segments(labels)
    if len(events) == 0:
        raise DataError(f"{measure} needs at least one anomalous row; got none")
    return events


# ---------------------------------------------------------------- VUS


def _buffered_labels(labels: np.ndarray, events: np.ndarray, length: int) -> np.ndarray:
    """Labels with a buffer of `length` // 2 rows on each side of every anomaly: a row d rows away
    weighs sqrt(1 - d / length); buffers that meet add up, capped at 1 (as the authors' code does)."""
    soft = labels.astype(np.float64)
    half, n = length // 2, len(labels)
    for start, stop in events:
        after = np.arange(stop, min(stop + half, n))
        soft[after] += np.sqrt(1 - (after - stop + 1) / length)
        before = np.arange(max(start - half, 0), start)
        soft[before] += np.sqrt(1 - (start - before) / length)
    return np.minimum(soft, 1.0)


def _buffered_events(events: np.ndarray, length: int, n: int) -> np.ndarray:
    """Each anomaly widened by its buffer; widened ones that overlap become one event (existence)."""
    half = length // 2
    merged: list[list[int]] = []
    for start, stop in events:
        lo, hi = max(start - half, 0), min(stop + half, n)
        if merged and lo < merged[-1][1]:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return np.array(merged, dtype=np.int64)


def _range_curves(order: np.ndarray, cuts: np.ndarray, labels: np.ndarray, events: np.ndarray,
                  length: int) -> tuple[float, float]:
    """Range-AUC-PR and range-AUC-ROC at one buffer length, every distinct score a threshold.

    At each threshold (flag score >= it): TP is the flagged rows' buffered labels; the positives
    P_l are the anomalous rows plus half the buffered labels of flagged buffer rows; TPR is
    min(TP / P_l, 1) times the share of buffered events holding a flag (existence); FPR is
    (flagged - TP) / (rows - P_l); precision TP / flagged. ROC runs (0,0) -> thresholds -> (1,1)
    by trapezoids; PR sums each TPR step times its precision.
    """
    n, positives = len(labels), float(labels.sum())
    soft = _buffered_labels(labels, events, length)
    buffer_only = np.where(labels, 0.0, soft)
    tp = np.cumsum(soft[order])[cuts]
    tp_buffer = np.cumsum(buffer_only[order])[cuts]
    flagged = cuts + 1.0
    widened = _buffered_events(events, length, n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    first_flag = np.sort([rank[lo:hi].min() for lo, hi in widened])  # the cut at which each event is found
    existence = np.searchsorted(first_flag, cuts, side="right") / len(widened)
    p_l = positives + tp_buffer / 2
    tpr = np.minimum(tp / p_l, 1.0) * existence
    fpr = (flagged - tp) / (n - p_l)
    precision = tp / flagged
    x, y = np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]
    roc = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
    pr = float(np.sum(np.diff(np.r_[0.0, tpr]) * precision))
    return pr, roc


def vus(scores: Any, labels: Any, buffer: int) -> tuple[float, float]:
    """(VUS-PR, VUS-ROC): the range-AUCs of `_range_curves` averaged over buffer lengths 0..`buffer`.

    Exact over every distinct score (the authors' code samples 250 thresholds by default); length 0
    is the point-wise curve with the existence factor.
    """
    scores, labels = check_scores(scores), check_labels(labels)
    if scores.shape != labels.shape:
        raise DataError(f"{len(scores)} scores but {len(labels)} labels")
    if not is_whole(buffer, 0):
        raise UsageError(f"buffer must be a whole number of rows, at least 0, got {buffer!r}")
    events = _events(labels, "VUS")
    if labels.all():
        raise DataError("VUS needs normal rows too; every row is labelled anomalous")
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    cuts = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last row of each tie group
    areas = np.array([_range_curves(order, cuts, labels, events, length) for length in range(int(buffer) + 1)])
    return float(areas[:, 0].mean()), float(areas[:, 1].mean())


# ---------------------------------------------------------------- event-wise and point-adjusted F1


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def event_f1(flags: Any, labels: Any) -> tuple[float, float, float]:
    """(precision, recall, F1) over events, as Hundman et al. 2018 and Orion count them.

    A labelled anomaly (a run of anomalous rows) is found when any flagged run overlaps it (TP),
    else missed (FN); a flagged run that overlaps no anomaly is a false alarm (FP). Precision is
    TP / (TP + FP), recall TP / (TP + FN): one long anomaly found by three flagged runs is one TP.
    """
    flags, labels = check_labels(flags), check_labels(labels)
    truth, found = _events(labels, "event-wise F1"), segments(flags)
    overlaps = (found[:, None, 0] < truth[None, :, 1]) & (truth[None, :, 0] < found[:, None, 1])
    tp = int(overlaps.any(axis=0).sum())
    fp = int((~overlaps.any(axis=1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / len(truth)
    return precision, recall, _f1(precision, recall)


def point_adjust(flags: Any, labels: Any) -> np.ndarray:
    """Flags with every row of an anomaly flagged once any of its rows is (Xu et al. 2018)."""
    flags, labels = check_labels(flags), check_labels(labels)
    adjusted = flags.copy()
    for start, stop in segments(labels):
        if flags[start:stop].any():
            adjusted[start:stop] = True
    return adjusted


def point_adjusted_f1(flags: Any, labels: Any) -> float:
    """Point-wise F1 of the point-adjusted flags: optimistic (a random score scores well on long anomalies)."""
    labels = check_labels(labels)
    adjusted = point_adjust(flags, labels)
    tp = int((adjusted & labels).sum())
    precision = tp / int(adjusted.sum()) if adjusted.any() else 0.0
    return _f1(precision, tp / labels.sum() if labels.any() else 0.0)


# ---------------------------------------------------------------- affiliation


def _integral(lo: float, hi: float, distance: tuple[float, float], terms: tuple[tuple[float, float, float], ...],
              scale: float) -> float:
    """The integral over [lo, hi] of sum_k max(0, u x + v d(x) + w) / scale, d(x) = d0 + d1 x.

    The integrand is linear between the ends and the points where a term's argument crosses 0,
    so the trapezoid rule over those points is exact.
    """
    if hi <= lo:
        return 0.0
    points = [lo, hi]
    for u, v, w in terms:
        slope, offset = u + v * distance[1], w + v * distance[0]
        if slope and lo < -offset / slope < hi:
            points.append(-offset / slope)
    x = np.sort(points)
    d = distance[0] + distance[1] * x
    y = sum(np.maximum(0.0, u * x + v * d + w) for u, v, w in terms) / scale
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _zone_precision(pieces: np.ndarray, event: np.ndarray, zone: tuple[float, float]) -> float:
    """Mean over the flagged time in an anomaly's zone of P(a random time of the zone lies at least as
    far from the anomaly): 1 inside it, falling to 0 at the zone's farthest time."""
    (g0, g1), (a, b) = event, zone
    terms = ((0.0, -1.0, g0 - a), (0.0, -1.0, b - g1))  # the zone's length farther than d, each side
    total = 0.0
    for y0, y1 in pieces:
        total += _integral(y0, min(y1, g0), (g0, -1.0), terms, b - a)  # before: d = g0 - y
        total += max(0.0, min(y1, g1) - max(y0, g0))  # inside: d = 0
        total += _integral(max(y0, g1), y1, (-g1, 1.0), terms, b - a)  # after: d = y - g1
    return total / float(np.sum(pieces[:, 1] - pieces[:, 0]))


def _zone_recall(pieces: np.ndarray, event: np.ndarray, zone: tuple[float, float]) -> float:
    """Mean over the anomaly's time x of P(a random time of the zone lies at least as far from x as
    the nearest flag in the zone does); 0 where the zone holds no flag."""
    if len(pieces) == 0:
        return 0.0
    (g0, g1), (a, b) = event, zone
    terms = ((1.0, -1.0, -a), (-1.0, -1.0, b))  # the zone's length at distance >= d left and right of x
    # Where each flagged piece is the nearest: (from, to, d0, d1) with d(x) = d0 + d1 x.
    parts = [(-np.inf, pieces[0, 0], pieces[0, 0], -1.0)]
    for k, (p, q) in enumerate(pieces):
        parts.append((p, q, 0.0, 0.0))
        if k + 1 < len(pieces):
            middle = (q + pieces[k + 1, 0]) / 2
            parts += [(q, middle, -q, 1.0), (middle, pieces[k + 1, 0], pieces[k + 1, 0], -1.0)]
    parts.append((pieces[-1, 1], np.inf, -pieces[-1, 1], 1.0))
    total = sum(_integral(max(lo, g0), min(hi, g1), (d0, d1), terms, b - a) for lo, hi, d0, d1 in parts)
    return total / (g1 - g0)


def affiliation(flags: Any, labels: Any) -> tuple[float, float, float]:
    """(precision, recall, F1) of Huet, Navarro and Rossi (KDD 2022) on rows taken as [t, t + 1).

    The timeline [0, rows) is cut into one zone per labelled anomaly (the times nearer to it than to
    any other; cuts midway between anomalies). Precision averages, over the zones holding flags,
    how close the flags lie to their anomaly; recall averages, over all zones, how close the
    anomaly lies to the zone's flags; each is a probability against a time drawn uniformly in the
    zone, so 0.5 is what flags placed at random give and 1 is exact. Nothing flagged: 0, 0, 0.
    """
    flags, labels = check_labels(flags), check_labels(labels)
    if flags.shape != labels.shape:
        raise DataError(f"{len(flags)} flags but {len(labels)} labels")
    events = _events(labels, "affiliation").astype(np.float64)
    found = segments(flags).astype(np.float64)
    cuts = np.r_[0.0, (events[:-1, 1] + events[1:, 0]) / 2, float(len(labels))]
    precisions, recalls = [], []
    for j, event in enumerate(events):
        a, b = cuts[j], cuts[j + 1]
        pieces = np.column_stack([np.maximum(found[:, 0], a), np.minimum(found[:, 1], b)])
        pieces = pieces[pieces[:, 1] > pieces[:, 0]]
        if len(pieces):
            precisions.append(_zone_precision(pieces, event, (a, b)))
        recalls.append(_zone_recall(pieces, event, (a, b)))
    precision = float(np.mean(precisions)) if precisions else 0.0
    recall = float(np.mean(recalls))
    return precision, recall, _f1(precision, recall)


# ---------------------------------------------------------------- all of them


@dataclass(frozen=True)
class RangeQuality:
    """The range-based measures of one labelled timeline of rows, at one threshold."""

    rows: int
    anomalous_rows: int
    events: int
    flagged_rows: int
    buffer: int
    vus_pr: float
    vus_roc: float
    event_precision: float
    event_recall: float
    event_f1: float
    affiliation_precision: float
    affiliation_recall: float
    affiliation_f1: float
    point_adjusted_f1: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            (f"on {self.rows} rows ({self.anomalous_rows} anomalous in {self.events} event"
             f"{'' if self.events == 1 else 's'}; each row takes the "
             f"highest score of the windows covering it): VUS-PR {self.vus_pr:.4f}, VUS-ROC {self.vus_roc:.4f} "
             f"(buffers 0-{self.buffer} rows)"),
            (f"event-wise F1 {self.event_f1:.4f} (precision {self.event_precision:.4f}, recall "
             f"{self.event_recall:.4f}), affiliation F1 {self.affiliation_f1:.4f} (precision "
             f"{self.affiliation_precision:.4f}, recall {self.affiliation_recall:.4f})"),
            (f"point-adjusted F1 {self.point_adjusted_f1:.4f} (optimistic: one flagged row counts its whole "
             "event as found, so even random scores reach a high one; compare with event-wise F1)"),
        ]


def range_quality(scores: Any, labels: Any, threshold: float, buffer: int) -> RangeQuality:
    """Every range-based measure of per-row `scores` and `labels`, flagging rows scoring above `threshold`."""
    scores, labels = check_scores(scores), check_labels(labels)
    flags = scores > threshold
    pr, roc = vus(scores, labels, buffer)
    event = event_f1(flags, labels)
    near = affiliation(flags, labels)
    return RangeQuality(len(labels), int(labels.sum()), len(segments(labels)), int(flags.sum()), int(buffer),
                        pr, roc, *event, *near, point_adjusted_f1(flags, labels))
