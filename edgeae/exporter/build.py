"""The build export and optimize share: from each role's tf2onnx graph, the clean graph (or, for a
user's model of another layout, tf2onnx's own), parity against Keras, the variants, the parity
report and the golden vectors, all written into a staging folder that publishes only if it all holds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract import progress
from edgeae.contract.errors import ParityError, require
from edgeae.contract.files import atomic_write_json
from edgeae.contract.layout import PARITY_REPORT_FILE, REPORT_ROLE
from edgeae.contract.manifest import file_entry
from edgeae.contract.parity import ParityReport, Tolerance
from edgeae.contract.variants import BY_NAME, DEFAULT_VARIANT, variant_file
from edgeae.exporter.bounds import bound_entry
from edgeae.conversion.convert import describe_io, mark_encoding, opset_of
from edgeae.conversion.graphs.clean import clean_graph
from edgeae.conversion.graphs.common import GraphError, set_variant
from edgeae.exporter.options import ExportOptions
from edgeae.exporter.user_model import clean_graph_misfit, is_foreign
from edgeae.exporter.variants import Optimized, build_variants
from edgeae.trainer.training import Training
from edgeae.verifier.target_report import describe_graph
from edgeae.verifier.verification import keras_references, verify_models, write_golden_vectors


def model_entry(proto, file: str) -> dict[str, Any]:
    """A manifest `models` entry: file, inputs/outputs, opset, node and op counts, and the value
    bound that proves its float32 graphs cannot overflow (bounds.py)."""
    nodes, ops, _ = describe_graph(proto)
    return {"file": file, **describe_io(proto), "opset": opset_of(proto), "nodes": nodes, "ops": ops,
            **bound_entry(proto)}


@dataclass(frozen=True)
class BuiltExport:
    """What `build_export` wrote into a staging folder, for the caller's manifest."""

    files: dict[str, dict]
    models: dict[str, Any]
    report: ParityReport
    variants: Optimized
    inputs: dict[str, np.ndarray]
    references: dict[str, dict[str, np.ndarray]]


def build_export(stage: Path, training: Training, plains: dict[str, Any], inputs: dict[str, np.ndarray],
                 providers: list[str], fp32: Tolerance, options: ExportOptions, failure: str) -> BuiltExport:
    """From each role's tf2onnx graph: the clean graph, parity against Keras (raising ParityError,
    prefixed with `failure`, when it fails), the variants (`options.variants`, at `options.tolerances`),
    the reports and the golden vectors: the one build that export and optimize share."""
    onnx = require("onnx", "train")
    foreign = is_foreign(training)
    misfit = clean_graph_misfit(training) if foreign else None
    models, paths, skipped = {}, {}, {}
    for role, plain in plains.items():
        onnx.save(plain, str(stage / variant_file(role, "plain")))  # tf2onnx's graph, kept for comparison
        try:
            if misfit:
                raise GraphError(misfit)
            clean = clean_graph(plain, role)
        except (GraphError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            if not foreign:  # edgeae's own models always have a clean graph
                raise
            # A user's model of another layout: tf2onnx's graph is the default file.
            skipped[role] = {"clean": f"the clean graph does not apply ({str(exc).splitlines()[0]}); the default "
                                      "file is tf2onnx's graph"}
            clean = _as_default(plain, plains["encoder"], role, training)
        paths[role] = stage / variant_file(role, DEFAULT_VARIANT)
        onnx.save(clean, str(paths[role]))
        models[role] = model_entry(clean, paths[role].name)
    with progress.stage("verify (parity against Keras)"):
        references = keras_references(training, inputs)
        report = verify_models(training.preprocessing, references, paths, inputs, providers, fp32)
    if not report:
        raise ParityError(f"{failure}, nothing published: " + "; ".join(report.failures())
                          + "; if that is float32 rounding, allow more with --rtol (a share of the output's range) "
                            "or --atol (rtol=, atol= in the API)")
    atomic_write_json(stage / PARITY_REPORT_FILE, report.to_dict())
    built = build_variants(stage, training, inputs, providers, fp32, options.tolerances, references, options.variants)
    for role, by_name in built.skipped.items():
        skipped.setdefault(role, {}).update(by_name)
    built = replace(built, skipped=skipped)
    files = {path.name: file_entry(path, BY_NAME[DEFAULT_VARIANT].file_role) for path in paths.values()}
    files[PARITY_REPORT_FILE] = file_entry(stage / PARITY_REPORT_FILE, REPORT_ROLE)
    files.update(built.files)
    files.update(write_golden_vectors(stage, inputs, references, built.section(), training.preprocessing))
    return BuiltExport(files, models, report, built, inputs, references)


def _as_default(plain, encoder_plain, role: str, training: Training):
    """tf2onnx's graph of a user's model as its default file, where the clean graph does not apply;
    the autoencoder's names the tensor that holds its encoding, so verify proves the encoder equals it."""
    proto = require("onnx", "train").ModelProto()
    proto.CopyFrom(plain)
    set_variant(proto, DEFAULT_VARIANT)
    if role == "autoencoder":
        config = training.config
        mark_encoding(proto, encoder_plain, config.features, config.timesteps, config.units)
    return proto
