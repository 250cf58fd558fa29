"""The real dataset: InternalBleeding16 (UCR anomaly archive 135) from the files aeon ships.

One small demo run (about 20 s: training, export, parity) is shared by the tests here; the
the docs' figures come from the full run, `edgeae demo`.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.exporter import demo as datasets
from edgeae.cli import main
from edgeae.data.series import load_series
from edgeae.data.windows import make_windows
from edgeae.detection.threshold import keras_scores
from edgeae.contract.errors import EXIT_DEPENDENCY, EXIT_PARITY, MissingDependencyError
from edgeae.trainer import training as trainer

from .conftest import needs_module

pytestmark = needs_module("aeon", "dataset")  # the dataset ships with aeon; missing: fails in CI, skipped elsewhere

SMALL = {"timesteps": 32, "units": 16, "epochs": 30, "stride": 2, "learning_rate": 0.005}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return datasets.demo(tmp_path_factory.mktemp("demo") / "export", datasets.demo_config(**SMALL))


def test_the_files_hold_the_series_and_its_one_labelled_anomaly():
    d = datasets.internal_bleeding()
    train = load_series(d.train_file, d.columns).values
    values, labels = datasets.evaluation_part(d)
    assert train.shape == (1200, 1) and values.shape == (7501 - 1200, 1)
    np.testing.assert_array_equal(load_series(d.test_file, d.columns).values[:1200], train)  # the test file repeats it
    assert np.flatnonzero(labels).tolist() == list(range(4187 - 1200, 4199 - 1200))


def test_small_run_detects_the_anomaly(small_demo):
    d = small_demo.detection
    assert d.windows == 6301 - 32 + 1
    assert d.anomalous_windows == 12 + 32 - 1
    assert d.roc_auc > 0.9
    assert d.recall > 0.5
    assert small_demo.detector.calibrated_on == "validation"
    assert small_demo.training["data"]["columns"] == ["value"]


def test_training_and_device_flags_agree_on_the_real_series(small_demo):
    """The stored Keras model and the ONNX model, each against the manifest's threshold."""
    training = trainer.load_training(small_demo.export)
    model = runtime.load(small_demo.export, "cpu")
    values, _ = datasets.evaluation_part(small_demo.dataset)
    windows = make_windows(values, 32, 1)
    device = model.score(windows)
    keras_side = keras_scores(training, windows)
    np.testing.assert_allclose(device.scores, keras_side, rtol=1e-4)
    np.testing.assert_array_equal(device.flags, keras_side > model.threshold)
    assert device.flags.sum() == small_demo.detection.true_positives + small_demo.detection.false_positives


def test_cli_evaluate_on_the_dataset_file(small_demo):
    d = small_demo.dataset
    result = CliRunner().invoke(main, ["evaluate", str(small_demo.export), str(d.test_file), "--columns", "value",
                                       "--labels", d.label_column, "--provider", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["windows"] == (7501 - 32) // SMALL["stride"] + 1  # the whole file at the model's stride
    every = CliRunner().invoke(main, ["evaluate", str(small_demo.export), str(d.test_file), "--columns", "value",
                                      "--labels", d.label_column, "--provider", "cpu", "--stride", "1", "--json"])
    assert json.loads(every.stdout)["windows"] == 7501 - 32 + 1
    assert report["roc_auc"] > 0.9


def test_without_aeon_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeae\[dataset\]'"):
        datasets.internal_bleeding()
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--quiet"])
    assert result.exit_code == EXIT_DEPENDENCY and "edgeae[dataset]" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_a_demo_that_fails_its_parity_bound_keeps_the_trained_model(tmp_path):
    """`edgeae demo --atol --rtol` goes through the same export as the full demo; a bound nothing
    meets is a parity failure (exit 6) that names the option, and the model trained stays as a
    training run `edgeae export` can publish."""
    out = tmp_path / "demo"
    small = [f"--{key}={value}" for key, value in SMALL.items() if key != "learning_rate"]
    result = CliRunner().invoke(main, ["demo", "--out", str(out), *small, "--atol", "1e-15", "--rtol", "1e-15",
                                       "--quiet"])
    assert result.exit_code == EXIT_PARITY, result.output
    assert "--rtol" in result.stderr and f"kept in {out}.training" in result.stderr
    assert not out.exists()
    kept = trainer.load_training(tmp_path / "demo.training")
    assert kept.config.timesteps == SMALL["timesteps"] and kept.data["columns"] == ["value"]
