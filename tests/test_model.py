import numpy as np
import pytest

from edgeae.contract.errors import UsageError
from edgeae.trainer.model import TrainConfig, build, train

from .conftest import record_fits


def test_default_architecture_is_the_seed_model():
    config = TrainConfig()
    autoencoder, encoder = build(config)
    kinds = [type(layer).__name__ for layer in autoencoder.layers[1:]]
    assert kinds == ["LSTM", "RepeatVector", "LSTM", "TimeDistributed"]
    assert [layer.count_params() for layer in autoencoder.layers[1:]] == [42_400, 0, 80_400, 505]
    assert autoencoder.count_params() == 123_305 == config.parameter_count
    assert autoencoder.layers[1].activation.__name__ == "relu"
    assert tuple(autoencoder.input_shape) == (None, 10, 5)
    assert tuple(encoder.output_shape) == (None, 100)


def test_encoder_shares_the_autoencoders_weights():
    autoencoder, encoder = build(TrainConfig(units=4, timesteps=3, features=2))
    assert encoder.get_layer("encoder") is autoencoder.get_layer("encoder")


def test_every_size_is_a_parameter():
    config = TrainConfig(timesteps=7, features=2, units=12, activation="tanh")
    autoencoder, encoder = build(config)
    assert tuple(autoencoder.output_shape) == (None, 7, 2)
    assert tuple(encoder.output_shape) == (None, 12)
    assert autoencoder.count_params() == config.parameter_count


def test_training_lowers_the_loss(tiny_training):
    loss = tiny_training.history["loss"]
    assert len(loss) == tiny_training.config.epochs
    assert loss[-1] < 0.5 * loss[0]


def test_training_is_deterministic_for_a_seed():
    from edgeae.data.windows import seed_sequence

    config = TrainConfig(timesteps=4, features=2, units=5, epochs=3, seed=11)
    x = seed_sequence(4, 2)
    a, b = train(config, x), train(config, x)
    for wa, wb in zip(a.autoencoder.get_weights(), b.autoencoder.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    c = train(TrainConfig(timesteps=4, features=2, units=5, epochs=3, seed=12), x)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.autoencoder.get_weights(), c.autoencoder.get_weights()))


@pytest.mark.parametrize("kwargs", [
    {"units": 0}, {"timesteps": -1}, {"epochs": 0}, {"activation": "swishy"}, {"learning_rate": 0.0},
    {"seed": -5}, {"batch_size": 1.5}, {"validation_fraction": 1.0}, {"features": True},
    # wrong kinds that used to slip through as Python errors or odd values
    {"patience": "3"}, {"patience": None}, {"patience": 1.5, "validation_fraction": 0.2},
    {"patience": True, "validation_fraction": 0.2}, {"validation_fraction": "0.5"}, {"validation_fraction": None},
    {"validation_fraction": float("nan")}, {"seed": True}, {"seed": np.int64(3)}, {"learning_rate": True},
    {"clip_quantiles": "ab"}, {"clip_quantiles": (0.5, 0.1)}, {"clip_quantiles": (0.0, 0.5, 1.0)},
    {"scaling": "log"}, {"stride": 0}, {"stride": True}, {"stride": "2"},
    # a setting training would silently ignore: patience stops on a validation loss there is none of
    {"patience": 3},
])
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(UsageError):
        TrainConfig(**kwargs)


def test_settings_as_json_gives_them_back_are_taken():
    config = TrainConfig(clip_quantiles=[0.01, 0.99], patience=3, validation_fraction=0.2, stride=None)
    assert config.clip_quantiles == (0.01, 0.99) and TrainConfig.from_dict(config.to_dict()) == config


def test_xla_pays_on_long_runs_only():
    from edgeae.trainer.model import xla_pays

    assert not xla_pays(TrainConfig(), 1)  # the seed: 300 one-window epochs, less than XLA costs to compile
    assert xla_pays(TrainConfig(timesteps=64, features=9, units=32, activation="tanh", epochs=60), 1769)


def _reports_truthfully(result, fits: list[dict]) -> None:
    """What holds on every CPU, whether XLA compiles there or not: the fit that produced the weights
    is the last one, it finished, and the result says XLA ran exactly when that fit was compiled."""
    assert fits and fits[-1]["finished"]
    assert result.xla == fits[-1]["xla"]


def test_xla_training_runs_one_batch_shape_and_sees_every_window_each_epoch(monkeypatch):
    """With XLA a last, smaller batch would cost a second compile: the windows stream reshuffled in full
    batches instead, ceil(n / batch) of them an epoch, the same for two runs of one seed."""
    import tensorflow as tf
    from keras import Model

    config = TrainConfig(timesteps=4, features=2, units=5, epochs=2, batch_size=8, seed=5)
    x = np.random.default_rng(0).uniform(0, 1, (20, 4, 2)).astype(np.float32)
    fits = record_fits(monkeypatch)  # which fit ran compiled, and whether it finished
    fed, real_fit = [], Model.fit

    def recording_fit(self, data, *args, **kwargs):
        fed.append((data, kwargs.get("steps_per_epoch")))
        return real_fit(self, data, *args, **kwargs)

    monkeypatch.setattr(Model, "fit", recording_fit)
    a = train(config, x, xla=True)
    _reports_truthfully(a, fits)
    b = train(config, x, xla=True)
    assert a.epochs_run == 2
    stream, steps = fed[0]
    assert isinstance(stream, tf.data.Dataset) and steps == 3  # 20 windows: 3 batches of 8 an epoch
    assert [spec.shape.as_list() for spec in stream.element_spec] == [[8, 4, 2], [8, 4, 2]]  # one shape only
    seen = np.concatenate([batch for batch, _ in stream.take(5).as_numpy_iterator()])  # 40 windows: two passes
    rows = {row.tobytes() for row in x}
    assert all(row.tobytes() in rows for row in seen) and len({row.tobytes() for row in seen[:20]}) == 20
    for wa, wb in zip(a.autoencoder.get_weights(), b.autoencoder.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    plain = train(config, x, xla=False)
    assert not isinstance(fed[-1][0], tf.data.Dataset) and not plain.xla  # without XLA: Keras's own batches


def test_xla_training_is_deterministic_and_falls_back_where_xla_fails(monkeypatch):
    """Two XLA trainings of a seed give the same weights, the loss of training without it; where XLA
    cannot compile (forced here: not every CPU or op has a kernel) the same training runs without."""
    import tensorflow as tf
    from keras import Model

    from edgeae.data.windows import seed_sequence

    config = TrainConfig(timesteps=4, features=2, units=5, epochs=3, seed=11)
    x = seed_sequence(4, 2)
    fits = record_fits(monkeypatch)
    a = train(config, x, xla=True)
    _reports_truthfully(a, fits)
    b = train(config, x, xla=True)
    _reports_truthfully(b, fits)
    plain = train(config, x, xla=False)
    _reports_truthfully(plain, fits)
    assert not plain.xla  # never compiled unless asked for
    for wa, wb in zip(a.autoencoder.get_weights(), b.autoencoder.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert a.history["loss"] == pytest.approx(plain.history["loss"], rel=1e-3)
    real_fit = Model.fit

    def fit_without_xla_kernels(self, *args, **kwargs):
        if self.jit_compile:
            raise tf.errors.UnimplementedError(None, None, "no deterministic XLA kernel (forced)")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Model, "fit", fit_without_xla_kernels)
    fallback = train(config, x, xla=True)
    assert not fallback.xla and fallback.epochs_run == 3
    for wf, wp in zip(fallback.autoencoder.get_weights(), plain.autoencoder.get_weights()):
        np.testing.assert_array_equal(wf, wp)
