"""The training stage's library rules: the defaults the CLI applies, and an export never replacing its training folder."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.trainer import training as trainer
from edgeae.cli import main
from edgeae.contract.errors import EXIT_DATA, LearningError, ParityError, UsageError
from edgeae.trainer.model import (
    DATA_ACTIVATION, DATA_PATIENCE, DATA_SCALING, DATA_VALIDATION_FRACTION, LEARNED_BELOW, TrainConfig,
)


def test_config_for_gives_the_clis_defaults_for_the_data(tmp_path):
    data = tmp_path / "s.csv"
    data.write_text("t,a,b,c\n" + "".join(f"{i},{i % 3},{i % 5},{i % 7}\n" for i in range(60)))
    assert trainer.config_for() == TrainConfig()
    with_data = trainer.config_for(data, units=7)
    assert (with_data.features, with_data.units) == (3, 7)  # every column but the time axis 't', as the CLI reads it
    assert (with_data.validation_fraction, with_data.patience) == (DATA_VALIDATION_FRACTION, DATA_PATIENCE)
    assert trainer.config_for(data, ("a", "b")).features == 2
    assert trainer.config_for(data, validation_fraction=0.0).patience == 0
    assert trainer.config_for(data, patience=3).patience == 3
    with pytest.raises(UsageError, match="--columns chooses columns of --data"):
        trainer.config_for(None, ("a",))
    with pytest.raises(UsageError, match="not a training setting"):
        trainer.config_for(None, unit_count=3)


def test_the_api_refuses_to_export_over_the_training_folder(tiny_training, tmp_path):
    folder = trainer.save_training(tiny_training, tmp_path / "run")
    loaded = trainer.load_training(folder)
    before = sorted(p.name for p in folder.iterdir())
    for out in (folder, tmp_path):
        with pytest.raises(UsageError, match="refusing to export to .*: it is the training folder"):
            publish.export(loaded, out, ExportOptions(providers="cpu", force=True))
    assert sorted(p.name for p in folder.iterdir()) == before


def _sine_csv(folder):
    path = folder / "sine.csv"
    t = np.arange(240)
    rows = "".join(f"{500 + 300 * np.sin(i / 6):.4f},{20 * np.cos(i / 9):.4f}\n" for i in t)
    path.write_text("a,b\n" + rows)
    return path


def test_a_users_series_gets_tanh_and_standard_scaling_the_seed_keeps_relu(tmp_path):
    data = _sine_csv(tmp_path)
    assert (trainer.config_for().activation, trainer.config_for().scaling) == ("relu", "none")
    chosen = trainer.config_for(data)
    assert (chosen.activation, chosen.scaling) == (DATA_ACTIVATION, DATA_SCALING) == ("tanh", "minmax")
    kept = trainer.config_for(data, activation="relu", scaling="minmax")
    assert (kept.activation, kept.scaling) == ("relu", "minmax")


def test_a_run_that_learns_nothing_is_saved_then_refused_naming_the_cause(tmp_path):
    data = _sine_csv(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--epochs", "2", "--units", "4", "--timesteps", "4",
                                       "--learning-rate", "1e-7", "--out", str(out), "--quiet"])
    assert result.exit_code == EXIT_DATA, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the model learned nothing" in lines[0] and "too few epochs" in lines[0]
    assert f"saved in {out}" in lines[0]
    training = trainer.load_training(out)  # kept for a look
    assert trainer.learning_ratio(training) >= LEARNED_BELOW
    learned = trainer.train(trainer.config_for(data, epochs=30, units=8, timesteps=8, learning_rate=0.01), data)
    assert trainer.learning_ratio(learned) < LEARNED_BELOW
    trainer.check_learned(learned)


def test_relu_on_raw_values_that_learns_nothing_is_named_as_the_likely_cause(tmp_path):
    data = _sine_csv(tmp_path)
    config = trainer.config_for(data, activation="relu", scaling="none", epochs=1, units=3, timesteps=4,
                                learning_rate=1e-7)
    training = trainer.train(config, data)
    with pytest.raises(LearningError, match=r"seen: .*encoder units give the same output on every window "
                                            r"\(dead or saturated; try --activation tanh\)"):
        trainer.check_learned(training)


def test_pipeline_keeps_the_trained_model_when_the_export_fails(tmp_path):
    data = _sine_csv(tmp_path)
    config = trainer.config_for(data, epochs=30, units=8, timesteps=8, learning_rate=0.01)
    out = tmp_path / "export"
    for kept in ("export.training", "export.training-2"):  # a second failure never replaces the first run
        with pytest.raises(ParityError, match=rf"allow more with --rtol .*kept in {re.escape(str(tmp_path / kept))}"):
            publish.run_pipeline(config, out, data,
                                 options=ExportOptions(providers="cpu", atol=1e-15, rtol=1e-15, variants=()))
        assert not out.exists()
    path, report = publish.export(trainer.load_training(tmp_path / "export.training"), out,
                                  ExportOptions(providers="cpu", variants=()))
    assert report and path == out
