"""The target report a build writes beside its files: which execution providers run each published
graph, node by node, and whether onnxruntime Mobile can (targets.json), and for ORT-format files
the operator list a reduced onnxruntime build needs. Predicted from the graphs, not measured:
publish.measure_targets adds the measured table later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgeae.contract.files import atomic_write_json
from edgeae.contract.layout import ORT_CONFIG_FILE, ORT_CONFIG_ROLE, REPORT_ROLE, TARGETS_FILE
from edgeae.contract.manifest import file_entry
from edgeae.conversion.graphs.ort_format import write_ort_config
from edgeae.verifier.target_report import target_report


def write_target_report(stage: Path, described: dict[str, tuple[Any, str]],
                        ort_files: list[Path]) -> tuple[dict[str, Any], dict[str, dict]]:
    """Write the ORT operator list (when `ort_files` were published) and targets.json for the
    `described` files (file -> (proto, precision)) into `stage`; returns the report and the
    manifest entries of the files written."""
    if ort_files:
        write_ort_config(ort_files, stage / ORT_CONFIG_FILE)
    targets = {"format": "edgeae-targets", "onnxruntime": ort.__version__,
               "models": {file: target_report(stage / file, proto, precision)
                          for file, (proto, precision) in described.items()}}
    atomic_write_json(stage / TARGETS_FILE, targets)
    files = {ORT_CONFIG_FILE: file_entry(stage / ORT_CONFIG_FILE, ORT_CONFIG_ROLE)} if ort_files else {}
    files[TARGETS_FILE] = file_entry(stage / TARGETS_FILE, REPORT_ROLE)
    return targets, files
