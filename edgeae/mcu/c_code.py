"""C99 for microcontrollers: an export's autoencoder and encoder written out as dependency-free C.

Devices with a few hundred KB of flash and no OS never run onnxruntime, and the field's
converters fail this model (TensorFlow Lite Micro's LSTM applies only sigmoid or tanh; onnx2c
cannot compile the clip against per-feature constants). So the generator writes the network
itself: `edgeae_model.h` + `edgeae_model.c` (const weights, caller-provided working memory,
clip and scaling inside as in the ONNX graphs, the export's score and threshold) and
`edgeae_golden.c`, a test program holding the export's golden vectors.

The weights come from the export's ONNX graph (fp32 and int8: the clean graph; int8-weights: the int8
variant's int8 codes and per-row scales, float compute) or from model.keras (not int8-weights); both give
the same numbers because both are put in ONNX's gate order i, o, f, c. int8 is the full-integer build:
quantized and written by int8_c.py (quantize.py holds the scheme and its numpy model). What the C
does not implement (an LSTM with clip, peepholes, another direction or layout, hard sigmoid...) is
refused, never approximated. Every file read is checked against the export's sealed manifest first.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.versions import __version__
from edgeae.contract.files import as_path, atomic_write_bytes, check_target, staged_folder
from edgeae.contract.manifest import file_entry, read_export_manifest, verify_file, write_manifest
from edgeae.contract.records import Manifest
from edgeae.contract.errors import IntegrityError, UnsupportedModelError, UsageError, require
from edgeae.contract.golden import KERAS, SCORE, read_golden
from edgeae.contract.layout import KERAS_FILE
from edgeae.contract.parity import DEFAULT_ATOL, Tolerance
from edgeae.data.windows import Preprocessing
from edgeae.mcu import int8_c, stream_c, templates as c_templates
from edgeae.mcu.c_text import LEVEL_CODE, doubles, fill, floats, is_identity, scaling_arrays
from edgeae.mcu.shape import check_shape, graph_refusal
from edgeae.trainer.model import load as load_keras

SOURCES = ("onnx", "keras")
C_BUILDS = ("fp32", "int8", "int8-weights")  # int8: full integer; int8-weights: int8 weights, float compute
HEADER_FILE, SOURCE_FILE, GOLDEN_FILE = "edgeae_model.h", "edgeae_model.c", "edgeae_golden.c"
C_ROLE = "c-source"
_MUTANTS = ("gate-order", "tanh", "hard-sigmoid")  # wrong C the tests feed to the golden program
_KERAS_TO_ONNX = [0, 3, 1, 2]  # Keras stores gates i, f, c, o; ONNX (and this C) i, o, f, c
_ONNX_TO_KERAS = [0, 2, 3, 1]
_C_ACTIVATIONS = {
    "Sigmoid": "1.0f / (1.0f + expf(-x))",
    "Relu": "x > 0.0f ? x : 0.0f",
    "Tanh": "tanhf(x)",
}
_HARD_SIGMOID = "fmaxf(0.0f, fminf(1.0f, 0.2f * x + 0.5f))"  # ONNX's default alpha, beta: mutant only
_KERAS_ACTIVATIONS = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh"}


@dataclass(frozen=True)
class Int8Rows:
    """A weight matrix as int8 codes with one float32 scale per row (the int8 variant's)."""

    codes: np.ndarray  # (rows, columns) int8
    scale: np.ndarray  # (rows,) float32


@dataclass(frozen=True)
class Lstm:
    """One LSTM layer, gate rows in ONNX's order i, o, f, c."""

    w: np.ndarray | Int8Rows  # (4·units, inputs)
    r: np.ndarray | Int8Rows  # (4·units, units)
    b: np.ndarray  # (4·units,): input and recurrent bias summed
    activations: tuple[str, str, str]  # gate, cell, output: ONNX op names


@dataclass(frozen=True)
class Network:
    encoder: Lstm
    decoder: Lstm
    dense_kernel: np.ndarray  # (units, features)
    dense_bias: np.ndarray  # (features,)

    @property
    def units(self) -> int:
        return int(self.dense_kernel.shape[0])

    @property
    def features(self) -> int:
        return int(self.dense_kernel.shape[1])


@dataclass(frozen=True)
class CCode:
    """What generate_c wrote: the folder, its build and the figures its header states."""

    folder: Path
    precision: str
    source: str
    threshold: float
    tolerance: Tolerance
    weights_bytes: int
    work_bytes: int
    files: tuple[str, ...]


# ---------------------------------------------------------------- reading the weights


def _refuse(where: str, what: str) -> None:
    raise UnsupportedModelError(f"{where}: {what}; the C generator implements forward LSTMs with sigmoid gates, "
                                "relu/tanh/sigmoid cell and output activations, no clip, peepholes or input-forget")


def _check_onnx_lstm(node: Any) -> tuple[str, str, str]:
    """The activations of a supported ONNX LSTM node; anything else it sets is refused by name."""
    helper = require("onnx", "train").helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for name, value in attrs.items():
        if name in ("hidden_size", "activations"):
            continue
        if name == "direction" and value in (b"forward", "forward"):
            continue
        if name in ("input_forget", "layout") and value == 0:
            continue
        shown = value.decode() if isinstance(value, bytes) else value
        _refuse(node.name, f"LSTM attribute {name}={shown!r} is not supported")
    extra = {4: "sequence_lens", 5: "initial_h", 6: "initial_c", 7: "peepholes (P)"}
    for index, name in enumerate(node.input):
        if index > 3 and name:
            _refuse(node.name, f"LSTM input {extra.get(index, index)} is not supported")
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"])]
    if len(names) != 3:
        _refuse(node.name, f"{len(names)} activations ({', '.join(names)}) are not one forward LSTM's three")
    if names[0] != "Sigmoid":
        _refuse(node.name, f"gate activation {names[0]} is not supported")
    for name in names[1:]:
        if name not in _C_ACTIVATIONS:
            _refuse(node.name, f"activation {name} is not supported")
    return names[0], names[1], names[2]


def _onnx_arrays(graph: Any) -> dict[str, np.ndarray | Int8Rows]:
    """Initializers by name, each DequantizeLinear output as its int8 codes and per-row scale."""
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    arrays: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        codes, scale = arrays.get(node.input[0]), arrays.get(node.input[1])
        zero = arrays.get(node.input[2]) if len(node.input) > 2 else None
        axis = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", 1)
        if (codes is None or scale is None or codes.dtype != np.int8 or codes.ndim != 3 or codes.shape[0] != 1
                or axis != 1 or scale.shape != (codes.shape[1],) or (zero is not None and np.any(zero != 0))):
            _refuse(node.name, "only int8 weights with one scale per row and zero point 0 are supported")
        arrays[node.output[0]] = Int8Rows(codes[0], scale.astype(np.float32))
    return arrays


def _weight(value: Any, where: str) -> np.ndarray | Int8Rows:
    if isinstance(value, Int8Rows):
        return value
    if value is None or value.ndim != 3 or value.shape[0] != 1:
        _refuse(where, "the weight is not a constant of one direction")
    return np.asarray(value[0], np.float32)


def network_from_onnx(proto: Any) -> Network:
    """The weights of an edgeae autoencoder graph (clean fp32 or int8 variant); refuses other graphs."""
    require("onnx", "train")
    graph = proto.graph
    nodes = {n.name: n for n in graph.node}
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    arrays = _onnx_arrays(graph)
    if len(lstms) != 2 or {n.name for n in lstms} != {"encoder/LSTM", "decoder/LSTM"} \
            or "dense/kernel" not in arrays or "dense/bias" not in arrays:
        raise UnsupportedModelError(graph_refusal(graph))
    layers = []
    for name in ("encoder/LSTM", "decoder/LSTM"):
        node = nodes[name]
        acts = _check_onnx_lstm(node)
        w, r = (_weight(arrays.get(node.input[i]), name) for i in (1, 2))
        bias = arrays.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        units = (r.codes if isinstance(r, Int8Rows) else r).shape[1]
        b = (np.zeros(4 * units, np.float32) if bias is None
             else (bias[0, :4 * units] + bias[0, 4 * units:]).astype(np.float32))
        layers.append(Lstm(w, r, b, acts))
    kernel = np.asarray(arrays["dense/kernel"], np.float32)
    return Network(layers[0], layers[1], kernel, np.asarray(arrays["dense/bias"], np.float32))


def network_from_keras(path: Path) -> Network:
    """The weights of an edgeae Keras autoencoder, gates reordered to ONNX's i, o, f, c."""
    autoencoder, _ = load_keras(path)
    layers = [layer for layer in autoencoder.layers if type(layer).__name__ != "InputLayer"]
    kinds = [type(layer).__name__ for layer in layers]
    if kinds != ["LSTM", "RepeatVector", "LSTM", "TimeDistributed"] or type(layers[3].layer).__name__ != "Dense":
        raise UnsupportedModelError(f"{path.name}: layers {', '.join(kinds)} are not LSTM, RepeatVector, LSTM, "
                                    "TimeDistributed(Dense), the autoencoder the C generator writes out")
    lstms = []
    for layer, sequences in ((layers[0], False), (layers[2], True)):
        config = layer.get_config()
        for key, wanted in (("go_backwards", False), ("stateful", False), ("return_sequences", sequences),
                            ("return_state", False), ("recurrent_activation", "sigmoid")):
            if config.get(key, wanted) != wanted:
                _refuse(f"{path.name}: layer {layer.name}", f"{key}={config.get(key)!r} is not supported")
        activation = _KERAS_ACTIVATIONS.get(str(config.get("activation")))
        if activation is None:
            _refuse(f"{path.name}: layer {layer.name}", f"activation {config.get('activation')!r} is not supported")
        weights = layer.get_weights()
        units = int(config["units"])
        bias = weights[2] if config.get("use_bias", True) else np.zeros(4 * units, np.float32)

        def onnx_rows(matrix: np.ndarray) -> np.ndarray:
            return np.asarray(matrix.reshape(-1, 4, units)[:, _KERAS_TO_ONNX, :].reshape(-1, 4 * units).T, np.float32)

        lstms.append(Lstm(onnx_rows(weights[0]), onnx_rows(weights[1]),
                          np.asarray(bias.reshape(4, units)[_KERAS_TO_ONNX].reshape(-1), np.float32),
                          ("Sigmoid", activation, activation)))
    dense = layers[3].layer
    if dense.get_config().get("activation") != "linear" or not dense.get_config().get("use_bias", True):
        _refuse(f"{path.name}: layer {dense.name}", "only a linear Dense layer with a bias is supported")
    kernel, bias = dense.get_weights()
    return Network(lstms[0], lstms[1], np.asarray(kernel, np.float32), np.asarray(bias, np.float32))


def _mutate(network: Network, mutant: str) -> Network:
    """A deliberately wrong network: the golden program must catch each one."""
    def layer(lstm: Lstm) -> Lstm:
        if mutant == "gate-order":  # Keras's i, f, c, o read as ONNX's i, o, f, c
            def keras_order(m: np.ndarray) -> np.ndarray:
                return m.reshape(4, -1, *m.shape[1:])[_ONNX_TO_KERAS].reshape(m.shape)
            return replace(lstm, w=keras_order(lstm.w), r=keras_order(lstm.r), b=keras_order(lstm.b))
        if mutant == "tanh":
            return replace(lstm, activations=(lstm.activations[0], "Tanh", "Tanh"))
        return replace(lstm, activations=("HardSigmoid", *lstm.activations[1:]))

    if mutant not in _MUTANTS:
        raise UsageError(f"no mutant {mutant!r} ({', '.join(_MUTANTS)})")
    return replace(network, encoder=layer(network.encoder), decoder=layer(network.decoder))


# ---------------------------------------------------------------- writing C


def _blocks(matrix: np.ndarray, units: int) -> np.ndarray:
    """(4·units, columns), rows i, o, f, c -> [block of two units][column][unit][gate], flat."""
    columns = matrix.shape[1]
    padded = units + units % 2
    gates = np.pad(matrix.reshape(4, units, columns), ((0, 0), (0, padded - units), (0, 0)))
    return gates.reshape(4, padded // 2, 2, columns).transpose(1, 3, 2, 0).reshape(-1)


def _block_vector(vector: np.ndarray, units: int) -> np.ndarray:
    padded = units + units % 2
    gates = np.pad(vector.reshape(4, units), ((0, 0), (0, padded - units)))
    return gates.reshape(4, padded // 2, 2).transpose(1, 2, 0).reshape(-1)


def _matrix_c(name: str, matrix: np.ndarray | Int8Rows, units: int) -> tuple[str, int]:
    """A weight matrix as C arrays, and its bytes."""
    if isinstance(matrix, Int8Rows):
        codes = _blocks(matrix.codes.astype(np.int8), units)
        scale = _block_vector(matrix.scale, units)
        text = (f"static const int8_t {name}_codes[{codes.size}] = {{{','.join(map(str, codes.tolist()))}}};\n"
                f"static const float {name}_scale[{scale.size}] = {{{floats(scale)}}};\n"
                f"static const int8_matrix {name} = {{{name}_codes, {name}_scale}};")
        return text, codes.size + 4 * scale.size
    packed = _blocks(matrix, units)
    return f"static const float {name}[{packed.size}] = {{{floats(packed)}}};", 4 * packed.size


def _activation(name: str) -> str:
    return _HARD_SIGMOID if name == "HardSigmoid" else _C_ACTIVATIONS[name]


def render(network: Network, pre: Preprocessing, timesteps: int, threshold: float, precision: str, source: str,
           threshold_note: str, stride: int = 1) -> tuple[str, str, int, int]:
    """edgeae_model.h and edgeae_model.c for `network` (streams every `stride` rows); with the weights' and
    the work area's bytes."""
    units, features = network.units, network.features
    padded = units + units % 2
    arrays, weight_bytes = [], 0
    if precision == "int8-weights":
        arrays.append("typedef struct { const int8_t *codes; const float *scale; } int8_matrix;")
    for name, matrix in (("encoder_w", network.encoder.w), ("encoder_r", network.encoder.r),
                         ("decoder_w", network.decoder.w), ("decoder_r", network.decoder.r)):
        text, size = _matrix_c(name, matrix, units)
        arrays.append(text)
        weight_bytes += size
    for name, vector in (("encoder_bias", network.encoder.b), ("decoder_bias", network.decoder.b)):
        packed = _block_vector(vector, units)
        arrays.append(f"static const float {name}[{packed.size}] = {{{floats(packed)}}};")
        weight_bytes += 4 * packed.size
    arrays.append(f"static const float dense_kernel[{network.dense_kernel.size}] = {{{floats(network.dense_kernel)}}};")
    arrays.append(f"static const float dense_bias[{features}] = {{{floats(network.dense_bias)}}};")
    weight_bytes += 4 * (network.dense_kernel.size + features)
    identity, levelled, scaling = is_identity(pre), pre.level == "remove", scaling_arrays(pre)
    columns = max(features, units)
    work_bytes = 4 * (2 * 4 * padded + 2 * padded + units + 2 * features + 2 * columns)
    stream_header, stream_code = stream_c.stream_api(stride, timesteps * features, work_bytes)
    acts = network.encoder.activations
    if network.decoder.activations != acts:
        raise UnsupportedModelError("the encoder and decoder LSTMs use different activations; the C shares one set")
    precision_note = ("float32 weights and compute; within 1e-5 of Keras on the export's golden vectors." if precision == "fp32"
                      else "int8 weights (one scale per row of each LSTM matrix, the export's int8 variant), float32 "
                           "compute;\n * the LSTM weights take a quarter of float32's flash; its own threshold below.")
    common = {"MODEL": "LSTM autoencoder", "VERSION": __version__, "SOURCE": source, "PRECISION": precision,
              "TIMESTEPS": timesteps, "FEATURES": features, "UNITS": units, "PADDED_UNITS": padded,
              "MAX_COLUMNS": columns, "WORK_BYTES": work_bytes, "STACK_HINT": "200 bytes",
              "THRESHOLD": repr(float(threshold)), "THRESHOLD_NOTE": threshold_note,
              "SCALING_NOTE": "" if identity else ", then offset and scaled", "PRECISION_NOTE": precision_note,
              "EXTRA_LIBM": ", tanhf" if "Tanh" in acts else "", "STREAM_API": stream_header}
    header = fill(c_templates.HEADER, common)
    source_text = fill(c_templates.SOURCE, {
        **common, "WEIGHTS": "\n".join(arrays),
        "CLIP_LOW": floats(np.array(pre.clip_low)), "CLIP_HIGH": floats(np.array(pre.clip_high)),
        "SCALING_ARRAYS": scaling, "STREAM_CODE": stream_code,
        "GATE_ACT": _activation(acts[0]), "CELL_ACT": _activation(acts[1]), "OUT_ACT": _activation(acts[2]),
        "KERNEL": c_templates.KERNEL_INT8 if precision == "int8-weights" else c_templates.KERNEL_FP32,
        "ENC_W": "encoder_w", "ENC_R": "encoder_r", "DEC_W": "decoder_w", "DEC_R": "decoder_r",
        "PREPROCESS": "x" if identity else "(x - offset[f]) * scale[f]",
        "POSTPROCESS": ("y" if identity else "y / scale[f] + offset[f]") + (" + work->level[f]" if levelled else ""),
        "LEVEL": LEVEL_CODE if levelled else "",
        "INPUT": "window[t * EDGEAE_FEATURES + f]" + (" - work->level[f]" if levelled else ""),
    })
    return header, source_text, weight_bytes, work_bytes


def _bound(tolerance: Tolerance, reference: np.ndarray) -> float:
    """The max abs error `tolerance` allows on outputs like `reference`; with two bounds, the larger,
    as parity.ParityResult judges them."""
    bounds = [] if tolerance.abs is None else [tolerance.abs]
    if tolerance.rel_range is not None:
        spread = float(reference.max() - reference.min())
        bounds.append(tolerance.rel_range * (spread if spread > 0 else max(float(np.abs(reference).max()), 1.0)))
    return max(bounds)


def render_golden(golden: Any, pre: Preprocessing, tolerance: Tolerance, precision: str, reference_threshold: float,
                  own_scores: dict[str, np.ndarray], own_threshold: float) -> str:
    """edgeae_golden.c: every golden window with Keras's outputs, each set's tolerance, and the
    flags Keras gives; the C may disagree on no more windows than the export's own variant did."""
    names = list(golden.inputs)
    starts = np.cumsum([0] + [len(golden.inputs[n]) for n in names]).tolist()
    inputs = np.concatenate([golden.inputs[n] for n in names])
    reconstruction = np.concatenate([golden.expected["autoencoder"][KERAS][n] for n in names])
    embedding = np.concatenate([golden.expected["encoder"][KERAS][n] for n in names])
    scores = np.concatenate([golden.expected[SCORE][KERAS][n] for n in names]).astype(np.float64)
    own = np.concatenate([own_scores[n] for n in names]).astype(np.float64)
    unit = np.abs(np.asarray(pre.scale, np.float64))  # errors are judged in the model's units, as verify does
    recon_tol = [_bound(tolerance, golden.expected["autoencoder"][KERAS][n] * unit) for n in names]
    embed_tol = [_bound(tolerance, golden.expected["encoder"][KERAS][n]) for n in names]
    # A reconstruction within d (model units) of Keras's moves each squared term by at most 2|x - y|d + d^2.
    per_window = np.repeat(recon_tol, np.diff(starts))[:, None, None]
    gap = np.abs(inputs.astype(np.float64) - reconstruction.astype(np.float64)) * unit
    score_tol = np.mean(2 * gap * per_window + per_window ** 2, axis=(1, 2)) + 1e-12 * np.abs(scores)
    flags = scores > reference_threshold
    allowed = int(np.sum((own > own_threshold) != flags))
    note = tolerance.describe()
    return fill(c_templates.GOLDEN, {
        "VERSION": __version__, "PRECISION": precision, "TOLERANCE_NOTE": note,
        "SETS": len(names), "WINDOWS": len(inputs), "SET_NAMES": ",".join(f'"{n}"' for n in names),
        "SET_STARTS": ",".join(map(str, starts)),
        "ERROR_UNIT": floats(unit), "RECONSTRUCTION_TOL": floats(np.array(recon_tol)), "EMBEDDING_TOL": floats(np.array(embed_tol)),
        "SCORE_TOL": doubles(score_tol),
        "INPUTS": floats(inputs), "RECONSTRUCTIONS": floats(reconstruction), "EMBEDDINGS": floats(embedding),
        "SCORES": doubles(scores), "FLAGS": ",".join("1" if f else "0" for f in flags), "FLAGS_ALLOWED": allowed,
    })


def _threshold(manifest: Manifest, precision: str) -> float:
    """The detector threshold of `precision`, as its detector graph (or older exports' variant record) has it."""
    detector = manifest.detector
    graph = detector.graphs.get(precision) if detector is not None else None
    if graph is not None:
        return float(graph.threshold)
    fallback = (None if detector is None else detector.threshold if precision == "fp32" else
                detector.variant_thresholds.get(precision))
    if fallback is None:
        why = manifest.scores_note or "export it again with this edgeae"  # a user's model exported without data
        raise UsageError(f"the export has no {precision} anomaly threshold; {why}")
    return float(fallback)


def _model_file(manifest: Manifest, precision: str) -> str:
    if precision == "fp32":
        return manifest.models["autoencoder"].file
    entry = manifest.variant("autoencoder", precision)
    if entry is None or not entry.published:
        raise UsageError(f"the export has no published {precision} autoencoder; build it first: "
                         f"edgeae optimize EXPORT_DIR --build {precision}")
    return entry.file


def _tolerance(manifest: Manifest, precision: str) -> Tolerance:
    """fp32: the export's parity bound; int8: the tolerance its int8 variant recorded."""
    if precision == "fp32":
        recorded = manifest.parity.tolerance_abs
        return Tolerance(abs=float(DEFAULT_ATOL if recorded is None else recorded))
    return manifest.variant("autoencoder", precision).tolerance


def generate_c(export_dir: Any, out_dir: Any, precision: str = "fp32", source: str = "onnx", force: bool = False,
               golden_windows: int | None = None, _mutant: str | None = None) -> CCode:
    """Write edgeae_model.h, edgeae_model.c and edgeae_golden.c for an export into `out_dir`.

    `precision` fp32, int8 (full integer, int8_c.py: quantized from the float weights, the int8
    detector's threshold) or int8-weights (the export's int8 variant: int8 weights, float compute);
    `source` onnx (the export's graph) or keras (model.keras; not for int8-weights). The folder
    is written whole or not at all and an existing one is replaced only with `force`.
    `golden_windows`: the golden program holds only the first so many windows of each set (a small board).
    `_mutant` is for the tests alone: it writes deliberately wrong C the golden program must catch.
    """
    export_dir, out_dir = as_path(export_dir, "export folder"), as_path(out_dir, "output folder")
    if precision not in C_BUILDS:
        raise UsageError(f"precision must be one of {', '.join(C_BUILDS)}, got {precision!r}")
    if source not in SOURCES:
        raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "keras" and precision == "int8-weights":
        raise UsageError("model.keras gives float32 weights; the int8-weights C is made from the export's int8 "
                         "variant (source onnx)")
    variant = "fp32" if precision == "fp32" else "int8"  # the export's precision whose threshold and tolerance hold
    check_target(out_dir, force)
    manifest = read_export_manifest(export_dir)
    check_shape(manifest)  # a stacked, GRU or Bidirectional model: refused by its layers' names, before any weight
    files = manifest.files
    if source == "keras":
        if KERAS_FILE not in files:
            raise IntegrityError(f"{export_dir} lists no {KERAS_FILE}")
        network = network_from_keras(verify_file(export_dir, KERAS_FILE, files[KERAS_FILE]))
        origin = KERAS_FILE
    else:
        onnx = require("onnx", "train")
        origin = _model_file(manifest, "int8" if precision == "int8-weights" else "fp32")
        if origin not in files:
            raise IntegrityError(f"the manifest lists no {origin}")
        path = verify_file(export_dir, origin, files[origin])
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # a file whose hash matches but does not parse: one line, not a traceback
            raise IntegrityError(f"{origin}: not a readable ONNX model ({type(exc).__name__})") from None
        network = network_from_onnx(proto)
    window = manifest.window
    units = network.units if manifest.units is None else manifest.units
    if (network.features, network.units) != (window.features, units):
        raise IntegrityError(f"{origin} reads {network.features} features into {network.units} units; the manifest "
                             f"says {window.features} and {units}")
    if _mutant is not None:
        network = _mutate(network, _mutant)
    threshold, tolerance = _threshold(manifest, variant), _tolerance(manifest, variant)
    golden = read_golden(export_dir, manifest)
    if SCORE not in golden.expected or (variant != "fp32" and variant not in golden.expected[SCORE]):
        raise IntegrityError(f"the export's golden vectors hold no {variant} scores; export it again with this edgeae")
    golden = golden if golden_windows is None else int8_c.trim(golden, golden_windows)
    own_scores = golden.expected[SCORE]["keras" if variant == "fp32" else variant]
    note = ("score > this is anomalous" if precision == "fp32" else
            "calibrated on the int8 variant's own scores, as the ONNX int8 detector's")
    pre = Preprocessing.from_dict(manifest.preprocessing)
    if precision == "int8":
        quantized = int8_c.quantized(network, export_dir, manifest, pre)
        own_scores = int8_c.own_scores(quantized, golden, pre)
        header, code, weight_bytes, work_bytes = int8_c.render(quantized, pre, window.timesteps, threshold, origin,
                                                               window.stride)
    else:
        header, code, weight_bytes, work_bytes = render(network, pre, window.timesteps, threshold, precision, origin,
                                                        note, window.stride)
    golden_c = render_golden(golden, pre, tolerance, precision, _threshold(manifest, "fp32"), own_scores, threshold)
    written = {HEADER_FILE: header, SOURCE_FILE: code, GOLDEN_FILE: golden_c}
    with staged_folder(out_dir, force) as stage:
        for name, text in written.items():
            atomic_write_bytes(stage / name, text.encode("utf-8"))
        write_manifest(stage, {
            "kind": C_ROLE, "precision": precision, "source": origin, "threshold": threshold,
            "tolerance": tolerance.to_dict(), "weights_bytes": weight_bytes, "work_bytes": work_bytes,
            "export_checksum": manifest.checksum, "edgeae_version": __version__,
            "files": {name: file_entry(stage / name, C_ROLE) for name in written},
        })
    return CCode(out_dir, precision, source, threshold, tolerance, weight_bytes, work_bytes, tuple(written))
