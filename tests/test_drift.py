"""Drift and the parts of a score (issue 19): values outside the training range are counted and
warned about, and each feature's part of a window's score adds up to the score exactly."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract.errors import EXIT_DATA, ShapeError

from .conftest import EXPORTED


@pytest.fixture(scope="module")
def model():
    return runtime.load(EXPORTED, "cpu")


def test_the_model_says_what_it_reads(model):
    assert (model.window, model.stride, model.features) == (10, 1, 5)
    assert model.feature_names is None  # the seed records no column names
    low, high = model.clip_bounds
    np.testing.assert_array_equal(low, np.asarray(model.manifest.preprocessing["clip_low"], np.float32))
    np.testing.assert_array_equal(high, np.asarray(model.manifest.preprocessing["clip_high"], np.float32))


def test_parts_sum_to_the_score(model, rng):
    windows = rng.uniform(0, 1, (300, 10, 5))
    result = model.score(windows)
    assert result.contributions.shape == (300, 5) and (result.contributions >= 0).all()
    # the score is one mean in the detector graph's order; the parts sum to it within float64 rounding
    np.testing.assert_allclose(result.contributions.sum(axis=1), result.scores, rtol=1e-13, atol=0)
    x = windows.astype(np.float32).astype(np.float64)
    error = (x - model.reconstruct(windows).astype(np.float64)) ** 2
    np.testing.assert_allclose(result.contributions, error.mean(axis=1) / 5, rtol=1e-12)  # the mean over steps, /features
    one = model.score(windows[0])
    assert one.scores.shape == () and one.contributions.shape == (5,)
    np.testing.assert_allclose(one.contributions.sum(), one.scores, rtol=1e-13, atol=0)


def test_one_bad_sensor_owns_its_score(model):
    window = (np.arange(50) / 50).reshape(10, 5)
    broken = window.copy()
    broken[:, 3] -= 0.3  # a sensor reading low, inside the training range
    parts = model.score(broken).contributions
    assert int(np.argmax(parts)) == 3 and parts[3] > 0.75 * parts.sum()


def test_drift_counts_values_outside_the_clip_bounds(model):
    window = (np.arange(50) / 50).reshape(10, 5)
    inside = model.score(window).drift
    assert not inside and inside.warning() is None and inside.values == 10 and inside.share.max() == 0
    shifted = window.copy()
    shifted[:4, 1] += 2.0  # 4 of 10 values of feature 1 above its bound
    shifted[0, 4] = -1.0  # 1 of 10 of feature 4 below
    drift = model.score(np.stack([shifted, window])).drift
    np.testing.assert_array_equal(drift.above, [0, 4, 0, 0, 0])
    np.testing.assert_array_equal(drift.below, [0, 0, 0, 0, 1])
    assert drift.values == 20 and drift.drifted == [1, 4]
    assert "'1' 20.0% above (up to 2.32 > 0.92)" in drift.warning()
    assert "'4' 5.0% below (down to -1 < 0.08)" in drift.warning()
    record = drift.to_dict()["features"]["1"]
    assert record["share_outside"] == 0.2 and record["highest"] == pytest.approx(2.32)
    at_bound = np.broadcast_to(model.clip_bounds[1], (10, 5))  # on the bound is inside
    assert not model.score(at_bound).drift
    with pytest.raises(ShapeError, match="5 features"):
        model.drift(np.zeros((3, 4)))


def test_cli_warns_on_drift_in_stderr_and_json(tmp_path):
    rows = np.tile((np.arange(50) / 50).reshape(10, 5), (3, 1))
    rows[:, 0] += 5.0  # every value of the first sensor beyond the training range (a rising trend)
    (tmp_path / "d.csv").write_text("a,b,c,d,e\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    result = CliRunner().invoke(main, ["score", str(EXPORTED), str(tmp_path / "d.csv"), "--json", "--provider", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: drift: values outside the training range ('a' 100.0% above")
    out = json.loads(result.stdout)
    assert out["drift"]["features"]["a"]["share_outside"] == 1.0 and out["drift"]["warning"].startswith("drift:")
    assert len(out["score"]) == len(out["score_a"]) == 21
    calm = CliRunner().invoke(main, ["score", str(EXPORTED), str(tmp_path / "d.csv"), "--columns", "b,c,d,e,b"])
    # A column twice is refused, as before: bad data (a DataError, exit 3), in one line naming the column.
    assert calm.exit_code == EXIT_DATA, calm.output
    assert calm.stderr.strip().splitlines()[-1] == "error: d.csv: column 'b' is used twice; name each feature column once"
    assert [line for line in calm.stderr.splitlines() if line.startswith("error:")] == calm.stderr.strip().splitlines()[-1:]
