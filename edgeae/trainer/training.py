"""Training: a TrainConfig and a series (or the seed window) in, a Training record out; and the
training folder that keeps it (the Keras model, the windows it saw, its record).

The Keras side itself lives in model.py; this module joins it to the data (windows, split by
time, preprocessing learned from the training part) and to the folder on disk.
"""
from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.versions import __version__
from edgeae.contract.files import as_path, atomic_write_json, read_json, staged_folder
from edgeae.contract.manifest import file_entry, read_manifest, verify_file, write_manifest
from edgeae.contract.records import TrainingRecord, thawed
from edgeae.contract.schema import check_training_record
from edgeae.data.series import Series, load_series
from edgeae.data.windows import Preprocessing, Windows, choose_level, seed_sequence, window_series
from edgeae.trainer import model
from edgeae.trainer.model import (
    DATA_ACTIVATION, DATA_LEVEL, DATA_PATIENCE, DATA_SCALING, DATA_VALIDATION_FRACTION, LEARNED_BELOW, TrainConfig, predict, save,
)
from edgeae.contract.errors import DataError, IntegrityError, LearningError, UsageError
from edgeae.contract.layout import (
    DATA_ROLE, KERAS_FILE, KERAS_ROLE, MANIFEST_FILE, PARITY_INPUTS_FILE, TRAINING_FILE, TRAINING_ROLE,
)


@dataclass
class Training:
    """A trained model with everything needed to export and re-verify it."""

    config: Any  # model.TrainConfig
    preprocessing: Preprocessing
    autoencoder: Any
    encoder: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    train_windows: np.ndarray  # raw units
    validation_windows: np.ndarray  # raw units, possibly empty
    data: dict[str, Any]
    folder: Path | None = None  # the training folder it was loaded from, which an export must not replace

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        """Keras reconstructions of raw windows, in raw units: the training side's reference."""
        pre = self.preprocessing
        return pre.invert(predict(self.autoencoder, pre.apply(windows)), windows)

    @functools.cached_property
    def _summary(self) -> dict[str, Any]:
        recon = self.reconstruct(self.train_windows)
        return {
            "config": self.config.to_dict(),
            "parameters": int(self.autoencoder.count_params()),
            "final_loss": float(self.history["loss"][-1]),
            "final_val_loss": float(self.history["val_loss"][-1]) if "val_loss" in self.history else None,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "train_reconstruction_max_abs": float(np.abs(recon - self.train_windows).max()),
            "data": self.data,
        }

    def summary(self) -> dict[str, Any]:
        """What the manifest and the terminal say about the training (computed once)."""
        return dict(self._summary)


def mean_predictor_loss(windows: np.ndarray, reference: np.ndarray) -> float:
    """The mean squared error of predicting each feature's mean over `reference` for every value
    of `windows` (both in the model's units): the loss a model that learned nothing reaches."""
    mean = reference.reshape(-1, reference.shape[-1]).mean(axis=0)
    return float(np.mean((windows - mean) ** 2))


def learning_ratio(training: Training) -> float:
    """The best loss the model reached as a share of predicting each feature's mean (on the
    validation windows where there are some): near 1 the model learned nothing; NaN for data
    with nothing to learn (every value the same)."""
    pre = training.preprocessing
    scaled_train = pre.apply(training.train_windows)
    held_out = len(training.validation_windows) and "val_loss" in training.history
    windows = pre.apply(training.validation_windows) if held_out else scaled_train
    baseline = mean_predictor_loss(windows, scaled_train)
    best = float(np.min(training.history["val_loss" if held_out else "loss"]))
    return best / baseline if baseline > 0 else float("nan")


DEAD_SPREAD = 1e-6  # an encoder unit whose output varies less than this over the training windows is dead
HINT_SAMPLE = 512  # training windows the encoder runs on to look for dead units


def dead_units(training: Training) -> int:
    """Encoder units that give the same output on every training window (a dead relu, a saturated
    tanh): they carry nothing about the window into the code."""
    pre = training.preprocessing
    codes = predict(training.encoder, pre.apply(training.train_windows[:HINT_SAMPLE]))
    return int((np.ptp(codes, axis=0) < DEAD_SPREAD).sum())


def unlearned_causes(training: Training) -> list[str]:
    """What this run shows about why it learned nothing, most telling first."""
    config, causes = training.config, []
    stopped = config.patience and training.epochs_run < config.epochs
    if stopped:
        causes.append(f"early stopping ended the run at epoch {training.epochs_run}: the validation loss was best at "
                      f"epoch {training.best_epoch} and did not improve in the {config.patience} after it (the held-out "
                      "part may be unlike the training part; more epochs will not help)")
    level = training.data.get("level") or {}
    if level.get("level") == "keep" and (level.get("outside_share") or 0) > 0:
        causes.append(f"{level['outside_share']:.0%} of the held-out windows lie at levels the training never "
                      "reached (try --level remove)")
    dead = dead_units(training)
    if dead * 2 >= config.units:
        causes.append(f"{dead} of {config.units} encoder units give the same output on every window (dead or "
                      f"saturated{'; try --activation tanh' if config.activation == 'relu' else ''})")
    largest = float(np.abs(training.train_windows).max())
    if config.scaling == "none" and largest > 10:
        causes.append(f"unscaled values up to {largest:.3g} (try --scaling minmax)")
    if not stopped:
        causes.append(f"too few epochs ({training.epochs_run} ran) or too small a learning rate "
                      f"({config.learning_rate:g}) for this data")
    return causes


def check_learned(training: Training, kept: Path | None = None, accept: bool = False) -> dict[str, Any] | None:
    """Refuse (LearningError) a run whose best loss is not below LEARNED_BELOW of predicting each
    feature's mean, naming the causes it can see, unless `accept` (the user said to publish it);
    the caller keeps the run for a look first (`kept`: where it is, for the message). Returns what
    the manifest records: the ratio and whether a run that learned nothing was accepted."""
    if training.data.get("source") == "seed":  # the notebook's one window: its own 2.5e-2 bar (test_slow)
        return None
    ratio = learning_ratio(training)
    learned = not ratio >= LEARNED_BELOW  # NaN (nothing to learn) passes
    record = {"ratio": None if np.isnan(ratio) else ratio, "below": LEARNED_BELOW, "accepted_unlearned": not learned}
    if learned or accept:
        return record
    raise LearningError(f"the model learned nothing: its best loss is {ratio:.2f} of the loss of predicting each "
                        f"feature's mean (it must be below {LEARNED_BELOW}); seen: {'; '.join(unlearned_causes(training))}"
                        + (f"; the run is saved in {kept} for a look" if kept is not None else ""))


def prepare_windows(config, series: Series | None) -> Windows:
    """Raw training and validation windows, from a user's series (its missing values as
    `config.missing` says, gaps.py) or the seed data."""
    if series is None:
        if config.stride is not None or config.validation_fraction:
            given = "a stride" if config.stride is not None else "a validation fraction"
            raise UsageError(f"the seed data is one ready-made window: {given} applies to a series given as data")
        windows = seed_sequence(config.timesteps, config.features).astype(np.float64)
        return Windows(windows, windows[:0], windows,
                       {"source": "seed", "description": "np.arange(n)/n, one window", "windows": 1})
    return window_series(series, config.timesteps, config.features, config.stride, config.validation_fraction,
                         config.missing, config.max_gap)


def check_config(config: Any) -> None:
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config must be an edgeae.trainer.model.TrainConfig, got {type(config).__name__}")


def check_data_args(data: Any, columns: Any, progress: Any) -> Path | None:
    """train's data, columns and progress, checked: a string of column names would otherwise be
    read letter by letter as names."""
    if columns is not None and (isinstance(columns, str) or not isinstance(columns, (tuple, list))
                                or not all(isinstance(c, str) and c for c in columns)):
        raise UsageError(f"columns must be a tuple of column names or indices as text, e.g. ('a', 'b') or "
                         f"('0', '2'), got {columns!r}")
    if progress is not None and not callable(progress):
        raise UsageError(f"progress must be a function or None, got {progress!r}")
    return None if data is None else as_path(data, "data")


def config_for(data: Path | None = None, columns: tuple[str, ...] | None = None, **settings: Any):
    """A TrainConfig with the defaults that depend on the data, as the CLI applies them: as many
    features as the data has columns, and with a series a validation part (DATA_VALIDATION_FRACTION)
    with early stopping (DATA_PATIENCE), tanh units (DATA_ACTIVATION) and standardized values
    (DATA_SCALING); a setting given (not None) is kept as it is."""
    data = check_data_args(data, columns, None)
    if columns and data is None:
        raise UsageError("--columns chooses columns of --data; the seed data has none to choose")
    if settings.get("time_column") is not None and data is None:
        raise UsageError("--time-column names a column of --data; the seed data has none")
    chosen = {key: value for key, value in settings.items() if value is not None}
    if "features" not in chosen:
        chosen["features"] = (load_series(data, tuple(columns) if columns else None, missing_ok=True,
                                          header_row=chosen.get("header_row", True),
                                          time_column=chosen.get("time_column")).values.shape[-1]
                              if data is not None else TrainConfig.features)
    if data is not None:
        chosen.setdefault("activation", DATA_ACTIVATION)
        chosen.setdefault("scaling", DATA_SCALING)
        chosen.setdefault("level", DATA_LEVEL)
    chosen.setdefault("validation_fraction", DATA_VALIDATION_FRACTION if data is not None else 0.0)
    chosen.setdefault("patience", DATA_PATIENCE if chosen["validation_fraction"] else 0)
    try:
        return TrainConfig(**chosen)
    except TypeError as exc:  # a setting TrainConfig does not have
        raise UsageError(f"not a training setting: {exc}") from None


def train(config, data: Path | None = None, columns: tuple[str, ...] | None = None,
          progress: Callable[[int | None, dict[str, float]], None] | None = None) -> Training:
    """Learn the preprocessing from the training part (rows, not overlapping windows), then fit.

    `config_for(data, columns, ...)` makes a config with the defaults the CLI uses for that data.
    """
    check_config(config)
    data = check_data_args(data, columns, progress)
    series = (load_series(data, tuple(columns) if columns else None, missing_ok=True, header_row=config.header_row,
                          time_column=config.time_column)
              if data is not None else None)
    windows = prepare_windows(config, series)
    train_w, val_w, info = windows.train, windows.validation, windows.info
    level = choose_level(config.level, train_w, val_w)
    info["level"] = level.to_dict()
    # Without the level, the bounds are learned from the training windows as the model will see them.
    fit_values = windows.fit_values if level.level == "keep" else train_w - train_w.mean(axis=1, keepdims=True)
    pre = Preprocessing.fit(fit_values, config.clip_quantiles, config.scaling,
                            tuple(series.columns) if series is not None else None, level.level)
    result = model.train(config, pre.apply(train_w), pre.apply(val_w) if len(val_w) else None, progress)
    training = Training(config, pre, result.autoencoder, result.encoder, result.history, result.epochs_run,
                        result.best_epoch, train_w, val_w, info)
    # Unscaling multiplies by the range: near float32's limit a reconstruction can overflow to inf.
    if not np.isfinite(training.summary()["train_reconstruction_max_abs"]):
        raise DataError("the model's reconstructions of the training data overflow float32 once unscaled "
                        "(the values lie too close to the float32 limit); rescale the data")
    return training


def save_training(training: Training, out: Path, force: bool = False) -> Path:
    """Write a training folder: the Keras model, what it was trained on, and a manifest."""
    with staged_folder(as_path(out, "out"), force) as stage:
        save(training.autoencoder, stage / KERAS_FILE)
        np.savez(stage / PARITY_INPUTS_FILE, training=training.train_windows.astype(np.float32),
                 validation=training.validation_windows.astype(np.float32))
        atomic_write_json(stage / TRAINING_FILE, {
            **training.summary(), "history": training.history, "preprocessing": training.preprocessing.to_dict()})
        write_manifest(stage, {
            "kind": "training",
            "edgeae_version": __version__,
            "files": {KERAS_FILE: file_entry(stage / KERAS_FILE, KERAS_ROLE),
                      PARITY_INPUTS_FILE: file_entry(stage / PARITY_INPUTS_FILE, DATA_ROLE),
                      TRAINING_FILE: file_entry(stage / TRAINING_FILE, TRAINING_ROLE)},
        })
    return Path(out)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every float array of a checked .npz file; one that is unreadable or holds anything else is refused.

    Its checksum only says the file is the one the manifest lists, and anyone who can write
    the folder can reseal a manifest: what the file holds is checked here too.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"{path.name}: unreadable ({exc})") from None
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise IntegrityError(f"{path.name}: {key} holds {array.dtype}, not floats")
    return arrays


def saved_windows(folder: Path, timesteps: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The raw training and validation windows a folder keeps (the file checked against the
    manifest by the caller), each (n, timesteps, features) and finite, at least one to train on."""
    saved = _read_npz(Path(folder) / PARITY_INPUTS_FILE)
    missing = [key for key in ("training", "validation") if key not in saved]
    if missing:
        raise IntegrityError(f"{PARITY_INPUTS_FILE}: no {' or '.join(missing)} windows")
    for key in ("training", "validation"):
        array = saved[key]
        if array.ndim != 3 or array.shape[1:] != (timesteps, features):
            raise IntegrityError(f"{PARITY_INPUTS_FILE}: {key} windows are {array.shape}, "
                                 f"expected (n, {timesteps}, {features}) as the manifest says")
        if not np.isfinite(array).all():
            raise IntegrityError(f"{PARITY_INPUTS_FILE}: {key} windows hold NaN or inf")
    if not len(saved["training"]):
        raise IntegrityError(f"{PARITY_INPUTS_FILE}: no training windows")
    return saved["training"].astype(np.float64), saved["validation"].astype(np.float64)


def load_training(folder: Path) -> Training:
    """Read a training (or export) folder back, checking every file first."""
    folder = as_path(folder, "training folder")
    manifest = read_manifest(folder)
    verify_file(folder, KERAS_FILE, manifest.files.get(KERAS_FILE))
    verify_file(folder, PARITY_INPUTS_FILE, manifest.files.get(PARITY_INPUTS_FILE))
    record, source = manifest.training, MANIFEST_FILE  # an export's, checked with its manifest
    if record is None:  # a training folder's: its own file, checked here
        stored = read_json(verify_file(folder, TRAINING_FILE, manifest.files.get(TRAINING_FILE)), "training record")
        check_training_record(stored, TRAINING_FILE)
        record, source = TrainingRecord.of(stored), TRAINING_FILE
    pre = Preprocessing.from_dict(manifest.preprocessing or record.preprocessing, source)
    try:  # settings this version cannot export (an older edgeae's) are the caller's to change
        config = model.TrainConfig.from_dict(thawed(record.config))
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if len(pre.scale) != config.features:
        raise IntegrityError(f"{source}: preprocessing has {len(pre.scale)} features, config {config.features}")
    autoencoder, encoder = model.load(folder / KERAS_FILE)
    model.check_matches(autoencoder, encoder, config, KERAS_FILE)
    train_w, val_w = saved_windows(folder, config.timesteps, config.features)
    final = record.final_loss if record.final_loss is not None else float("nan")
    history = thawed(record.history) or {"loss": [final]}
    return Training(config, pre, autoencoder, encoder, history, record.epochs_run, record.best_epoch,
                    train_w, val_w, thawed(record.data), folder)
