"""The anomaly threshold: calibrated on validation windows, stored in the manifest, and meaning
the same thing on the device (onnxruntime) as in training (Keras)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeae import publish, runtime
from edgeae.cli import main
from edgeae.data import make_windows
from edgeae.detector import (
    average_precision, calibrate_threshold, detection_quality, evaluate, keras_scores, roc_auc,
)
from edgeae.errors import EXIT_USAGE, DataError, UsageError
from edgeae.model import TrainConfig
from edgeae import training as trainer

# ---------------------------------------------------------------- calibration rule


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(0, 1e3).map(lambda v: round(v, 6)), min_size=1, max_size=80),
       quantile=st.floats(0.01, 1.0))
def test_threshold_flags_at_most_the_quantiles_tail_and_never_sits_on_a_score(scores, quantile):
    s = np.array(scores)
    threshold = calibrate_threshold(s, quantile)
    flagged = int((s > threshold).sum())
    assert flagged <= (1 - quantile) * len(s) + 1e-9
    assert threshold not in s
    kept = np.sort(s)[len(s) - flagged - 1]  # the largest unflagged score
    assert kept < threshold


def test_threshold_examples():
    assert calibrate_threshold(np.array([1.0, 2.0, 3.0, 4.0]), 0.5) == 2.5
    assert calibrate_threshold(np.array([4.0, 1.0, 3.0, 2.0]), 1.0) == 4.5  # above the max by half the last gap
    assert calibrate_threshold(np.array([1.0, 1.0, 1.0, 2.0]), 0.5) == 1.5  # ties stay on one side
    assert calibrate_threshold(np.arange(100.0), 0.99) == 98.5  # 99 of 100 kept, exactly: no float slop
    assert calibrate_threshold(np.array([0.2]), 0.99) == pytest.approx(0.3)


@pytest.mark.parametrize("quantile", [0.0, -0.5, 1.5])
def test_impossible_quantile(quantile):
    with pytest.raises(UsageError, match="threshold quantile"):
        calibrate_threshold(np.ones(3), quantile)
    with pytest.raises(UsageError, match="threshold quantile"):
        TrainConfig(threshold_quantile=quantile)


def test_no_scores_to_calibrate_on():
    with pytest.raises(DataError):
        calibrate_threshold(np.array([]), 0.9)


# ---------------------------------------------------------------- detection measures


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_roc_auc_is_the_pairwise_win_rate(pairs):
    scores = np.array([p[0] for p in pairs], dtype=float)
    labels = np.array([p[1] for p in pairs])
    if labels.all() or not labels.any():
        with pytest.raises(DataError):
            roc_auc(scores, labels)
        return
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_average_precision_and_flag_counts():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    labels = np.array([True, False, True, False, False, False])
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision(scores[::-1] * 0 + 1, labels) == pytest.approx(2 / 6)  # all tied: the base rate
    d = detection_quality(scores, labels, threshold=0.65)
    assert (d.true_positives, d.false_positives, d.false_negatives, d.true_negatives) == (2, 1, 0, 3)
    assert (d.precision, d.recall) == (pytest.approx(2 / 3), 1.0)
    assert d.f1 == pytest.approx(0.8)
    assert d.roc_auc == 1.0 - 1 / 8


# ---------------------------------------------------------------- an export calibrated on validation windows


def _sensors(rows: int, seed: int) -> np.ndarray:
    t = np.arange(rows)
    rng = np.random.default_rng(seed)
    clean = np.column_stack([20 + 5 * np.sin(t / 6), 1000 + 40 * np.cos(t / 10), np.sin(t / 4) * np.cos(t / 15)])
    return clean + rng.normal(0, [0.2, 2.0, 0.02], (rows, 3))


def _write_csv(path, values, labels=None):
    header = "temp,pressure,vibration" + (",is_anomaly" if labels is not None else "")
    rows = [",".join(f"{v:.6f}" for v in row) + (f",{int(labels[i])}" if labels is not None else "")
            for i, row in enumerate(values)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def sensor_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensors")
    _write_csv(folder / "train.csv", _sensors(480, 1))
    config = TrainConfig(timesteps=8, features=3, units=8, epochs=12, learning_rate=0.01, stride=2,
                         validation_fraction=0.25, patience=5, scaling="standard", clip_quantiles=(0.005, 0.995),
                         threshold_quantile=0.95, seed=4)
    training = trainer.train(config, folder / "train.csv")
    out, _ = publish.export(training, folder / "export", providers="cpu")
    return training, out


def _new_readings(rows=200):
    """Fresh readings of the same sensors, with two injected faults, and their labels."""
    values = _sensors(rows, 99)
    labels = np.zeros(rows, dtype=bool)
    values[60:64, 0] += 15.0  # a temperature spike
    values[140:150, 1] -= 150.0  # a pressure drop
    labels[60:64] = labels[140:150] = True
    return values, labels


def test_manifest_detector_record(sensor_export):
    training, out = sensor_export
    detector = json.loads((out / "manifest.json").read_text())["detector"]
    assert set(detector) == {"score", "rule", "threshold", "quantile", "calibrated_on", "windows", "flagged", "scores",
                             "variants", "graphs"}
    assert set(detector["variants"]) == {"plain", "fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "ort"}
    for record in detector["variants"].values():
        assert record["threshold"] > 0 and record["flagged"] <= 0.05 * detector["windows"]
    assert detector["calibrated_on"] == "validation"
    assert detector["quantile"] == 0.95
    assert detector["windows"] == len(training.validation_windows) == (120 - 8) // 2 + 1
    assert detector["flagged"] <= 0.05 * detector["windows"]
    assert detector["scores"]["min"] <= detector["scores"]["median"] <= detector["scores"]["max"]
    assert runtime.load(out, "cpu").threshold == detector["threshold"]


def test_training_and_device_flags_agree_on_real_windows(sensor_export):
    """Keras scores and onnxruntime scores, each against the stored threshold: the same flags."""
    training, out = sensor_export
    model = runtime.load(out, "cpu")
    new, _ = _new_readings()
    for name, windows in (("validation", training.validation_windows), ("training", training.train_windows),
                          ("new readings with faults", make_windows(new, 8, 1))):
        device = model.score(windows)
        keras_side = keras_scores(training, windows)
        np.testing.assert_allclose(device.scores, keras_side, rtol=1e-4, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(device.flags, keras_side > model.threshold, err_msg=name)
    device_flags = model.score(training.validation_windows).flags
    assert int(device_flags.sum()) == model.manifest["detector"]["flagged"]


def test_faults_score_above_the_threshold(sensor_export):
    _, out = sensor_export
    values, labels = _new_readings()
    detection, scores = evaluate(runtime.load(out, "cpu"), values, labels)
    assert len(scores) == detection.windows == 200 - 8 + 1
    assert detection.roc_auc > 0.9
    assert detection.recall > 0.5


def test_no_validation_part_falls_back_to_the_training_windows(tiny_export):
    detector = json.loads((tiny_export / "manifest.json").read_text())["detector"]
    assert detector["calibrated_on"] == "training"
    assert detector["windows"] == 1 and detector["flagged"] == 0
    assert "no validation windows" in detector["note"]
    assert detector["threshold"] > detector["scores"]["max"]


def test_export_can_recalibrate_at_another_quantile(sensor_export, tmp_path):
    training, out = sensor_export
    lower, _ = publish.export(training, tmp_path / "q50", providers="cpu", threshold_quantile=0.5, variants=())
    a = json.loads((out / "manifest.json").read_text())["detector"]
    b = json.loads((lower / "manifest.json").read_text())["detector"]
    assert b["quantile"] == 0.5 and b["threshold"] < a["threshold"]
    assert b["flagged"] == b["windows"] // 2


def test_cli_score_and_evaluate_use_the_manifest_threshold(sensor_export, tmp_path):
    _, out = sensor_export
    values, labels = _new_readings()
    _write_csv(tmp_path / "new.csv", values, labels)
    columns = "temp,pressure,vibration"
    result = CliRunner().invoke(main, ["score", str(out), str(tmp_path / "new.csv"), "--columns", columns,
                                       "--stride", "1", "--provider", "cpu", "-o", str(tmp_path / "scores.csv")])
    assert result.exit_code == 0, result.output
    table = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    expected = runtime.load(out, "cpu").score(make_windows(values, 8, 1))
    np.testing.assert_array_equal(table[:, 1].astype(bool), expected.flags)
    result = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--columns", columns,
                                       "--labels", "is_anomaly", "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["windows"] == 193 and report["threshold"] == runtime.load(out, "cpu").threshold
    assert 0.9 < report["roc_auc"] <= 1.0


def test_cli_refuses_an_impossible_threshold_quantile(tmp_path):
    result = CliRunner().invoke(main, ["train", "--threshold-quantile", "1.5", "--quiet", "--out", str(tmp_path / "r")])
    assert result.exit_code == EXIT_USAGE
    assert "threshold quantile must be in (0, 1]" in result.stderr
    assert not (tmp_path / "r").exists()


def test_evaluate_reads_the_trained_columns_and_never_the_label(sensor_export, tmp_path):
    """The README's example: no --columns, a label column beside the features."""
    _, out = sensor_export
    values, labels = _new_readings()
    _write_csv(tmp_path / "new.csv", values, labels)
    result = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--labels", "is_anomaly",
                                       "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["windows"] == 193
