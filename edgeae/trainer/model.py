"""The Keras side: build the LSTM autoencoder and its standalone encoder, train, save, load.

TensorFlow and Keras are imported inside the functions (they cost seconds and hundreds of
megabytes), and TensorFlow is kept on the CPU: the model is tiny, CPU runs are
deterministic, and recurrent layers traced on a GPU become cuDNN ops tf2onnx cannot convert.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable, NoReturn

import numpy as np

from edgeae.data.gaps import MAX_INTERPOLATED_GAP, TRAIN_MISSING, check_policy
from edgeae.data.windows import LEVEL_CHOICES, SCALINGS
from edgeae.contract import progress
from edgeae.contract.checks import check_quantile, is_real, is_whole
from edgeae.contract.errors import DataError, EdgeAEError, IntegrityError, ShapeError, UsageError, require
from edgeae.contract.files import refuse_if_interrupted

ENCODER_LAYER = "encoder"
# Defaults for a user's own series (the seed's one window has nothing to hold out): keep the
# last fifth for validation and threshold calibration, and stop once it stops improving.
DATA_VALIDATION_FRACTION = 0.2
DATA_PATIENCE = 20
# ...and the activation and scaling that learn on real series (docs/how-to/own-data.md has the
# measurements, scripts/measure_defaults.py makes them): tanh on raw values saturates, relu on raw
# values dies or blows up; tanh on min-max scaled values learned on all four series tried, best
# on two and within 0.03 of the best on the others. The seed's own run keeps the notebook's relu, unscaled.
DATA_ACTIVATION = "tanh"
DATA_SCALING = "minmax"
# With a series, whether each window's level is removed is measured (data/windows.py choose_level):
# a drifting series would otherwise put its calibration windows, and its future, outside what the model saw.
DATA_LEVEL = "auto"
# A run learned nothing when its best loss is not below this share of the loss of predicting each
# feature's mean (training.learning_ratio): dead relu units and saturated tanh units sit at 0.99-4;
# a noisy series with little to learn (quarterly macro changes) reaches 0.7-0.9, which is not nothing.
LEARNED_BELOW = 0.9
# The activations tf2onnx fuses into an ONNX LSTM op; with any other Keras activation
# (elu, selu, softsign, linear tried) it writes the LSTM as a Loop, which export refuses.
ACTIVATIONS = ("relu", "tanh", "sigmoid")
# With one step tf2onnx writes the encoder LSTM without the time-major input the clean graph is
# rebuilt from, and export fails; two is the least that exports.
MIN_TIMESTEPS = 2
# XLA (Keras `jit_compile`) runs a training step of these LSTMs about 3x faster on the CPU (64 x 9 x 32
# tanh, 1,769 windows, batch 32, 2 quiet cores: 1.5-2.4 s/epoch without, 0.54-0.59 s with, in full
# batches), but compiling costs 7-20 s (once per batch shape). It pays when a run makes many recurrent
# steps: from XLA_FROM = epochs x batches per epoch x timesteps (that run: 215,040 for 60 epochs; the
# seed's 300 one-window epochs: 3,000, which stays without).
XLA_FROM = 100_000
# A .keras file is a zip of config.json and metadata.json (a model's layers as JSON: kilobytes, a
# few MB for the largest models) and its weights; Keras reads config.json whole. Each JSON member may
# declare at most MAX_KERAS_JSON_BYTES uncompressed, and all members together at most
# KERAS_UNPACKED_FLOOR plus KERAS_EXPANSION times the file's size (Keras stores its members
# uncompressed; a re-zipped file's float weights barely compress, its JSON about 10x), so a 1 MB
# file declaring a 1 GiB config or 1 GiB of weights (zip bombs) is refused from its central directory
# before anything is inflated.
KERAS_CONFIG = "config.json"
KERAS_JSON_MEMBERS = (KERAS_CONFIG, "metadata.json")
MAX_KERAS_JSON_BYTES = 64 * 1024 * 1024
KERAS_UNPACKED_FLOOR = 16 * 1024 * 1024
KERAS_EXPANSION = 100
ZIP_MAGIC = b"PK"


@dataclass(frozen=True)
class TrainConfig:
    """Every size and training setting; the defaults are the seed notebook's."""

    timesteps: int = 10
    features: int = 5
    units: int = 100
    activation: str = "relu"
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 1
    validation_fraction: float = 0.0
    patience: int = 0
    stride: int | None = None  # between windows cut from a series (None: 1); ready-made windows take none
    clip_quantiles: tuple[float, float] = (0.0, 1.0)
    scaling: str = "none"
    threshold_quantile: float = 0.99
    level: str = "keep"  # each window's level: kept, removed, or "auto" (measured on the held-out part)
    missing: str = TRAIN_MISSING  # what a missing value in the data does (data/gaps.py MISSING_POLICIES)
    max_gap: int = MAX_INTERPOLATED_GAP  # the longest gap (rows) "interpolate" fills
    header_row: bool = True  # whether a CSV's first line names its columns (else they are 1, 2, ...)
    time_column: str | None = None  # a CSV column that is the time axis, never a feature (others are found)

    def __post_init__(self) -> None:
        """Refuse, with edgeae's one-line error, any setting training would choke on or ignore."""
        for name in ("timesteps", "features", "units", "epochs", "batch_size", "stride", "patience", "seed"):
            value = getattr(self, name)
            least = 0 if name in ("patience", "seed") else 1
            if (name == "stride" and value is None) or (isinstance(value, int) and is_whole(value, least)):
                continue
            raise UsageError(f"{name} must be a whole number of at least {least}, got {value!r}")
        if self.timesteps < MIN_TIMESTEPS:
            raise UsageError(f"timesteps must be at least {MIN_TIMESTEPS}: a one-step LSTM cannot be exported, "
                             f"got {self.timesteps}")
        if self.timesteps > 100_000 or self.features > 100_000 or self.units > 65_536:
            raise UsageError(
                f"sizes are implausibly large (timesteps {self.timesteps}, features {self.features}, units {self.units})"
            )
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {', '.join(ACTIVATIONS)} (those export as a fused "
                             f"ONNX LSTM), got {self.activation!r}")
        if not (is_real(self.learning_rate) and 0 < self.learning_rate < 10):
            raise UsageError(f"learning rate must be in (0, 10), got {self.learning_rate!r}")
        if self.seed >= 2**32:
            raise UsageError(f"seed must be a whole number in [0, 2**32), got {self.seed!r}")
        if not (is_real(self.validation_fraction) and 0.0 <= self.validation_fraction < 1.0):
            raise UsageError(f"validation fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.patience and not self.validation_fraction:
            raise UsageError(f"patience {self.patience} stops on the validation loss, and there is no validation "
                             "part (give a validation fraction, or patience 0)")
        quantiles = self.clip_quantiles
        if isinstance(quantiles, list):  # as JSON gives it back
            quantiles = tuple(quantiles)
            object.__setattr__(self, "clip_quantiles", quantiles)
        if not (isinstance(quantiles, tuple) and len(quantiles) == 2 and all(map(is_real, quantiles))
                and 0.0 <= quantiles[0] < quantiles[1] <= 1.0):
            raise UsageError(f"clip quantiles must be two numbers with 0 <= low < high <= 1, got {quantiles!r}")
        if self.scaling not in SCALINGS:
            raise UsageError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        check_quantile(self.threshold_quantile)
        if self.level not in LEVEL_CHOICES:
            raise UsageError(f"level must be one of {', '.join(LEVEL_CHOICES)}, got {self.level!r}")
        check_policy(self.missing, self.max_gap)
        if not isinstance(self.header_row, bool):
            raise UsageError(f"header_row must be True or False, got {self.header_row!r}")
        if self.time_column is not None and not (isinstance(self.time_column, str) and self.time_column):
            raise UsageError(f"time_column must be a column name, got {self.time_column!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def parameter_count(self) -> int:
        """4 gates x (inputs + units + 1) x units per LSTM, plus the dense layer."""
        u, f = self.units, self.features
        return 4 * u * (f + u + 1) + 4 * u * (u + u + 1) + (u * f + f)


@dataclass
class TrainResult:
    """What `train` returns: both models (sharing weights), the history, the epochs run and the one kept."""

    autoencoder: Any
    encoder: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int = 0
    xla: bool = False  # whether the steps ran compiled by XLA


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """TensorFlow's C++ start-up logs ignore TF_CPP_MIN_LOG_LEVEL; hide fd 2 while it loads."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_keras():
    """Import TensorFlow + Keras on the CPU only, deterministic, with their chatter silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with progress.stage("load TensorFlow"), _quiet_native_stderr():
            require("tensorflow", "train")
    tf = require("tensorflow", "train")
    keras = require("keras", "train")
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # already initialised; the export still pins itself to the CPU
    tf.config.experimental.enable_op_determinism()
    tf.get_logger().setLevel("ERROR")
    return tf, keras


def build(config: TrainConfig):
    """The seed architecture, every size from `config`: returns (autoencoder, encoder)."""
    _, keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    layers = keras.layers
    inputs = keras.Input(shape=(config.timesteps, config.features), name="sequence")
    encoded = layers.LSTM(config.units, activation=config.activation, name=ENCODER_LAYER)(inputs)
    repeated = layers.RepeatVector(config.timesteps, name="repeat")(encoded)
    decoded = layers.LSTM(config.units, activation=config.activation, return_sequences=True, name="decoder")(repeated)
    outputs = layers.TimeDistributed(layers.Dense(config.features), name="reconstruction")(decoded)
    autoencoder = keras.Model(inputs, outputs, name="autoencoder")
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate), loss="mse")
    return autoencoder, encoder_of(autoencoder)


def encoder_of(autoencoder):
    """The standalone encoder: the autoencoder up to its first LSTM, sharing its weights."""
    _, keras = import_keras()
    return keras.Model(autoencoder.inputs, autoencoder.get_layer(ENCODER_LAYER).output, name="encoder")


def check_windows(windows: np.ndarray, config: TrainConfig, what: str = "training windows") -> None:
    if windows.ndim != 3 or windows.shape[1:] != (config.timesteps, config.features):
        raise ShapeError(
            f"{what}: expected (n, {config.timesteps}, {config.features}), got {tuple(windows.shape)}"
        )
    if len(windows) == 0:
        raise DataError(f"{what}: no windows")
    if not np.isfinite(windows).all():
        raise DataError(f"{what}: contain non-finite values")


def _divergence_guard(keras):
    """A callback that stops training at the first epoch whose loss is not finite.

    Past that point every weight turns NaN, so the remaining epochs would be wasted and
    the model useless; `diverged` records (epoch, which loss, its value) for the error.
    It also ends training at the first epoch after a Ctrl-C or SIGTERM whose KeyboardInterrupt
    TensorFlow swallowed where it landed (contract.files.INTERRUPTED), instead of training on.
    """

    class DivergenceGuard(keras.callbacks.Callback):
        diverged: tuple[int, str, float] | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            refuse_if_interrupted()
            for name, value in (logs or {}).items():
                if self.diverged is None and not math.isfinite(float(value)):
                    self.diverged = (epoch + 1, name, float(value))
                    self.model.stop_training = True

    return DivergenceGuard()


def _diverged(config: TrainConfig, what: str) -> NoReturn:
    """Refuse a diverged model: nothing of it may be saved, and the user needs to know why."""
    hint = "use --scaling standard or rescale the data" if config.scaling == "none" else "rescale the data"
    raise DataError(f"training diverged ({what}): the values are too large for the model or the learning rate "
                    f"({config.learning_rate:g}) too high; {hint}, or lower --learning-rate")


def xla_pays(config: TrainConfig, windows: int) -> bool:
    """Whether compiling the training step with XLA saves more than it costs (XLA_FROM)."""
    return config.epochs * math.ceil(windows / config.batch_size) * config.timesteps >= XLA_FROM


def _fit_compiled(config: TrainConfig, xla: bool, fit: Callable[[Any, bool], Any]) -> tuple[Any, Any, Any, bool]:
    """Build the model and run `fit(model, compiled)` on it, its steps compiled by XLA if `xla`; where
    XLA cannot compile them, build it again (the same seed: the same start) and fit without.

    Keras turns `jit_compile` off whenever TensorFlow's op determinism is on, because some ops have
    no deterministic XLA kernel; this model's have on the CPU (two runs give the same weights, and
    the same as without XLA), so it is set on the model directly, and the ops that have none fail
    at compile time, before the first step changes a weight.
    """
    tf, _ = import_keras()
    autoencoder, encoder = build(config)
    if xla:
        autoencoder._jit_compile = True
        try:
            return autoencoder, encoder, fit(autoencoder, True), True
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
            autoencoder, encoder = build(config)
    return autoencoder, encoder, fit(autoencoder, False), False


def train(
    config: TrainConfig,
    windows: np.ndarray,
    validation: np.ndarray | None = None,
    progress: Callable[[int | None, dict[str, float]], None] | None = None,
    xla: bool | None = None,
) -> TrainResult:
    """Fit the autoencoder to reproduce `windows` (already preprocessed, model space).

    `progress` is called with (epoch, logs) after each epoch and with (None, {}) once
    training ends, early or not, so a display can close its line. `xla`: compile the training
    step with XLA (None: where it pays, xla_pays); it falls back to plain Keras where XLA fails.
    """
    check_windows(windows, config)
    has_val = validation is not None and len(validation) > 0
    if has_val:
        check_windows(validation, config, "validation windows")
    tf, keras = import_keras()
    callbacks: list[Any] = []
    if progress is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: progress(epoch + 1, {k: float(v) for k, v in (logs or {}).items()}),
            on_train_end=lambda logs: progress(None, {}),
        ))
    if has_val and config.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ))
    guard = _divergence_guard(keras)
    callbacks.insert(0, guard)
    x = windows.astype(np.float32)
    val = (validation.astype(np.float32),) * 2 if has_val else None

    def fit_on(model: Any, compiled: bool) -> Any:
        if compiled and len(x) > config.batch_size and len(x) % config.batch_size:
            # XLA compiles the step once per batch shape, and a last, smaller batch costs a second compile
            # (64 x 9 x 32, 1,769 windows: first epoch 17.7 s against 7.8 s) and a step of its own each epoch
            # (0.72 against 0.54 s/epoch). Here the windows stream reshuffled and unbroken across epochs in
            # full batches, ceil(n / batch) per epoch: every window is still seen once an epoch, give or take one.
            # Each epoch's steps also run in one compiled call (steps_per_execution): 0.47-0.50 s/epoch
            # against 0.64-0.73 one call a step. (Validation keeps its batches: in one batch of 300
            # windows it ran 0.2 s an epoch slower.)
            steps = math.ceil(len(x) / config.batch_size)
            stream = (tf.data.Dataset.from_tensor_slices((x, x))
                      .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True).repeat()
                      .batch(config.batch_size, drop_remainder=True).prefetch(2))
            model.steps_per_execution = steps
            return model.fit(stream, epochs=config.epochs, steps_per_epoch=steps, shuffle=False, verbose=0,
                             validation_data=val, callbacks=callbacks)
        return model.fit(x, x, epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0,
                         validation_data=val, callbacks=callbacks)

    autoencoder, encoder, fit, compiled = _fit_compiled(config, xla_pays(config, len(x)) if xla is None else xla, fit_on)
    if guard.diverged is not None:
        epoch, name, value = guard.diverged
        _diverged(config, f"{name} became {value} at epoch {epoch}")
    if not all(np.isfinite(w).all() for w in autoencoder.get_weights()):  # the last update, after the last loss
        _diverged(config, f"the weights became non-finite at epoch {len(fit.history['loss'])}")
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    monitor = history.get("val_loss") if has_val else history["loss"]
    best = int(np.argmin(monitor)) + 1 if config.patience > 0 and has_val else len(history["loss"])
    return TrainResult(autoencoder, encoder, history, len(history["loss"]), best, compiled)


def predict(model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Keras inference on model-space input, float32 out."""
    return np.asarray(model.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0), dtype=np.float32)


def save(autoencoder, path: Path) -> None:
    autoencoder.save(str(path))


def _unsafe_entry(name: str) -> bool:
    """An archive name that could point outside a folder it is unpacked into (Keras unpacks assets)."""
    parts = name.split("/")
    return (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or (len(name) > 1 and name[1] == ":") or ".." in parts)


def _check_entries(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe names and implausible declared sizes, from the central directory alone."""
    names = [entry.filename for entry in entries]
    bad = next((name for name in names if _unsafe_entry(name)), None)
    if bad is not None:
        raise IntegrityError(f"{path.name}: unsafe entry name {bad!r} in the Keras archive (absolute, '..' or "
                             "backslash path)")
    if len(set(names)) != len(names):
        raise IntegrityError(f"{path.name}: the Keras archive lists an entry twice")
    for entry in entries:
        if entry.filename in KERAS_JSON_MEMBERS and entry.file_size > MAX_KERAS_JSON_BYTES:
            raise IntegrityError(f"{path.name}: {entry.filename} declares {entry.file_size} bytes unpacked, over "
                                 f"the {MAX_KERAS_JSON_BYTES >> 20} MiB a Keras config may have (a zip bomb?)")
    unpacked, allowed = sum(e.file_size for e in entries), KERAS_UNPACKED_FLOOR + KERAS_EXPANSION * path.stat().st_size
    if unpacked > allowed:
        raise IntegrityError(f"{path.name}: its entries unpack to {unpacked} bytes, over the {allowed} a Keras "
                             f"file of {path.stat().st_size} bytes may (a zip bomb?)")


def keras_config(path: Path, error: type[EdgeAEError] = IntegrityError) -> bytes:
    """A .keras archive checked from its zip headers (names, declared sizes) before Keras or
    TensorFlow reads it, and its config.json read with a bounded read. A file that is no zip at
    all raises `error` (a user's wrong file); a broken or hostile archive is an IntegrityError."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                raise error(f"{path.name}: not a saved Keras model (not a zip archive)")
        with zipfile.ZipFile(path) as archive:
            _check_entries(path, archive.infolist())
            if KERAS_CONFIG not in archive.namelist():
                raise IntegrityError(f"{path.name}: not a Keras archive (no {KERAS_CONFIG})")
            with archive.open(KERAS_CONFIG) as member:
                return member.read(MAX_KERAS_JSON_BYTES)  # bounded: its declared size was checked
    except EdgeAEError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(f"{path.name}: truncated or corrupt Keras archive ({first})") from None


def load_keras(path: Path, error: type[EdgeAEError] = IntegrityError):
    """Load a saved Keras model in safe mode (a Lambda layer's code is never run); a file Keras
    refuses or cannot read raises `error` in one line (an export's own file: IntegrityError).
    A .keras archive is checked from its zip headers first (keras_config)."""
    if Path(path).suffix.lower() == ".keras":
        keras_config(path, error)
    _, keras = import_keras()
    try:
        return keras.models.load_model(str(path), compile=False, safe_mode=True)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{path.name}: refused or unreadable Keras model: {first}") from None
    except Exception as exc:  # zip/h5/json errors of every kind: one line for the user
        raise error(f"{path.name}: not a valid Keras model ({type(exc).__name__})") from None


def load(path: Path):
    """Load a saved autoencoder and its encoder (the layer named ENCODER_LAYER) in safe mode."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Keras model not found: {path}")
    autoencoder = load_keras(path)
    try:
        autoencoder.get_layer(ENCODER_LAYER)
    except ValueError:
        raise IntegrityError(f"{path.name}: not an edgeae autoencoder (no layer named {ENCODER_LAYER!r})") from None
    return autoencoder, encoder_of(autoencoder)


def check_matches(autoencoder: Any, encoder: Any, config: TrainConfig, name: str) -> None:
    """A saved model must be the one its record describes: a record rewritten to other sizes
    would export a graph the runtime then refuses, or one that reads the wrong window."""
    window = tuple(autoencoder.input_shape[1:])
    width = encoder.output_shape[-1]
    if window != (config.timesteps, config.features) or width != config.units:
        raise IntegrityError(f"{name}: the model reads {window} windows into {width} units; its training record "
                             f"says ({config.timesteps}, {config.features}) and {config.units}")


def print_progress(epochs: int) -> Callable[[int | None, dict[str, float]], None]:
    """A terminal progress line per epoch: rewritten in place on a TTY, every 10% otherwise."""
    tty = sys.stderr.isatty()
    every = max(1, epochs // 10)

    def report(epoch: int | None, logs: dict[str, float]) -> None:
        if epoch is None:  # training ended (early stopping may end it before `epochs`)
            if tty:
                sys.stderr.write("\n")
                sys.stderr.flush()
            return
        if not tty and epoch % every and epoch != epochs:
            return
        text = f"epoch {epoch}/{epochs}  " + "  ".join(f"{k} {v:.3e}" for k, v in logs.items())
        sys.stderr.write("\r" + text + "\x1b[K" if tty else text + "\n")
        sys.stderr.flush()

    return report
