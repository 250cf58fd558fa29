"""The clean graph: tf2onnx's export rebuilt in the fewest nodes, the same numbers. It runs on every export.

tf2onnx writes Keras 3's TimeDistributed(Dense) as one MatMul per time step wrapped in
Slice/Squeeze/Unsqueeze, and builds each LSTM's zero initial state from Shape/Cast/Expand
chains; a device pays for every one of those nodes on every call.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import FIXED_PREFIXES, MODEL_INPUT, GraphError, initializers_by_name, set_variant


PASS_THROUGH = {"Unsqueeze", "Squeeze", "Expand", "Reshape", "Identity", "Cast"}


def _is_zero_state(graph, name: str) -> bool:
    """True if `name` is absent or provably all zeros (tf2onnx's Expand of a zero constant)."""
    onnx = require("onnx", "train")
    numpy_helper = onnx.numpy_helper

    if not name:
        return True
    inits = initializers_by_name(graph)
    producers = {out: n for n in graph.node for out in n.output}
    while name not in inits:
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "Constant":
            return not np.any(numpy_helper.to_array(node.attribute[0].t))
        if node.op_type not in PASS_THROUGH:
            return False
        name = node.input[0]
    return not np.any(numpy_helper.to_array(inits[name]))


def _lstm_parts(graph, node, label: str, weights: list) -> dict[str, Any]:
    """The weights and attributes of one forward LSTM with a zero initial state."""
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    inits = initializers_by_name(graph)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("direction", b"forward") not in (b"forward", "forward") or attrs.get("layout", 0) != 0:
        raise GraphError(f"{label}: expected a forward, time-major LSTM")
    if inputs[4] or inputs[7]:
        raise GraphError(f"{label}: sequence lengths or peepholes are not part of an edgeae model")
    if not (_is_zero_state(graph, inputs[5]) and _is_zero_state(graph, inputs[6])):
        raise GraphError(f"{label}: the initial state is not a constant zero")
    for key, source in (("W", inputs[1]), ("R", inputs[2]), ("B", inputs[3])):
        if source not in inits:
            raise GraphError(f"{label}: {key} is not a constant")
        weights.append(numpy_helper.from_array(numpy_helper.to_array(inits[source]), f"{label}/{key}"))
    attrs.pop("layout", None)
    return attrs


def clean_graph(plain, role: str):
    """The minimal equivalent of an exported tf2onnx graph: same numbers, a fraction of the nodes.

    Encoder: clip (+ scale) -> Transpose to time-major -> LSTM, whose own Y_h is the
    embedding (Squeeze). Autoencoder: the same LSTM -> Expand of Y_h over the time steps
    (RepeatVector: one broadcast, no Tile/Reshape) -> decoder LSTM -> one MatMul + Add over
    all steps and windows -> Transpose to batch-major (-> unscale). Both LSTMs start from
    their default zero state, so none of tf2onnx's Shape/Expand state scaffolding is kept.
    The structure checks here catch a different graph early; what proves the rebuilt graph
    right is the parity run against Keras that every caller makes before publishing it.
    """
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    graph = plain.graph
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    if len(lstms) != (2 if role == "autoencoder" else 1):
        raise GraphError(f"{role}: expected {2 if role == 'autoencoder' else 1} LSTM op(s), found {len(lstms)}")
    fixed_pre = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])]
    fixed_post = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[1])]
    if not fixed_pre or fixed_pre[-1].output[0] != MODEL_INPUT:
        raise GraphError(f"{role}: the preprocessing nodes export adds are missing")
    inits = initializers_by_name(graph)
    producers = {out: n for n in graph.node for out in n.output}
    into_encoder = producers.get(lstms[0].input[0])
    if (into_encoder is None or into_encoder.op_type != "Transpose" or list(into_encoder.input) != [MODEL_INPUT]
            or list(into_encoder.attribute[0].ints) != [1, 0, 2]):
        raise GraphError(f"{role}: the encoder LSTM does not read the (time-major) network input")
    timesteps = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    if timesteps < 1:
        raise GraphError(f"{role}: the window length must be fixed in the graph, got {timesteps!r}")
    output = graph.output[0].name
    core_out = next((i for i in fixed_post[0].input if i not in inits), output) if fixed_post else output
    kept = [inits[i] for n in fixed_pre + fixed_post for i in n.input if i in inits]
    weights: list = []
    nodes = list(fixed_pre)
    nodes.append(helper.make_node("Transpose", [MODEL_INPUT], ["encoder/x"], name="encoder/time_major", perm=[1, 0, 2]))
    attrs = _lstm_parts(graph, lstms[0], "encoder", weights)
    nodes.append(helper.make_node("LSTM", ["encoder/x", "encoder/W", "encoder/R", "encoder/B"], ["", "encoder/h"],
                                  name="encoder/LSTM", **attrs))
    if role == "encoder":
        weights.append(numpy_helper.from_array(np.array([0], np.int64), "axes/0"))
        nodes.append(helper.make_node("Squeeze", ["encoder/h", "axes/0"], [core_out], name="encoder/embedding"))
    else:
        kernel, bias = _dense_weights(graph, inits)
        units = numpy_helper.to_array(kernel).shape[0]
        if units != attrs["hidden_size"]:
            raise GraphError(f"{role}: the Dense layer takes {units} inputs, the decoder gives {attrs['hidden_size']}")
        weights += [numpy_helper.from_array(np.array([timesteps, 1, 1], np.int64), "repeat/shape"),
                    numpy_helper.from_array(np.array([1], np.int64), "axes/1"),
                    numpy_helper.from_array(numpy_helper.to_array(kernel), "dense/kernel"),
                    numpy_helper.from_array(numpy_helper.to_array(bias), "dense/bias")]
        attrs = _lstm_parts(graph, lstms[1], "decoder", weights)
        nodes += [
            helper.make_node("Expand", ["encoder/h", "repeat/shape"], ["decoder/x"], name="repeat"),
            helper.make_node("LSTM", ["decoder/x", "decoder/W", "decoder/R", "decoder/B"], ["decoder/y"],
                             name="decoder/LSTM", **attrs),
            helper.make_node("Squeeze", ["decoder/y", "axes/1"], ["decoder/h"], name="decoder/steps"),
            helper.make_node("MatMul", ["decoder/h", "dense/kernel"], ["dense/product"], name="dense/matmul"),
            helper.make_node("Add", ["dense/product", "dense/bias"], ["dense/y"], name="dense/add"),
            helper.make_node("Transpose", ["dense/y"], [core_out], name="batch_major", perm=[1, 0, 2]),
        ]
    nodes += fixed_post
    seen: set[str] = set()
    initializers = [t for t in kept + weights if not (t.name in seen or seen.add(t.name))]
    clean = helper.make_model(
        helper.make_graph(nodes, graph.name or role, list(graph.input), list(graph.output), initializers),
        opset_imports=[o for o in plain.opset_import if o.domain in ("", "ai.onnx")],
        producer_name=plain.producer_name, producer_version=plain.producer_version, doc_string=plain.doc_string,
    )
    clean.ir_version = plain.ir_version
    clean.metadata_props.extend(plain.metadata_props)
    set_variant(clean, "fp32")
    onnx.checker.check_model(clean, full_check=True)
    return clean


def _dense_weights(graph, inits: dict[str, Any]) -> tuple[Any, Any]:
    """The TimeDistributed Dense's kernel and bias: every per-step MatMul must share them. A bias
    of zeros (an untrained or bias-free Dense) is folded away by tf2onnx: it comes back as zeros."""
    onnx = require("onnx", "train")
    numpy_helper = onnx.numpy_helper

    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    kernels = {next((i for i in n.input if i in inits), "") for n in matmuls}
    products = {n.output[0] for n in matmuls}
    adds = [n for n in graph.node if n.op_type == "Add" and any(i in products for i in n.input)]
    biases = {next((i for i in n.input if i in inits), "") for n in adds}
    if len(kernels) != 1 or "" in kernels or (adds and (len(biases) != 1 or "" in biases)):
        raise GraphError("autoencoder: the Dense layer is not one shared constant kernel and bias")
    kernel = inits[kernels.pop()]
    if not adds:
        width = numpy_helper.to_array(kernel).shape[-1]
        return kernel, numpy_helper.from_array(np.zeros(width, np.float32), "dense/bias")
    return kernel, inits[biases.pop()]
