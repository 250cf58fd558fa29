"""Keras -> ONNX with tf2onnx: fused LSTMs, named inputs/outputs, a named batch axis, and the
preprocessing (clip + scale, and its inverse) baked into the graph so any onnxruntime app,
C or mobile included, feeds raw values and gets raw units back.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.versions import __version__
from edgeae.data.windows import Preprocessing
from edgeae.contract import progress
from edgeae.contract.errors import EdgeAEError, UsageError, require
from edgeae.contract.parity import fp32_tolerance
from edgeae.trainer.model import import_keras

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 18  # LSTM with layout/activations (14+) .. what tf2onnx 1.17 knows
INPUT_NAME = "sequence"
BATCH_DIM = "batch"
OUTPUT_NAMES = {"autoencoder": "reconstruction", "encoder": "embedding"}
EDGEAE_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


class ExportError(EdgeAEError):
    """tf2onnx produced something edgeae cannot stand behind."""


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset!r}")
    return opset


def convert(keras_model, timesteps: int, features: int, opset: int = DEFAULT_OPSET):
    """Run tf2onnx on the CPU with an explicit signature (Keras 3 needs one)."""
    tf, _ = import_keras()
    tf2onnx = require("tf2onnx", "train")
    signature = [tf.TensorSpec((None, timesteps, features), tf.float32, name=INPUT_NAME)]
    with tf.device("/CPU:0"):
        proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=check_opset(opset))
    return proto


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.output) + list(graph.input):
        if value.name == old:
            value.name = new


def _set_batch_dim(value_info) -> None:
    dim0 = value_info.type.tensor_type.shape.dim[0]
    dim0.Clear()
    dim0.dim_param = BATCH_DIM


def _constant(graph, name: str, values: np.ndarray) -> str:
    onnx = require("onnx", "train")
    graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
    return name


LEVEL_TENSOR = "preprocess/level"  # each window's mean over time, per feature: (batch, 1, features)


def _level_nodes(proto, pre: Preprocessing) -> tuple[list, str]:
    """The window's level removed before the clip (Preprocessing.apply): its mean over time taken in
    float64 and rounded once to float32, so numpy, onnxruntime and the C agree on it to the bit
    (a float32 sum's rounding depends on its order, and a level of 400 carries 3e-5 of it)."""
    onnx = require("onnx", "train")
    helper, graph = onnx.helper, proto.graph
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    wide = helper.make_node("Cast", [INPUT_NAME], ["preprocess/input64"], name="preprocess/input64",
                            to=onnx.TensorProto.DOUBLE)
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "preprocess/time_axis"))
        mean = helper.make_node("ReduceMean", ["preprocess/input64", "preprocess/time_axis"], ["preprocess/level64"],
                                name="preprocess/level", keepdims=1)
    else:
        mean = helper.make_node("ReduceMean", ["preprocess/input64"], ["preprocess/level64"], name="preprocess/level",
                                keepdims=1, axes=[1])
    narrow = helper.make_node("Cast", ["preprocess/level64"], [LEVEL_TENSOR], name="preprocess/level32",
                              to=onnx.TensorProto.FLOAT)
    sub = helper.make_node("Sub", [INPUT_NAME, LEVEL_TENSOR], ["preprocess/levelled"], name="preprocess/unlevel")
    return [wide, mean, narrow, sub], "preprocess/levelled"


def add_preprocessing(proto, pre: Preprocessing, role: str):
    """Put clip + scale before the model, and (autoencoder only) the inverse after it."""
    helper = require("onnx", "train").helper
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    arrays = pre.arrays()
    raw_in = graph.input[0].name
    _rename_tensor(graph, raw_in, "model_input")
    graph.input[0].name = INPUT_NAME
    steps = [
        ("Min", "preprocess/clip_high", arrays["clip_high"], "clipped_high"),
        ("Max", "preprocess/clip_low", arrays["clip_low"], "clipped"),
    ]
    if not pre.is_identity_scale:
        steps += [
            ("Sub", "preprocess/offset", arrays["offset"], "centred"),
            ("Mul", "preprocess/scale", arrays["scale"], "scaled"),
        ]
    nodes, current = _level_nodes(proto, pre) if pre.level == "remove" else ([], INPUT_NAME)
    for i, (op, const, values, out) in enumerate(steps):
        out = "model_input" if i == len(steps) - 1 else f"preprocess/{out}"
        nodes.append(helper.make_node(op, [current, _constant(graph, const, values)], [out], name=f"preprocess/{op.lower()}"))
        current = out
    for node in reversed(nodes):
        graph.node.insert(0, node)

    final = OUTPUT_NAMES[role]
    model_out = graph.output[0].name
    if role == "autoencoder" and (not pre.is_identity_scale or pre.level == "remove"):
        _rename_tensor(graph, model_out, "model_output")
        post, current = [], "model_output"
        if not pre.is_identity_scale:
            post += [
                helper.make_node("Div", [current, _constant(graph, "postprocess/scale", arrays["scale"])],
                                 ["postprocess/unscaled"], name="postprocess/div"),
                helper.make_node("Add", ["postprocess/unscaled", _constant(graph, "postprocess/offset", arrays["offset"])],
                                 ["postprocess/unshifted"], name="postprocess/add"),
            ]
            current = "postprocess/unshifted"
        if pre.level == "remove":  # the window's own level back: the reconstruction is in raw units
            post.append(helper.make_node("Add", [current, LEVEL_TENSOR], ["postprocess/levelled"],
                                         name="postprocess/level"))
        post[-1].output[0] = final
        graph.node.extend(post)
        graph.output[0].name = final
    else:
        _rename_tensor(graph, model_out, final)
    _set_batch_dim(graph.input[0])
    _set_batch_dim(graph.output[0])
    del graph.value_info[:]  # tf2onnx's intermediate shapes carry unk__ names; onnxruntime infers its own
    return proto


def describe_io(proto) -> dict[str, list[dict[str, Any]]]:
    """Input/output names, shapes (the batch axis by its name) and element types."""
    helper = require("onnx", "train").helper

    def one(v):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [one(v) for v in proto.graph.input], "outputs": [one(v) for v in proto.graph.output]}


def check_exported(proto, role: str, own: bool = True) -> None:
    """The graph must be valid and use only standard domains; edgeae's own models must hold fused
    LSTM ops, never a Loop. A user's model may hold Loops (tf2onnx writes GRUs and recurrent
    dropout that way): its parity against Keras is what proves them."""
    onnx = require("onnx", "train")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{role}: onnx.checker rejects the export: {str(exc).splitlines()[0]}") from None
    ops = [n.op_type for n in proto.graph.node]
    domains = {n.domain for n in proto.graph.node}
    if not domains <= EDGEAE_DOMAINS:
        raise ExportError(f"{role}: export uses non-standard operator domains {sorted(domains - EDGEAE_DOMAINS)}")
    if not own:
        return
    if "Loop" in ops or "Scan" in ops:
        raise ExportError(f"{role}: the LSTM was exported as a Loop/Scan, not a fused LSTM op")
    expected = 2 if role == "autoencoder" else 1
    if ops.count("LSTM") != expected:
        raise ExportError(f"{role}: expected {expected} fused LSTM op(s), found {ops.count('LSTM')}")


def export_model(keras_model, role: str, pre: Preprocessing, timesteps: int, features: int,
                 opset: int = DEFAULT_OPSET, training: dict | None = None, own: bool = True):
    """One Keras model -> a checked ONNX ModelProto with preprocessing and edgeae metadata
    (`own` False: a user's model, held to check_exported's rules for those)."""
    helper = require("onnx", "train").helper
    if role not in OUTPUT_NAMES:
        raise UsageError(f"role must be one of {', '.join(OUTPUT_NAMES)}, got {role!r}")
    if pre.features != features:
        raise UsageError(f"preprocessing has {pre.features} features, the model {features}")
    with progress.stage(f"convert {role} (tf2onnx)"):
        proto = add_preprocessing(convert(keras_model, timesteps, features, opset), pre, role)
    proto.producer_name = "edgeae"
    proto.producer_version = __version__
    proto.doc_string = (
        f"edgeae {role}: raw (batch, {timesteps}, {features}) -> "
        + (f"(batch, {timesteps}, {features}) in raw units" if role == "autoencoder" else "(batch, units) embedding")
    )
    meta = {
        "edgeae.role": role,
        "edgeae.version": __version__,
        "edgeae.timesteps": str(timesteps),
        "edgeae.features": str(features),
        "edgeae.preprocessing": json.dumps(pre.to_dict(), sort_keys=True),
    }
    if training:
        meta["edgeae.trainer.training"] = json.dumps(training, sort_keys=True)
    helper.set_model_props(proto, meta)
    check_exported(proto, role, own)
    return proto


ENCODING_KEY = "edgeae.encoding"  # metadata: the autoencoder's tensor that holds the encoding, where no clean graph says


def internal_encoding(autoencoder_proto):
    """A copy of the autoencoder that also outputs its own encoding: the tensor its metadata names
    (a user's model, found by mark_encoding), else its first LSTM's final hidden state.

    Comparing that output with the standalone encoder proves the encoder computes exactly
    the autoencoder's own encoding.
    """
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    proto = onnx.ModelProto()
    proto.CopyFrom(autoencoder_proto)
    graph = proto.graph
    marked = next((json.loads(p.value) for p in proto.metadata_props if p.key == ENCODING_KEY), None)
    if marked is not None:
        source, op, shape = marked["tensor"], "Reshape", np.array([-1, marked["units"]], dtype=np.int64)
    else:
        lstm = next((n for n in graph.node if n.op_type == "LSTM"), None)
        if lstm is None or len(lstm.output) < 2 or not lstm.output[1]:
            raise ExportError("autoencoder has no fused encoder LSTM with a final hidden state")
        source, op, shape = lstm.output[1], "Squeeze", np.array([0], dtype=np.int64)
    graph.initializer.append(numpy_helper.from_array(shape, "internal/axes"))
    graph.node.append(helper.make_node(op, [source, "internal/axes"], ["internal_embedding"], name="internal/encoding"))
    graph.output.append(helper.make_tensor_value_info("internal_embedding", 1, [BATCH_DIM, None]))
    return proto


def mark_encoding(autoencoder_proto, encoder_proto, features: int, timesteps: int, units: int) -> str:
    """Find the tensor of a user's autoencoder graph that equals the standalone encoder's output, and
    name it in the autoencoder's metadata for internal_encoding. Raises ExportError when none does:
    then the layer taken as the encoder is not what the autoencoder computes inside.

    Every float tensor of the main graph is run on random windows; a batch size no other axis has
    makes a (batch, units) tensor (or one with extra axes of 1) unambiguous.
    """
    onnx = require("onnx", "train")
    helper = onnx.helper
    batch = max(features, timesteps, units) * 2 + 1
    x = np.random.default_rng(0).standard_normal((batch, timesteps, features)).astype(np.float32)

    def run(proto, names=None):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        wanted = names or [session.get_outputs()[0].name]
        return dict(zip(wanted, session.run(wanted, {session.get_inputs()[0].name: x})))

    expected = next(iter(run(encoder_proto).values()))
    probe = onnx.ModelProto()
    probe.CopyFrom(autoencoder_proto)
    known = {v.name for v in probe.graph.output}
    names = [out for node in probe.graph.node for out in node.output if out and out not in known]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    values = run(probe, names)
    bound = fp32_tolerance()  # the search only picks the tensor; verify proves it at the export's own tolerance
    tolerance = max(bound.abs or 0.0, (bound.rel_range or 0.0) * float(np.ptp(expected)))
    best = None
    for name in names:
        value = values[name]
        if (value.dtype == np.float32 and tuple(d for d in value.shape if d != 1) == expected.shape
                and value.shape[-1] == units):
            error = float(np.abs(value.reshape(expected.shape) - expected).max())
            if error <= tolerance and (best is None or error < best[1]):
                best = (name, error)
    if best is None:
        raise ExportError("the autoencoder graph holds no tensor equal to the encoder's output: the layer taken as "
                          "the encoder is not the autoencoder's encoding (choose another with --encoder-layer)")
    helper.set_model_props(autoencoder_proto, {**{p.key: p.value for p in autoencoder_proto.metadata_props},
                                               ENCODING_KEY: json.dumps({"tensor": best[0], "units": units})})
    return best[0]


def opset_of(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
