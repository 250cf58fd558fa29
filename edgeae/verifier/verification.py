"""Verification: the inputs every model is checked on, Keras's references, and parity of every
model file and variant against them, on every execution provider.

Exports store what verification ran on as golden vectors (contract/golden.py), so re-verifying never
regenerates anything: `verify` runs the stored inputs against the stored Keras outputs (no
TensorFlow needed) or against the stored Keras model.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.files import as_path
from edgeae.contract.golden import KERAS, SCORE, check_thresholds, read_golden, write_golden
from edgeae.contract.manifest import read_export_manifest, verify_file, verify_files
from edgeae.contract.onnx_scan import check_external
from edgeae.contract.records import Manifest
from edgeae.data.series import FLOAT32_MAX
from edgeae.data.windows import Preprocessing
from edgeae.contract.errors import IntegrityError, UsageError, require
from edgeae.contract.layout import GOLDEN_INDEX_FILE, ROLES
from edgeae.contract.parity import ParityReport, ParityResult, Tolerance, check_tolerance, compare, fp32_tolerance, recorded_tolerance
from edgeae.conversion.convert import ExportError, internal_encoding
from edgeae.runtime.providers import CPU, CUDA, available_providers, resolve_providers
from edgeae.runtime.loading import load
from edgeae.runtime.routes import batch_label, batch_routes
from edgeae.runtime.scoring import reconstruction_error
from edgeae.runtime.session import OnnxModel, placement_summary
from edgeae.trainer.model import predict
from edgeae.trainer.training import Training, load_training
from edgeae.contract.variants import DEFAULT_VARIANT, serving_files, variant_file

ONNX_FILES = {role: variant_file(role, DEFAULT_VARIANT) for role in ROLES}
PARITY_SAMPLE = 1024  # training windows compared at most
RANDOM_BATCH = 300  # random windows inside, and outside, the clipping bounds


def parity_inputs(train_windows: np.ndarray, pre: Preprocessing, seed: int) -> dict[str, np.ndarray]:
    """The raw inputs verify compares on: training data, random inside and far outside its range."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(pre.clip_low), np.asarray(pre.clip_high)
    span = np.where(high > low, high - low, 1.0)
    # "Far outside" stops at the float32 limits: beyond them no input can exist, and casting would give inf.
    far_low, far_high = np.maximum(low - 10 * span, -FLOAT32_MAX), np.minimum(high + 10 * span, FLOAT32_MAX)
    shape = (RANDOM_BATCH, *train_windows.shape[1:])
    return {
        "training": train_windows[:PARITY_SAMPLE].astype(np.float32),
        "single": train_windows[:1].astype(np.float32),
        "in_range": rng.uniform(low, high, size=shape).astype(np.float32),
        "outside_range": rng.uniform(far_low, far_high, size=shape).astype(np.float32),
    }


def verification_providers(which: str) -> list[str]:
    """'all' = CPU plus CUDA where this onnxruntime has it; otherwise the one named."""
    if which == "all":
        return [CPU] + ([CUDA] if CUDA in available_providers() else [])
    return [resolve_providers(which)[0]]


def keras_references(training: Training, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Keras outputs on verify's inputs, raw units: computed once, used for every file and stored."""
    pre = training.preprocessing
    return {
        "autoencoder": {k: training.reconstruct(x) for k, x in inputs.items()},
        "encoder": {k: predict(training.encoder, pre.apply(x)) for k, x in inputs.items()},
    }


def write_golden_vectors(stage: Path, inputs: dict[str, np.ndarray], references: dict[str, dict[str, np.ndarray]],
                         variants: dict[str, dict[str, Any]], pre: Preprocessing) -> dict[str, dict]:
    """Store the golden vectors (contract/golden.py) of the export in `stage`: the inputs, Keras's outputs
    and scores, and each published reduced-precision variant's own outputs and scores here."""
    scale = pre.arrays()["scale"]
    expected: dict[str, dict[str, dict[str, np.ndarray]]] = {role: {KERAS: dict(outs)} for role, outs in references.items()}
    expected[SCORE] = {KERAS: {k: reconstruction_error(x, references["autoencoder"][k], scale) for k, x in inputs.items()}}
    for role, by_name in variants.items():
        for name, entry in by_name.items():
            if entry["published"] and entry.get("precision") not in (None, "fp32"):
                model = OnnxModel(stage / entry["file"], ["CPUExecutionProvider"], name=entry["file"])
                expected[role][name] = {k: model.run_windows(x) for k, x in inputs.items()}
                if role == "autoencoder":
                    expected[SCORE][name] = {k: reconstruction_error(x, expected[role][name][k], scale)
                                             for k, x in inputs.items()}
    return write_golden(stage, inputs, expected)


def stored_inputs(folder: Path, manifest: Manifest, training: Training | None = None) -> dict[str, np.ndarray]:
    """The inputs an export was verified on, read from its golden vectors; an export made before
    they were stored (edgeae 0.1) has its inputs regenerated from its training windows and seed."""
    if GOLDEN_INDEX_FILE in manifest.files or training is None:
        return read_golden(folder, manifest).inputs
    return parity_inputs(training.train_windows, training.preprocessing, training.config.seed)


@dataclass(frozen=True)
class ParityChecks:
    """What verify_models checks besides the two default files, which verify and export choose apart.

    `batch_graphs` adds (role, label, file) for each graph the runtime hands some batch
    sizes to; a one-window graph runs window by window. `internal_check` also proves the
    encoder equals the autoencoder's own encoding; it edits the graph with onnx, which a
    runtime-only machine may not have. `variants` adds (role, variant, file, tolerance) for
    each other file the runtime may load, each held to its own tolerance.
    """

    internal_check: bool = True
    batch_graphs: Sequence[tuple[str, str, Path]] = ()
    variants: Sequence[tuple[str, str, Path, Tolerance]] = ()


def verify_models(pre: Preprocessing, references: dict[str, dict[str, np.ndarray]], onnx_paths: dict[str, Path],
                  inputs: dict[str, np.ndarray], providers: list[str], tolerance: Tolerance | None = None,
                  checks: ParityChecks = ParityChecks()) -> ParityReport:
    """Compare both ONNX files with the Keras outputs on every input set and provider, and what
    `checks` adds. The default files and batch graphs are held to `tolerance` (default:
    fp32_tolerance()).
    """
    tolerance = fp32_tolerance() if tolerance is None else tolerance

    results, placement, encoder_check = [], {}, None
    internal = None
    if checks.internal_check:
        onnx = require("onnx", "train")
        try:
            internal = internal_encoding(onnx.load(str(onnx_paths["autoencoder"]))).SerializeToString()
        except ExportError as exc:  # e.g. an int8 or foreign file in the default file's place
            raise IntegrityError(f"{onnx_paths['autoencoder'].name}: {exc}: not this export's model") from None
    for provider in providers:
        short = "cuda" if provider.startswith("CUDA") else "cpu"
        models = [(role, role, path) for role, path in onnx_paths.items()]
        models += list(checks.batch_graphs)
        for role, label, path in models:
            session = OnnxModel(path, [provider], name=path.name)
            placement[f"{label}/{short}"] = placement_summary(session.node_placement())
            scale = pre.arrays()["scale"] if role == "autoencoder" else None
            for dataset, x in inputs.items():
                results.append(compare(references[role][dataset], session.run_windows(x), model=label, provider=short,
                                       dataset=dataset, tolerance=tolerance, scale=scale, source=path.name))
        if internal is None:
            continue
        both = OnnxModel(internal, [provider], name="autoencoder (internal encoding)")
        encoder = OnnxModel(onnx_paths["encoder"], [provider], name="encoder")
        x = np.concatenate([inputs["training"], inputs["in_range"], inputs["outside_range"]])
        # The encoder's shape has just matched Keras's, so an encoding of another width is the autoencoder's fault.
        check = compare(encoder.run_windows(x), both.run_windows(x, output=1), model="encoder-vs-autoencoder",
                        provider=short, dataset="internal encoding", tolerance=tolerance,
                        source=f"{onnx_paths['autoencoder'].name}'s encoding")
        if encoder_check is None or check.max_abs > encoder_check.max_abs:
            encoder_check = check
    checked = tuple(r for role, name, path, tolerance in checks.variants for r in variant_parity(
        path, role, name, references[role], inputs, providers, tolerance, pre.arrays()["scale"]).results)
    return ParityReport(tuple(results), encoder_check, placement, checked)


def _installed(module: str) -> bool:
    """Whether a module can be imported, without importing it (a broken install counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def verify(folder: Path, providers: str = "all", atol: float | None = None, against: str = "auto",
           rtol: float | None = None) -> ParityReport:
    """Re-run parity on a published export folder.

    Every file is held to the tolerance the export recorded for it; `atol` and `rtol` replace the
    fp32 graphs' recorded bounds (absolute, and as a share of the range) for this run only.

    against="keras" runs the Keras model stored in the folder (needs edgeae[train]);
    against="stored" compares with the Keras outputs saved at export, so a device or a GPU
    machine with only the runtime installed can prove parity on its own providers;
    "auto" takes Keras where TensorFlow is installed, the stored outputs otherwise.
    """
    for bound in (atol, rtol):  # a bad bound is refused before the folder is read
        if bound is not None:
            check_tolerance(bound)
    if against not in ("auto", "keras", "stored"):
        raise UsageError(f"verify against 'auto', 'keras' or 'stored', got {against!r}")
    if against == "auto":
        against = "keras" if _installed("tensorflow") else "stored"
    folder = as_path(folder, "export folder")
    manifest = read_export_manifest(folder)
    verify_files(folder, manifest)
    for name in manifest.files:  # external data anywhere in a graph is named before any parser reads it
        if name.endswith(".onnx"):
            check_external(folder, folder / name, manifest)
    for role, file in ONNX_FILES.items():  # the file the runtime loads must be the one checked at fp32's tolerance
        if manifest.model_file(role) != file:
            raise IntegrityError(f"manifest field models.{role}.file must be {file!r}, "
                                 f"got {manifest.model_file(role)!r}")
    provider_list = verification_providers(providers)
    paths = {role: folder / ONNX_FILES[role] for role in ONNX_FILES}
    extra = [(role, f"{role} ({batch_label(first, last)})", folder / file)
             for role in ONNX_FILES for first, last, file in batch_routes(manifest, role, "fp32")]
    # a graph that only serves batch sizes is checked as the route it is; an unrouted one, as a variant
    checked = {path.name for path in paths.values()} | ({p.name for *_, p in extra} & serving_files())
    variants = published_variants(folder, manifest, checked)
    tolerance = recorded_tolerance(manifest.parity.details, atol, rtol)
    if against == "keras":
        training = load_training(folder)
        pre, inputs = training.preprocessing, stored_inputs(folder, manifest, training)
        references = keras_references(training, inputs)
        report = verify_models(pre, references, paths, inputs, provider_list, tolerance,
                               ParityChecks(batch_graphs=extra, variants=variants))
    else:
        pre = Preprocessing.from_dict(manifest.preprocessing)
        golden = read_golden(folder, manifest)
        inputs, references = golden.inputs, {role: golden.reference(role) for role in ONNX_FILES}
        report = verify_models(pre, references, paths, inputs, provider_list, tolerance,
                               ParityChecks(_installed("onnx"), extra, variants))
    check_thresholds(manifest, inputs, {name: reconstruction_error(x, references["autoencoder"][name],
                                                                   pre.arrays()["scale"]) for name, x in inputs.items()})
    report = _with_detector_graphs(report, folder, manifest, pre, references["autoencoder"], inputs, provider_list)
    if report:  # what the runtime would still refuse (a route, a declared shape, the self-check's flags), so does verify
        load(folder, provider_list[:1])
    return report


def _with_detector_graphs(report: ParityReport, folder: Path, manifest: Manifest, pre: Preprocessing,
                          references: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                          providers: list[str]) -> ParityReport:
    """The report with every detector graph the manifest lists checked too (detector_parity)."""
    results, disagreements = [], []
    autoencoders = manifest.variants_of("autoencoder")
    graphs = manifest.detector.graphs if manifest.detector else {}
    for precision, graph in graphs.items():
        if precision not in autoencoders:
            raise IntegrityError(f"manifest field detector.graphs.{precision} names no published autoencoder "
                                 "and threshold")
        path = verify_file(folder, graph.file, manifest.files.get(graph.file))
        parity, problems = detector_parity(path, precision, autoencoders[precision].details, float(graph.threshold),
                                           references, inputs, providers, pre.arrays()["scale"])
        results += parity.results
        disagreements += problems
    return replace(report, detectors=tuple(results), disagreements=tuple(disagreements))


def published_variants(folder: Path, manifest: Manifest, checked: set[str]) -> list[tuple[str, str, Path, Tolerance]]:
    """(role, variant, file, tolerance) for every published variant file not in `checked`.

    Each is held to the tolerance its export recorded (fp16 and int8 relative to the
    range), so a file swapped for another model's, and the manifest resealed, fails verify.
    """
    out = []
    for role, entry in manifest.all_variants():
        if not entry.published or entry.file in checked:
            continue
        if role not in ONNX_FILES:
            raise IntegrityError(f"manifest field variants.{role}: no such model (expected "
                                 f"{' or '.join(ONNX_FILES)})")
        out.append((role, entry.name, verify_file(folder, entry.file, manifest.files.get(entry.file)), entry.tolerance))
    return out


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


def variant_parity(path: Path, role: str, variant: str, references: dict[str, np.ndarray],
                   inputs: dict[str, np.ndarray], providers: list[str], tolerance: Tolerance,
                   scale: np.ndarray) -> VariantParity:
    """Run one file on every input set and provider (ORT format on the CPU only); the autoencoder
    in model units, as verify does."""
    results, scores = [], []
    units = scale if role == "autoencoder" else None
    for provider in [CPU] if variant == "ort" else providers:
        short = "cuda" if provider.startswith("CUDA") else "cpu"
        model = OnnxModel(path, [provider], name=path.name)
        for dataset, x in inputs.items():
            out, ref = model.run_windows(x), references[dataset]
            results.append(compare(ref, out, model=f"{role}/{variant} ({path.name})", provider=short, dataset=dataset,
                                   tolerance=tolerance, scale=units, source=path.name))
            if role == "autoencoder":
                scores.append(compare(reconstruction_error(x, ref, scale), reconstruction_error(x, out, scale),
                                      model=f"{path.name} score", provider=short, dataset=dataset))
    return VariantParity(tuple(results), tolerance, tuple(scores))


def detector_parity(path: Path, precision: str, autoencoder_entry: Mapping[str, Any], threshold: float,
                    references: dict[str, np.ndarray], inputs: dict[str, np.ndarray], providers: list[str],
                    scale: np.ndarray) -> tuple[VariantParity, list[str]]:
    """A detector graph against Keras (its reconstruction, at the tolerance of the autoencoder file it
    was made from) and against the Python runtime's own score and rule: each window's score within
    1e-6 relative of `reconstruction_error` on the graph's reconstruction, and its flag exactly
    `score > threshold`. Returns the parity and one line per window set where score or flag differ."""
    tolerance = Tolerance.from_manifest(autoencoder_entry.get("tolerance"), f"detector.graphs.{precision}")
    results, problems = [], []
    for provider in providers:
        short = "cuda" if provider.startswith("CUDA") else "cpu"
        session = ort.InferenceSession(str(path), providers=[provider])
        name = session.get_inputs()[0].name
        for dataset, x in inputs.items():
            reconstruction, score, flag = session.run(None, {name: x})
            results.append(compare(references[dataset], reconstruction, model=f"detector/{precision} ({path.name})",
                                   provider=short, dataset=dataset, tolerance=tolerance, scale=scale,
                                   source=path.name))
            expected = reconstruction_error(x, reconstruction, scale)
            worst = float(np.max(np.abs(score - expected) / np.maximum(np.abs(expected), 1e-300)))
            differ = int(np.sum(flag != (expected > threshold)))
            if worst > 1e-6 or differ:
                problems.append(f"{path.name} [{short}] {dataset}: score off by {worst:.1e} relative, "
                                f"{differ} flag(s) differ from score > {threshold:.6g}")
    return VariantParity(tuple(results), tolerance), problems
