"""The anomaly threshold: calibrated on validation windows, stored in the manifest, and meaning
the same thing on the device (onnxruntime) as in training (Keras)."""
import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeae import runtime
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.cli import main
from edgeae.data.series import load_csv
from edgeae.data.windows import make_windows
from edgeae.detection.quality import average_precision, detection_quality, evaluate, roc_auc, suggest_thresholds
from edgeae.detection.threshold import calibrate_threshold, keras_scores, set_threshold
from edgeae.contract.errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError
from edgeae.trainer.model import TrainConfig
from edgeae.trainer import training as trainer

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
    out, _ = publish.export(training, folder / "export", ExportOptions(providers="cpu"))
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
                             "variants", "graphs", "outside_training", "golden"}
    assert detector["outside_training"]["share"] < 0.01  # a stationary sensor: calibrated on data like its training
    assert set(detector["variants"]) == {"plain", "fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "ort"}
    assert detector["calibrated_on"] == "validation"
    assert detector["quantile"] == 0.95
    assert detector["windows"] == len(training.validation_windows) == (120 - 8) // 2 + 1
    manifest = json.loads((out / "manifest.json").read_text())
    scale = np.asarray(manifest["preprocessing"]["scale"], np.float64)
    x = np.asarray(training.validation_windows, np.float32)

    def scores_of(reconstruction):  # the documented score, in numpy: mean squared error in the model's units
        return np.mean(((x.astype(np.float64) - reconstruction.astype(np.float64)) * scale) ** 2, axis=(1, 2))

    # fp32: Keras's scores of the validation windows; each variant: its own file's, run by plain onnxruntime.
    sources = {None: training.reconstruct(x)}
    for name in detector["variants"]:
        session = ort.InferenceSession(str(out / manifest["variants"]["autoencoder"][name]["file"]),
                                       providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        batches = [x[i:i + 1] for i in range(len(x))] if feed.shape[0] == 1 else [x]  # the one-window graph
        sources[name] = np.concatenate([session.run(None, {feed.name: b})[0] for b in batches])
    for name, reconstruction in sources.items():
        record = detector if name is None else detector["variants"][name]
        scores = np.sort(scores_of(reconstruction))
        # The rule calibrate_threshold documents: k = ceil(q * n) scores stay at or below the threshold, which
        # lies midway between the k-th smallest and the next larger one (ties stay on one side).
        k = math.ceil(0.95 * len(scores))
        kept, above = scores[k - 1], scores[k:][scores[k:] > scores[k - 1]]
        assert len(above), name  # 57 noisy windows: the top 5% are not all tied
        # Same float64 formula on the same windows: equal up to Keras's and onnxruntime's own run-to-run
        # reproducibility, far below the gap between two calibration scores.
        assert record["threshold"] == pytest.approx((kept + above[0]) / 2, rel=1e-9, abs=0), name
        assert kept < record["threshold"] < above[0], name
        assert record["flagged"] == int((scores > record["threshold"]).sum()) <= 0.05 * len(scores), name
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
    assert int(device_flags.sum()) == model.manifest.detector.flagged


def test_faults_score_above_the_threshold(sensor_export):
    _, out = sensor_export
    values, labels = _new_readings()
    detection, scores = evaluate(runtime.load(out, "cpu"), values, labels, stride=1)
    assert len(scores) == detection.windows == 200 - 8 + 1
    assert detection.roc_auc > 0.9
    assert detection.recall > 0.5
    ranges = detection.ranges  # on the 200 rows, each with the highest score of its windows
    assert (ranges.rows, ranges.anomalous_rows, ranges.events, ranges.buffer) == (200, 14, 2, 8)
    assert ranges.vus_pr > 0.5 and ranges.vus_roc > 0.9
    assert ranges.event_recall == 1.0 and 0 < ranges.affiliation_f1 <= 1


def test_no_validation_part_falls_back_to_the_training_windows(tiny_export):
    detector = json.loads((tiny_export / "manifest.json").read_text())["detector"]
    assert detector["calibrated_on"] == "training"
    assert detector["windows"] == 1 and detector["flagged"] == 0
    assert "no validation windows" in detector["note"]
    assert detector["threshold"] > detector["scores"]["max"]


def test_export_can_recalibrate_at_another_quantile(sensor_export, tmp_path):
    training, out = sensor_export
    lower, _ = publish.export(training, tmp_path / "q50",
                              ExportOptions(providers="cpu", threshold_quantile=0.5, variants=()))
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
                                       "--labels", "is_anomaly", "--stride", "1", "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["windows"] == 193 and report["threshold"] == runtime.load(out, "cpu").threshold
    assert 0.9 < report["roc_auc"] <= 1.0
    measures = ("vus_pr", "vus_roc", "event_f1", "affiliation_f1", "point_adjusted_f1")
    assert report["ranges"]["rows"] == 200 and all(0 <= report["ranges"][m] <= 1 for m in measures)


def test_cli_refuses_an_impossible_threshold_quantile(tmp_path):
    result = CliRunner().invoke(main, ["train", "--threshold-quantile", "1.5", "--quiet", "--out", str(tmp_path / "r")])
    assert result.exit_code == EXIT_USAGE
    assert "threshold quantile must be in (0, 1]" in result.stderr
    assert not (tmp_path / "r").exists()


def test_evaluate_reads_the_trained_columns_and_never_the_label(sensor_export, tmp_path):
    """The docs' example (how-to/thresholds): no --columns, a label column beside the features."""
    _, out = sensor_export
    values, labels = _new_readings()
    _write_csv(tmp_path / "new.csv", values, labels)
    result = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--labels", "is_anomaly",
                                       "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["windows"] == 97  # the model's stride (2), as score cuts it


# ---------------------------------------------------------------- thresholds from labels (issue 19)


def test_suggested_thresholds_flag_what_they_promise():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    labels = np.array([True, False, True, False, False, False])
    suggested = suggest_thresholds(scores, labels, precision=0.9)
    assert suggested.best_f1.threshold == pytest.approx(0.65) and suggested.best_f1.f1 == pytest.approx(0.8)
    assert suggested.for_precision.threshold == pytest.approx(0.85) and suggested.for_precision.recall == 0.5
    for choice in (suggested.best_f1, suggested.for_precision):
        d = detection_quality(scores, labels, choice.threshold)
        assert (d.precision, d.recall, d.f1) == (choice.precision, choice.recall, choice.f1)
        assert choice.threshold not in scores
    assert suggest_thresholds(scores, ~labels, precision=1.0).for_precision is None  # the top window is normal


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=30),
       precision=st.floats(0.05, 1.0))
def test_the_precision_threshold_is_the_lowest_that_reaches_it(pairs, precision):
    scores = np.array([p[0] for p in pairs], dtype=float) / 4
    labels = np.array([p[1] for p in pairs])
    if not labels.any():
        with pytest.raises(DataError, match="at least one anomalous"):
            suggest_thresholds(scores, labels, precision)
        return
    if not (scores > 0).any():
        with pytest.raises(DataError):
            suggest_thresholds(scores, labels, precision)
        return
    suggested = suggest_thresholds(scores, labels, precision)
    candidates = [t for t in np.unique(np.r_[scores, 0.0]) - 1e-9 if t >= 0] + list(np.unique(scores))
    reaching = [t for t in candidates if (scores > t).any() and (labels[scores > t]).mean() >= precision]
    if suggested.for_precision is None:
        assert not reaching
    else:
        flagged = scores > suggested.for_precision.threshold
        assert labels[flagged].mean() >= precision
        assert flagged.sum() == max((scores > t).sum() for t in reaching)  # nothing lower reaches it

    def f1(t):
        tp, flagged = (labels & (scores > t)).sum(), (scores > t).sum()
        return 2 * tp / (flagged + labels.sum())  # 2PR / (P + R)

    assert suggested.best_f1.f1 == pytest.approx(max(f1(t) for t in candidates))
    assert suggested.best_f1.f1 == pytest.approx(f1(suggested.best_f1.threshold))


@pytest.mark.parametrize("precision", [0, 1.5, -0.1, True, "0.9", float("nan")])
def test_an_impossible_precision_is_refused(precision):
    with pytest.raises(UsageError, match=r"precision must be in \(0, 1\]"):
        suggest_thresholds(np.ones(3), np.array([True, False, False]), precision)


def test_a_chosen_threshold_is_recorded_with_its_source(sensor_export):
    _, out = sensor_export
    record = runtime.load(out, "cpu").manifest.detector  # a read manifest's record: set_threshold copies its JSON
    chosen = set_threshold(record, 0.25, "evaluate --precision 0.9 on new.csv", calibration_scores=[0.1, 0.3])
    assert chosen["threshold"] == 0.25 and chosen["flagged"] == 1
    assert chosen["chosen"] == {"by": "user", "source": "evaluate --precision 0.9 on new.csv",
                                "calibrated_threshold": record.threshold}
    assert all(v == {"threshold": 0.25} for v in chosen["variants"].values())
    assert all(g["threshold"] == 0.25 and g["file"] for g in chosen["graphs"].values())
    again = set_threshold(chosen, 0.5, "by hand")
    assert again["chosen"]["calibrated_threshold"] == record.threshold and "flagged" not in again
    assert record.threshold != 0.25 and record.details["threshold"] == record.threshold  # left as it was
    for bad, words in ((-1.0, "at least 0"), (float("nan"), "finite"), ("0.3", "must be a number")):
        with pytest.raises(UsageError, match=words):
            set_threshold(record, bad, "x")
    with pytest.raises(UsageError, match="where the threshold comes from"):
        set_threshold(record, 0.3, " ")


def test_cli_evaluate_suggests_thresholds_and_uses_the_models_stride(sensor_export, tmp_path):
    _, out = sensor_export
    values, labels = _new_readings()
    _write_csv(tmp_path / "new.csv", values, labels)
    model = runtime.load(out, "cpu")
    result = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--labels", "is_anomaly",
                                       "--precision", "0.8", "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert model.stride == 2 and report["windows"] == 97  # (200 - 8) // 2 + 1: the model's stride, as score
    read = load_csv(tmp_path / "new.csv", ("temp", "pressure", "vibration")).values
    detection, _ = evaluate(model, read, labels, precision=0.8)
    assert report["suggestions"]["for_precision"]["threshold"] == detection.suggestions.for_precision.threshold
    assert report["suggestions"]["for_precision"]["precision"] >= 0.8
    text = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--labels", "is_anomaly"])
    assert "suggested threshold, best F1" in text.stdout and "lowest with precision >= 0.9" in text.stdout
    for words in ("VUS-PR", "VUS-ROC", "event-wise F1", "affiliation F1", "point-adjusted F1"):
        assert words in text.stdout
    assert "optimistic" in text.stdout.split("point-adjusted F1")[1].splitlines()[0]


@pytest.mark.parametrize("args, code, words", [
    (["--precision", "0"], EXIT_USAGE, "precision must be in (0, 1]"),
    (["--precision", "1.01"], EXIT_USAGE, "precision must be in (0, 1]"),
    (["--labels", "normal"], EXIT_DATA, "needs anomalous and normal windows; got 0 and 97"),
])
def test_cli_evaluate_refuses_in_one_line(sensor_export, tmp_path, args, code, words):
    _, out = sensor_export
    values, labels = _new_readings()
    _write_csv(tmp_path / "new.csv", values, labels)
    text = (tmp_path / "new.csv").read_text().splitlines()
    (tmp_path / "new.csv").write_text("\n".join([text[0] + ",normal"] + [r + ",0" for r in text[1:]]) + "\n")
    result = CliRunner().invoke(main, ["evaluate", str(out), str(tmp_path / "new.csv"), "--labels", "is_anomaly",
                                       "--provider", "cpu", *args])
    assert result.exit_code == code, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- columns by name, time, parts (issue 19)


def _score_cli(out, data, *args):
    return CliRunner().invoke(main, ["score", str(out), str(data), "--provider", "cpu", *map(str, args)])


def test_columns_in_another_order_are_matched_by_name(sensor_export, tmp_path):
    _, out = sensor_export
    values, _ = _new_readings()
    _write_csv(tmp_path / "new.csv", values)
    read = load_csv(tmp_path / "new.csv", ("temp", "pressure", "vibration")).values
    expected = runtime.load(out, "cpu").score(make_windows(read, 8, 2))
    shuffled = tmp_path / "shuffled.csv"  # the header in another order, no --columns
    shuffled.write_text("vibration,temp,pressure\n" + "\n".join(
        ",".join(f"{v:.6f}" for v in row[[2, 0, 1]]) for row in values) + "\n")
    for data, args in ((tmp_path / "new.csv", ("--columns", "pressure,vibration,temp")), (shuffled, ())):
        result = _score_cli(out, data, "--json", *args)
        assert result.exit_code == 0, result.stderr
        scores = json.loads(result.stdout)
        np.testing.assert_array_equal(scores["score"], expected.scores)
        np.testing.assert_array_equal(scores["score_temp"], expected.contributions[:, 0])


def test_a_model_column_in_the_wrong_place_is_refused(sensor_export, tmp_path):
    _, out = sensor_export
    values, _ = _new_readings()
    _write_csv(tmp_path / "new.csv", values)
    text = (tmp_path / "new.csv").read_text()
    (tmp_path / "more.csv").write_text(text.replace("temp,pressure,vibration", "temp,pressure,vibration,extra")
                                       .replace("\n", ",1\n").replace("extra,1\n", "extra\n", 1))
    result = _score_cli(out, tmp_path / "more.csv", "--columns", "pressure,extra,vibration")
    assert result.exit_code == EXIT_DATA
    assert "column 'pressure' would be the model's feature 1, but it was trained as feature 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    renamed = _score_cli(out, tmp_path / "more.csv", "--columns", "temp,extra,vibration")  # a stand-in, in place
    assert renamed.exit_code == 0, renamed.stderr


def test_time_column_and_parts_of_the_score(sensor_export, tmp_path):
    _, out = sensor_export
    values, _ = _new_readings(40)
    stamps = [f"2026-01-01 00:{i:02d}:00" for i in range(40)]
    (tmp_path / "t.csv").write_text("time,temp,pressure,vibration\n" + "\n".join(
        f"{stamps[i]}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)) + "\n")
    result = _score_cli(out, tmp_path / "t.csv", "--time-column", "time", "-o", tmp_path / "s.csv")
    assert result.exit_code == 0, result.stderr
    import csv

    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 17 and rows[1]["window_start"] == "2"
    assert (rows[1]["start_time"], rows[1]["end_time"]) == (stamps[2], stamps[9])
    for row in rows:
        parts = [float(row[f"score_{name}"]) for name in ("temp", "pressure", "vibration")]
        assert sum(parts) == pytest.approx(float(row["score"]), rel=1e-12)
    for args, code, words in ((("--time-column", "when"), EXIT_DATA, "no time column 'when'"),
                              (("--time-column", "temp", "--columns", "temp,pressure,vibration"), 0, "")):
        result = _score_cli(out, tmp_path / "t.csv", *args)
        assert result.exit_code == code and words in result.stderr
    np.save(tmp_path / "v.npy", values)
    result = _score_cli(out, tmp_path / "v.npy", "--time-column", "time")
    assert result.exit_code == EXIT_USAGE and "read from a CSV" in result.stderr


def test_export_threshold_holds_for_every_precision_and_records_its_source(tiny_training, tmp_path):
    """`export --threshold` (a value chosen from labels): the runtime, every variant and every
    detector graph flag against it; the calibrated one stays in the record, and verify still agrees."""
    from edgeae.verifier import verification
    from edgeae.contract.errors import UsageError

    out, _ = publish.export(tiny_training, tmp_path / "chosen", ExportOptions(
        providers="cpu", threshold=0.02, threshold_source="best F1 on labels.csv", variants=("int8",)))
    manifest = json.loads((out / "manifest.json").read_text())
    d = manifest["detector"]
    assert d["threshold"] == 0.02 and d["chosen"]["source"] == "best F1 on labels.csv"
    assert d["chosen"]["calibrated_threshold"] > 0 and d["chosen"]["calibrated_threshold"] != 0.02
    assert {v["threshold"] for v in d["variants"].values()} == {0.02}
    assert {g["threshold"] for g in d["graphs"].values()} == {0.02} and set(d["graphs"]) == {"fp32", "int8"}
    assert runtime.load(out, "cpu").threshold == 0.02
    assert verification.verify(out, providers="cpu", against="stored")
    with pytest.raises(UsageError, match="not both"):
        publish.export(tiny_training, tmp_path / "both",
                       ExportOptions(providers="cpu", threshold=0.02, threshold_quantile=0.5))
    with pytest.raises(UsageError, match="threshold"):
        publish.export(tiny_training, tmp_path / "negative", ExportOptions(providers="cpu", threshold=-1.0))
    assert not (tmp_path / "both").exists() and not (tmp_path / "negative").exists()
