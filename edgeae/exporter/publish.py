"""The only writers of export folders: export, optimize and the pipeline, through one build and one
manifest; and the measurements added to a published export later (routing, targets), each through
contract.manifest.amend_export.

Every folder is written through `contract.files.staged_folder`, so a failure at any step (parity
included) publishes nothing. export makes the ONNX graphs from a Training; optimize rebuilds
them from a published folder; both hand them to `build.build_export`, which makes the clean
graphs and the variants, proves them against Keras and writes the reports and golden vectors;
sections.py turns what it wrote into the manifest. What each entry point is asked to do comes in
one ExportOptions (options.py).
"""
from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.versions import __version__
from edgeae.contract import versions
from edgeae.contract.checks import check_flag, check_quantile
from edgeae.contract.errors import EdgeAEError, LearningError, UsageError, require
from edgeae.contract.files import as_path, atomic_write_json, check_target, read_json, staged_folder, target_lock
from edgeae.contract.golden import read_golden
from edgeae.contract.layout import (
    DATA_ROLE, KERAS_FILE, KERAS_ROLE, PARITY_INPUTS_FILE, REPORT_ROLE, ROLES, SIGNATURE_FILE, TARGETS_FILE,
)
from edgeae.contract.manifest import (
    amend_export, file_entry, read_export_manifest, read_manifest, set_routes, verify_files, write_manifest,
)
from edgeae.contract.records import Manifest, thawed
from edgeae.contract.signing import after_reseal, check_sign_key
from edgeae.contract.parity import ParityReport, check_tolerance, fp32_tolerance, recorded_tolerance
from edgeae.contract.variants import (
    BUILT_FILES, BY_NAME, DEFAULT_BUILT, DEFAULT_VARIANT, VARIANTS, check_tolerances, check_variant_names, variant_file,
)
from edgeae.exporter.build import build_export
from edgeae.conversion.convert import DEFAULT_OPSET, check_opset, export_model
from edgeae.exporter.detector import calibrated_detector
from edgeae.exporter.options import OPTIMIZE_DEFAULTS, ExportOptions, UserModelOptions, check_options
from edgeae.exporter.sections import manifest_sections
from edgeae.exporter.user_model import NO_THRESHOLD, is_foreign, parity_bounds, training_for
from edgeae.exporter.variants import Optimized
from edgeae.measure.routing import measured_routes
from edgeae.trainer.model import TrainConfig, save
from edgeae.trainer.training import Training, check_config, check_data_args, check_learned, load_training, save_training, train
from edgeae.verifier.runtimes import RUNTIMES
from edgeae.verifier.target_report import machine, measure_runtimes, merged
from edgeae.verifier.verification import parity_inputs, stored_inputs, verification_providers


def check_export_target(out: Path, training_folder: Path | None, force: bool = False) -> None:
    """Refuse, before anything loads, an export that would replace the training folder it reads (or
    a folder holding it), then a target check_target refuses."""
    if training_folder is not None:
        run, target = Path(training_folder).resolve(), Path(out).resolve()
        if target == run or target in run.parents:
            raise UsageError(f"refusing to export to {out}: it is the training folder {training_folder} or holds it; "
                             "choose another --out")
    check_target(out, force)


def export(training: Training, out: Path, options: ExportOptions = ExportOptions()) -> tuple[Path, ParityReport]:
    """Export both models, verify them against Keras, and publish the folder only if parity holds.

    Which fp32 graph runs which batch sizes, and in runs of how many windows, is measured here
    (measure/routing.py; seconds); `options.measure_routing` False keeps the built-in rule, the same on every machine.

    `options.threshold` replaces the calibrated anomaly threshold for every precision (say, one
    `evaluate` suggested from labels), recorded with `threshold_source` beside the calibrated one.

    The fp32 graphs must match Keras within `atol` (in the model's units) or `rtol` of the output's
    range, whichever is larger (parity.fp32_tolerance); the manifest records both.

    `options.variants` names the edge variants to build (the table's defaults when None). The anomaly
    threshold is calibrated here, at `threshold_quantile` (default: the training
    configuration's) of the validation windows' scores, and stored in the manifest.
    """
    # onnx's native module is loaded before the staging folder exists: a Ctrl-C landing inside its
    # initialisation crashes the process (SIGSEGV) instead of cleaning up.
    require("onnx", "train")
    if not isinstance(training, Training):
        raise UsageError(f"training must be an edgeae.trainer.training.Training (from train or load_training), "
                         f"got {type(training).__name__}")
    check_options(options)
    check_flag(options.measure_routing, "measure_routing")
    out = as_path(out, "out")
    check_export_target(out, training.folder, options.force)
    check_sign_key(options.sign_key)
    with target_lock(out):  # before any work: a second export to `out` is refused at once
        opset = DEFAULT_OPSET if options.opset is None else options.opset
        fp32 = fp32_tolerance(options.atol, options.rtol)
        check_variant_names(options.variants)
        check_tolerances(options.tolerances)
        config, pre = training.config, training.preprocessing
        check_flag(options.accept_unlearned, "accept_unlearned")
        learned = None if is_foreign(training) else check_learned(training, accept=options.accept_unlearned)
        summary = training.summary()
        provider_list = verification_providers(options.providers)
        detector = calibrated_detector(training, options)
        foreign = is_foreign(training)
        with staged_folder(Path(out), options.force) as stage:
            plains = {role: export_model(keras_model, role, pre, config.timesteps, config.features, opset,
                                         training={k: summary[k] for k in ("parameters", "final_loss", "epochs_run")},
                                         own=not foreign)
                      for role, keras_model in (("autoencoder", training.autoencoder), ("encoder", training.encoder))}
            inputs = parity_inputs(training.train_windows, parity_bounds(training), config.seed)
            built = build_export(stage, training, plains, inputs, provider_list, fp32, options, "parity failed")
            save(training.autoencoder, stage / KERAS_FILE)
            np.savez(stage / PARITY_INPUTS_FILE, training=training.train_windows.astype(np.float32),
                     validation=training.validation_windows.astype(np.float32))
            sections = manifest_sections(built, fp32, provider_list, detector, stage, training)
            sections["files"].update({KERAS_FILE: file_entry(stage / KERAS_FILE, KERAS_ROLE),
                                      PARITY_INPUTS_FILE: file_entry(stage / PARITY_INPUTS_FILE, DATA_ROLE)})
            manifest = {
                "kind": "export",
                "edgeae_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                "opset": opset,
                "window": {"timesteps": config.timesteps, "features": config.features, "stride": config.stride or 1},
                "preprocessing": pre.to_dict(),
                "training": {**summary, "history": training.history,
                             **({} if learned is None else {"learned": learned})},
                "versions": versions.environment(),
                **({"scores": NO_THRESHOLD} if detector is None else {}),
                **sections,
            }
            if options.measure_routing:
                route_measured(stage, Manifest.of(manifest), partial(set_routes, manifest))
            write_manifest(stage, manifest)
            after_reseal(stage, options.sign_key)  # signed in staging: published signed, or not at all
        return Path(out), built.report


def export_keras(model_file: Path, out: Path, own: UserModelOptions = UserModelOptions(),
                 options: ExportOptions = ExportOptions()) -> tuple[Path, ParityReport]:
    """Export a Keras sequence autoencoder edgeae did not train (a .keras or .h5 file) as a full export.

    The model is checked layer by layer (user_model.inspect) and its encoder found (or taken from
    `own.encoder_layer`); `own` says how to read its data, scaling and calibration windows
    (UserModelOptions), and `options.threshold_quantile` the quantile of the calibration windows'
    scores the threshold sits at. Without `own.calibrate` there is no threshold and the manifest
    says scores are in the model's units. Everything else is export()'s.
    """
    check_options(options)
    check_options(own, "own", UserModelOptions)
    out = as_path(out, "out")
    check_export_target(out, None, options.force)  # before TensorFlow loads
    fp32_tolerance(options.atol, options.rtol)
    check_variant_names(options.variants)
    check_flag(options.measure_routing, "measure_routing")
    quantile = options.threshold_quantile
    if quantile is not None:
        check_quantile(quantile)
    if own.calibrate is None and (options.threshold is not None or quantile is not None):
        raise UsageError("a threshold for a model edgeae did not train needs calibration data: give --calibrate FILE")
    path = as_path(model_file, "model file")
    own = replace(own, data=None if own.data is None else as_path(own.data, "data"),
                  calibrate=None if own.calibrate is None else as_path(own.calibrate, "calibration data"))
    with target_lock(out):  # before TensorFlow loads: a second export to `out` is refused at once
        training = training_for(path, own, 0.99 if quantile is None else quantile)
        # the threshold is calibrated at the training's quantile, set to this one above: passed on as well, it
        # would read as a second threshold beside `options.threshold`
        return export(training, out, replace(options, threshold_quantile=None))


def optimize(folder: Path, options: ExportOptions = OPTIMIZE_DEFAULTS) -> Optimized:
    """Rebuild an export folder's clean graph and variants, re-check them, and republish it atomically.

    The routing is measured again (export's `measure_routing`): the graphs it chose may have changed.

    The fp32 graphs are held to the tolerance the export recorded; `options.atol`/`rtol` replace
    its bounds (and are recorded in their place): None, as in OPTIMIZE_DEFAULTS, keeps each.

    `options.variants` None rebuilds the defaults and every other variant the export already has; a
    list rebuilds exactly those, each at its `options.tolerances` bound where given.

    Every listed file is checked against the manifest first. An export made before the clean
    graph existed (its `<role>.onnx` is tf2onnx's) gets it now, the tf2onnx file kept as
    `<role>.plain.onnx`; verify then runs again on the new default files.
    """
    onnx = require("onnx", "train")
    check_options(options)
    folder = as_path(folder, "export folder")
    check_sign_key(options.sign_key)
    check_tolerances(options.tolerances)
    check_variant_names(options.variants)
    check_flag(options.measure_routing, "measure_routing")
    for bound in (options.atol, options.rtol):
        if bound is not None:
            check_tolerance(bound)  # a bad bound is refused before any staging
    read_manifest(folder)  # a missing or foreign folder is refused before any staging
    with staged_folder(folder, force=True) as stage:
        manifest = read_export_manifest(folder)
        verify_files(folder, manifest)
        training = load_training(folder)
        variants = options.variants
        if variants is None:  # the defaults, and whatever else the export was given (int8-dynamic)
            had = {entry.name for _, entry in manifest.all_variants()}
            variants = tuple(name for name in BY_NAME if name in set(DEFAULT_BUILT) | had and BY_NAME[name].built)
        rebuilt = {variant_file(role, name) for role in ROLES for name in VARIANTS} | set(BUILT_FILES)
        kept = {name: entry.to_json() for name, entry in manifest.files.items() if name not in rebuilt}
        for name in kept:
            shutil.copy2(folder / name, stage / name)
        has_plain = all(variant_file(role, "plain") in manifest.files for role in ROLES)
        plains = {role: onnx.load(str(folder / variant_file(role, "plain" if has_plain else DEFAULT_VARIANT)))
                  for role in ROLES}
        parity = thawed(manifest.parity.details)
        fp32 = recorded_tolerance(parity, options.atol, options.rtol)
        provider_list = verification_providers(options.providers)
        inputs = stored_inputs(folder, manifest, training)
        built = build_export(stage, training, plains, inputs, provider_list, fp32, replace(options, variants=variants),
                             "the clean graph fails parity")
        sections = manifest_sections(built, fp32, provider_list,
                                     thawed(manifest.detector.details) if manifest.detector else None, stage, training)
        sections["files"].update(kept)
        sections["models"] = {role: {**(thawed(manifest.models[role].details) if role in manifest.models else {}),
                                     **entry} for role, entry in sections["models"].items()}
        sections["parity"] = {**parity, **sections["parity"]}
        body = {k: v for k, v in manifest.to_body().items() if k not in ("format", "format_version")}
        rebuilt = {**body, **sections}
        if options.measure_routing:
            route_measured(stage, Manifest.of(rebuilt), partial(set_routes, rebuilt))
        write_manifest(stage, rebuilt)
        after_reseal(stage, options.sign_key, signed_before=(folder / SIGNATURE_FILE).exists(), shown=folder)
    return built.variants


def run_pipeline(config: TrainConfig, out: Path, data: Path | None = None, columns: tuple[str, ...] | None = None,
                 progress: Callable[[int, dict[str, float]], None] | None = None,
                 options: ExportOptions = ExportOptions()) -> tuple[Path, ParityReport, Training]:
    """train -> export -> verify -> publish, refusing early if the target exists.

    A model that learned nothing, or whose export fails, is not thrown away: the training run is
    saved beside `out` (kept_run_folder) and the error says where, so `edgeae export` can pick it up.
    """
    check_config(config)
    check_data_args(data, columns, progress)
    check_options(options)
    out = as_path(out, "out")
    check_target(out, options.force)  # fail before minutes of training, not after: so do the export's settings
    check_sign_key(options.sign_key)
    fp32_tolerance(options.atol, options.rtol)
    if options.opset is not None:
        check_opset(options.opset)
    verification_providers(options.providers)
    check_variant_names(options.variants)
    check_flag(options.measure_routing, "measure_routing")
    with target_lock(out):  # held from the first epoch to the swap: a second run on `out` is refused at once
        training = train(config, data, columns, progress)
        path, report = export_or_keep(training, out, options)
    return path, report, training


def export_or_keep(training: Training, out: Path,
                   options: ExportOptions = ExportOptions()) -> tuple[Path, ParityReport]:
    """export() for a model trained moments ago (pipeline, demo): one that learned nothing or fails
    to export is saved as a training run beside `out` (kept_run_folder), and the error says where."""
    try:
        return export(training, out, options)
    except (EdgeAEError, OSError) as exc:  # OSError: a full disk, a folder gone; the staging is freed by now
        failure = exc if isinstance(exc, EdgeAEError) else UsageError(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        try:
            kept = save_training(training, kept_run_folder(out))
        except (EdgeAEError, OSError) as again:
            raise type(failure)(f"{failure}; the trained model could not be kept either ({again})") from None
        anyway = " --accept-unlearned" if isinstance(exc, LearningError) else ""
        raise type(failure)(f"{failure}; the trained model is kept in {kept} (`edgeae export {kept}{anyway}` "
                            "publishes it)") from None


def kept_run_folder(out: Path) -> Path:
    """A new folder beside `out` for a training run a failed pipeline keeps: never one that exists."""
    candidate, number = out.with_name(f"{out.name}.training"), 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = out.with_name(f"{out.name}.training-{number}")
    return candidate


def rewrite_routing(folder: Path, sign_key: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Measure on this machine which graph serves which batch sizes of each role's fp32 model, and
    in runs of how many windows (measure/routing.py), and rewrite only that in the manifest, resealed.
    Returns the routes by role. A signed export is signed again with `sign_key`, or loses its signature."""
    folder = as_path(folder, "export folder")
    with amend_export(folder, sign_key=sign_key) as amendment:
        return route_measured(amendment.folder, amendment.manifest, amendment.set_routes)


def route_measured(folder: Path, manifest: Manifest,
                   write: Callable[[str, str, list[dict[str, Any]], int, dict[str, Any]], None]
                   ) -> dict[str, list[dict[str, Any]]]:
    """Time the folder's graphs and `write` each role's measured fp32 routes, chunk and the measurement
    beside them (contract.manifest.set_routes); returns the routes by role."""
    chosen = {}
    for role in ROLES:
        entry = manifest.variant(role, DEFAULT_VARIANT)
        if entry is not None and entry.published:
            chosen[role], chunk, record = measured_routes(folder, manifest, role, DEFAULT_VARIANT)
            write(role, DEFAULT_VARIANT, chosen[role], chunk, record)
    return chosen


def measure_targets(folder: Path, runtimes: tuple[str, ...] | None = None,
                    sign_key: Path | None = None) -> dict[str, Any]:
    """Run every published file of an export on each runtime (targets.measure_runtimes) and record the
    table, with the CPU it was measured on, in the export's targets.json, over what it held before
    (targets.merged: a runtime measured elsewhere and not installed here keeps its figures).

    Measured, not predicted: each file and runtime costs a child process (about half a second). A signed
    export is signed again with `sign_key` (a PEM private key file), or else loses its signature, with a notice.
    """
    folder = as_path(folder, "export folder")
    runtimes = RUNTIMES if runtimes is None else tuple(runtimes)
    with amend_export(folder, sign_key=sign_key) as amendment:
        manifest = amendment.manifest
        if TARGETS_FILE not in manifest.files:
            raise UsageError(f"{folder} has no {TARGETS_FILE}; rebuild it first: edgeae optimize {folder}")
        stage = amendment.folder
        targets = read_json(stage / TARGETS_FILE, "target report")
        before = targets.get("runtimes") if isinstance(targets.get("runtimes"), dict) else {}
        measured = measure_runtimes(stage, manifest, read_golden(stage, manifest), runtimes)
        targets["runtimes"] = {"measured_on": machine(), "files": merged(before.get("files") or {}, measured)}
        atomic_write_json(stage / TARGETS_FILE, targets)
        amendment.add_file(stage / TARGETS_FILE, REPORT_ROLE)
    return targets["runtimes"]
