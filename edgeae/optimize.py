"""Edge variants of an export: a clean fp32 graph and its batch graphs, fp16, int8 and ORT format.

tf2onnx writes Keras 3's TimeDistributed(Dense) as one MatMul per time step wrapped in
Slice/Squeeze/Unsqueeze, and builds each LSTM's zero initial state from Shape/Cast/Expand
chains; a device pays for every one of those nodes on every call. `clean_graph` rebuilds
the same computation from the LSTM and Dense weights in the fewest nodes onnxruntime can
run it in, keeping the preprocessing nodes export put around the network. Two equivalent
graphs serve batch sizes the clean one is slower at: `single_window_graph` (one window per
run) and `unrolled_graph` (many), and the manifest says which runs which sizes. Every variant
is compared with Keras on the inputs verify uses and is published only within its
tolerance; `targets.json` says, node by node, which execution providers can run each file.

onnx and onnxruntime's tools are imported inside the functions that need them, and the
runtime never imports this module.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import (
    as_path,
    atomic_write_bytes,
    atomic_write_json,
    file_entry,
    read_manifest,
    staged_folder,
    verify_files,
    write_manifest,
)
from .bounds import bound_entry
from .errors import ParityError, UsageError, require
from .export import ExportError
from .parity import DEFAULT_ATOL, ParityResult, Tolerance, compare

ROLES = ("autoencoder", "encoder")
VARIANTS = ("plain", "fp32", "fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "int8-dynamic", "ort")
BUILT = ("fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "int8-dynamic", "ort")  # made here from the clean fp32 graph
# Built unless a caller names the variants it wants. int8-dynamic is left out: its integer kernels give
# other numbers on other CPUs (see to_int8_dynamic), so it is made only where someone asks for it.
DEFAULT_BUILT = ("fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "ort")
SUFFIXES = {"plain": ".plain.onnx", "fp32": ".onnx", "fp32-b1": ".b1.onnx", "fp32-unrolled": ".unrolled.onnx",
            "portable": ".portable.onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx", "int8-dynamic": ".int8-dynamic.onnx", "ort": ".ort"}
# Graphs a variant hands some batch sizes to, as (graph, first, last batch size; None: no limit). Measured
# on the seed model here, against the clean graph: the one-window graph is 8% faster at batch 1; the
# unrolled one 7-15% faster from 128 windows per run (so for the runtime's 256-window chunks), even at
# 64 and up to 25% slower below. int8 has neither: quantized, the one-window rewrite measured no
# faster and would double the int8 files' size.
UNROLLED_FROM = 128
BATCH_GRAPHS = {"fp32": (("fp32-b1", 1, 1), ("fp32-unrolled", UNROLLED_FROM, None))}
PLAIN_FILES = {role: role + SUFFIXES["plain"] for role in ROLES}
TARGETS_FILE = "targets.json"
ORT_CONFIG_FILE = "ort_operators.config"
MODEL_INPUT = "model_input"  # the tensor export.add_preprocessing hands to the network
FIXED_PREFIXES = ("preprocess/", "postprocess/")  # its nodes: they stay float32 in every variant
PASS_THROUGH = {"Unsqueeze", "Squeeze", "Expand", "Reshape", "Identity", "Cast"}
MOBILE_EPS = {
    "NNAPI": None,
    "CoreML-MLProgram": "coreml_supported_mlprogram_ops.md",
    "CoreML-NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
}
# Op types the CUDA execution provider has float and float16 kernels for, among those edgeae
# graphs use (onnxruntime core/providers/cuda/cuda_execution_provider.cc); its LSTM runs only
# the default activations, anything else falls back to the CPU (RNNNeedFallbackToCPU there).
CUDA_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Min", "Max", "Transpose", "Squeeze", "Unsqueeze", "Reshape",
                      "Expand", "Concat", "MatMul", "Gemm", "Sigmoid", "Tanh", "Relu", "Cast", "LSTM",
                      "DequantizeLinear", "Gather", "Identity"})
CUDA_LSTM_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
CPU_ONLY_CONTRIB = frozenset({"DynamicQuantizeLSTM"})  # onnxruntime registers it for the CPU only


class GraphError(ExportError):
    """The tf2onnx graph is not the LSTM autoencoder shape clean_graph knows how to rebuild."""


# ---------------------------------------------------------------- tolerances and results


# fp32 graphs must match Keras as the export does. fp16 rounds weights and the network's
# input to 11 significant bits (2**-11 = 4.9e-4 of a value), and the recurrence amplifies
# that; int8 quantizes weights per tensor (per channel where that misses) and activations
# per batch. Worst errors measured (seed model; the test suite's small models): fp16 5.3e-4;
# 1.3e-3 of range, int8 per tensor 4.9e-3; 4.2e-3 of range (per channel 4.5e-3; 4.9e-3).
# Each bound sits at about twice the worst of them.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "plain": Tolerance(abs=DEFAULT_ATOL),
    "fp32": Tolerance(abs=DEFAULT_ATOL),
    "fp32-b1": Tolerance(abs=DEFAULT_ATOL),
    "fp32-unrolled": Tolerance(abs=DEFAULT_ATOL),
    "portable": Tolerance(abs=DEFAULT_ATOL),
    "ort": Tolerance(abs=DEFAULT_ATOL),
    "fp16": Tolerance(rel_range=3e-3),
    "int8": Tolerance(rel_range=1e-2),
    "int8-dynamic": Tolerance(rel_range=1e-2),
}


def check_tolerances(tolerances: object) -> dict[str, Tolerance]:
    """A caller's tolerances: a dict of variant names to Tolerance, refused (exit 2) as a whole otherwise.

    A bare number is refused rather than guessed: it could mean max abs error or a share of the range.
    """
    if tolerances is None:
        return {}
    if not isinstance(tolerances, dict):
        raise UsageError(f"tolerances must be a dict of variant name to Tolerance, got {type(tolerances).__name__}")
    unknown = [repr(name) for name in tolerances if name not in VARIANTS]
    if unknown:
        raise UsageError(f"no variant named {', '.join(sorted(unknown))} (variants: {', '.join(VARIANTS)})")
    for name, value in tolerances.items():
        if not isinstance(value, Tolerance):
            raise UsageError(f"the tolerance of {name!r} must be a Tolerance(abs=..., rel_range=...), got {value!r}")
    return dict(tolerances)


PRECISION = {"plain": "fp32", "fp32": "fp32", "fp32-b1": "fp32", "fp32-unrolled": "fp32", "portable": "fp32", "ort": "fp32", "fp16": "fp16",
             "int8": "int8", "int8-dynamic": "int8"}


@dataclass(frozen=True)
class VariantParity:
    """A variant against Keras on every input set and provider; true only within its tolerance."""

    results: tuple[ParityResult, ...]
    tolerance: Tolerance
    scores: tuple[ParityResult, ...] = ()  # autoencoder: per-window reconstruction error vs Keras's

    def __bool__(self) -> bool:
        return bool(self.results) and all(self.results)

    def failures(self) -> list[str]:
        return [f"{r.model} [{r.provider}] {r.dataset}: max abs {r.max_abs:.2e}, {r.max_rel_range:.2e} of range, "
                f"allowed {self.tolerance.describe()}" for r in self.results if not r]

    def to_dict(self) -> dict[str, Any]:
        def figures(r: ParityResult) -> dict[str, float]:
            return {"max_abs": r.max_abs, "max_rel_range": r.max_rel_range, "mean_abs": r.mean_abs, "batch": r.batch}

        out: dict[str, Any] = {
            "passed": bool(self),
            "providers": sorted({r.provider for r in self.results}),
            "max_abs": max(r.max_abs for r in self.results),
            "max_rel_range": max(r.max_rel_range for r in self.results),
            "mean_abs": max(r.mean_abs for r in self.results),
            "datasets": {f"{r.dataset}/{r.provider}": figures(r) for r in self.results},
            "failures": self.failures(),
        }
        if self.scores:
            out["score"] = {"max_abs_change": max(r.max_abs for r in self.scores),
                            "max_rel_range_change": max(r.max_rel_range for r in self.scores),
                            "datasets": {f"{r.dataset}/{r.provider}": figures(r) for r in self.scores}}
        return out


@dataclass(frozen=True)
class Variant:
    """One model file of an export: where it came from, what it holds, and how close it is to Keras."""

    role: str
    name: str
    file: str
    source: str
    parity: VariantParity
    published: bool
    bytes: int
    nodes: int
    ops: dict[str, int]
    opsets: dict[str, int]
    batch: int | str  # windows the input takes: a fixed number, or "any"
    weights: str | None = None  # int8: how its weights were quantized (INT8_WEIGHTS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "source": self.source, "precision": PRECISION[self.name],
            **({"weights": self.weights} if self.weights else {}),
            "format": "ort" if self.file.endswith(".ort") else "onnx", "default": self.name == "fp32",
            "batch": self.batch,
            "published": self.published, "bytes": self.bytes, "nodes": self.nodes, "ops": self.ops,
            "opsets": self.opsets, "tolerance": self.parity.tolerance.to_dict(), "parity": self.parity.to_dict(),
        }

    def line(self) -> str:
        return variant_line(self.role, self.name, self.to_dict())


def variant_line(role: str, name: str, v: dict[str, Any]) -> str:
    """One variant (its manifest entry) on one terminal line."""
    p, tol = v["parity"], Tolerance.from_manifest(v.get("tolerance"), f"variants.{role}.{name}.tolerance")
    score = f", score change {p['score']['max_rel_range_change']:.1e} of range" if p.get("score") else ""
    verdict = "published" if v["published"] else "NOT published: " + "; ".join(p["failures"][:2])
    return (f"  {role}/{name:<13} {v['file']:<25} {v['bytes'] / 1024:7.1f} KB {v['nodes']:3d} nodes  "
            f"max abs {p['max_abs']:.1e}, {p['max_rel_range']:.1e} of range (allowed {tol.describe()}){score}  {verdict}")


@dataclass(frozen=True)
class Optimized:
    """What build_variants made: every variant, the manifest entries of the files it kept, the target report."""

    variants: tuple[Variant, ...]
    files: dict[str, dict]
    targets: dict[str, Any]

    def manifest_section(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for v in self.variants:
            out.setdefault(v.role, {})[v.name] = v.to_dict()
        for by_name in out.values():  # which graph runs when: said where the runtime reads it
            for base, graphs in BATCH_GRAPHS.items():
                routes = batch_routes(by_name, base, graphs)
                if routes:
                    by_name[base]["by_batch"] = routes
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"variants": self.manifest_section(), "targets": self.targets}

    def lines(self) -> list[str]:
        return ["variants (parity against Keras on verify's inputs):", *(v.line() for v in self.variants),
                *target_lines(self.targets)]


def batch_routes(by_name: dict[str, dict[str, Any]], base: str,
                 graphs: tuple[tuple[str, int, int | None], ...]) -> list[dict[str, Any]]:
    """Which file runs which batch sizes of `base`: its published batch graphs, and its own file
    for every size they leave. Empty when none of them was published."""
    taken = sorted((first, last, by_name[name]["file"]) for name, first, last in graphs
                   if (by_name.get(name) or {}).get("published"))
    if not taken or base not in by_name:
        return []
    routes, following = [], 1
    for first, last, file in taken:
        if first > following:
            routes.append({"batches": [following, first - 1], "file": by_name[base]["file"]})
        routes.append({"batches": [first, last], "file": file})
        following = math.inf if last is None else last + 1
    if following != math.inf:
        routes.append({"batches": [following, None], "file": by_name[base]["file"]})
    return routes


# ---------------------------------------------------------------- the clean graph


def _initializers(graph) -> dict[str, Any]:
    return {t.name: t for t in graph.initializer}


def _is_zero_state(graph, name: str) -> bool:
    """True if `name` is absent or provably all zeros (tf2onnx's Expand of a zero constant)."""
    from onnx import numpy_helper

    if not name:
        return True
    inits = _initializers(graph)
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
    from onnx import helper, numpy_helper

    inits = _initializers(graph)
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
    from onnx import helper, numpy_helper

    graph = plain.graph
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    if len(lstms) != (2 if role == "autoencoder" else 1):
        raise GraphError(f"{role}: expected {2 if role == 'autoencoder' else 1} LSTM op(s), found {len(lstms)}")
    fixed_pre = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])]
    fixed_post = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[1])]
    if not fixed_pre or fixed_pre[-1].output[0] != MODEL_INPUT:
        raise GraphError(f"{role}: the preprocessing nodes export adds are missing")
    inits = _initializers(graph)
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
    _set_variant(clean, "fp32")
    onnx.checker.check_model(clean, full_check=True)
    return clean


@dataclass(frozen=True)
class _CleanAutoencoder:
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


def _clean_autoencoder(clean, role: str) -> _CleanAutoencoder:
    require("onnx", "train")
    from onnx import helper, numpy_helper

    graph = clean.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    if not {"encoder/LSTM", "decoder/LSTM", "batch_major"} <= set(nodes) or "decoder/W" not in arrays:
        raise GraphError(f"{role}: not a clean graph (run clean_graph first)")
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes["decoder/LSTM"].attribute}
    dims = graph.input[0].type.tensor_type.shape.dim
    return _CleanAutoencoder(
        graph, arrays, nodes, attrs,
        fixed_pre=[n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])],
        fixed_post=[n for n in graph.node if n.name.startswith(FIXED_PREFIXES[1])],
        core_out=nodes["batch_major"].output[0], units=int(attrs["hidden_size"]),
        timesteps=dims[1].dim_value, features=dims[2].dim_value)


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
    c = _clean_autoencoder(clean, role)  # first: it makes sure onnx is there
    from onnx import TensorProto, helper, numpy_helper

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

    return _sibling(clean, helper.make_graph(nodes, graph.name, [one_window(graph.input[0])], [one_window(graph.output[0])],
                                             initializers), "fp32-b1")


def _sibling(clean, graph, variant: str):
    """A model around `graph` that carries the clean graph's opsets, producer and metadata, checked."""
    onnx = require("onnx", "train")
    from onnx import helper

    model = helper.make_model(graph, opset_imports=list(clean.opset_import), producer_name=clean.producer_name,
                              producer_version=clean.producer_version, doc_string=clean.doc_string)
    model.ir_version = clean.ir_version
    model.metadata_props.extend(clean.metadata_props)
    _set_variant(model, variant)
    onnx.checker.check_model(model, full_check=True)
    return model


ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
GATES = "iofc"  # ONNX's order of the four gates in an LSTM's W, R and B


def _step_activations(attrs: dict[str, Any]) -> tuple[str, str, str] | None:
    """The gate, cell and output activations as ONNX op types; None for settings a written-out
    LSTM does not cover (clip, input_forget, activation parameters, other activations)."""
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"])]
    acts = [ONNX_ACTIVATIONS.get(a.lower()) for a in names]
    if set(attrs) - {"activations", "direction", "hidden_size"} or None in acts or len(acts) != 3:
        return None
    return acts[0], acts[1], acts[2]


def _gate_weights(prefix: str, w: np.ndarray, r: np.ndarray, b: np.ndarray, units: int) -> dict[str, np.ndarray]:
    """One LSTM's weights per gate, transposed for Gemm: W_g (inputs, u), R_g (u, u), and b_g, both biases summed."""
    bias = b[:4 * units] + b[4 * units:]
    out = {}
    for k, gate in enumerate(GATES):
        rows = slice(k * units, (k + 1) * units)
        out[f"{prefix}/W_{gate}"] = np.ascontiguousarray(w[rows].T, dtype=np.float32)
        out[f"{prefix}/b_{gate}"] = bias[rows].astype(np.float32)
        out[f"{prefix}/R_{gate}"] = np.ascontiguousarray(r[rows].T, dtype=np.float32)
    return out


def _lstm_steps(prefix: str, inputs: list[dict[str, str]], acts: tuple[str, str, str]) -> tuple[list, list[str]]:
    """An LSTM written out step by step from a zero state: nodes, and each step's hidden state.

    `inputs[t][g]` names step t's input term of gate g, W_g·x_t + b_g (batch, units). Each later
    step adds its recurrent term with one Gemm per gate, R_g·h_{t-1} with the input term as its
    bias, which onnxruntime fuses with the gate's activation.
    """
    from onnx import helper

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


def _decoder_steps(c: _CleanAutoencoder, encoding: str, acts: tuple[str, str, str]) -> tuple[list, dict[str, np.ndarray]]:
    """The decoder written out, from the encoding (batch, units) to the network's output (batch, steps, features):
    the repeated input's projection made once, one Gemm per gate, then the steps and the Dense layer."""
    from onnx import helper

    node = helper.make_node
    constants = _gate_weights("decoder", c.arrays["decoder/W"][0], c.arrays["decoder/R"][0], c.arrays["decoder/B"][0],
                              c.units)
    constants["decoder/steps_shape"] = np.array([0, c.timesteps, c.units], np.int64)
    nodes = [node("Gemm", [encoding, f"decoder/W_{g}", f"decoder/b_{g}"], [f"decoder/x_{g}"], name=f"decoder/input_{g}")
             for g in GATES]
    steps, hidden = _lstm_steps("decoder", [{g: f"decoder/x_{g}" for g in GATES}] * c.timesteps, acts)
    nodes += steps + [
        node("Concat", hidden, ["decoder/h_all"], name="decoder/steps", axis=1),
        node("Reshape", ["decoder/h_all", "decoder/steps_shape"], ["decoder/h"], name="decoder/batch_major"),
        node("MatMul", ["decoder/h", "dense/kernel"], ["dense/product"], name="dense/matmul"),
        node("Add", ["dense/product", "dense/bias"], [c.core_out], name="dense/add")]
    return nodes, constants


def _graph_from(clean, nodes: list, constants: dict[str, np.ndarray], variant: str):
    """A sibling of `clean` made of `nodes`: the clean graph's initializers they read, plus `constants`."""
    from onnx import helper, numpy_helper

    graph = clean.graph
    kept = {name for n in nodes for name in n.input}
    initializers = [t for t in graph.initializer if t.name in kept and t.name not in constants]
    initializers += [numpy_helper.from_array(value, name) for name, value in constants.items()]
    return _sibling(clean, helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output), initializers),
                    variant)


def unrolled_graph(clean, role: str):
    """The clean autoencoder with its decoder written out step by step: for batches of many windows.

    The fused decoder LSTM multiplies the same encoding by its input weights at every step
    (it cannot know its input repeats); here that projection is made once, one Gemm per gate,
    and each step is one Gemm per gate on the previous hidden state with the projection as
    its bias, which onnxruntime fuses with the gate's activation. That saves a third of the
    autoencoder's arithmetic, which pays from about 128 windows per run (UNROLLED_FROM), where
    the extra nodes cost less than the work saved. The encoder stays a fused LSTM: its input is narrow.
    The output comes out batch-major, so no Transpose is needed. Returns None for the encoder
    and for LSTM settings this writing does not cover (clip, input_forget, other activations).
    """
    if role != "autoencoder":
        return None
    c = _clean_autoencoder(clean, role)  # first: it makes sure onnx is there
    from onnx import helper, numpy_helper

    acts = _step_activations(c.decoder_attrs)
    if acts is None:
        return None
    by_name = c.nodes
    constants = {"axes/0": np.array([0], np.int64)}
    nodes = [*c.fixed_pre, by_name["encoder/time_major"], by_name["encoder/LSTM"],
             helper.make_node("Squeeze", ["encoder/h", "axes/0"], ["encoder/h2"], name="encoder/embedding")]
    decoder, weights = _decoder_steps(c, "encoder/h2", acts)
    return _graph_from(clean, nodes + decoder + c.fixed_post, {**constants, **weights}, "fp32-unrolled")


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
    require("onnx", "train")
    from onnx import helper, numpy_helper

    graph = clean.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes_by_name = {n.name: n for n in graph.node}
    encoder = nodes_by_name.get("encoder/LSTM")
    if encoder is None or "encoder/W" not in arrays:
        raise GraphError(f"{role}: not a clean graph (run clean_graph first)")
    attrs = {a.name: helper.get_attribute_value(a) for a in encoder.attribute}
    acts = _step_activations(attrs)
    if acts is None:
        return None
    timesteps = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    units = int(attrs["hidden_size"])
    node = helper.make_node
    constants = _gate_weights("encoder", arrays["encoder/W"][0], arrays["encoder/R"][0], arrays["encoder/B"][0], units)
    nodes = [n for n in graph.node if n.name.startswith(FIXED_PREFIXES[0])]
    terms = []
    for t in range(timesteps):
        constants[f"encoder/step_{t}"] = np.array(t, np.int64)
        nodes.append(node("Gather", [MODEL_INPUT, f"encoder/step_{t}"], [f"encoder/x_{t}"], name=f"encoder/{t}/read",
                          axis=1))
        nodes += [node("Gemm", [f"encoder/x_{t}", f"encoder/W_{g}", f"encoder/b_{g}"], [f"encoder/{t}/x_{g}"],
                       name=f"encoder/{t}/input_{g}") for g in GATES]
        terms.append({g: f"encoder/{t}/x_{g}" for g in GATES})
    steps, hidden = _lstm_steps("encoder", terms, acts)
    nodes += steps
    if role == "encoder":
        nodes.append(node("Identity", [hidden[-1]], [nodes_by_name["encoder/embedding"].output[0]], name="encoder/embedding"))
        return _graph_from(clean, nodes, constants, "portable")
    c = _clean_autoencoder(clean, role)
    decoder_acts = _step_activations(c.decoder_attrs)
    if decoder_acts is None:
        return None
    decoder, weights = _decoder_steps(c, hidden[-1], decoder_acts)
    return _graph_from(clean, nodes + decoder + c.fixed_post, {**constants, **weights}, "portable")


def _dense_weights(graph, inits: dict[str, Any]) -> tuple[Any, Any]:
    """The TimeDistributed Dense's kernel and bias: every per-step MatMul must share them."""
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    kernels = {next((i for i in n.input if i in inits), "") for n in matmuls}
    products = {n.output[0] for n in matmuls}
    adds = [n for n in graph.node if n.op_type == "Add" and any(i in products for i in n.input)]
    biases = {next((i for i in n.input if i in inits), "") for n in adds}
    if len(kernels) != 1 or len(biases) != 1 or "" in kernels | biases:
        raise GraphError("autoencoder: the Dense layer is not one shared constant kernel and bias")
    return inits[kernels.pop()], inits[biases.pop()]


def _set_variant(proto, name: str) -> None:
    props = [p for p in proto.metadata_props if p.key != "edgeae.variant"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeae.variant", name


# ---------------------------------------------------------------- fp16, int8, ORT format


def to_float16(clean):
    """Weights and network in float16; the preprocessing, inputs and outputs stay float32.

    Raw values can exceed float16's range (65504) and clipping bounds need their precision,
    so only the tensors between the preprocessing and the postprocessing are converted, with
    one Cast at each end. Callers keep feeding and receiving float32.
    """
    onnx = require("onnx", "train")
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(clean)
    graph = proto.graph
    inits = _initializers(graph)
    core = [n for n in graph.node if not n.name.startswith(FIXED_PREFIXES)]
    half = {out for n in core for out in n.output}
    outputs = {o.name for o in graph.output}
    renamed = {name: f"{name}/fp16" for name in half & outputs}
    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[(name, to)] = f"{name}/{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[(name, to)]], name=f"cast/{casts[(name, to)]}", to=to))
        return casts[(name, to)]

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        is_core = not node.name.startswith(FIXED_PREFIXES)
        new_inputs = []
        for name in node.input:
            if name in inits:
                if is_core and inits[name].data_type == TensorProto.FLOAT:
                    inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), name))
            elif name and is_core and name not in half:
                name = cast(name, TensorProto.FLOAT16)
            elif name in half and not is_core:
                name = cast(renamed.get(name, name), TensorProto.FLOAT)
            new_inputs.append(renamed.get(name, name) if is_core else name)
        node.input[:] = new_inputs
        node.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(node)
    for name, inner in renamed.items():
        nodes.append(helper.make_node("Cast", [inner], [name], name=f"cast/{name}", to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    _set_variant(proto, "fp16")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _not_preprocessing_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice to pre-process to the root logger; the clean graph needs none."""
    root = logging.getLogger()
    root.addFilter(_not_preprocessing_advice)
    try:
        yield
    finally:
        root.removeFilter(_not_preprocessing_advice)


INT8_WEIGHTS = "per-row"  # the int8 variant: one scale per row of each LSTM weight matrix


def to_int8(clean):
    """int8 weights, float compute: each LSTM's W and R stored as int8, one scale per row.

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
    from onnx import helper, numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(clean)
    graph = proto.graph
    inits = _initializers(graph)
    quantized = {name for n in graph.node if n.op_type == "LSTM" for name in n.input[1:3]}
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
    _set_variant(proto, "int8")
    proto.metadata_props.add(key="edgeae.int8_weights", value=INT8_WEIGHTS)
    onnx.checker.check_model(proto, full_check=True)
    return proto


INT8_DYNAMIC_WEIGHTS = ("per-tensor", "per-channel")  # tried in this order: the first within the tolerance is kept


def to_int8_dynamic(clean, path: Path, weights: str = "per-tensor") -> None:
    """Dynamic int8 quantization of the LSTMs (onnxruntime's DynamicQuantizeLSTM): the fast one.

    Weights are int8 with one scale per tensor or per output channel; activations are
    quantized on the fly, per tensor, so a window's result depends slightly on the other
    windows in its batch. Its numbers depend on the CPU's integer kernels: the seed
    autoencoder, per tensor, 5.3e-3 of range on AVX-512 VNNI but 7.8e-2 on AVX2 without
    VNNI (u8 x s8 pairs summed in saturating 16-bit lanes; per channel 0.22 there;
    reduce_range holds on both at 1.55e-2 of range, past the tolerance). Hence it is built
    only when asked for and proves itself on the golden vectors each time a device loads it.
    The Dense layer (under 1% of the weights) stays float32.
    """
    if weights not in INT8_DYNAMIC_WEIGHTS:
        raise UsageError(f"int8-dynamic weights are quantized {' or '.join(INT8_DYNAMIC_WEIGHTS)}, not {weights!r}")
    onnx = require("onnx", "train")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgeae-int8-") as tmp:
        out = Path(tmp) / path.name
        with _quiet_quantizer():
            quantize_dynamic(clean, out, op_types_to_quantize=["LSTM"], per_channel=weights == "per-channel",
                             weight_type=QuantType.QInt8)
        proto = onnx.load(str(out))
    _set_variant(proto, "int8-dynamic")
    proto.metadata_props.add(key="edgeae.int8_weights", value=weights)
    atomic_write_bytes(path, proto.SerializeToString())


def _int8_dynamic_within_tolerance(clean, path: Path,
                                   parity_of: Callable[[Path], VariantParity]) -> tuple[str, VariantParity]:
    """Write the int8-dynamic file with the first weight quantization (INT8_DYNAMIC_WEIGHTS order)
    whose parity holds; the last one tried, and its failing parity, when none does."""
    for weights in INT8_DYNAMIC_WEIGHTS:
        to_int8_dynamic(clean, path, weights)
        parity = parity_of(path)
        if parity:
            break
    return weights, parity


def _ort_session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def to_ort(source: Path, path: Path) -> Any:
    """Convert to ORT format for onnxruntime Mobile and minimal builds; returns the ONNX equivalent.

    Optimized as onnxruntime's own converter does by default (all levels, without the x86-only
    NCHWc layouts), so the file runs on ARM as well as on this machine.
    """
    onnx = require("onnx", "train")
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeae-ort-") as tmp:
        equivalent = Path(tmp) / "equivalent.onnx"
        for target, fmt in ((path, "ORT"), (equivalent, "ONNX")):
            options = _ort_session_options()
            options.optimized_model_filepath = str(target)
            options.add_session_config_entry("session.save_model_format", fmt)
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
        return onnx.load(str(equivalent))


def write_ort_config(ort_files: list[Path], path: Path) -> None:
    """The operator (and type) list a reduced onnxruntime build needs to run these .ort files."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    chatty = logging.getLogger("ort_format_model.utils")  # logs the temporary path at INFO
    level = chatty.level
    with tempfile.TemporaryDirectory(prefix="edgeae-ortcfg-") as tmp:
        out = Path(tmp) / path.name
        chatty.setLevel(logging.WARNING)
        try:
            create_config_from_models(sorted(ort_files), out, enable_type_reduction=True)
        finally:
            chatty.setLevel(level)
        lines = [f"# - {Path(line[4:].strip()).name}" if line.startswith("# - ") else line
                 for line in out.read_text().splitlines()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


# ---------------------------------------------------------------- parity


def variant_parity(path: Path, role: str, variant: str, references: dict[str, np.ndarray],
                   inputs: dict[str, np.ndarray], providers: list[str], tolerance: Tolerance,
                   scale: np.ndarray) -> VariantParity:
    """Run one file on every input set and provider (ORT format on the CPU only); the autoencoder
    in model units, as verify does."""
    from .runtime import CPU, OnnxModel, reconstruction_error

    results, scores = [], []
    units = scale if role == "autoencoder" else None
    for provider in [CPU] if variant == "ort" else providers:
        short = "cuda" if provider.startswith("CUDA") else "cpu"
        model = OnnxModel(path, [provider], name=path.name)
        for dataset, x in inputs.items():
            out, ref = model.run_windows(x), references[dataset]
            results.append(compare(ref, out, model=f"{role}/{variant} ({path.name})", provider=short, dataset=dataset,
                                   tolerance_abs=tolerance.abs, tolerance_rel_range=tolerance.rel_range, scale=units,
                                   source=path.name))
            if role == "autoencoder":
                scores.append(compare(reconstruction_error(x, ref, scale), reconstruction_error(x, out, scale),
                                      model=f"{path.name} score", provider=short, dataset=dataset))
    return VariantParity(tuple(results), tolerance, tuple(scores))


def _describe(proto) -> tuple[int, dict[str, int], dict[str, int]]:
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    used = {n.domain or "ai.onnx" for n in proto.graph.node}
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import if (o.domain or "ai.onnx") in used}
    return len(proto.graph.node), ops, opsets


def model_entry(proto, file: str) -> dict[str, Any]:
    """A manifest `models` entry: file, inputs/outputs, opset, node and op counts, and the value
    bound that proves its float32 graphs cannot overflow (bounds.py)."""
    from .export import describe_io, opset_of

    nodes, ops, _ = _describe(proto)
    return {"file": file, **describe_io(proto), "opset": opset_of(proto), "nodes": nodes, "ops": ops,
            **bound_entry(proto)}


# ---------------------------------------------------------------- target report


def _cuda_prediction(node, precision: str) -> tuple[str, str]:
    """Where onnxruntime's CUDA provider would run a node, from its kernel table and fallback rules."""
    from onnx import helper

    if node.domain not in ("", "ai.onnx"):
        if node.op_type in CPU_ONLY_CONTRIB:
            return "cpu-fallback", f"{node.domain}:{node.op_type} has no CUDA kernel; runs on the CPU"
        return "unknown", f"{node.domain}:{node.op_type} is not in edgeae's CUDA table"
    if node.op_type == "LSTM":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        acts = tuple(a.decode().lower() if isinstance(a, bytes) else str(a).lower() for a in attrs.get("activations", []))
        if acts and acts != (CUDA_LSTM_ACTIVATIONS * 2)[:len(acts)]:
            where = "on the CPU in float32 (no float16 LSTM kernel there)" if precision == "fp16" else "on the CPU"
            return "cpu-fallback", f"activations {', '.join(acts)}: cuDNN runs only sigmoid, tanh, tanh; runs {where}"
        if any(k in attrs for k in ("clip", "activation_alpha", "activation_beta")) or attrs.get("input_forget", 0):
            return "cpu-fallback", "clip, activation parameters or input_forget: runs on the CPU"
    if node.op_type in CUDA_OPS:
        return "yes", ""
    return "unknown", f"{node.op_type} is not in edgeae's CUDA table"


def _cuda_measured(path: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """Where each node actually ran in a CUDA session (profiled), by node name."""
    from .runtime import CPU, CUDA, OnnxModel

    placement = OnnxModel(path, [CUDA, CPU], name=path.name).node_placement()
    out = {}
    for name in names:
        provider = placement.get(name)
        if provider is None:
            out[name] = ("fused", "onnxruntime fused or removed this node")
        else:
            out[name] = ("yes", "") if provider == CUDA else ("cpu-fallback", f"ran on {provider}")
    return out


def _float32_on_cpu(path: Path) -> set[str]:
    """Nodes onnxruntime runs in float32 on the CPU although the file stores them in float16."""
    onnx = require("onnx", "train")
    import onnxruntime as ort
    from onnx import TensorProto

    with tempfile.TemporaryDirectory(prefix="edgeae-cpu-") as tmp:
        options = _ort_session_options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.shape_inference.infer_shapes(onnx.load(options.optimized_model_filepath))
    graph = optimized.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return {n.name for n in graph.node if n.op_type != "Cast" and not n.name.startswith(FIXED_PREFIXES)
            and types.get(n.input[0]) == TensorProto.FLOAT}


def _partitions(model, table: str | None, dynamic_shapes_unsupported: bool):
    """onnxruntime's usability checker for NNAPI (no table) or CoreML (its supported-ops table)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    if table is None:
        return checker.check_nnapi_partitions(model, dynamic_shapes_unsupported)
    return checker.check_coreml_partitions(model, dynamic_shapes_unsupported, table)


def _mobile_support(proto) -> tuple[dict[str, dict[str, tuple[str, str]]], dict[str, dict[str, Any]]]:
    """NNAPI and CoreML, from onnxruntime's model usability checker: per node, and per provider."""
    onnx = require("onnx", "train")

    model = onnx.shape_inference.infer_shapes(proto)
    per_node: dict[str, dict[str, tuple[str, str]]] = {n.name: {} for n in model.graph.node}
    summary: dict[str, dict[str, Any]] = {}
    for ep, table in MOBILE_EPS.items():
        as_is, fixed_batch = _partitions(model, table, True), _partitions(model, table, False)
        runs = {n.name for g in as_is.supported_groups for n in g}
        runs_fixed = {n.name for g in fixed_batch.supported_groups for n in g}
        for node in model.graph.node:
            if node.name in runs:
                per_node[node.name][ep] = ("yes", "")
            elif node.name in runs_fixed:
                per_node[node.name][ep] = ("fixed-batch-only", "needs a fixed batch size (make_dynamic_shape_fixed)")
            elif not fixed_batch.supported_ops_checker.is_op_supported(node):
                per_node[node.name][ep] = ("no", f"{node.domain or 'ai.onnx'}:{node.op_type} is not supported by {ep}")
            else:
                per_node[node.name][ep] = ("no", f"{ep} cannot take this node's input shapes")
        summary[ep] = {
            "nodes": len(runs), "nodes_with_fixed_batch": len(runs_fixed),
            "partitions_with_fixed_batch": fixed_batch.num_partitions,
            "unsupported_ops": sorted(fixed_batch.unsupported_ops),
            "suitability": as_is.suitability().name, "suitability_with_fixed_batch": fixed_batch.suitability().name,
        }
    return per_node, summary


def target_report(path: Path, proto, precision: str) -> dict[str, Any]:
    """One file: size, op set and opsets, and per node which execution provider can run it.

    CPU is measured (the parity run loaded and ran the file); CUDA is measured where this
    onnxruntime has it and predicted from onnxruntime's kernel table where it does not;
    NNAPI and CoreML come from onnxruntime's usability checker.
    """
    from .runtime import CUDA, available_providers

    proto = _named(proto)
    names = [n.name for n in proto.graph.node]
    nodes, ops, opsets = _describe(proto)
    cuda_measured = CUDA in available_providers()
    cuda = _cuda_measured(path, names) if cuda_measured else {n.name: _cuda_prediction(n, precision)
                                                               for n in proto.graph.node}
    float32 = _float32_on_cpu(path) if precision == "fp16" else set()
    mobile, mobile_summary = _mobile_support(proto)
    listed = []
    for node in proto.graph.node:
        cpu_note = ("runs in float32 here: onnxruntime casts around ops without a float16 CPU kernel"
                    if node.name in float32 else "")
        verdicts = {"CPU": ("yes", cpu_note), "CUDA": cuda[node.name], **mobile[node.name]}
        listed.append({
            "name": node.name, "op": node.op_type, "domain": node.domain or "ai.onnx",
            "providers": {ep: v[0] for ep, v in verdicts.items()},
            "notes": {ep: v[1] for ep, v in verdicts.items() if v[1]},
        })
    counts = {ep: {} for ep in listed[0]["providers"]} if listed else {}
    for entry in listed:
        for ep, verdict in entry["providers"].items():
            counts[ep][verdict] = counts[ep].get(verdict, 0) + 1
    return {
        "bytes": path.stat().st_size, "precision": precision, "nodes": nodes, "ops": ops, "opsets": opsets,
        "cuda": "measured" if cuda_measured else "predicted",
        "summary": counts, "mobile": mobile_summary, "node_list": listed,
    }


def _named(proto):
    """Give unnamed nodes a name (op and position) so every row of the report can be told apart."""
    if all(n.name for n in proto.graph.node) and len({n.name for n in proto.graph.node}) == len(proto.graph.node):
        return proto
    onnx = require("onnx", "train")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for i, node in enumerate(copy.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    return copy


def target_lines(targets: dict[str, Any]) -> list[str]:
    """The target report for a terminal: one block per file, one line per execution provider."""
    if not targets:
        return []
    lines = [f"targets (node counts per verdict; onnxruntime {targets['onnxruntime']}):"]
    for file, m in targets["models"].items():
        opsets = ", ".join(f"{d} {v}" for d, v in m["opsets"].items())
        lines.append(f"  {file}: {m['bytes'] / 1024:.1f} KB, {m['nodes']} nodes, opset {opsets}, CUDA {m['cuda']}; "
                     + ", ".join(f"{op} x{n}" for op, n in m["ops"].items()))
        for ep, counts in m["summary"].items():
            detail = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
            extra = ""
            if ep in m["mobile"]:
                s = m["mobile"][ep]
                extra = f"  [{s['suitability']}; with a fixed batch {s['suitability_with_fixed_batch']}]"
            lines.append(f"    {ep:<21} {detail}{extra}")
        notes = sorted({f"{row['op']}: {note}" for row in m["node_list"] for ep, note in row["notes"].items()
                        if ep in ("CPU", "CUDA")})
        lines += [f"      {note}" for note in notes]
    return lines


# ---------------------------------------------------------------- building and publishing


def check_variant_names(names: object) -> tuple[str, ...]:
    """The variants a caller asks to build: None means DEFAULT_BUILT; an unknown name is refused (exit 2)."""
    if names is None:
        return DEFAULT_BUILT
    if isinstance(names, str) or not isinstance(names, (tuple, list, set, frozenset)):
        raise UsageError(f"variants must be a list of names ({', '.join(BUILT)}), got {names!r}")
    unknown = sorted(repr(n) for n in names if n not in BUILT)
    if unknown:
        raise UsageError(f"no variant named {', '.join(unknown)} to build (variants: {', '.join(BUILT)})")
    return tuple(n for n in BUILT if n in names)


def build_variants(stage: Path, training: Any, inputs: dict[str, np.ndarray], providers: list[str],
                   atol: float = DEFAULT_ATOL, tolerances: dict[str, Tolerance] | None = None,
                   references: dict[str, dict[str, np.ndarray]] | None = None,
                   variants: tuple[str, ...] | None = None) -> Optimized:
    """Make the variants named in `variants` (default DEFAULT_BUILT) from the clean graphs in `stage`,
    check every file, write the reports.

    `stage` must already hold `<role>.plain.onnx` and the clean `<role>.onnx`. A built variant
    that misses its tolerance is deleted again and recorded as not published.
    """
    onnx = require("onnx", "train")

    wanted = check_variant_names(variants)
    tolerance = {**DEFAULT_TOLERANCES, **{n: Tolerance(abs=atol) for n in ("plain", "fp32", "fp32-b1", "fp32-unrolled", "portable", "ort")},
                 **check_tolerances(tolerances)}
    from .pipeline import keras_references

    references = references or keras_references(training, inputs)
    scale = training.preprocessing.arrays()["scale"]
    made: list[Variant] = []
    described: dict[str, tuple[Any, str]] = {}
    for role in ROLES:
        clean_path = stage / f"{role}{SUFFIXES['fp32']}"
        clean = onnx.load(str(clean_path))
        protos = {"plain": onnx.load(str(stage / PLAIN_FILES[role])), "fp32": clean}
        builders = {"fp32-b1": single_window_graph, "fp32-unrolled": unrolled_graph, "portable": portable_graph,
                    "fp16": lambda proto, role: to_float16(proto), "int8": lambda proto, role: to_int8(proto)}
        for name, build in builders.items():
            proto = build(clean, role) if name in wanted else None
            if proto is not None:
                protos[name] = proto
                onnx.save(proto, str(stage / f"{role}{SUFFIXES[name]}"))

        def parity_of(path: Path, name: str, role: str = role) -> VariantParity:
            return variant_parity(path, role, name, references[role], inputs, providers, tolerance[name], scale)

        weights = {"int8": INT8_WEIGHTS}
        dynamic = None
        if "int8-dynamic" in wanted:
            dynamic_path = stage / f"{role}{SUFFIXES['int8-dynamic']}"
            weights["int8-dynamic"], dynamic = _int8_dynamic_within_tolerance(
                clean, dynamic_path, lambda path: parity_of(path, "int8-dynamic"))
            protos["int8-dynamic"] = onnx.load(str(dynamic_path))
        if "ort" in wanted:
            protos["ort"] = to_ort(clean_path, stage / f"{role}{SUFFIXES['ort']}")
        sources = {"plain": "tf2onnx", "fp32": PLAIN_FILES[role], **{name: clean_path.name for name in BUILT}}
        for name in (n for n in VARIANTS if n in protos):
            file = f"{role}{SUFFIXES[name]}"
            parity = dynamic if name == "int8-dynamic" else parity_of(stage / file, name)
            published = bool(parity) or name not in BUILT
            nodes, ops, opsets = _describe(protos[name])
            batch = protos[name].graph.input[0].type.tensor_type.shape.dim[0].dim_value or "any"
            made.append(Variant(role, name, file, sources[name], parity, published, (stage / file).stat().st_size,
                                nodes, ops, opsets, batch, weights.get(name)))
            if not published:
                (stage / file).unlink()
            elif name != "plain":
                described[file] = (protos[name], PRECISION[name])
    ort_files = [stage / v.file for v in made if v.name == "ort" and v.published]
    if ort_files:
        write_ort_config(ort_files, stage / ORT_CONFIG_FILE)
    import onnxruntime as ort

    targets = {"format": "edgeae-targets", "onnxruntime": ort.__version__,
               "models": {file: target_report(stage / file, proto, precision)
                          for file, (proto, precision) in described.items()}}
    atomic_write_json(stage / TARGETS_FILE, targets)
    kinds = {"plain": "onnx-plain", "fp32-b1": "onnx-b1", "fp32-unrolled": "onnx-unrolled", "portable": "onnx-portable",
             "fp16": "onnx-fp16",
             "int8": "onnx-int8", "int8-dynamic": "onnx-int8-dynamic", "ort": "ort"}  # fp32: the caller's "onnx"
    files = {v.file: file_entry(stage / v.file, kinds[v.name]) for v in made if v.published and v.name in kinds}
    if ort_files:
        files[ORT_CONFIG_FILE] = file_entry(stage / ORT_CONFIG_FILE, "ort-config")
    files[TARGETS_FILE] = file_entry(stage / TARGETS_FILE, "report")
    return Optimized(tuple(made), files, targets)


def optimize(folder: Path, providers: str = "all", tolerances: dict[str, Tolerance] | None = None,
             variants: tuple[str, ...] | None = None) -> Optimized:
    """Rebuild an export folder's clean graph and variants, re-check them, and republish it atomically.

    Every listed file is checked against the manifest first. An export made before the clean
    graph existed (its `<role>.onnx` is tf2onnx's) gets it now, the tf2onnx file kept as
    `<role>.plain.onnx`; verify then runs again on the new default files.
    """
    onnx = require("onnx", "train")
    from . import golden, pipeline

    folder = as_path(folder, "export folder")
    check_tolerances(tolerances)
    check_variant_names(variants)
    read_manifest(folder)  # a missing or foreign folder is refused before any staging
    with staged_folder(folder, force=True) as stage:
        manifest = read_manifest(folder)
        if manifest.get("kind") != "export":
            raise UsageError(f"{folder} is not an export folder (run edgeae export on it first)")
        verify_files(folder, manifest)
        training = pipeline.load_training(folder)
        made = {f"{role}{suffix}" for role in ROLES for suffix in SUFFIXES.values()}
        made |= {TARGETS_FILE, ORT_CONFIG_FILE, pipeline.PARITY_REPORT_FILE, pipeline.REFERENCE_FILE,
                 golden.INDEX_FILE, golden.DATA_FILE}
        files = {name: entry for name, entry in manifest["files"].items() if name not in made}
        for name in files:
            shutil.copy2(folder / name, stage / name)
        has_plain = all(name in manifest["files"] for name in PLAIN_FILES.values())
        models, paths = {}, {}
        for role in ROLES:
            plain = onnx.load(str(folder / (PLAIN_FILES[role] if has_plain else pipeline.ONNX_FILES[role])))
            onnx.save(plain, str(stage / PLAIN_FILES[role]))
            clean = clean_graph(plain, role)
            paths[role] = stage / pipeline.ONNX_FILES[role]
            onnx.save(clean, str(paths[role]))
            models[role] = {**(manifest.get("models") or {}).get(role, {}), **model_entry(clean, paths[role].name)}
        parity = manifest.get("parity") or {}
        atol = float(parity.get("tolerance_abs", DEFAULT_ATOL))
        provider_list = pipeline.verification_providers(providers)
        inputs = pipeline.stored_inputs(folder, manifest, training)
        references = pipeline.keras_references(training, inputs)
        report = pipeline.verify_models(training.preprocessing, references, paths, inputs, provider_list, atol)
        if not report:
            raise ParityError("the clean graph fails parity, nothing published: " + "; ".join(report.failures()))
        atomic_write_json(stage / pipeline.PARITY_REPORT_FILE, report.to_dict())
        result = build_variants(stage, training, inputs, provider_list, atol, tolerances, references, variants)
        files.update({path.name: file_entry(path, "onnx") for path in paths.values()})
        files[pipeline.PARITY_REPORT_FILE] = file_entry(stage / pipeline.PARITY_REPORT_FILE, "report")
        files.update(result.files)
        files.update(pipeline.write_golden_vectors(stage, inputs, references, result.manifest_section(),
                                                   training.preprocessing))
        body = {k: v for k, v in manifest.items() if k not in ("format", "format_version")}
        body.update(files=files, models=models, variants=result.manifest_section(), targets=TARGETS_FILE)
        if body.get("detector"):
            from .detector import variant_thresholds

            body["detector"] = {**body["detector"], "variants": variant_thresholds(
                stage, result.manifest_section()["autoencoder"], training, body["detector"]["quantile"])}
        body["parity"] = {**parity, "passed": report.passed, "tolerance_abs": atol, "providers": provider_list,
                          "summary": report.summary(), "report": pipeline.PARITY_REPORT_FILE,
                          "encoder_matches_autoencoder_max_abs": report.encoder_matches_autoencoder.max_abs}
        write_manifest(stage, body)
    return result


def folder_variants(folder: Path) -> dict[str, Any]:
    """The manifest's variants section of a published export (empty for one made without them)."""
    return read_manifest(Path(folder)).get("variants") or {}


def folder_lines(folder: Path, targets: bool = True) -> list[str]:
    """The variants (and, unless `targets` is False, the target report) of a published export."""
    from .artifacts import read_json

    manifest = read_manifest(Path(folder))
    lines = [variant_line(role, name, variants[name]) for role, variants in (manifest.get("variants") or {}).items()
             for name in VARIANTS if name in variants]
    if not lines:
        return []
    head = ["variants (parity against Keras on verify's inputs):", *lines]
    if not manifest.get("targets"):
        return head
    if not targets:
        return [*head, f"target report (providers per node, mobile checks): {Path(folder) / manifest['targets']}"
                       " (edgeae optimize prints it)"]
    return [*head, *target_lines(read_json(Path(folder) / manifest["targets"], "target report"))]
