"""The training stage's library rules: the defaults the CLI applies, and an export never replacing its training folder."""
import pytest

from edgeae import publish
from edgeae import training as trainer
from edgeae.errors import UsageError
from edgeae.model import DATA_PATIENCE, DATA_VALIDATION_FRACTION, TrainConfig


def test_config_for_gives_the_clis_defaults_for_the_data(tmp_path):
    data = tmp_path / "s.csv"
    data.write_text("t,a,b,c\n" + "".join(f"{i},{i % 3},{i % 5},{i % 7}\n" for i in range(60)))
    assert trainer.config_for() == TrainConfig()
    with_data = trainer.config_for(data, units=7)
    assert (with_data.features, with_data.units) == (4, 7)  # every column of the file, as the CLI reads it
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
            publish.export(loaded, out, providers="cpu", force=True)
    assert sorted(p.name for p in folder.iterdir()) == before
