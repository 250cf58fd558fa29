"""Bring your own Keras model (issue 18): sequence autoencoders edgeae did not train, saved as
.keras/.h5, exported with tf2onnx, proven against Keras on onnxruntime, and refused by layer
name when they are outside the family."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.exporter import publish
from edgeae.exporter.options import OPTIMIZE_DEFAULTS, ExportOptions, UserModelOptions
from edgeae.cli.app import main
from edgeae.contract.errors import EXIT_USAGE, ShapeError, UnsupportedModelError, UsageError
from edgeae.contract.parity import fp32_tolerance
from edgeae.verifier.verification import verify
from edgeae.data.windows import make_windows

T, F = 6, 3


def _keras():
    from edgeae.trainer.model import import_keras

    return import_keras()[1]


def _autoencoder(kind: str):
    """The small models of the issue: each kind a layout users save from notebooks."""
    keras = _keras()
    layers = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((T, F))
    if kind == "single-lstm":  # laid out like edgeae's own
        x = layers.LSTM(8, name="enc")(inputs)
        x = layers.RepeatVector(T)(x)
        x = layers.LSTM(8, return_sequences=True)(x)
        out = layers.TimeDistributed(layers.Dense(F))(x)
    elif kind in ("stacked-lstm", "stacked-gru", "dropout"):
        cell = layers.GRU if kind == "stacked-gru" else layers.LSTM
        drop = kind == "dropout"
        x = cell(8, return_sequences=True, name="enc_1")(inputs)
        x = layers.Dropout(0.2)(x) if drop else x
        x = cell(4, recurrent_dropout=0.1 if drop else 0.0, name="enc_2")(x)
        x = layers.RepeatVector(T)(x)
        x = cell(4, return_sequences=True)(x)
        x = layers.Dropout(0.2)(x) if drop else x
        x = cell(8, return_sequences=True)(x)
        out = layers.TimeDistributed(layers.Dense(F))(x)
    elif kind == "gru":
        x = layers.GRU(6)(inputs)
        x = layers.RepeatVector(T)(x)
        x = layers.GRU(6, return_sequences=True)(x)
        out = layers.Dense(F)(x)
    elif kind == "bidirectional":
        x = layers.Bidirectional(layers.LSTM(4))(inputs)
        x = layers.RepeatVector(T)(x)
        x = layers.Bidirectional(layers.LSTM(4, return_sequences=True))(x)
        out = layers.TimeDistributed(layers.Dense(F))(x)
    elif kind == "conv":  # outside the family
        x = layers.Conv1D(4, 3, padding="same", name="conv_features")(inputs)
        x = layers.LSTM(4)(x)
        x = layers.RepeatVector(T)(x)
        x = layers.LSTM(4, return_sequences=True)(x)
        out = layers.TimeDistributed(layers.Dense(F))(x)
    elif kind == "lambda":
        x = layers.Lambda(lambda v: v * 2.0, name="doubler")(inputs)
        x = layers.LSTM(4)(x)
        x = layers.RepeatVector(T)(x)
        out = layers.TimeDistributed(layers.Dense(F))(layers.LSTM(4, return_sequences=True)(x))
    else:
        raise AssertionError(kind)
    return keras.Model(inputs, out, name=kind)


FAMILY = ("single-lstm", "stacked-lstm", "stacked-gru", "dropout", "gru", "bidirectional")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for kind in (*FAMILY, "conv", "lambda"):
        paths[kind] = folder / f"{kind}.keras"
        _autoencoder(kind).save(paths[kind])
    return paths


@pytest.fixture(scope="module")
def exports(saved, tmp_path_factory):
    """Each model of the family exported without data: no scaling, no threshold."""
    root = tmp_path_factory.mktemp("exports")
    return {kind: publish.export_keras(saved[kind], root / kind, options=ExportOptions(providers="cpu"))
            for kind in FAMILY}


def _series(path, rows: int = 120, width: int = F, shift: float = 0.0):
    t = np.arange(rows)
    values = np.stack([np.sin(t / (3 + j)) * (j + 1) + 5 * j + shift for j in range(width)], axis=1)
    np.save(path, values)
    return path


@pytest.mark.parametrize("kind", FAMILY)
def test_each_model_of_the_family_exports_with_parity_proven(exports, kind):
    folder, report = exports[kind]
    assert report, report.failures()
    tolerance = fp32_tolerance()
    for result in report.results:  # fp32 parity within the export's criterion, on onnxruntime
        assert result.max_abs <= max(tolerance.abs, tolerance.rel_range * result.value_range), result
    assert report.encoder_matches_autoencoder.max_abs <= tolerance.abs  # the encoder is the autoencoder's encoding
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "detector" not in manifest and "no threshold" in manifest["scores"]
    assert manifest["training"]["data"]["model"]["file"] == f"{kind}.keras"
    assert verify(folder, "cpu", against="keras")
    assert verify(folder, "cpu", against="stored")


def test_the_clean_graph_and_batch_graphs_apply_only_to_the_seed_layout(exports):
    seedlike = json.loads((exports["single-lstm"][0] / "manifest.json").read_text())
    assert "clean" not in seedlike["skipped"].get("autoencoder", {})
    assert seedlike["variants"]["autoencoder"]["fp32-b1"]["published"]
    assert seedlike["variants"]["autoencoder"]["portable"]["published"]
    for kind in ("stacked-lstm", "stacked-gru", "bidirectional"):
        manifest = json.loads((exports[kind][0] / "manifest.json").read_text())
        skipped = manifest["skipped"]["autoencoder"]
        assert {"clean", "fp32-b1", "fp32-unrolled", "portable"} <= set(skipped), kind
        assert all(why for why in skipped.values())
        assert manifest["variants"]["autoencoder"]["fp32"]["published"]  # tf2onnx's graph is the default file
        assert "fp32-b1" not in manifest["variants"]["autoencoder"]
    gru = json.loads((exports["stacked-gru"][0] / "manifest.json").read_text())
    assert {"int8", "fp16"} <= set(gru["skipped"]["autoencoder"])  # tf2onnx writes Keras 3's GRU as a Loop


def test_a_sequential_model_saved_as_h5(tmp_path):
    keras = _keras()
    layers = keras.layers
    model = keras.Sequential([keras.Input((T, F)), layers.LSTM(4), layers.RepeatVector(T),
                              layers.LSTM(4, return_sequences=True), layers.TimeDistributed(layers.Dense(F))])
    model.save(tmp_path / "seq.h5")
    folder, report = publish.export_keras(tmp_path / "seq.h5", tmp_path / "out",
                                          options=ExportOptions(providers="cpu", variants=("fp32-b1",)))
    assert report and report.encoder_matches_autoencoder.max_abs <= fp32_tolerance().abs
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["variants"]["autoencoder"]["fp32-b1"]["published"]  # the seed's layout: the clean graph applies


def test_runtime_scores_without_inventing_a_threshold(exports):
    model = runtime.load(exports["stacked-lstm"][0], "cpu")
    windows = np.random.default_rng(0).standard_normal((5, T, F)).astype(np.float32)
    result = model.score(windows)
    assert result.threshold is None and result.flags is None and result.scores.shape == (5,)
    assert model.encode(windows).shape == (5, 4)


def test_scaling_from_data_and_a_calibrated_threshold(saved, tmp_path):
    data = _series(tmp_path / "train.npy")
    normal = _series(tmp_path / "normal.npy", shift=0.1)
    folder, report = publish.export_keras(saved["single-lstm"], tmp_path / "out",
                                          UserModelOptions(data=data, scaling="standard", calibrate=normal),
                                          ExportOptions(threshold_quantile=0.9, providers="cpu", variants=("fp32-b1",)))
    assert report
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["preprocessing"]["scaling"] == "standard" and "scores" not in manifest
    assert manifest["detector"]["calibrated_on"] == "calibration data normal.npy"
    assert manifest["detector"]["quantile"] == 0.9
    model = runtime.load(folder, "cpu")
    assert model.threshold == manifest["detector"]["threshold"]
    windows = make_windows(np.load(normal).astype(np.float32), T)  # the calibration data's own windows
    result = model.score(windows)
    np.testing.assert_array_equal(result.flags, result.scores > model.threshold)  # the manifest's rule
    assert len(windows) == manifest["detector"]["windows"]
    assert int(result.flags.sum()) == manifest["detector"]["flagged"] <= 0.1 * len(windows)  # quantile 0.9
    spiked = windows[:1].copy()
    spiked[0, T // 2, 0] += 50.0  # a known outlier: one reading 50 units off, where feature 0 spans [-1, 1]
    outlier = model.score(spiked)
    assert outlier.flags.tolist() == [True] and outlier.scores[0] > 10 * model.threshold
    # later commands work on it too
    optimized = publish.optimize(folder, replace(OPTIMIZE_DEFAULTS, providers="cpu", variants=("fp32-b1",)))
    assert all(v.published for v in optimized.variants)


def test_encoder_layer_by_name(saved, tmp_path):
    folder, report = publish.export_keras(saved["stacked-lstm"], tmp_path / "out", UserModelOptions(encoder_layer="enc_2"),
                                          ExportOptions(providers="cpu", variants=()))
    assert report and report.encoder_matches_autoencoder.max_abs <= fp32_tolerance().abs
    with pytest.raises(UsageError, match="no such layer"):
        publish.export_keras(saved["stacked-lstm"], tmp_path / "bad", UserModelOptions(encoder_layer="nope"),
                             ExportOptions(providers="cpu"))
    with pytest.raises(UsageError, match="one vector per window"):
        publish.export_keras(saved["stacked-lstm"], tmp_path / "bad", UserModelOptions(encoder_layer="enc_1"),
                             ExportOptions(providers="cpu"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind, match", [("conv", "'conv_features' \\(Conv1D\\)"), ("lambda", "'doubler' is a Lambda")])
def test_models_outside_the_family_are_refused_by_layer_name(saved, tmp_path, kind, match):
    with pytest.raises(UnsupportedModelError, match=match):
        publish.export_keras(saved[kind], tmp_path / "out", options=ExportOptions(providers="cpu"))
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_errors(saved, tmp_path):
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a saved Keras model"):
        publish.export_keras(junk, tmp_path / "out", options=ExportOptions(providers="cpu"))
    with pytest.raises(ShapeError, match="4 feature column"):
        publish.export_keras(saved["gru"], tmp_path / "out",
                             UserModelOptions(calibrate=_series(tmp_path / "wide.npy", width=4)),
                             ExportOptions(providers="cpu"))
    with pytest.raises(UsageError, match="learn from training data"):
        publish.export_keras(saved["gru"], tmp_path / "out", UserModelOptions(scaling="standard"),
                             ExportOptions(providers="cpu"))
    with pytest.raises(UsageError, match="needs calibration data"):
        publish.export_keras(saved["gru"], tmp_path / "out",
                             options=ExportOptions(threshold_quantile=0.9, providers="cpu"))
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_keras_file_and_says_there_is_no_threshold(saved, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(saved["gru"]), "--out", str(tmp_path / "out"), "--provider", "cpu",
                                  "--build", "fp16"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "no threshold is set" in result.output and "skipped:" in result.output
    refused = runner.invoke(main, ["export", str(saved["conv"]), "--out", str(tmp_path / "conv")])
    assert refused.exit_code == EXIT_USAGE
    assert "conv_features" in refused.output and "Traceback" not in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    folder = runner.invoke(main, ["export", str(tmp_path / "out"), "--out", str(tmp_path / "again"),
                                  "--scaling", "standard"])
    assert folder.exit_code == EXIT_USAGE and "own Keras model file" in folder.output


def test_scaling_given_as_values_is_inside_the_graph(saved, tmp_path):
    """A user who scaled with a StandardScaler gives its mean and std: the export's graph applies
    them (raw values in, raw units out) and parity holds in the model's units."""
    mean, std = [10.0, -2.0, 300.0], [2.0, 0.5, 40.0]
    result = CliRunner().invoke(main, ["export", str(saved["single-lstm"]), "--out", str(tmp_path / "out"),
                                       "--provider", "cpu", "--build", "fp32-b1", "--scaling", "standard",
                                       "--scaling-values", "mean=" + ",".join(map(str, mean)),
                                       "--scaling-values", "std=" + ",".join(map(str, std))])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    pre = manifest["preprocessing"]
    assert pre["scaling"] == "standard" and np.allclose(pre["offset"], mean)
    assert np.allclose(pre["scale"], 1 / np.asarray(std), rtol=1e-6)
    assert manifest["training"]["data"]["scaling"] == "given: mean, std"
    model = runtime.load(tmp_path / "out", "cpu")
    raw = np.asarray(mean, np.float32) + np.asarray(std, np.float32) * np.random.default_rng(0).standard_normal(
        (4, T, F)).astype(np.float32)
    keras_model = _keras().models.load_model(saved["single-lstm"])
    expected = keras_model.predict((raw - mean) / std, verbose=0) * std + mean
    np.testing.assert_allclose(model.reconstruct(raw), expected, rtol=1e-4, atol=1e-3)
    minmax = publish.export_keras(saved["single-lstm"], tmp_path / "mm",
                                  UserModelOptions(scaling="minmax", scaling_values={"min": [0, 0, 0], "max": [1, 2, 4]}),
                                  ExportOptions(providers="cpu", variants=()))[0]
    assert json.loads((minmax / "manifest.json").read_text())["preprocessing"]["clip_high"] == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("scaling, values, match", [
    ("standard", {"mean": [0, 0]}, "takes values for mean and std"),
    ("standard", {"mean": [0, 0], "std": [1, 1]}, "2 given, the model has 3 features"),
    ("standard", {"mean": [0, 0, 0], "std": [1, 0, 1]}, "std: every value must be above 0"),
    ("minmax", {"min": [0, 0, 0], "max": [1, 0, 1]}, "every max must be above its min"),
    ("none", {"mean": [0, 0, 0], "std": [1, 1, 1]}, "need --scaling standard"),
    ("standard", {"mean": [0, "x", 0], "std": [1, 1, 1]}, "not numbers"),
    ("standard", {"mean": [0, float("nan"), 0], "std": [1, 1, 1]}, "finite"),
])
def test_scaling_values_that_cannot_be_used_are_refused(saved, tmp_path, scaling, values, match):
    with pytest.raises(UsageError, match=match):
        publish.export_keras(saved["single-lstm"], tmp_path / "out",
                             UserModelOptions(scaling=scaling, scaling_values=values), ExportOptions(providers="cpu"))
    assert not (tmp_path / "out").exists()
    bad = CliRunner().invoke(main, ["export", str(saved["single-lstm"]), "--out", str(tmp_path / "o"),
                                    "--scaling", "standard", "--scaling-values", "mean"])
    assert bad.exit_code == EXIT_USAGE and "NAME=v1,v2" in bad.stderr


@pytest.mark.parametrize("kind", ["stacked-gru", "bidirectional"])
def test_every_later_command_works_on_a_models_export(exports, kind, tmp_path):
    """verify, optimize, inspect, bench, encode/reconstruct/score and report on an export of a model
    edgeae did not train (a copy: optimize and report write into it)."""
    import shutil

    folder = tmp_path / kind
    shutil.copytree(exports[kind][0], folder)
    data = _series(tmp_path / "d.npy", rows=30)
    runner = CliRunner()
    commands = [
        ["verify", folder, "--provider", "cpu"],
        ["optimize", folder, "--provider", "cpu", "--build", "ort"],
        ["inspect", folder, "--provider", "cpu", "--json"],
        ["bench", folder, "--runs", "3", "--warmup", "0", "--batch", "4", "--no-cold-start"],
        ["encode", folder, data, "--provider", "cpu", "-o", tmp_path / "e.npy"],
        ["reconstruct", folder, data, "--provider", "cpu", "-o", tmp_path / "r.npy"],
        ["score", folder, data, "--provider", "cpu", "--json"],
        ["report", folder, "--data", data, "--out", tmp_path / "plots"],
    ]
    for args in commands:
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, (args[0], result.output)
    scores = json.loads(runner.invoke(main, ["score", str(folder), str(data), "--json"]).stdout)
    assert len(scores["score"]) == 30 - T + 1 and scores.get("anomaly") is None  # no threshold was invented
    assert np.load(tmp_path / "e.npy").shape[0] == 30 - T + 1
