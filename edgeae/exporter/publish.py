"""The only writers of export folders: export, optimize and the pipeline, through one build and one
manifest; and `amended_export`, through which files are added to a published export (target
measurements, pictures).

Every folder is written through `artifacts.staged_folder`, so a failure at any step (parity
included) publishes nothing. export makes the ONNX graphs from a Training; optimize rebuilds
them from a published folder; both hand them to `_build`, which makes the clean graphs and the
variants, proves them against Keras and writes the reports and golden vectors.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeae import __version__
from edgeae.contract import versions
from edgeae.contract.files import (
    as_path, atomic_write_json, check_target, file_entry, folder_lock, read_export_manifest, read_json, read_manifest,
    staged_folder, verify_files, write_manifest,
)
from edgeae.exporter.bounds import bound_entry
from edgeae.contract.checks import check_flag
from edgeae.contract.errors import EdgeAEError, ParityError, UsageError, require
from edgeae.exporter.graphs import BUILDERS
from edgeae.contract.layout import (
    BUILT_FILES, DATA_ROLE, DETECTOR_PRECISIONS, DETECTOR_ROLE, KERAS_FILE, KERAS_ROLE, ORT_CONFIG_FILE, ORT_CONFIG_ROLE,
    PARITY_INPUTS_FILE, PARITY_REPORT_FILE, REPORT_ROLE, ROLES, TARGETS_FILE, detector_file,
)
from edgeae.contract.parity import (
    DEFAULT_ATOL, DEFAULT_RTOL, ParityReport, Tolerance, check_tolerance, fp32_tolerance, recorded_tolerance,
)
from edgeae.verifier.target_report import describe_graph, target_lines, target_report
from edgeae.trainer.training import Training, check_config, check_data_args, check_learned, load_training, save_training, train
from edgeae.contract.variants import (
    BY_NAME, DEFAULT_BUILT, DEFAULT_VARIANT, SPECS, VARIANTS, batch_graphs, check_tolerances, check_variant_names, tolerances_for,
    variant_file,
)
from edgeae.verifier.verification import (
    VariantParity, detector_parity, keras_references, parity_inputs, stored_inputs, variant_parity, verification_providers,
    verify_models, write_golden_vectors,
)


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

    def manifest_section(self) -> dict[str, dict[str, Any]]:
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
        return {"variants": self.manifest_section(), "skipped": self.skipped, "targets": self.targets}

    def lines(self) -> list[str]:
        return ["variants (parity against Keras on verify's inputs):", *(v.line() for v in self.variants),
                *skipped_lines(self.skipped), *target_lines(self.targets)]


def skipped_lines(skipped: dict[str, dict[str, str]]) -> list[str]:
    """One line per variant that does not apply to the model, with the reason."""
    return [f"  {role}/{name:<13} skipped: {why}" for role, by_name in skipped.items() for name, why in by_name.items()]


def fixed_batch_routes(by_name: dict[str, dict[str, Any]], base: str,
                       graphs: tuple[tuple[str, int, int | None], ...]) -> list[dict[str, Any]]:
    """The manifest's `by_batch` by the fixed rule (routing.py measures it instead): which file runs
    which batch sizes of `base`, its published batch graphs and its own file for every size they
    leave. Empty when none of them was published. runtime.batch_routes reads what is written."""
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


def model_entry(proto, file: str) -> dict[str, Any]:
    """A manifest `models` entry: file, inputs/outputs, opset, node and op counts, and the value
    bound that proves its float32 graphs cannot overflow (bounds.py)."""
    from edgeae.exporter.convert import describe_io, opset_of

    nodes, ops, _ = describe_graph(proto)
    return {"file": file, **describe_io(proto), "opset": opset_of(proto), "nodes": nodes, "ops": ops,
            **bound_entry(proto)}


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
    from onnx.shape_inference import InferenceError

    from edgeae.exporter.graphs.common import GraphError, Job
    from edgeae.exporter.graphs.ort_format import write_ort_config

    # A rewrite that does not fit this model's graph (a user's, or a file onnx rejects once rewritten) is skipped.
    not_applicable = (GraphError, onnx.checker.ValidationError, InferenceError)

    wanted = check_variant_names(variants)
    tolerance = tolerances_for(fp32_tolerance() if fp32 is None else fp32, tolerances)
    references = references or keras_references(training, inputs)
    scale = training.preprocessing.arrays()["scale"]
    made: list[Variant] = []
    described: dict[str, tuple[Any, str]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for role in ROLES:
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
    if ort_files:
        write_ort_config(ort_files, stage / ORT_CONFIG_FILE)
    import onnxruntime as ort

    targets = {"format": "edgeae-targets", "onnxruntime": ort.__version__,
               "models": {file: target_report(stage / file, proto, precision)
                          for file, (proto, precision) in described.items()}}
    atomic_write_json(stage / TARGETS_FILE, targets)
    files = {v.file: file_entry(stage / v.file, BY_NAME[v.name].file_role) for v in made
             if v.published and v.name != DEFAULT_VARIANT}  # the clean graphs are the caller's to list
    if ort_files:
        files[ORT_CONFIG_FILE] = file_entry(stage / ORT_CONFIG_FILE, ORT_CONFIG_ROLE)
    files[TARGETS_FILE] = file_entry(stage / TARGETS_FILE, REPORT_ROLE)
    return Optimized(tuple(made), files, targets, skipped)


@dataclass(frozen=True)
class _Built:
    """What `_build` wrote into a staging folder, for the caller's manifest."""

    files: dict[str, dict]
    models: dict[str, Any]
    report: ParityReport
    variants: Optimized
    inputs: dict[str, np.ndarray]
    references: dict[str, dict[str, np.ndarray]]


def _build(stage: Path, training: Training, plains: dict[str, Any], inputs: dict[str, np.ndarray],
           providers: list[str], fp32: Tolerance, tolerances: dict[str, Tolerance] | None,
           variants: tuple[str, ...] | None, failure: str) -> _Built:
    """From each role's tf2onnx graph: the clean graph, parity against Keras (raising ParityError,
    prefixed with `failure`, when it fails), the variants, the reports and the golden vectors."""
    import onnx
    from onnx.shape_inference import InferenceError

    from edgeae.exporter.user_model import clean_graph_misfit, is_foreign
    from edgeae.exporter.graphs.clean import clean_graph
    from edgeae.exporter.graphs.common import GraphError

    foreign = is_foreign(training)
    misfit = clean_graph_misfit(training) if foreign else None
    models, paths, skipped = {}, {}, {}
    for role, plain in plains.items():
        onnx.save(plain, str(stage / variant_file(role, "plain")))  # tf2onnx's graph, kept for comparison
        try:
            if misfit:
                raise GraphError(misfit)
            clean = clean_graph(plain, role)
        except (GraphError, onnx.checker.ValidationError, InferenceError) as exc:
            if not foreign:  # edgeae's own models always have a clean graph
                raise
            # A user's model of another layout: tf2onnx's graph is the default file.
            skipped[role] = {"clean": f"the clean graph does not apply ({str(exc).splitlines()[0]}); the default "
                                      "file is tf2onnx's graph"}
            clean = _as_default(plain, plains["encoder"], role, training)
        paths[role] = stage / variant_file(role, DEFAULT_VARIANT)
        onnx.save(clean, str(paths[role]))
        models[role] = model_entry(clean, paths[role].name)
    references = keras_references(training, inputs)
    report = verify_models(training.preprocessing, references, paths, inputs, providers, fp32)
    if not report:
        raise ParityError(f"{failure}, nothing published: " + "; ".join(report.failures())
                          + "; if that is float32 rounding, allow more with --rtol (a share of the output's range) "
                            "or --atol (rtol=, atol= in the API)")
    atomic_write_json(stage / PARITY_REPORT_FILE, report.to_dict())
    built = build_variants(stage, training, inputs, providers, fp32, tolerances, references, variants)
    for role, by_name in built.skipped.items():
        skipped.setdefault(role, {}).update(by_name)
    built = replace(built, skipped=skipped)
    files = {path.name: file_entry(path, BY_NAME[DEFAULT_VARIANT].file_role) for path in paths.values()}
    files[PARITY_REPORT_FILE] = file_entry(stage / PARITY_REPORT_FILE, REPORT_ROLE)
    files.update(built.files)
    files.update(write_golden_vectors(stage, inputs, references, built.manifest_section(), training.preprocessing))
    return _Built(files, models, report, built, inputs, references)


def _as_default(plain, encoder_plain, role: str, training: Training):
    """tf2onnx's graph of a user's model as its default file, where the clean graph does not apply;
    the autoencoder's names the tensor that holds its encoding, so verify proves the encoder equals it."""
    from onnx import ModelProto

    from edgeae.exporter.convert import mark_encoding
    from edgeae.exporter.graphs.common import set_variant

    proto = ModelProto()
    proto.CopyFrom(plain)
    set_variant(proto, DEFAULT_VARIANT)
    if role == "autoencoder":
        config = training.config
        mark_encoding(proto, encoder_plain, config.features, config.timesteps, config.units)
    return proto


def _detector_graphs(stage: Path, built: _Built, detector: dict[str, Any], training: Training,
                     providers: list[str]) -> tuple[dict[str, dict], dict[str, Any]]:
    """A detector graph (reconstruction, score, flag) for each published precision of the autoencoder,
    with that precision's threshold inside, proven against Keras and the Python runtime's score."""
    import onnx

    from edgeae.detection.graph import ANOMALY, SCORE, detector_graph

    autoencoders = built.variants.manifest_section()["autoencoder"]
    scale = training.preprocessing.arrays()["scale"]
    files, graphs = {}, {}
    for precision in DETECTOR_PRECISIONS:
        entry = autoencoders.get(precision)
        if not entry or not entry["published"]:
            continue
        threshold = detector["threshold"] if precision == DEFAULT_VARIANT else detector["variants"][precision]["threshold"]
        path = stage / detector_file(precision)
        onnx.save(detector_graph(onnx.load(str(stage / entry["file"])), scale, threshold, precision), str(path))
        parity, problems = detector_parity(path, precision, entry, threshold, built.references["autoencoder"],
                                           built.inputs, providers, scale)
        if not parity or problems:
            raise ParityError(f"the {precision} detector graph disagrees, nothing published: "
                              + "; ".join([*parity.failures(), *problems]))
        files[path.name] = file_entry(path, DETECTOR_ROLE)
        graphs[precision] = {"file": path.name, "source": entry["file"], "threshold": threshold,
                             "outputs": ["reconstruction", SCORE, ANOMALY], "parity": parity.to_dict()}
    return files, graphs


def _manifest_sections(built: _Built, fp32: Tolerance, providers: list[str], detector: dict[str, Any] | None,
                       stage: Path, training: Training) -> dict[str, Any]:
    """The manifest sections a build decides: files, models, parity, variants, targets, each
    variant's own anomaly threshold, and the detector graphs made with them."""
    from edgeae.detection.threshold import set_threshold, variant_thresholds

    section = built.variants.manifest_section()
    out = {
        "files": built.files, "models": built.models, "variants": section, "skipped": built.variants.skipped,
        "targets": TARGETS_FILE,
        "parity": {"passed": built.report.passed, "tolerance_abs": fp32.abs, "tolerance_rel_range": fp32.rel_range,
                   "providers": providers,
                   "summary": built.report.summary(),
                   "encoder_matches_autoencoder_max_abs": built.report.encoder_matches_autoencoder.max_abs,
                   "report": PARITY_REPORT_FILE},
    }
    if detector:
        detector = {**detector, "variants": variant_thresholds(stage, section["autoencoder"], training,
                                                               detector["quantile"])}
        if isinstance(detector.get("chosen"), dict):  # a user's threshold holds for every precision
            detector = set_threshold(detector, detector["threshold"], detector["chosen"]["source"])
        files, detector["graphs"] = _detector_graphs(stage, built, detector, training, providers)
        out["files"] = {**built.files, **files}
        out["detector"] = detector
    return out


def check_export_target(out: Path, training_folder: Path | None, force: bool = False) -> None:
    """Refuse, before anything loads, an export that would replace the training folder it reads (or
    a folder holding it), then a target check_target refuses."""
    if training_folder is not None:
        run, target = Path(training_folder).resolve(), Path(out).resolve()
        if target == run or target in run.parents:
            raise UsageError(f"refusing to export to {out}: it is the training folder {training_folder} or holds it; "
                             "choose another --out")
    check_target(out, force)


def export(training: Training, out: Path, opset: int | None = None, atol: float | None = DEFAULT_ATOL,
           providers: str = "all", force: bool = False, threshold_quantile: float | None = None,
           variants: tuple[str, ...] | None = None, rtol: float | None = DEFAULT_RTOL,
           threshold: float | None = None, threshold_source: str = "edgeae export --threshold",
           measure_routing: bool = True) -> tuple[Path, ParityReport]:
    """Export both models, verify them against Keras, and publish the folder only if parity holds.

    Which fp32 graph runs which batch sizes, and in runs of how many windows, is measured here
    (routing.py; seconds); `measure_routing` False keeps the built-in rule, the same on every machine.

    `threshold` replaces the calibrated anomaly threshold for every precision (say, one `evaluate`
    suggested from labels), recorded with `threshold_source` beside the calibrated one.

    The fp32 graphs must match Keras within `atol` (in the model's units) or `rtol` of the output's
    range, whichever is larger (parity.fp32_tolerance); the manifest records both.

    `variants` names the edge variants to build (the table's defaults when None). The anomaly
    threshold is calibrated here, at `threshold_quantile` (default: the training
    configuration's) of the validation windows' scores, and stored in the manifest.
    """
    from edgeae.detection.threshold import calibrate, set_threshold
    from edgeae.exporter.convert import DEFAULT_OPSET, export_model
    from edgeae.exporter.user_model import NO_THRESHOLD, is_foreign, parity_bounds
    from edgeae.trainer.model import save

    # onnx's native module is loaded before the staging folder exists: a Ctrl-C landing inside its
    # initialisation crashes the process (SIGSEGV) instead of cleaning up.
    require("onnx", "train")
    if not isinstance(training, Training):
        raise UsageError(f"training must be an edgeae.trainer.training.Training (from train or load_training), "
                         f"got {type(training).__name__}")
    check_flag(measure_routing, "measure_routing")
    out = as_path(out, "out")
    check_export_target(out, training.folder, force)
    opset = DEFAULT_OPSET if opset is None else opset
    fp32 = fp32_tolerance(atol, rtol)
    variants = check_variant_names(variants)
    config, pre = training.config, training.preprocessing
    summary = training.summary()
    provider_list = verification_providers(providers)
    if threshold is not None and threshold_quantile is not None:
        raise UsageError("give a threshold or a quantile to calibrate one at, not both")
    foreign = is_foreign(training)
    detector = None
    if not foreign or len(training.validation_windows):  # a user's model is calibrated on the data they give
        detector = calibrate(training, config.threshold_quantile if threshold_quantile is None else threshold_quantile)
        if foreign:
            detector["calibrated_on"] = f"calibration data {training.data['calibration']['source']}"
    elif threshold is not None or threshold_quantile is not None:
        raise UsageError("a threshold for a model edgeae did not train needs calibration data: give --calibrate FILE")
    if threshold is not None:
        detector = set_threshold(detector, threshold, threshold_source)
    with staged_folder(Path(out), force) as stage:
        plains = {role: export_model(keras_model, role, pre, config.timesteps, config.features, opset,
                                     training={k: summary[k] for k in ("parameters", "final_loss", "epochs_run")},
                                     own=not foreign)
                  for role, keras_model in (("autoencoder", training.autoencoder), ("encoder", training.encoder))}
        inputs = parity_inputs(training.train_windows, parity_bounds(training), config.seed)
        built = _build(stage, training, plains, inputs, provider_list, fp32, None, variants, "parity failed")
        save(training.autoencoder, stage / KERAS_FILE)
        np.savez(stage / PARITY_INPUTS_FILE, training=training.train_windows.astype(np.float32),
                 validation=training.validation_windows.astype(np.float32))
        sections = _manifest_sections(built, fp32, provider_list, detector, stage, training)
        sections["files"].update({KERAS_FILE: file_entry(stage / KERAS_FILE, KERAS_ROLE),
                                  PARITY_INPUTS_FILE: file_entry(stage / PARITY_INPUTS_FILE, DATA_ROLE)})
        manifest = {
            "kind": "export",
            "edgeae_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "opset": opset,
            "window": {"timesteps": config.timesteps, "features": config.features, "stride": config.stride or 1},
            "preprocessing": pre.to_dict(),
            "training": {**summary, "history": training.history},
            "versions": versions.environment(),
            **({"scores": NO_THRESHOLD} if detector is None else {}),
            **sections,
        }
        if measure_routing:
            route_measured(stage, manifest)
        write_manifest(stage, manifest)
    return Path(out), built.report


def export_keras(model_file: Path, out: Path, encoder_layer: str | None = None, data: Path | None = None,
                 columns: tuple[str, ...] | None = None, scaling: str = "none",
                 clip_quantiles: tuple[float, float] = (0.0, 1.0), stride: int | None = None,
                 calibrate: Path | None = None, threshold_quantile: float | None = None, opset: int | None = None,
                 atol: float | None = DEFAULT_ATOL, providers: str = "all", force: bool = False,
                 variants: tuple[str, ...] | None = None, rtol: float | None = DEFAULT_RTOL,
                 threshold: float | None = None, threshold_source: str = "edgeae export --threshold",
                 scaling_values: dict[str, Any] | None = None, measure_routing: bool = True) -> tuple[Path, ParityReport]:
    """Export a Keras sequence autoencoder edgeae did not train (a .keras or .h5 file) as a full export.

    `scaling_values` gives the scaling the model was trained with instead of learning it:
    {"mean": [...], "std": [...]} with scaling="standard", {"min": [...], "max": [...]} with "minmax".

    The model is checked layer by layer (foreign.inspect) and its encoder found (or taken from
    `encoder_layer`); `data` (CSV/NPY, read like training data) teaches the preprocessing at
    `scaling` and `clip_quantiles` and gives the windows parity runs on; `calibrate` gives the
    windows the threshold is calibrated on. Without `calibrate` there is no threshold and the
    manifest says scores are in the model's units. Everything else is export()'s.
    """
    from edgeae.contract.checks import check_quantile
    from edgeae.exporter.user_model import training_for

    out = as_path(out, "out")
    check_export_target(out, None, force)  # before TensorFlow loads
    fp32_tolerance(atol, rtol)
    check_variant_names(variants)
    check_flag(measure_routing, "measure_routing")
    if threshold_quantile is not None:
        check_quantile(threshold_quantile)
    if calibrate is None and (threshold is not None or threshold_quantile is not None):
        raise UsageError("a threshold for a model edgeae did not train needs calibration data: give --calibrate FILE")
    training = training_for(as_path(model_file, "model file"), encoder_layer,
                            None if data is None else as_path(data, "data"), columns, scaling, clip_quantiles, stride,
                            None if calibrate is None else as_path(calibrate, "calibration data"),
                            0.99 if threshold_quantile is None else threshold_quantile,
                            scaling_values=scaling_values)
    return export(training, out, opset, atol, providers, force, None, variants, rtol, threshold, threshold_source,
                  measure_routing)


def optimize(folder: Path, providers: str = "all", tolerances: dict[str, Tolerance] | None = None,
             variants: tuple[str, ...] | None = None, atol: float | None = None,
             rtol: float | None = None, measure_routing: bool = True) -> Optimized:
    """Rebuild an export folder's clean graph and variants, re-check them, and republish it atomically.

    The routing is measured again (export's `measure_routing`): the graphs it chose may have changed.

    The fp32 graphs are held to the tolerance the export recorded; `atol`/`rtol` replace its
    bounds (and are recorded in their place).

    `variants` None rebuilds the defaults and every other variant the export already has; a list
    rebuilds exactly those.

    Every listed file is checked against the manifest first. An export made before the clean
    graph existed (its `<role>.onnx` is tf2onnx's) gets it now, the tf2onnx file kept as
    `<role>.plain.onnx`; verify then runs again on the new default files.
    """
    onnx = require("onnx", "train")

    folder = as_path(folder, "export folder")
    check_tolerances(tolerances)
    check_variant_names(variants)
    check_flag(measure_routing, "measure_routing")
    for bound in (atol, rtol):
        if bound is not None:
            check_tolerance(bound)  # a bad bound is refused before any staging
    read_manifest(folder)  # a missing or foreign folder is refused before any staging
    with staged_folder(folder, force=True) as stage:
        manifest = read_export_manifest(folder)
        verify_files(folder, manifest)
        training = load_training(folder)
        if variants is None:  # the defaults, and whatever else the export was given (int8-dynamic)
            had = {name for by_name in (manifest.get("variants") or {}).values() for name in by_name}
            variants = tuple(name for name in BY_NAME if name in set(DEFAULT_BUILT) | had and BY_NAME[name].built)
        rebuilt = {variant_file(role, name) for role in ROLES for name in VARIANTS} | set(BUILT_FILES)
        kept = {name: entry for name, entry in manifest["files"].items() if name not in rebuilt}
        for name in kept:
            shutil.copy2(folder / name, stage / name)
        has_plain = all(variant_file(role, "plain") in manifest["files"] for role in ROLES)
        plains = {role: onnx.load(str(folder / variant_file(role, "plain" if has_plain else DEFAULT_VARIANT)))
                  for role in ROLES}
        parity = manifest.get("parity") or {}
        fp32 = recorded_tolerance(parity, atol, rtol)
        provider_list = verification_providers(providers)
        inputs = stored_inputs(folder, manifest, training)
        built = _build(stage, training, plains, inputs, provider_list, fp32, tolerances, variants,
                       "the clean graph fails parity")
        sections = _manifest_sections(built, fp32, provider_list, manifest.get("detector"), stage, training)
        sections["files"].update(kept)
        sections["models"] = {role: {**(manifest.get("models") or {}).get(role, {}), **entry}
                              for role, entry in sections["models"].items()}
        sections["parity"] = {**parity, **sections["parity"]}
        body = {k: v for k, v in manifest.items() if k not in ("format", "format_version")}
        rebuilt_manifest = {**body, **sections}
        if measure_routing:
            route_measured(stage, rebuilt_manifest)
        write_manifest(stage, rebuilt_manifest)
    return built.variants


def run_pipeline(config, out: Path, data: Path | None = None, columns: tuple[str, ...] | None = None,
                 opset: int | None = None, atol: float | None = DEFAULT_ATOL, providers: str = "all", force: bool = False,
                 progress: Callable[[int, dict[str, float]], None] | None = None,
                 variants: tuple[str, ...] | None = None,
                 rtol: float | None = DEFAULT_RTOL, measure_routing: bool = True) -> tuple[Path, ParityReport, Training]:
    """train -> export -> verify -> publish, refusing early if the target exists.

    A model that learned nothing, or whose export fails, is not thrown away: the training run is
    saved beside `out` (kept_run_folder) and the error says where, so `edgeae export` can pick it up.
    """
    from edgeae.exporter.convert import check_opset

    check_config(config)
    check_data_args(data, columns, progress)
    out = as_path(out, "out")
    check_target(out, force)  # fail before minutes of training, not after: so do the export's settings
    fp32_tolerance(atol, rtol)
    if opset is not None:
        check_opset(opset)
    verification_providers(providers)
    check_variant_names(variants)
    check_flag(measure_routing, "measure_routing")
    training = train(config, data, columns, progress)
    path, report = export_or_keep(training, out, opset, atol, providers, force, variants, rtol, measure_routing)
    return path, report, training


def export_or_keep(training: Training, out: Path, opset: int | None = None, atol: float | None = DEFAULT_ATOL,
                   providers: str = "all", force: bool = False, variants: tuple[str, ...] | None = None,
                   rtol: float | None = DEFAULT_RTOL, measure_routing: bool = True) -> tuple[Path, ParityReport]:
    """export() for a model trained moments ago (pipeline, demo): one that learned nothing or fails
    to export is saved as a training run beside `out` (kept_run_folder), and the error says where."""
    try:
        check_learned(training)
        return export(training, out, opset, atol, providers, force, variants=variants, rtol=rtol,
                      measure_routing=measure_routing)
    except EdgeAEError as exc:
        kept = save_training(training, kept_run_folder(out))
        raise type(exc)(f"{exc}; the trained model is kept in {kept} (`edgeae export {kept}` publishes it)") from None


def kept_run_folder(out: Path) -> Path:
    """A new folder beside `out` for a training run a failed pipeline keeps: never one that exists."""
    candidate, number = out.with_name(f"{out.name}.training"), 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = out.with_name(f"{out.name}.training-{number}")
    return candidate


def folder_variants(folder: Path) -> dict[str, Any]:
    """The manifest's variants section of a published export (empty for one made without them)."""
    return read_manifest(Path(folder)).get("variants") or {}


def folder_lines(folder: Path, targets: bool = True) -> list[str]:
    """The variants (and, unless `targets` is False, the target report) of a published export."""
    manifest = read_manifest(Path(folder))
    lines = [variant_line(role, name, variants[name]) for role, variants in (manifest.get("variants") or {}).items()
             for name in VARIANTS if name in variants]
    if not lines:
        return []
    head = ["variants (parity against Keras on verify's inputs):", *lines, *skipped_lines(manifest.get("skipped") or {})]
    if manifest.get("scores"):
        head.append(f"note: {manifest['scores']}")
    if not manifest.get("targets"):
        return head
    if not targets:
        return [*head, f"target report (providers per node, mobile checks): {Path(folder) / manifest['targets']}"
                       " (edgeae optimize prints it)"]
    return [*head, *target_lines(read_json(Path(folder) / manifest["targets"], "target report"))]


@contextlib.contextmanager
def amended_export(folder: Path, write: bool = True) -> Iterator[dict]:
    """A published export to add files to: locked, every file checked, its manifest yielded; the caller
    writes each file atomically into the folder and lists it in manifest['files'], and the manifest is
    resealed last. With `write` False the export is only read (checked, unlocked, left as it is)."""
    with folder_lock(folder) if write else contextlib.nullcontext():
        manifest = read_export_manifest(folder)
        verify_files(folder, manifest)
        yield manifest
        if write:
            write_manifest(folder, manifest)


def rewrite_routing(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Measure on this machine which graph serves which batch sizes of each role's fp32 model, and
    in runs of how many windows (routing.py), and rewrite only that in the manifest, resealed.
    Returns the routes by role."""
    folder = as_path(folder, "export folder")
    with amended_export(folder) as manifest:
        return route_measured(folder, manifest)


def route_measured(folder: Path, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Write into `manifest` each role's measured fp32 routes, chunk and the measurement beside them
    (the folder's graphs are timed here); returns the routes by role."""
    from edgeae.measure.routing import measured_routes

    chosen = {}
    for role, by_name in (manifest.get("variants") or {}).items():
        if role in ROLES and (by_name.get(DEFAULT_VARIANT) or {}).get("published"):
            chosen[role], chunk, record = measured_routes(folder, manifest, role, DEFAULT_VARIANT)
            by_name[DEFAULT_VARIANT].update(by_batch=chosen[role], chunk=chunk, routing=record)
    return chosen


def measure_targets(folder: Path, runtimes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run every published file of an export on each runtime (targets.measure_runtimes) and record the
    table, with the CPU it was measured on, in the export's targets.json, over what it held before
    (targets.merged: a runtime measured elsewhere and not installed here keeps its figures).

    Measured, not predicted: each file and runtime costs a child process (about half a second).
    """
    from edgeae.contract.golden import read_golden
    from edgeae.verifier.runtimes import RUNTIMES
    from edgeae.verifier.target_report import machine, measure_runtimes, merged

    folder = as_path(folder, "export folder")
    runtimes = RUNTIMES if runtimes is None else tuple(runtimes)
    with amended_export(folder) as manifest:
        if TARGETS_FILE not in manifest["files"]:
            raise UsageError(f"{folder} has no {TARGETS_FILE}; rebuild it first: edgeae optimize {folder}")
        targets = read_json(folder / TARGETS_FILE, "target report")
        before = targets.get("runtimes") if isinstance(targets.get("runtimes"), dict) else {}
        measured = measure_runtimes(folder, manifest, read_golden(folder, manifest), runtimes)
        targets["runtimes"] = {"measured_on": machine(), "files": merged(before.get("files") or {}, measured)}
        atomic_write_json(folder / TARGETS_FILE, targets)
        manifest["files"][TARGETS_FILE] = file_entry(folder / TARGETS_FILE, REPORT_ROLE)
    return targets["runtimes"]
