"""ORT format, for onnxruntime Mobile and minimal builds, and the operator list such a build needs."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.tools.ort_format_model.utils import create_config_from_models

from edgeae.contract.files import atomic_write_bytes
from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import Built, Job


def ort_session_options():
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
    with tempfile.TemporaryDirectory(prefix="edgeae-ort-") as tmp:
        equivalent = Path(tmp) / "equivalent.onnx"
        for target, fmt in ((path, "ORT"), (equivalent, "ONNX")):
            options = ort_session_options()
            options.optimized_model_filepath = str(target)
            options.add_session_config_entry("session.save_model_format", fmt)
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
        return onnx.load(str(equivalent))


def write_ort_config(ort_files: list[Path], path: Path) -> None:
    """The operator (and type) list a reduced onnxruntime build needs to run these .ort files."""
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


def build(job: Job) -> Built | None:
    return Built(to_ort(job.clean_path, job.path))
