"""Streaming on the device (issue 19): rows in, a score and flag per completed window, the same
numbers as batch scoring of the whole series, however the rows arrive."""
import subprocess
import sys

import numpy as np
import pytest

from edgeae import runtime
from edgeae.data.windows import make_windows
from edgeae.detection.threshold import calibrate_threshold
from edgeae.contract.errors import DataError, ShapeError, UsageError
from edgeae.runtime.streaming import StreamScorer

from .conftest import EXPORTED


@pytest.fixture(scope="module")
def model():
    return runtime.load(EXPORTED, "cpu")


@pytest.fixture(scope="module")
def series(model):
    """The seed's ramp, repeated, with noise (kept in the training range), and five values of feature 2 beyond it."""
    rng = np.random.default_rng(7)
    rows = np.tile((np.arange(50) / 50).reshape(10, 5), (30, 1)) + rng.normal(0, 0.01, (300, 5))
    rows = np.clip(rows, *model.clip_bounds)
    rows[200:210, 2] += 0.5
    return rows


def _stream(scorer, series, sizes):
    """Push `series` in chunks of the given sizes (cycled), a size of 1 as one (features,) row."""
    out, at, i = [], 0, 0
    while at < len(series):
        size = sizes[i % len(sizes)]
        out += scorer.push(series[at] if size == 1 else series[at:at + size])
        at, i = at + size, i + 1
    return out


@pytest.mark.parametrize("sizes, stride", [
    ((1,), None), ((3, 7, 1, 130, 2), None), ((300,), None), ((128, 1, 171), None), ((4, 9), 3), ((1,), 13),
])
def test_stream_equals_batch_scoring_window_by_window(model, series, sizes, stride):
    windows = make_windows(series, model.timesteps, stride or model.stride)
    # Half the windows flagged; placed between scores, as a calibrated threshold is (one *on* a score
    # would flip with the float32 step between graphs).
    threshold = calibrate_threshold(model.score(windows).scores, 0.5)
    scorer = StreamScorer(model, stride=stride, threshold=threshold)
    streamed = _stream(scorer, series, sizes)
    alone = model.score(windows, chunk=1, threshold=threshold)  # every window on the one-window graph, as streamed
    assert [w.start for w in streamed] == list(range(0, len(series) - model.timesteps + 1, stride or model.stride))
    assert [w.end - w.start for w in streamed] == [model.timesteps - 1] * len(streamed)
    np.testing.assert_array_equal([w.score for w in streamed], alone.scores)
    np.testing.assert_array_equal([w.anomaly for w in streamed], alone.flags)
    np.testing.assert_array_equal(np.stack([w.contributions for w in streamed]), alone.contributions)
    # Batches of 2-256 run on the clean and unrolled graphs, whose reconstructions differ from the
    # one-window graph's by up to a float32 step (delta): a score s moves by at most 2 sqrt(s) delta + delta^2.
    batch = model.score(windows, threshold=threshold)
    delta = 2 * np.finfo(np.float32).eps * max(1.0, float(np.abs(series).max()))
    bound = 2 * np.sqrt(batch.scores) * delta + delta ** 2
    assert (np.abs(np.array([w.score for w in streamed]) - batch.scores) <= bound).all()
    np.testing.assert_array_equal([w.anomaly for w in streamed], batch.flags)
    assert scorer.rows_seen == len(series)


def test_rows_already_scored_are_let_go(model, series):
    scorer = StreamScorer(model)
    _stream(scorer, series, (37,))
    assert len(scorer._held) == model.timesteps - 1  # what the next window needs, no more
    far = StreamScorer(model, stride=25)
    _stream(far, series[:40], (40,))  # windows at 0 and 25; the next starts at row 50, not yet read
    assert len(far._held) == 0


def test_drift_counts_each_row_once(model, series):
    scorer = StreamScorer(model)
    assert scorer.drift is None
    _stream(scorer, series, (11, 1))
    whole = model.drift(series)
    assert scorer.drift.values == len(series)
    np.testing.assert_array_equal(scorer.drift.above, whole.above)
    np.testing.assert_array_equal(scorer.drift.share, whole.share)
    assert scorer.drift.drifted == [2] and "'2' 1.7% above (up to 1.43208 > 0.94)" in scorer.drift.warning()


def test_a_model_without_threshold_scores_without_flags(series):
    scorer = StreamScorer(runtime.load(EXPORTED / "autoencoder.onnx", "cpu"))  # one file: no manifest, no threshold
    assert [w.anomaly for w in scorer.push(series[:12])] == [None, None, None]


@pytest.mark.parametrize("rows, error, words", [
    (np.zeros(4), ShapeError, r"expected \(5,\) or \(rows, 5\), got \(4,\)"),
    (np.zeros((2, 2, 5)), ShapeError, r"got \(2, 2, 5\)"),
    ([[0.1, 0.2, np.inf, 0.3, 0.4]], DataError, "row 0 of this chunk, feature 2: inf is not finite"),
    (np.array([[1e39] * 5]), DataError, "does not fit in float32"),
    ("0.1,0.2", DataError, "got str"),
    (np.array([[True] * 5]), DataError, "expected real numbers"),
    ([[1, 2], [3]], ShapeError, "could not read one"),
])
def test_bad_rows_are_refused_and_the_stream_goes_on(model, series, rows, error, words):
    scorer = StreamScorer(model)
    scorer.push(series[:5])
    with pytest.raises(error, match=words):
        scorer.push(rows)
    assert scorer.rows_seen == 5
    assert [w.start for w in scorer.push(series[5:12])] == [0, 1, 2]


@pytest.mark.parametrize("kwargs, words", [
    ({"stride": 0}, "stride must be a whole number"), ({"stride": 1.5}, "stride must be a whole number"),
    ({"threshold": "high"}, "threshold must be a number"), ({"model": "exported"}, "model must be a model set"),
])
def test_bad_settings_are_refused(model, kwargs, words):
    with pytest.raises(UsageError, match=words):
        StreamScorer(**{"model": model, **kwargs})


def test_streaming_loads_no_tensorflow():
    code = ("import sys, edgeae.runtime.streaming; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
