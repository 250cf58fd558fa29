"""The range-based detection measures (detection.ranges) and the row timeline evaluate builds
(detection.quality), each against cases worked by hand from the papers' definitions."""
import math

import numpy as np
import pytest

from edgeae.contract.errors import DataError, UsageError
from edgeae.detection.quality import detection_quality, row_timeline
from edgeae.detection.ranges import (
    affiliation, event_f1, point_adjust, point_adjusted_f1, range_quality, segments, vus,
)


def test_segments_are_half_open_runs():
    assert segments([0, 1, 1, 0, 1]).tolist() == [[1, 3], [4, 5]]
    assert segments([1, 1]).tolist() == [[0, 2]]
    assert segments([0, 0]).shape == (0, 2)


# ---------------------------------------------------------------- VUS


def test_vus_with_no_buffer_is_the_point_wise_auc_of_one_event():
    # One anomalous row (2); the highest score lands one row early.
    scores, labels = [0.1, 0.9, 0.3, 0.2, 0.0], [0, 0, 1, 0, 0]
    # ROC: (0,0) -> (1/4,0) -> (1/4,1) -> (1,1) = 0.75; PR: recall 1 reached at precision 1/2.
    assert vus(scores, labels, 0) == pytest.approx((0.5, 0.75))


def test_vus_credits_a_score_just_before_the_anomaly_through_the_buffer():
    """Worked by hand: buffer lengths 0, 1 (no buffer rows: 1 // 2 = 0) and 2 (one row each side,
    weighing sqrt(1 - 1/2))."""
    scores, labels = [0.1, 0.9, 0.3, 0.2, 0.0], [0, 0, 1, 0, 0]
    w = math.sqrt(0.5)
    p_l = 1 + w / 2  # positives once row 1 (a buffer row) is flagged
    tpr1, fpr1 = w / p_l, (1 - w) / (5 - p_l)  # row 1 alone: part of a hit, the event exists
    pr2 = tpr1 * w + (1 - tpr1) * (1 + w) / 2  # then row 2: full recall at precision (1 + w) / 2
    roc2 = fpr1 * tpr1 / 2 + (1 - fpr1)  # TPR reaches 1 at the same FPR (row 2 is a full hit)
    assert vus(scores, labels, 2) == pytest.approx(((0.5 + 0.5 + pr2) / 3, (0.75 + 0.75 + roc2) / 3))
    assert vus(scores, labels, 2)[0] > vus(scores, labels, 0)[0]


def test_vus_of_a_perfect_score_is_one_and_ties_are_one_threshold():
    labels = np.zeros(50, dtype=int)
    labels[20:25] = 1
    assert vus(labels * 1.0, labels, 6) == pytest.approx((1.0, 1.0))
    pr, roc = vus(np.ones(50), labels, 0)  # one threshold flags everything: the base rate
    assert pr == pytest.approx(5 / 50) and roc == pytest.approx(0.5)


def test_vus_refuses_what_it_cannot_measure():
    with pytest.raises(DataError, match="VUS needs at least one anomalous row"):
        vus([0.1, 0.2], [0, 0], 2)
    with pytest.raises(DataError, match="VUS needs normal rows too"):
        vus([0.1, 0.2], [1, 1], 2)
    with pytest.raises(UsageError, match="buffer must be a whole number"):
        vus([0.1, 0.2], [0, 1], 1.5)
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        vus([0.1, 0.2, 0.3], [0, 1], 0)


# ---------------------------------------------------------------- event-wise and point-adjusted F1


def test_event_f1_counts_events_found_and_flagged_runs_that_find_nothing():
    labels = [0, 1, 1, 0, 0, 0, 1, 0, 0, 0]
    flags = [0, 0, 1, 1, 0, 0, 0, 0, 1, 0]  # overlaps the first event; misses the second; one false alarm
    assert event_f1(flags, labels) == pytest.approx((0.5, 0.5, 0.5))
    # One long anomaly found by three flagged runs is one event found, and no false alarm.
    assert event_f1([1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0]) == pytest.approx((1.0, 1.0, 1.0))
    assert event_f1([0, 0, 0], [0, 1, 0]) == (0.0, 0.0, 0.0)


def test_point_adjust_fills_each_event_any_of_whose_rows_is_flagged():
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    flags = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    assert point_adjust(flags, labels).astype(int).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # TP 3 of 4 flagged, 3 of 5 anomalous rows: F1 = 2 * 3/4 * 3/5 / (3/4 + 3/5)
    assert point_adjusted_f1(flags, labels) == pytest.approx(2 / 3)


def test_point_adjusted_f1_makes_a_random_score_look_good_and_event_f1_does_not():
    """Why it is printed only as optimistic: on long anomalies, random flags touch every one."""
    rng = np.random.default_rng(7)
    labels = np.zeros(10_000, dtype=bool)
    for start in range(500, 10_000, 1_000):
        labels[start:start + 100] = True
    flags = rng.random(10_000) > 0.95  # 5% of rows flagged at random
    point_f1 = detection_quality(flags * 1.0, labels, 0.5).f1
    assert point_f1 < 0.1
    assert point_adjusted_f1(flags, labels) > 0.7
    assert event_f1(flags, labels)[2] < 0.1


# ---------------------------------------------------------------- affiliation


def test_affiliation_worked_example():
    """10 rows, one anomaly [4, 6), one flag [0, 1): the zone is the whole timeline.

    Precision: a flag at y lies 4 - y from the anomaly; a random time of the zone lies at least as
    far with chance (8 - 2 (4 - y)) / 10 = y / 5, whose mean over [0, 1) is 0.1. Recall: the anomaly's
    x is x - 1 from the flag; a random time lies at least as far with chance (1 + max(0, 11 - 2x)) / 10,
    whose mean over [4, 6) is (0.375 + 0.05) / 2 = 0.2125.
    """
    labels = np.zeros(10, dtype=int)
    labels[4:6] = 1
    flags = np.zeros(10, dtype=int)
    flags[0] = 1
    precision, recall, f1 = affiliation(flags, labels)
    assert (precision, recall) == pytest.approx((0.1, 0.2125))
    assert f1 == pytest.approx(2 * 0.1 * 0.2125 / 0.3125)


def test_affiliation_zones_split_midway_and_exact_flags_score_one():
    labels = np.array([0, 1, 1, 0, 0, 0, 0, 0, 1, 0])
    assert affiliation(labels, labels) == pytest.approx((1.0, 1.0, 1.0))
    # Flagging only the first anomaly: its zone is perfect, the second zone holds no flag.
    first = np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    precision, recall, _ = affiliation(first, labels)
    assert precision == pytest.approx(1.0) and recall == pytest.approx(0.5)
    assert affiliation(np.zeros(10), labels) == (0.0, 0.0, 0.0)


def test_affiliation_precision_of_random_flags_is_about_one_half():
    """The paper's reading of the scale: flags placed uniformly at random have precision 1/2 on average."""
    rng = np.random.default_rng(3)
    labels = np.zeros(20_000, dtype=bool)
    labels[10_000:10_005] = True
    values = [affiliation(rng.random(20_000) > 0.995, labels)[0] for _ in range(5)]
    assert np.mean(values) == pytest.approx(0.5, abs=0.05)


# ---------------------------------------------------------------- rows from windows


def test_each_row_takes_the_highest_score_of_the_windows_covering_it():
    timeline = row_timeline([1.0, 5.0, 2.0], [0, 0, 1, 0], timesteps=2, stride=1)
    assert timeline.scores.tolist() == [1.0, 5.0, 5.0, 2.0]
    assert timeline.labels.tolist() == [False, False, True, False] and timeline.buffer == 2
    uncovered = row_timeline([1.0, 3.0], [0, 1, 0, 0, 1], timesteps=2, stride=2)  # row 4: no window
    assert uncovered.scores.tolist() == [1.0, 1.0, 3.0, 3.0] and uncovered.labels.sum() == 1
    with pytest.raises(DataError, match="2 window scores, but 4 rows cut 2 long and 1 apart make 3 windows"):
        row_timeline([1.0, 2.0], [0, 0, 1, 0], timesteps=2, stride=1)


def test_detection_carries_the_range_measures_and_marks_point_adjust_as_optimistic():
    scores, labels = np.array([0.1, 0.9, 0.3, 0.2, 0.0]), np.array([0, 0, 1, 0, 0])
    d = detection_quality(scores, labels, 0.5)  # no timeline: the scores are the rows, no buffer
    assert d.ranges == range_quality(scores, labels, 0.5, 0)
    assert d.ranges.vus_pr == pytest.approx(0.5) and d.ranges.event_f1 == 0.0
    assert d.to_dict()["ranges"]["vus_roc"] == pytest.approx(0.75)
    text = "\n".join(d.lines())
    assert "VUS-PR 0.5000, VUS-ROC 0.7500" in text and "event-wise F1 0.0000" in text
    assert "point-adjusted F1 0.0000 (optimistic:" in text
