"""Which runtime and execution provider runs each file of an export: the target report (targets.json).

Per node: CPU is measured (the parity run loaded and ran every file); CUDA is measured where
this onnxruntime has it and predicted from onnxruntime's kernel table where it does not; NNAPI
and CoreML come from onnxruntime's usability checker. Per runtime (`measure_runtimes`, the
`runtimes` section): each file run on onnxruntime, onnxruntime-web, tract, OpenVINO and onnx's
reference evaluator against Keras on the golden windows, measured, never predicted.
"""
from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract import progress
from edgeae.contract.errors import UsageError, require
from edgeae.contract.records import Manifest
from edgeae.data.windows import Preprocessing
from edgeae.conversion.graphs.common import FIXED_PREFIXES
from edgeae.conversion.graphs.ort_format import ort_session_options
from edgeae.contract.parity import Tolerance, compare
from edgeae.runtime.providers import CPU, CUDA, available_providers
from edgeae.runtime.session import OnnxModel
from edgeae.verifier.runtimes import RUNTIMES, RuntimeFailed, RuntimeUnavailable, run

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


def describe_graph(proto) -> tuple[int, dict[str, int], dict[str, int]]:
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    used = {n.domain or "ai.onnx" for n in proto.graph.node}
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import if (o.domain or "ai.onnx") in used}
    return len(proto.graph.node), ops, opsets


def _cuda_prediction(node, precision: str) -> tuple[str, str]:
    """Where onnxruntime's CUDA provider would run a node, from its kernel table and fallback rules."""
    helper = require("onnx", "train").helper
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
    with tempfile.TemporaryDirectory(prefix="edgeae-cpu-") as tmp:
        options = ort_session_options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.shape_inference.infer_shapes(onnx.load(options.optimized_model_filepath))
    graph = optimized.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return {n.name for n in graph.node if n.op_type != "Cast" and not n.name.startswith(FIXED_PREFIXES)
            and types.get(n.input[0]) == onnx.TensorProto.FLOAT}


def _partitions(model, table: str | None, dynamic_shapes_unsupported: bool):
    """onnxruntime's usability checker for NNAPI (no table) or CoreML (its supported-ops table)."""
    checker = require("onnxruntime.tools.mobile_helpers.usability_checker", "train")  # it reads graphs with onnx
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
    proto = _named(proto)
    names = [n.name for n in proto.graph.node]
    nodes, ops, opsets = describe_graph(proto)
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


# ---------------------------------------------------------------- other runtimes, measured


def _measure(runtime: str, path: Path, x: np.ndarray, reference: np.ndarray, tolerance: Tolerance,
             scale: np.ndarray | None) -> dict[str, Any]:
    """One file on one runtime: whether it loads (with a free batch, else a fixed one) and its error."""
    failures = []
    for fixed in (False, True) if runtime == "tract" else (False,):
        try:
            y = run(runtime, path, x, fixed_batch=fixed)
        except RuntimeUnavailable as exc:
            return {"verdict": "not installed", "note": str(exc)}
        except RuntimeFailed as exc:
            failures.append(str(exc))
            continue
        if y.shape != reference.shape or not np.isfinite(y).all():
            return {"verdict": "wrong", "batch": "fixed" if fixed else "any", "windows": len(x),
                    "note": f"gives shape {y.shape}" if y.shape != reference.shape else "gives NaN or inf"}
        result = compare(reference, y, model=path.name, provider=runtime, dataset="golden", tolerance=tolerance,
                         scale=scale, source=path.name)
        return {"verdict": "ok" if result else "wrong", "batch": "fixed" if fixed else "any",
                "max_abs": result.max_abs, "max_rel_range": result.max_rel_range,
                "allowed": tolerance.describe(), "windows": len(x),
                **({"note": "with a free batch: " + failures[0]} if failures else {})}
    return {"verdict": "fails", "note": " / ".join(failures)}


def measure_runtimes(folder: Path, manifest: Manifest, golden: Any, runtimes: tuple[str, ...]) -> dict[str, Any]:
    """Every published ONNX file of an export (the detector graphs by their reconstruction) on each
    runtime, against Keras on the golden windows at the tolerance its variant records: 'ok', 'wrong' (it runs and misses), 'fails' (it does not
    load or run) or 'not installed'. A one-window graph gets the single golden window; ORT-format
    files are read by onnxruntime alone."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise UsageError(f"no runtime named {', '.join(map(repr, unknown))} (runtimes: {', '.join(RUNTIMES)})")
    scale = np.asarray(Preprocessing.from_dict(manifest.preprocessing).scale, np.float64)
    names = list(golden.inputs)
    # (role, file, the tolerance its variant records, whether it takes one window only)
    files = [(role, entry.file, entry.recorded_tolerance, entry.one_window)
             for role, entry in manifest.all_variants() if entry.published]
    autoencoders = manifest.variants_of("autoencoder")
    graphs = manifest.detector.graphs if manifest.detector else {}
    files += [("autoencoder", graph.file,  # its reconstruction, at the tolerance of the autoencoder it was made from
               autoencoders[precision].recorded_tolerance if precision in autoencoders else None, False)
              for precision, graph in graphs.items()]
    table: dict[str, Any] = {}
    for role, file, recorded, one_window in progress.each(files, "targets", "files", note=lambda f: f[1]):
        tolerance = Tolerance.from_manifest(recorded, f"the tolerance of {file}")
        sets = ["single"] if one_window else names
        x = np.concatenate([golden.inputs[k] for k in sets])
        reference = np.concatenate([golden.reference(role)[k] for k in sets])
        path = folder / file
        table[file] = {
            runtime: ({"verdict": "n/a", "note": "ORT format is read by onnxruntime builds only"}
                      if path.suffix == ".ort" and runtime != "onnxruntime"
                      else _measure(runtime, path, x, reference, tolerance, scale if role == "autoencoder" else None))
            for runtime in runtimes}
    return table


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A new measurement over an old table: the runtimes measured now replace their old cells, the
    others are kept, and 'not installed' here never replaces a figure measured elsewhere. Files the
    export no longer holds are dropped."""
    out = {}
    for file, cells in new.items():
        kept = {r: m for r, m in (old.get(file) or {}).items() if isinstance(m, dict)}
        out[file] = {**kept, **{r: m for r, m in cells.items()
                                if not (m.get("verdict") == "not installed" and r in kept)}}
    return out


def runtime_lines(table: dict[str, Any]) -> list[str]:
    """The measured runtime table for a terminal: one line per file, one cell per runtime."""
    if not table:
        return []
    runtimes = sorted({r for cells in table.values() for r in cells})

    def cell(m: dict[str, Any]) -> str:
        if "max_abs" in m:
            return f"{m['verdict']} {m['max_abs']:.1e}" + (" (fixed batch)" if m.get("batch") == "fixed" else "")
        return m["verdict"]

    width = max(len(file) for file in table)
    lines = [f"{'file':<{width}}  " + "  ".join(f"{r:<24}" for r in runtimes)]
    lines += [f"{file:<{width}}  " + "  ".join(f"{cell(m[r]) if r in m else '-':<24}" for r in runtimes)
              for file, m in table.items()]
    return lines


def machine() -> dict[str, Any]:
    """The CPU a measurement came from: its model and the vector extensions that change kernels."""
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")
    return {"cpu": model, "machine": platform.machine(), "extensions": [f for f in wanted if f in flags],
            "onnxruntime": ort.__version__}
