"""The detector graph: an autoencoder graph that also gives each window's anomaly score and flag.

An app in any language gets from one file what edgeae's Python runtime computes around the
network: `reconstruction` (raw units), `score` (the mean squared reconstruction error, each
feature scaled as the model sees it, the raw input not clipped) and `anomaly` (score >
threshold; a score equal to the threshold is not anomalous). The score is computed in float64
from the float32 input and reconstruction, as the runtime does, so scores and flags agree with
it window for window. Standard operators only (Cast, Sub, Mul, ReduceMean, Greater).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import sibling

SCORE, ANOMALY = "score", "anomaly"


def detector_graph(autoencoder: Any, scale: np.ndarray, threshold: float, variant: str) -> Any:
    """`autoencoder` (any published autoencoder graph of a batch dimension) with `score` and
    `anomaly` outputs added, `scale` and `threshold` the export's (the variant's own threshold)."""
    onnx = require("onnx", "train")
    TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

    graph = autoencoder.graph
    x, y = graph.input[0].name, graph.output[0].name
    opset = next(o.version for o in autoencoder.opset_import if o.domain in ("", "ai.onnx"))
    constants = [numpy_helper.from_array(np.asarray(scale, np.float64).reshape(1, 1, -1), "detector/scale"),
                 numpy_helper.from_array(np.array(threshold, np.float64), "detector/threshold")]
    node = helper.make_node
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
        constants.append(numpy_helper.from_array(np.array([1, 2], np.int64), "detector/axes"))
        mean = node("ReduceMean", ["detector/squared", "detector/axes"], [SCORE], name="detector/score", keepdims=0)
    else:
        mean = node("ReduceMean", ["detector/squared"], [SCORE], name="detector/score", keepdims=0, axes=[1, 2])
    nodes = [
        node("Cast", [x], ["detector/x64"], name="detector/input64", to=TensorProto.DOUBLE),
        node("Cast", [y], ["detector/y64"], name="detector/reconstruction64", to=TensorProto.DOUBLE),
        node("Sub", ["detector/x64", "detector/y64"], ["detector/error"], name="detector/error"),
        node("Mul", ["detector/error", "detector/scale"], ["detector/scaled"], name="detector/scaled"),
        node("Mul", ["detector/scaled", "detector/scaled"], ["detector/squared"], name="detector/squared"),
        mean,
        node("Greater", [SCORE, "detector/threshold"], [ANOMALY], name="detector/anomaly"),
    ]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or batch.dim_value
    outputs = [*graph.output, helper.make_tensor_value_info(SCORE, TensorProto.DOUBLE, [batch_dim]),
               helper.make_tensor_value_info(ANOMALY, TensorProto.BOOL, [batch_dim])]
    made = helper.make_graph([*graph.node, *nodes], graph.name, list(graph.input), outputs,
                             [*graph.initializer, *constants])
    return sibling(autoencoder, made, f"{variant}-detector")
