"""The one-window graph: the clean autoencoder specialised to batch 1."""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import MODEL_INPUT, Built, Job, clean_autoencoder, sibling, save


def single_window_graph(clean, role: str):
    """The clean autoencoder specialised to one window per run: same numbers, less work at batch 1.

    The decoder reads the same encoding at every step, so its input projection W·h + Wb is
    one Gemm made once per window and handed to the decoder LSTM as its bias, instead of a
    (timesteps x units) x (units x 4·units) product inside the LSTM; the decoder's own input
    becomes a constant zero of width 1. With a batch of one, the time-major Transposes and
    the Squeeze are free Reshapes and the Dense layer is one Gemm. An ONNX LSTM's bias has
    no batch axis, which is why this graph takes exactly one window; the runtime runs it for
    every single-window call and the batch graph for the rest. Returns None for the encoder,
    where batch 1 gains nothing measurable over the clean graph.
    """
    if role != "autoencoder":
        return None
    c = clean_autoencoder(clean, role)
    onnx = require("onnx", "train")
    TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

    graph, units, timesteps, features, attrs = c.graph, c.units, c.timesteps, c.features, c.decoder_attrs
    dec_w, dec_b = c.arrays["decoder/W"][0], c.arrays["decoder/B"][0]  # (4u, u), (8u,): Wb then Rb
    encoder, fixed_pre, fixed_post, core_out = c.nodes["encoder/LSTM"], c.fixed_pre, c.fixed_post, c.core_out
    constants = {
        "single/time_major": np.array([timesteps, 1, features], np.int64),
        "single/row": np.array([1, units], np.int64),
        "decoder/projection": np.ascontiguousarray(dec_w.T, dtype=np.float32),  # (u, 4u)
        "decoder/projection_bias": (dec_b[:4 * units] + dec_b[4 * units:]).astype(np.float32),
        "decoder/no_recurrent_bias": np.zeros((1, 4 * units), np.float32),
        "decoder/zero_x": np.zeros((timesteps, 1, 1), np.float32),
        "decoder/zero_W": np.zeros((1, 4 * units, 1), np.float32),
        "single/steps": np.array([timesteps, units], np.int64),
        "single/batch_major": np.array([1, timesteps, features], np.int64),
    }
    kept = {name for n in fixed_pre + fixed_post for name in n.input} | {
        "encoder/W", "encoder/R", "encoder/B", "decoder/R", "dense/kernel", "dense/bias"}
    node = helper.make_node
    nodes = [
        *fixed_pre,
        node("Reshape", [MODEL_INPUT, "single/time_major"], ["encoder/x"], name="encoder/time_major"),
        node("LSTM", list(encoder.input), list(encoder.output), name="encoder/LSTM",
             **{a.name: helper.get_attribute_value(a) for a in encoder.attribute}),
        node("Reshape", ["encoder/h", "single/row"], ["encoder/h_row"], name="encoder/row"),
        node("Gemm", ["encoder/h_row", "decoder/projection", "decoder/projection_bias"], ["decoder/input_term"],
             name="decoder/input_projection"),
        node("Concat", ["decoder/input_term", "decoder/no_recurrent_bias"], ["decoder/B_window"], name="decoder/bias",
             axis=1),
        node("LSTM", ["decoder/zero_x", "decoder/zero_W", "decoder/R", "decoder/B_window"], ["decoder/y"],
             name="decoder/LSTM", **attrs),
        node("Reshape", ["decoder/y", "single/steps"], ["decoder/h"], name="decoder/steps"),
        node("Gemm", ["decoder/h", "dense/kernel", "dense/bias"], ["dense/y"], name="dense/gemm"),
        node("Reshape", ["dense/y", "single/batch_major"], [core_out], name="batch_major"),
        *fixed_post,
    ]
    initializers = [t for t in graph.initializer if t.name in kept]
    initializers += [numpy_helper.from_array(value, name) for name, value in constants.items()]

    def one_window(value):
        return helper.make_tensor_value_info(value.name, TensorProto.FLOAT, [1, timesteps, features])

    return sibling(clean, helper.make_graph(nodes, graph.name, [one_window(graph.input[0])], [one_window(graph.output[0])],
                                             initializers), "fp32-b1")


def build(job: Job) -> Built | None:
    return save(job, single_window_graph(job.clean, job.role),
                "batch 1 is made for the autoencoder only: the encoder gains nothing measurable from it")
