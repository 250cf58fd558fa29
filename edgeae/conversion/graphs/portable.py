"""The portable graph: either model without the LSTM operator, for runtimes that mis-run or lack it."""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import (
    FIXED_PREFIXES, GATES, MODEL_INPUT, Built, Job, NotApplicable, clean_autoencoder, decoder_steps, gate_weights,
    graph_from, lstm_steps, step_activations, save,
)


def portable_graph(clean, role: str):
    """Either model without the LSTM operator: every step written out in Gather, Gemm, Sigmoid/Tanh/Relu,
    Mul, Add (and the decoder's Concat, Reshape, MatMul), for runtimes that ignore an LSTM's
    `activations` (onnx's reference evaluator and tract compute tanh whatever it says: a relu
    model comes out wrong there without an error) or lack the operator.

    Each encoder step reads its time step with a Gather and projects it with one Gemm per gate;
    the autoencoder's decoder is the unrolled graph's. The same numbers as the clean graph
    within float32 rounding, held to fp32's tolerance. None for LSTM settings this writing
    does not cover.
    """
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    graph = clean.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes_by_name = {n.name: n for n in graph.node}
    encoder = nodes_by_name.get("encoder/LSTM")
    if encoder is None or "encoder/W" not in arrays:
        raise NotApplicable(f"{role}: not a clean graph: this rewrite needs a single fused LSTM encoder, "
                            "which this model does not have")
    attrs = {a.name: helper.get_attribute_value(a) for a in encoder.attribute}
    acts = step_activations(attrs)
    if acts is None:
        return None
    timesteps = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    units = int(attrs["hidden_size"])
    node = helper.make_node
    constants = gate_weights("encoder", arrays["encoder/W"][0], arrays["encoder/R"][0], arrays["encoder/B"][0], units)
    nodes = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])]
    terms = []
    for t in range(timesteps):
        constants[f"encoder/step_{t}"] = np.array(t, np.int64)
        nodes.append(node("Gather", [MODEL_INPUT, f"encoder/step_{t}"], [f"encoder/x_{t}"], name=f"encoder/{t}/read",
                          axis=1))
        nodes += [node("Gemm", [f"encoder/x_{t}", f"encoder/W_{g}", f"encoder/b_{g}"], [f"encoder/{t}/x_{g}"],
                       name=f"encoder/{t}/input_{g}") for g in GATES]
        terms.append({g: f"encoder/{t}/x_{g}" for g in GATES})
    steps, hidden = lstm_steps("encoder", terms, acts)
    nodes += steps
    if role == "encoder":
        nodes.append(node("Identity", [hidden[-1]], [nodes_by_name["encoder/embedding"].output[0]], name="encoder/embedding"))
        return graph_from(clean, nodes, constants, "portable")
    c = clean_autoencoder(clean, role)
    decoder_acts = step_activations(c.decoder_attrs)
    if decoder_acts is None:
        return None
    decoder, weights = decoder_steps(c, hidden[-1], decoder_acts)
    return graph_from(clean, nodes + decoder + c.fixed_post, {**constants, **weights}, "portable")


def build(job: Job) -> Built | None:
    return save(job, portable_graph(job.clean, job.role),
                "LSTM settings a written-out step does not cover (clip, input_forget, other activations)")
