"""Run an ONNX file on a runtime other than this process's onnxruntime, each in a child process.

The runtimes a device may use instead of onnxruntime's Python package compute some files
differently: onnx's reference evaluator and tract ignore an LSTM's `activations` and compute
tanh (a relu model comes out wrong, without an error), tract aborts its whole process on an
LSTM with a free batch dimension, and OpenVINO's CPU plugin computes in bfloat16 by default on
CPUs that have it. So each run happens in a child process (an abort there is a failure to
report, not the end of the caller), and target_report.py measures every file on each of them.

- "onnxruntime": the installed onnxruntime, CPU provider, in a fresh process;
- "onnxruntime-web": onnxruntime-web's WebAssembly backend under Node.js (the repository's
  `node/` folder after `npm ci` there, or EDGEAE_NODE_DIR);
- "tract": pip `tract`;
- "openvino": pip `openvino`, CPU, with float32 inference precision asked for;
- "onnx-reference": onnx's ReferenceEvaluator.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeae.contract.errors import InferenceError, MissingDependencyError, UsageError, install_hint

RUNTIMES = ("onnxruntime", "onnxruntime-web", "tract", "openvino", "onnx-reference")
PYTHON_MODULES = {"onnxruntime": "onnxruntime", "tract": "tract", "openvino": "openvino", "onnx-reference": "onnx"}
WASM_SCRIPT = "run_onnx_wasm.mjs"
TIMEOUT_S = 300


class RuntimeUnavailable(MissingDependencyError):
    """The runtime is not installed here; the message says how to install it."""


class RuntimeFailed(InferenceError):
    """The runtime could not load or run the file, or its process died doing so."""


def node_folder() -> Path | None:
    """Where the Node.js runner and its node_modules live: EDGEAE_NODE_DIR, else the node/ folder of the
    checkout edgeae runs from; None for an installed wheel (the runner and its npm packages are not in it)."""
    if os.environ.get("EDGEAE_NODE_DIR"):
        return Path(os.environ["EDGEAE_NODE_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "node"
    return checkout if (checkout / WASM_SCRIPT).is_file() else None


def unavailable(runtime: str) -> str | None:
    """Why `runtime` cannot run here (None when it can), without importing it."""
    if runtime not in RUNTIMES:
        raise UsageError(f"no runtime named {runtime!r} (runtimes: {', '.join(RUNTIMES)})")
    if runtime == "onnxruntime-web":
        folder = node_folder()
        if shutil.which("node") is None:
            return "Node.js is not installed (apt-get install nodejs npm)"
        if folder is None:
            return ("onnxruntime-web runs from an edgeae checkout's node/ folder, which an installed package lacks: "
                    "`npm ci --prefix CHECKOUT/node`, then set EDGEAE_NODE_DIR=CHECKOUT/node")
        if not (folder / WASM_SCRIPT).is_file() or not (folder / "node_modules" / "onnxruntime-web").is_dir():
            return f"onnxruntime-web is not installed in {folder} (npm ci --prefix {folder})"
        return None
    module = PYTHON_MODULES[runtime]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{module} is not installed ({install_hint('runtimes')})"


def _reason(stderr: str) -> str:
    """The line of a child's stderr that says why: a Rust panic's message, a Python exception (with
    its first cause), or the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if " panicked at " in line and i + 1 < len(lines):
            return lines[i + 1]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]*(Error|Exception)\b.*:", lines[i]):
            cause = next((c for c in lines[i + 1:] if re.match(r"^0: ", c)), "")
            return f"{lines[i]} ({cause[3:]})" if cause else lines[i]
    return lines[-1] if lines else "no message"


def _failure(runtime: str, path: Path, proc: subprocess.CompletedProcess) -> RuntimeFailed:
    if proc.returncode < 0:
        how = f"died of signal {signal.Signals(-proc.returncode).name}"
    else:
        how = f"failed (exit {proc.returncode})"
    return RuntimeFailed(f"{runtime} {how} on {path.name}: {_reason(proc.stderr or '')[:240]}")


def run(runtime: str, path: str | os.PathLike, x: np.ndarray, fixed_batch: bool = False,
        timeout: float = TIMEOUT_S) -> np.ndarray:
    """`runtime`'s first output of the ONNX file at `path` on the float32 windows `x`.

    `fixed_batch` pins the input's batch dimension to len(x) before tract analyses the model (tract
    cannot take an LSTM with a free batch dimension); the other runtimes take any batch as it is.
    """
    why = unavailable(runtime)
    if why:
        raise RuntimeUnavailable(f"{runtime}: {why}")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    x = np.ascontiguousarray(x, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="edgeae-runtime-") as tmp:
        given, got = Path(tmp) / "input.npy", Path(tmp) / "output.npy"
        if runtime == "onnxruntime-web":
            given, got = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
            x.tofile(given)
            command = ["node", str(node_folder() / WASM_SCRIPT), str(path.resolve()), str(given),
                       ",".join(map(str, x.shape)), str(got)]
        else:
            np.save(given, x)
            command = [sys.executable, "-m", "edgeae.verifier.runtimes", runtime, str(path.resolve()), str(given), str(got),
                       "fixed" if fixed_batch else "free"]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                                  env={**os.environ, "RUST_BACKTRACE": "0"})
        except subprocess.TimeoutExpired:
            raise RuntimeFailed(f"{runtime} took longer than {timeout:g} s on {path.name}") from None
        if proc.returncode != 0 or not got.is_file():
            raise _failure(runtime, path, proc)
        if runtime == "onnxruntime-web":
            dims = json.loads(proc.stdout.strip().splitlines()[-1])["dims"]
            return np.fromfile(got, "<f4").reshape(dims)
        return np.load(got)


def _child(runtime: str, model: str, given: str, got: str, batch: str) -> None:
    """The child process: load with one runtime, run, save the first output.

    Only the runtime asked for is imported (importlib, here alone): a child of one runtime never
    loads another's libraries.
    """
    x = np.load(given)
    if runtime == "onnxruntime":
        ort = importlib.import_module("onnxruntime")
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x})[0]
    elif runtime == "tract":
        loaded = importlib.import_module("tract").onnx().load(model)
        if batch == "fixed":
            loaded.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")
        y = loaded.into_model().into_runnable().run([x])[0].to_numpy()
    elif runtime == "openvino":
        ov = importlib.import_module("openvino")
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        y = compiled(x)[0]
    else:
        proto = importlib.import_module("onnx").load(model)
        evaluator = importlib.import_module("onnx.reference").ReferenceEvaluator(proto)
        y = evaluator.run(None, {proto.graph.input[0].name: x})[0]
    np.save(got, np.asarray(y, dtype=np.float32))


if __name__ == "__main__":
    _child(*sys.argv[1:6])
