"""The variants of an export: each made from the clean fp32 graphs by its builder (conversion/graphs/), checked
against Keras at its own tolerance, published or left out, and described for the manifest and the
terminal. A rewrite that does not fit the model is skipped with its reason, never half applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract import progress
from edgeae.contract.errors import require
from edgeae.contract.layout import ROLES
from edgeae.contract.manifest import file_entry
from edgeae.contract.parity import Tolerance, fp32_tolerance
from edgeae.contract.variants import (
    BY_NAME, DEFAULT_VARIANT, SPECS, VARIANTS, batch_graphs, check_variant_names, tolerances_for, variant_file,
)
from edgeae.conversion.graphs import BUILDERS
from edgeae.conversion.graphs.common import GraphError, Job
from edgeae.exporter.targets import write_target_report
from edgeae.runtime.routes import fixed_batch_routes
from edgeae.trainer.training import Training
from edgeae.verifier.target_report import describe_graph, target_lines
from edgeae.verifier.verification import VariantParity, keras_references, variant_parity


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
    weights: str | None = None  # int8: how its weights were quantized

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "source": self.source, "precision": BY_NAME[self.name].precision,
            **({"weights": self.weights} if self.weights else {}),
            "format": "ort" if self.file.endswith(".ort") else "onnx", "default": self.name == DEFAULT_VARIANT,
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
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> variant -> why it does not apply

    def section(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for v in self.variants:
            out.setdefault(v.role, {})[v.name] = v.to_dict()
        for by_name in out.values():  # which graph runs when: said where the runtime reads it
            for base in VARIANTS:
                routes = fixed_batch_routes(by_name, base, batch_graphs(base))
                if routes:
                    by_name[base]["by_batch"] = routes
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"variants": self.section(), "skipped": self.skipped, "targets": self.targets}

    def lines(self) -> list[str]:
        return ["variants (parity against Keras on verify's inputs):", *(v.line() for v in self.variants),
                *skipped_lines(self.skipped), *target_lines(self.targets)]


def skipped_lines(skipped: dict[str, dict[str, str]]) -> list[str]:
    """One line per variant that does not apply to the model, with the reason."""
    return [f"  {role}/{name:<13} skipped: {why}" for role, by_name in skipped.items() for name, why in by_name.items()]


def build_variants(stage: Path, training: Training, inputs: dict[str, np.ndarray], providers: list[str],
                   fp32: Tolerance | None = None, tolerances: dict[str, Tolerance] | None = None,
                   references: dict[str, dict[str, np.ndarray]] | None = None,
                   variants: tuple[str, ...] | None = None) -> Optimized:
    """Make the variants named in `variants` (default: the table's defaults) from the clean graphs in
    `stage`, check every file against Keras, write the target report and the ORT operator list.

    `stage` must already hold each role's plain (tf2onnx) and clean graph. A built variant that
    misses its tolerance is deleted again and recorded as not published.
    """
    onnx = require("onnx", "train")
    # A rewrite that does not fit this model's graph (a user's, or a file onnx rejects once rewritten) is skipped.
    not_applicable = (GraphError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError)

    wanted = check_variant_names(variants)
    tolerance = tolerances_for(fp32_tolerance() if fp32 is None else fp32, tolerances)
    references = references or keras_references(training, inputs)
    scale = training.preprocessing.arrays()["scale"]
    made: list[Variant] = []
    described: dict[str, tuple[Any, str]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for role in progress.each(ROLES, "variants", "models", note=str):
        clean_path = stage / variant_file(role, DEFAULT_VARIANT)
        clean = onnx.load(str(clean_path))
        plain_file = variant_file(role, "plain")
        protos: dict[str, Any] = {"plain": onnx.load(str(stage / plain_file)), DEFAULT_VARIANT: clean}
        checked: dict[str, VariantParity] = {}
        weights: dict[str, str] = {}

        def parity_of(path: Path, name: str, role: str = role) -> VariantParity:
            return variant_parity(path, role, name, references[role], inputs, providers, tolerance[name], scale)

        for spec in (s for s in SPECS if s.name in wanted):
            job = Job(clean, role, clean_path, stage / variant_file(role, spec.name),
                      lambda path, name=spec.name: parity_of(path, name))
            try:
                built = BUILDERS[spec.name](job)
            except not_applicable as exc:
                skipped.setdefault(role, {})[spec.name] = str(exc).splitlines()[0]
                (stage / variant_file(role, spec.name)).unlink(missing_ok=True)
                continue
            if built is None:
                continue
            protos[spec.name] = built.proto
            if built.parity is not None:
                checked[spec.name] = built.parity
            if built.weights:
                weights[spec.name] = built.weights
        for name in (n for n in VARIANTS if n in protos):
            file = variant_file(role, name)
            parity = checked.get(name) or parity_of(stage / file, name)
            published = bool(parity) or not BY_NAME[name].built
            nodes, ops, opsets = describe_graph(protos[name])
            batch = protos[name].graph.input[0].type.tensor_type.shape.dim[0].dim_value or "any"
            source = "tf2onnx" if name == "plain" else plain_file if name == DEFAULT_VARIANT else clean_path.name
            made.append(Variant(role, name, file, source, parity, published, (stage / file).stat().st_size,
                                nodes, ops, opsets, batch, weights.get(name)))
            if not published:
                (stage / file).unlink()
            elif name != "plain":
                described[file] = (protos[name], BY_NAME[name].precision)
    ort_files = [stage / v.file for v in made if v.name == "ort" and v.published]
    targets, reports = write_target_report(stage, described, ort_files)
    files = {v.file: file_entry(stage / v.file, BY_NAME[v.name].file_role) for v in made
             if v.published and v.name != DEFAULT_VARIANT}  # the clean graphs are the caller's to list
    return Optimized(tuple(made), {**files, **reports}, targets, skipped)
