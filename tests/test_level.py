"""A drifting series: each window's level removed inside the graph (every front end gets it), the
measured rule that chooses it, and an honest threshold (enough windows, drift named, a run that
learned nothing refused unless accepted)."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from edgeae.contract.errors import DataError, IntegrityError, LearningError, UsageError
from edgeae.contract.manifest import read_manifest
from edgeae.data.windows import LEVEL_OUTSIDE_SHARE, Preprocessing, choose_level, make_windows
from edgeae.detection.threshold import MIN_CALIBRATION_WINDOWS, check_calibration_size
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.mcu.c_code import generate_c
from edgeae.runtime import load
from edgeae.runtime.scoring import reconstruction_error
from edgeae.trainer import training as trainer
from edgeae.trainer.model import TrainConfig

from .conftest import import_or_skip, needs_tools


def trending(rows: int = 400, seed: int = 0) -> np.ndarray:
    """A rising series with a seasonal wiggle and noise: the CO2 shape, small."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    return (300 + 0.2 * t + 3 * np.sin(2 * np.pi * t / 26) + 0.3 * rng.standard_normal(rows))[:, None]


# ---------------------------------------------------------------- the rule


def test_auto_removes_the_level_of_a_trending_series_and_keeps_a_stationary_one():
    rising = make_windows(trending(), 10)
    choice = choose_level("auto", rising[:300], rising[300:])
    assert choice.level == "remove" and choice.outside_share > LEVEL_OUTSIDE_SHARE and choice.beyond > 0
    assert "removed" in choice.text() and "auto" in choice.text()

    rng = np.random.default_rng(1)
    flat = make_windows(np.sin(np.arange(2000) / 3)[:, None] + 0.1 * rng.standard_normal((2000, 1)), 10)
    kept = choose_level("auto", flat[:1600], flat[1600:])
    assert kept.level == "keep" and kept.outside_share <= LEVEL_OUTSIDE_SHARE


def test_level_as_asked_and_without_held_out_windows():
    rising = make_windows(trending(), 10)
    assert choose_level("keep", rising[:300], rising[300:]).level == "keep"
    assert choose_level("remove", rising[:10], rising[10:20]).level == "remove"
    nothing = choose_level("auto", rising, rising[:0])
    assert nothing.level == "keep" and nothing.outside_share is None and "no held-out" in nothing.text()
    with pytest.raises(UsageError, match="level must be one of"):
        choose_level("detrend", rising, rising)
    with pytest.raises(UsageError, match="level must be one of"):
        TrainConfig(level="sideways")


def test_preprocessing_removes_and_restores_each_windows_level():
    windows = make_windows(trending(), 10).astype(np.float32)
    pre = Preprocessing.fit(windows - windows.mean(axis=1, keepdims=True), scaling="minmax", level="remove")
    model_in = pre.apply(windows)
    assert np.allclose(model_in.mean(axis=1), model_in.mean(axis=1)[0], atol=1e-5)  # every window centred alike
    assert np.abs(pre.invert(model_in, windows) - windows).max() < 1e-3  # back to raw units, level included
    with pytest.raises(UsageError, match="raw windows"):
        pre.invert(model_in)
    again = Preprocessing.from_dict(pre.to_dict())
    assert again == pre
    with pytest.raises(IntegrityError, match="level must be one of"):
        Preprocessing.from_dict({**pre.to_dict(), "level": "maybe"})


# ---------------------------------------------------------------- through the graph, the runtime and C


@pytest.fixture(scope="module")
def levelled_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("levelled")
    np.save(folder / "rising.npy", trending())
    config = trainer.config_for(folder / "rising.npy", epochs=6, units=8, timesteps=10, stride=2)
    training = trainer.train(config, folder / "rising.npy")
    out = folder / "export"
    publish.export(training, out, ExportOptions(providers="cpu", accept_unlearned=True))
    return out, training


def test_a_drifting_series_is_exported_with_its_level_removed_in_the_graph(levelled_export):
    out, training = levelled_export
    manifest = read_manifest(out)
    assert manifest.preprocessing["level"] == "remove"
    assert training.data["level"]["level"] == "remove" and training.data["level"]["asked"] == "auto"
    onnx = import_or_skip("onnx", "train")
    nodes = {n.name for n in onnx.load(str(out / "autoencoder.onnx")).graph.node}
    assert {"preprocess/level", "preprocess/unlevel", "postprocess/level"} <= nodes
    # The runtime (the graph) scores as Keras does, on windows far above anything trained on.
    model = load(out)
    later = make_windows(trending(600)[450:] + 50, 10).astype(np.float32)
    keras = reconstruction_error(later, training.reconstruct(later), model.scale)
    assert np.allclose(model.score(later).scores, keras, rtol=1e-4, atol=1e-7)


@needs_tools(install="Debian: apt-get install gcc", missing=lambda: [] if shutil.which("cc") or shutil.which("gcc") else ["cc (or gcc)"])
def test_the_c_code_removes_the_level_too(levelled_export, tmp_path):
    out, _ = levelled_export
    folder = tmp_path / "c"
    generate_c(out, folder)
    cc = shutil.which("cc") or shutil.which("gcc")
    binary = tmp_path / "golden"
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    str(folder / "edgeae_model.c"), str(folder / "edgeae_golden.c"), "-lm", "-o", str(binary)],
                   check=True, capture_output=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "work->level" in (folder / "edgeae_model.c").read_text()


# ---------------------------------------------------------------- an honest threshold


def test_a_threshold_from_too_few_windows_is_refused_unless_accepted(tmp_path):
    with pytest.raises(DataError, match=rf"3 validation window\(s\), fewer than {MIN_CALIBRATION_WINDOWS}.*"
                                        r"--min-calibration-windows 3"):
        check_calibration_size(3, "validation", MIN_CALIBRATION_WINDOWS)
    check_calibration_size(3, "validation", 3)
    with pytest.raises(UsageError, match="whole number"):
        check_calibration_size(30, "validation", 0)

    np.save(tmp_path / "short.npy", trending(80))  # 16 held-out rows: 7 windows of 10
    config = trainer.config_for(tmp_path / "short.npy", epochs=2, units=4, timesteps=10)
    training = trainer.train(config, tmp_path / "short.npy")
    with pytest.raises(DataError, match="fewer than 20"):
        publish.export(training, tmp_path / "refused", ExportOptions(providers="cpu", accept_unlearned=True))
    assert not (tmp_path / "refused").exists()
    publish.export(training, tmp_path / "accepted", ExportOptions(providers="cpu", accept_unlearned=True,
                                                                  min_calibration_windows=7,
                                                                  measure_routing=False))
    detector = read_manifest(tmp_path / "accepted").detector
    assert detector.windows == 7


def test_calibration_outside_the_training_range_is_named(tmp_path):
    np.save(tmp_path / "rising.npy", trending(400))
    config = trainer.config_for(tmp_path / "rising.npy", epochs=2, units=4, timesteps=10, level="keep")
    training = trainer.train(config, tmp_path / "rising.npy")
    publish.export(training, tmp_path / "out", ExportOptions(providers="cpu", accept_unlearned=True,
                                                             measure_routing=False))
    detector = read_manifest(tmp_path / "out").detector
    outside = detector.details["outside_training"]
    assert outside["share"] > 0.5 and outside["beyond"] > 0
    assert "outside the training range" in detector.note and "--level remove" in detector.note


def test_a_run_that_learned_nothing_names_what_it_saw_and_is_published_only_when_accepted(tmp_path):
    np.save(tmp_path / "rising.npy", trending(400))
    config = trainer.config_for(tmp_path / "rising.npy", epochs=1, units=4, timesteps=10, level="keep",
                                learning_rate=1e-6)
    training = trainer.train(config, tmp_path / "rising.npy")
    with pytest.raises(LearningError) as caught:
        publish.export(training, tmp_path / "refused", ExportOptions(providers="cpu"))
    message = str(caught.value)
    assert "learned nothing" in message and "levels the training never reached" in message
    assert "too few epochs (1 ran)" in message and "\n" not in message
    assert not (tmp_path / "refused").exists()
    publish.export(training, tmp_path / "out", ExportOptions(providers="cpu", accept_unlearned=True,
                                                             measure_routing=False))
    learned = read_manifest(tmp_path / "out").training.details["learned"]
    assert learned["accepted_unlearned"] is True and learned["ratio"] >= learned["below"]


def test_early_stopping_is_named_as_the_cause_not_too_few_epochs(levelled_export):
    _, training = levelled_export
    stopped = replace(training, config=replace(training.config, epochs=300, patience=20), epochs_run=23, best_epoch=3)
    causes = trainer.unlearned_causes(stopped)
    assert causes[0].startswith("early stopping ended the run at epoch 23") and "best at epoch 3" in causes[0]
    assert not any("too few epochs" in cause for cause in causes)
    ran_out = replace(training, config=replace(training.config, epochs=6, patience=20), epochs_run=6)
    assert any("too few epochs (6 ran)" in cause for cause in trainer.unlearned_causes(ran_out))


def test_cli_pipeline_says_what_it_did_with_the_level(tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main

    np.save(tmp_path / "rising.npy", trending(400))
    result = CliRunner().invoke(main, ["pipeline", "--data", str(tmp_path / "rising.npy"), "--epochs", "3",
                                       "--units", "4", "--timesteps", "10", "--provider", "cpu", "--fixed-routing",
                                       "--accept-unlearned", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["training"]["data"]["level"]["level"] == "remove"
    text = CliRunner().invoke(main, ["pipeline", "--data", str(tmp_path / "rising.npy"), "--epochs", "3",
                                     "--units", "4", "--timesteps", "10", "--provider", "cpu", "--fixed-routing",
                                     "--accept-unlearned", "--out", str(tmp_path / "out2")])
    assert text.exit_code == 0, text.output
    assert "level: removed from each window" in text.output and "outside the training windows'" in text.output
