"""A Keras sequence autoencoder edgeae did not train: load it safely, decide whether it belongs to
the family edgeae can export and prove, find its encoder, and make the Training record export needs.

The family is what people build in notebooks: LSTM and GRU layers (stacked, Bidirectional,
with dropout), a RepeatVector bottleneck, Dense or TimeDistributed(Dense) heads, one float32
(batch, timesteps, features) input reconstructed at the same shape. Anything else is refused
by layer name before tf2onnx runs, so no export is ever half right; inside the family, parity
against Keras on onnxruntime is what proves each graph.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.data.series import FLOAT32_MAX, load_series
from edgeae.data.windows import Preprocessing, window_series
from edgeae.contract import progress
from edgeae.contract.errors import UnsupportedModelError, UsageError, require
from edgeae.contract.files import loads_json
from edgeae.exporter.options import UserModelOptions
from edgeae.trainer.model import (
    ACTIVATIONS, ENCODER_LAYER, KERAS_CONFIG, TrainConfig, encoder_of, import_keras, keras_config, load_keras, predict,
)
from edgeae.trainer.training import Training

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
RECURRENT = ("LSTM", "GRU")
PASSIVE = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout")  # identity at inference
SUPPORTED = ("InputLayer", *RECURRENT, "Bidirectional", *PASSIVE, "RepeatVector", "Dense", "TimeDistributed")
MODEL_CLASSES = ("Functional", "Sequential", "Model")
SYNTHETIC_WINDOWS = 64  # parity inputs when the user gives no data: standard normal windows
SYNTHETIC = "synthetic"
NO_THRESHOLD = "scores are in the model's units and no threshold is set (give --calibrate FILE to set one)"


def is_keras_file(path: Path) -> bool:
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def _stored_config(path: Path) -> dict[str, Any]:
    """The model's JSON config as saved, read without building any layer (nothing runs); a .keras
    archive is checked from its zip headers first and its config read bounded (keras_config)."""
    if path.suffix.lower() == ".keras":
        return loads_json(keras_config(path, UsageError), f"{path.name}: {KERAS_CONFIG}")
    try:
        h5py = require("h5py", "train")
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise ValueError("no model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception as exc:  # h5 and JSON errors of every kind: one line for the user
        raise UsageError(f"{path.name}: not a saved Keras model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None


def _refuse_unsafe(config: Any, layer: str = "the model") -> None:
    """Refuse, by layer name, what safe mode must not deserialize: Lambda code and custom classes."""
    if isinstance(config, list):
        for item in config:
            _refuse_unsafe(item, layer)
        return
    if not isinstance(config, dict):
        return
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    name = inner.get("name", layer) if "class_name" in config else layer
    kind = config.get("class_name")
    if kind == "Lambda":
        raise UnsupportedModelError(f"layer {name!r} is a Lambda layer: its Python code is never loaded (safe "
                                    "mode); rebuild it from built-in Keras layers")
    module = config.get("module")  # None for a class registered with register_keras_serializable
    custom = f"{module}.{kind}" if isinstance(module, str) else config.get("registered_name")
    if kind and isinstance(custom, str) and not custom.startswith("keras"):
        raise UnsupportedModelError(f"layer {name!r} uses the custom class {custom}: edgeae loads only "
                                    "built-in Keras objects (safe mode)")
    for value in config.values():
        _refuse_unsafe(value, name)


def load_keras_file(path: Path):
    """A user's .keras / .h5 model, loaded in safe mode after its config was checked for unsafe parts."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Keras model not found: {path}")
    if not is_keras_file(path):
        raise UsageError(f"{path.name}: expected a Keras model file ({', '.join(KERAS_SUFFIXES)}) or an edgeae "
                         "training folder")
    _refuse_unsafe(_stored_config(path))
    return load_keras(path, UsageError)


def as_functional(model):
    """A Sequential model as the functional model of the same layers: tf2onnx cannot name a
    Sequential model's output (KeyError inside from_keras)."""
    if _kind(model) != "Sequential":
        return model
    _, keras = import_keras()
    return keras.Model(model.inputs, model.outputs, name=model.name)


def _kind(layer) -> str:
    return type(layer).__name__


def _inner(layer):
    """The layer a wrapper (TimeDistributed, Bidirectional) applies."""
    return getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history else None


@dataclass(frozen=True)
class Family:
    """What edgeae found in a user's model: its window, its encoder and each layer's kind."""

    timesteps: int
    features: int
    encoder_layer: str
    units: int
    layers: tuple[tuple[str, str], ...]  # (name, kind) in order
    found_by: str

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": self.timesteps, "features": self.features, "encoder_layer": self.encoder_layer,
                "encoder_found_by": self.found_by, "units": self.units,
                "layers": [{"name": name, "kind": kind} for name, kind in self.layers]}


def _check_layer(layer) -> None:
    kind, name = _kind(layer), layer.name
    if kind not in SUPPORTED:
        if kind in MODEL_CLASSES:
            raise UnsupportedModelError(f"layer {name!r} is a nested model: build the autoencoder from its layers "
                                        "in one model")
        raise UnsupportedModelError(f"layer {name!r} ({kind}) is outside the sequence autoencoders edgeae exports "
                                    f"({', '.join(SUPPORTED)})")
    inner = _inner(layer)
    if kind == "TimeDistributed" and _kind(inner) != "Dense":
        raise UnsupportedModelError(f"layer {name!r} wraps {_kind(inner)}: TimeDistributed is supported around "
                                    "Dense only")
    if kind == "Bidirectional" and _kind(inner) not in RECURRENT:
        raise UnsupportedModelError(f"layer {name!r} wraps {_kind(inner)}: Bidirectional is supported around "
                                    "LSTM and GRU")
    cell = inner if kind == "Bidirectional" else layer
    if _kind(cell) in RECURRENT and getattr(cell, "stateful", False):
        raise UnsupportedModelError(f"layer {name!r} is stateful: edgeae exports windows that start from a zero state")
    policy = getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32")
    if kind != "InputLayer" and policy != "float32":
        raise UnsupportedModelError(f"layer {name!r} computes in {policy}: edgeae exports float32 models")


def _walk_back(layer):
    """From the RepeatVector's input back past dropout-like layers to the layer that makes the encoding."""
    while _kind(layer) in PASSIVE:
        layer = _producer(layer.input)
    return layer


def inspect(model, encoder_layer: str | None = None) -> Family:
    """Check a loaded Keras model is in the family, layer by layer, and find its encoder.

    The encoder is the layer whose output the RepeatVector repeats (past any dropout), or the
    layer named by `encoder_layer`; it must give one vector per window, (batch, units).
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                                    f"{len(model.outputs)} outputs; edgeae exports one window in, one out")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise UnsupportedModelError(f"model {model.name!r} reads {shape}; edgeae needs (batch, timesteps, features) "
                                    "with both sizes fixed")
    if shape[1] < 2:
        raise UnsupportedModelError(f"model {model.name!r} reads windows of one step; at least 2 are needed")
    if str(model.inputs[0].dtype) != "float32":
        raise UnsupportedModelError(f"model {model.name!r} reads {model.inputs[0].dtype}; edgeae exports float32")
    if tuple(model.outputs[0].shape) != shape:
        raise UnsupportedModelError(f"model {model.name!r} outputs {tuple(model.outputs[0].shape)} from {shape} "
                                    "windows: an autoencoder reconstructs its input at the same shape")
    for layer in model.layers:
        _check_layer(layer)
    if encoder_layer is not None:
        try:
            chosen = model.get_layer(encoder_layer)
        except ValueError:
            names = ", ".join(layer.name for layer in model.layers)
            raise UsageError(f"--encoder-layer {encoder_layer!r}: no such layer (layers: {names})") from None
        found_by = "named by --encoder-layer"
    else:
        repeats = [layer for layer in model.layers if _kind(layer) == "RepeatVector"]
        if len(repeats) != 1:
            raise UnsupportedModelError(f"model {model.name!r} has {len(repeats)} RepeatVector layers: cannot tell "
                                        "which layer is the encoder; name it with --encoder-layer")
        chosen = _walk_back(_producer(repeats[0].input))
        found_by = f"the input of RepeatVector {repeats[0].name!r}"
    out = tuple(chosen.output.shape)
    if _kind(chosen) == "InputLayer" or len(out) != 2 or not isinstance(out[1], int):
        raise UsageError(f"encoder layer {chosen.name!r} outputs {out}: the encoder must give one vector per "
                         "window, (batch, units)")
    return Family(shape[1], shape[2], chosen.name, out[1],
                  tuple((layer.name, _kind(layer) if not _inner(layer) else f"{_kind(layer)}({_kind(_inner(layer))})")
                        for layer in model.layers), found_by)


def name_encoder(model, family: Family) -> None:
    """Name the encoder layer as edgeae's own models do, so the export's model.keras reloads with
    model.load like any export (a layer already called that is renamed out of the way)."""
    if family.encoder_layer == ENCODER_LAYER:
        return
    names = {layer.name for layer in model.layers}
    for layer in model.layers:
        if layer.name == ENCODER_LAYER:
            number = 1
            while f"{ENCODER_LAYER}_{number}" in names:
                number += 1
            layer.name = f"{ENCODER_LAYER}_{number}"
    model.get_layer(family.encoder_layer).name = ENCODER_LAYER


def identity_preprocessing(features: int) -> Preprocessing:
    """No clipping, no scaling: the model reads raw values as they come."""
    wide = (FLOAT32_MAX,) * features
    return Preprocessing(tuple(-v for v in wide), wide, (0.0,) * features, (1.0,) * features)


SCALING_KEYS = {"standard": ("mean", "std"), "minmax": ("min", "max")}


def parse_scaling_values(texts: tuple[str, ...] | list[str]) -> dict[str, tuple[float, ...]]:
    """`--scaling-values mean=1,2 --scaling-values std=3,4` as {"mean": (1, 2), "std": (3, 4)}."""
    values: dict[str, tuple[float, ...]] = {}
    for text in texts:
        key, sep, numbers = str(text).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--scaling-values takes NAME=v1,v2,... (mean, std, min or max), got {text!r}")
        if key in values:
            raise UsageError(f"--scaling-values gives {key!r} twice")
        try:
            values[key] = tuple(float(v) for v in numbers.split(","))
        except ValueError:
            raise UsageError(f"--scaling-values {key}: {numbers!r} is not a comma-separated list of numbers") from None
    return values


def given_preprocessing(features: int, scaling: str, values: dict[str, Any]) -> Preprocessing:
    """The scaling a user's model was trained with, from the user's own numbers (a scikit-learn
    StandardScaler's mean and std, or a MinMaxScaler's min and max, per feature). minmax also clips
    to [min, max], as edgeae's own default does; standard clips nothing."""
    if scaling not in SCALING_KEYS:
        raise UsageError(f"scaling values need --scaling standard (mean, std) or minmax (min, max), got {scaling!r}")
    keys = SCALING_KEYS[scaling]
    if not isinstance(values, dict) or set(values) != set(keys):
        got = ", ".join(sorted(map(str, values))) if isinstance(values, dict) else repr(values)
        raise UsageError(f"--scaling {scaling} takes values for {' and '.join(keys)}, got {got or 'none'}")
    arrays = {}
    for key in keys:
        try:
            array = np.asarray(values[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise UsageError(f"scaling values {key}: not numbers: {values[key]!r}") from None
        if len(array) != features:
            raise UsageError(f"scaling values {key}: {len(array)} given, the model has {features} features")
        if not (np.isfinite(array).all() and (np.abs(array) < FLOAT32_MAX).all()):
            raise UsageError(f"scaling values {key}: every value must be a finite float32 number, got {values[key]!r}")
        arrays[key] = array
    wide = np.full(features, FLOAT32_MAX)
    if scaling == "standard":
        if not (arrays["std"] > 0).all():
            raise UsageError(f"scaling values std: every value must be above 0, got {values['std']!r}")
        low, high, offset, scale = -wide, wide, arrays["mean"], 1.0 / arrays["std"]
    else:
        if not (arrays["max"] > arrays["min"]).all():
            raise UsageError("scaling values: every max must be above its min")
        low, high, offset, scale = arrays["min"], arrays["max"], arrays["min"], 1.0 / (arrays["max"] - arrays["min"])
    return Preprocessing(*(tuple(float(v) for v in np.float32(a)) for a in (low, high, offset, scale)),
                         scaling=scaling)


def bounds_of(windows: np.ndarray) -> Preprocessing:
    """A preprocessing whose clip bounds are the range of `windows`: what parity_inputs draws from."""
    flat = np.asarray(windows, np.float64).reshape(-1, windows.shape[-1])
    low, high = flat.min(axis=0), flat.max(axis=0)
    high = np.where(high > low, high, low + 1.0)
    n = windows.shape[-1]
    return Preprocessing(tuple(map(float, low)), tuple(map(float, high)), (0.0,) * n, (1.0,) * n)


def training_for(path: Path, own: UserModelOptions = UserModelOptions(), threshold_quantile: float = 0.99,
                 seed: int = 0) -> Training:
    """A user's Keras file as a Training export can publish: the model (encoder named), its
    preprocessing (`own.scaling_values` given by the user, else learned from `own.data` with the
    same settings as training, or none), the windows parity runs on (`own.data`'s, or standard
    normal ones) and the calibration windows (`own.calibrate`'s).
    """
    encoder_layer, data, columns, scaling, stride = own.encoder_layer, own.data, own.columns, own.scaling, own.stride
    clip_quantiles, calibrate, scaling_values = own.clip_quantiles, own.calibrate, own.scaling_values
    with progress.stage(f"load {path.name}"):
        model = as_functional(load_keras_file(path))
    family = inspect(model, encoder_layer)
    if scaling_values is not None:
        given = given_preprocessing(family.features, scaling, scaling_values)  # before any data is read
        if tuple(clip_quantiles) != (0.0, 1.0):
            raise UsageError("--clip-quantiles learns bounds from --data; with --scaling-values the bounds are given")
    elif data is None and (scaling != "none" or tuple(clip_quantiles) != (0.0, 1.0)):
        raise UsageError("--scaling and --clip-quantiles learn from training data: give it with --data, or give "
                         "the values with --scaling-values")
    if columns and data is None and calibrate is None:
        raise UsageError("--columns chooses columns of --data or --calibrate; neither was given")
    t, f = family.timesteps, family.features
    activation = getattr(model.get_layer(family.encoder_layer), "activation", None)
    activation = getattr(activation, "__name__", "tanh")
    config = TrainConfig(timesteps=t, features=f, units=family.units, epochs=1, seed=seed, stride=stride,
                         activation=activation if activation in ACTIVATIONS else "tanh",
                         clip_quantiles=tuple(clip_quantiles), scaling=scaling, threshold_quantile=threshold_quantile)
    if data is not None:
        series = load_series(data, tuple(columns) if columns else None)
        windows = window_series(series, t, f, stride)
        pre = Preprocessing.fit(windows.fit_values, config.clip_quantiles, scaling, tuple(series.columns))
        train, info = windows.train, windows.info
    else:
        pre = identity_preprocessing(f)
        train = np.random.default_rng(seed).standard_normal((SYNTHETIC_WINDOWS, t, f))
        info = {"source": SYNTHETIC, "description": "standard normal windows: no data was given, so they serve "
                                                     "parity only", "windows": SYNTHETIC_WINDOWS}
    if scaling_values is not None:
        pre = given
        info["scaling"] = "given: " + ", ".join(SCALING_KEYS[scaling])
    validation = train[:0]
    if calibrate is not None:
        validation = window_series(load_series(calibrate, tuple(columns) if columns else None), t, f, stride).train
        info["calibration"] = {"source": Path(calibrate).name, "windows": len(validation)}
    name_encoder(model, family)
    scaled = pre.apply(train)
    loss = float(np.mean((predict(model, scaled) - scaled) ** 2))
    info["model"] = {"file": Path(path).name, **family.to_dict()}
    training = Training(config, pre, model, encoder_of(model), {"loss": [loss]}, 0, 0,
                        train.astype(np.float64), validation.astype(np.float64), info)
    return training


SEED_LAYOUTS = (("LSTM", "RepeatVector", "LSTM", "TimeDistributed(Dense)"), ("LSTM", "RepeatVector", "LSTM", "Dense"))


def clean_graph_misfit(training) -> str | None:
    """Why the clean graph (rebuilt for edgeae's own layout) cannot apply to a user's model; None if it may."""
    layers = training.data["model"]["layers"]
    kinds = tuple(layer["kind"] for layer in layers if layer["kind"] not in ("InputLayer", *PASSIVE))
    if kinds in SEED_LAYOUTS:
        return None
    return f"it is rebuilt for edgeae's layout (LSTM, RepeatVector, LSTM, Dense); this model is {', '.join(kinds)}"


def is_foreign(training) -> bool:
    """Whether a Training holds a user's model (export_keras) rather than one edgeae trained."""
    return isinstance(training.data.get("model"), dict)


def parity_bounds(training) -> Preprocessing:
    """The range verify draws its random windows from: the clip bounds, or, for a user's model given
    without data (no bounds), the range of the standard normal windows it is checked on."""
    if training.data.get("source") == SYNTHETIC:
        return bounds_of(training.train_windows)
    return training.preprocessing
