"""int8 weights with float compute: the int8 variant, the same numbers on every CPU."""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import Built, Job, NotApplicable, initializers_by_name, set_variant


INT8_WEIGHTS = "per-row"  # the int8 variant: one scale per row of each LSTM weight matrix


def to_int8(clean):
    """int8 weights, float compute: each LSTM's (or GRU's) W and R stored as int8, one scale per row.

    A DequantizeLinear node turns each back into float32 when the session starts, so the
    LSTMs run onnxruntime's float kernels and every CPU gives the numbers verify saw: the
    integer kernels of dynamic quantization do not (on x86 without VNNI, u8s8 products
    saturate in 16 bits; the seed autoencoder measured 7.8e-2 of its range off there,
    0.5% on AVX-512 VNNI; see to_int8_dynamic). One scale per row follows each gate unit's
    own weight range: 2.7e-3 of range on the seed, on AVX2 and AVX-512 alike, in a file a
    quarter of the size (biases and the small Dense layer stay float32). It runs at fp32's
    speed, not faster: that is what int8-dynamic, proven on the device, is for.
    """
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(clean)
    graph = proto.graph
    inits = initializers_by_name(graph)
    quantized = {name for n in graph.node if n.op_type in ("LSTM", "GRU") for name in n.input[1:3] if name in inits}
    if not quantized:
        raise NotApplicable("no fused LSTM or GRU weights to store as int8 (tf2onnx wrote the recurrent layers "
                            "as Loops)")
    dequantize = []
    for name in sorted(quantized):
        weights = numpy_helper.to_array(inits[name]).astype(np.float32)  # (directions, 4·units, inputs)
        peak = np.abs(weights).max(axis=(0, 2))
        scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
        codes = np.clip(np.rint(weights / scale[None, :, None]), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(codes, f"{name}/int8"),
                                  numpy_helper.from_array(scale, f"{name}/scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}/zero_point")])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}/int8", f"{name}/scale", f"{name}/zero_point"],
                                           [name], name=f"{name}/dequantize", axis=1))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequantize + nodes)
    set_variant(proto, "int8")
    proto.metadata_props.add(key="edgeae.int8_weights", value=INT8_WEIGHTS)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def build(job: Job) -> Built | None:
    onnx = require("onnx", "train")

    proto = to_int8(job.clean)
    onnx.save(proto, str(job.path))
    return Built(proto, weights=INT8_WEIGHTS)
