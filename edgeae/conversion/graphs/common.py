"""What the graph rewrites share: the clean graph's parts, the written-out LSTM step, and the builders' one signature.

Every variant file is made by one module of this package from the clean fp32 graph through
`build(job) -> Built | None`; variants.py names which module builds which variant. onnx is
imported inside the functions that need it: the runtime never imports this package.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.convert import ExportError


@dataclass(frozen=True)
class Job:
    """What a builder is given: the clean graph of one model, where its variant's file goes, and
    the parity check (against Keras, at the variant's tolerance) of a file it wrote."""

    clean: Any  # onnx.ModelProto of the clean fp32 graph
    role: str
    clean_path: Path
    path: Path
    parity: Callable[[Path], Any]


@dataclass(frozen=True)
class Built:
    """What a builder wrote: the graph (for ORT format, its ONNX equivalent), and where the builder
    had to check the file itself, that parity and the weights it chose."""

    proto: Any
    parity: Any = None
    weights: str | None = None


def save(job: Job, proto: Any, why_not: str) -> Built:
    """Write a made graph to the job's path; where the rewrite does not apply (`proto` None), say
    why (NotApplicable, recorded in the manifest) and write nothing."""
    if proto is None:
        raise NotApplicable(why_not)
    onnx = require("onnx", "train")

    onnx.save(proto, str(job.path))
    return Built(proto)


MODEL_INPUT = "model_input"  # the tensor export.add_preprocessing hands to the network


FIXED_PREFIXES = ("preprocess/", "postprocess/")  # its nodes: they stay float32 in every variant


class GraphError(ExportError):
    """The tf2onnx graph is not the LSTM autoencoder shape clean_graph knows how to rebuild."""


class NotApplicable(GraphError):
    """A rewrite that does not apply to this model: the variant is skipped, the reason recorded."""


def initializers_by_name(graph) -> dict[str, Any]:
    return {t.name: t for t in graph.initializer}


@dataclass(frozen=True)
class CleanAutoencoder:
    """What the batch-graph builders read from a clean autoencoder graph."""

    graph: Any
    arrays: dict[str, np.ndarray]
    nodes: dict[str, Any]
    decoder_attrs: dict[str, Any]
    fixed_pre: list
    fixed_post: list
    core_out: str  # the network's output, before any postprocessing
    units: int
    timesteps: int
    features: int


def clean_autoencoder(clean, role: str) -> CleanAutoencoder:
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    graph = clean.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    if not {"encoder/LSTM", "decoder/LSTM", "batch_major"} <= set(nodes) or "decoder/W" not in arrays:
        raise NotApplicable(f"{role}: not a clean graph: this rewrite needs one LSTM encoder, RepeatVector, one LSTM decoder, "
                            "TimeDistributed Dense, which this model does not have")
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes["decoder/LSTM"].attribute}
    dims = graph.input[0].type.tensor_type.shape.dim
    return CleanAutoencoder(
        graph, arrays, nodes, attrs,
        fixed_pre=[n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])],
        fixed_post=[n for n in graph.node if n.name.startswith(FIXED_PREFIXES[1])],
        core_out=nodes["batch_major"].output[0], units=int(attrs["hidden_size"]),
        timesteps=dims[1].dim_value, features=dims[2].dim_value)


def sibling(clean, graph, variant: str):
    """A model around `graph` that carries the clean graph's opsets, producer and metadata, checked."""
    onnx = require("onnx", "train")
    helper = onnx.helper

    model = helper.make_model(graph, opset_imports=list(clean.opset_import), producer_name=clean.producer_name,
                              producer_version=clean.producer_version, doc_string=clean.doc_string)
    model.ir_version = clean.ir_version
    model.metadata_props.extend(clean.metadata_props)
    set_variant(model, variant)
    onnx.checker.check_model(model, full_check=True)
    return model


ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


GATES = "iofc"  # ONNX's order of the four gates in an LSTM's W, R and B


def step_activations(attrs: dict[str, Any]) -> tuple[str, str, str] | None:
    """The gate, cell and output activations as ONNX op types; None for settings a written-out
    LSTM does not cover (clip, input_forget, activation parameters, other activations)."""
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"])]
    acts = [ONNX_ACTIVATIONS.get(a.lower()) for a in names]
    if set(attrs) - {"activations", "direction", "hidden_size"} or None in acts or len(acts) != 3:
        return None
    return acts[0], acts[1], acts[2]


def gate_weights(prefix: str, w: np.ndarray, r: np.ndarray, b: np.ndarray, units: int) -> dict[str, np.ndarray]:
    """One LSTM's weights per gate, transposed for Gemm: W_g (inputs, u), R_g (u, u), and b_g, both biases summed."""
    bias = b[:4 * units] + b[4 * units:]
    out = {}
    for k, gate in enumerate(GATES):
        rows = slice(k * units, (k + 1) * units)
        out[f"{prefix}/W_{gate}"] = np.ascontiguousarray(w[rows].T, dtype=np.float32)
        out[f"{prefix}/b_{gate}"] = bias[rows].astype(np.float32)
        out[f"{prefix}/R_{gate}"] = np.ascontiguousarray(r[rows].T, dtype=np.float32)
    return out


def lstm_steps(prefix: str, inputs: list[dict[str, str]], acts: tuple[str, str, str]) -> tuple[list, list[str]]:
    """An LSTM written out step by step from a zero state: nodes, and each step's hidden state.

    `inputs[t][g]` names step t's input term of gate g, W_g·x_t + b_g (batch, units). Each later
    step adds its recurrent term with one Gemm per gate, R_g·h_{t-1} with the input term as its
    bias, which onnxruntime fuses with the gate's activation.
    """
    onnx = require("onnx", "train")
    helper = onnx.helper

    node = helper.make_node
    gate_act, cell_act, out_act = acts
    nodes, hidden = [], []
    for t, terms in enumerate(inputs):
        step = f"{prefix}/{t}/"
        pre = dict(terms)
        if t:  # the first step starts from a zero state: its gates are the input terms alone
            pre = {g: f"{step}z_{g}" for g in GATES}
            nodes += [node("Gemm", [f"{prefix}/{t - 1}/h", f"{prefix}/R_{g}", terms[g]], [pre[g]], name=f"{step}gemm_{g}")
                      for g in GATES]
        nodes += [node(gate_act if g != "c" else cell_act, [pre[g]], [f"{step}{g}"], name=f"{step}act_{g}") for g in GATES]
        if t:
            nodes += [node("Mul", [f"{step}f", f"{prefix}/{t - 1}/cell"], [f"{step}kept"], name=f"{step}forget"),
                      node("Mul", [f"{step}i", f"{step}c"], [f"{step}new"], name=f"{step}input"),
                      node("Add", [f"{step}kept", f"{step}new"], [f"{step}cell"], name=f"{step}cell")]
        else:
            nodes.append(node("Mul", [f"{step}i", f"{step}c"], [f"{step}cell"], name=f"{step}cell"))
        nodes += [node(out_act, [f"{step}cell"], [f"{step}out"], name=f"{step}act_out"),
                  node("Mul", [f"{step}o", f"{step}out"], [f"{step}h"], name=f"{step}hidden")]
        hidden.append(f"{step}h")
    return nodes, hidden


def decoder_steps(c: CleanAutoencoder, encoding: str, acts: tuple[str, str, str]) -> tuple[list, dict[str, np.ndarray]]:
    """The decoder written out, from the encoding (batch, units) to the network's output (batch, steps, features):
    the repeated input's projection made once, one Gemm per gate, then the steps and the Dense layer."""
    onnx = require("onnx", "train")
    helper = onnx.helper

    node = helper.make_node
    constants = gate_weights("decoder", c.arrays["decoder/W"][0], c.arrays["decoder/R"][0], c.arrays["decoder/B"][0],
                              c.units)
    constants["decoder/steps_shape"] = np.array([0, c.timesteps, c.units], np.int64)
    nodes = [node("Gemm", [encoding, f"decoder/W_{g}", f"decoder/b_{g}"], [f"decoder/x_{g}"], name=f"decoder/input_{g}")
             for g in GATES]
    steps, hidden = lstm_steps("decoder", [{g: f"decoder/x_{g}" for g in GATES}] * c.timesteps, acts)
    nodes += steps + [
        node("Concat", hidden, ["decoder/h_all"], name="decoder/steps", axis=1),
        node("Reshape", ["decoder/h_all", "decoder/steps_shape"], ["decoder/h"], name="decoder/batch_major"),
        node("MatMul", ["decoder/h", "dense/kernel"], ["dense/product"], name="dense/matmul"),
        node("Add", ["dense/product", "dense/bias"], [c.core_out], name="dense/add")]
    return nodes, constants


def graph_from(clean, nodes: list, constants: dict[str, np.ndarray], variant: str):
    """A sibling of `clean` made of `nodes`: the clean graph's initializers they read, plus `constants`."""
    onnx = require("onnx", "train")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    graph = clean.graph
    kept = {name for n in nodes for name in n.input}
    initializers = [t for t in graph.initializer if t.name in kept and t.name not in constants]
    initializers += [numpy_helper.from_array(value, name) for name, value in constants.items()]
    return sibling(clean, helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output), initializers),
                    variant)


def set_variant(proto, name: str) -> None:
    props = [p for p in proto.metadata_props if p.key != "edgeae.variant"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeae.variant", name
