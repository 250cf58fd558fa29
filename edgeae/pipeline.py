"""The stages joined up: train -> export (with parity) -> publish, and re-verification.

Each public function here is what one CLI command calls. Folders are written through
`artifacts.staged_folder`, so a failure at any step (parity included) publishes nothing.
"""
from __future__ import annotations

import datetime as _dt
import functools
import platform
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .artifacts import (
    as_path, atomic_write_json, check_target, check_training_record, file_entry, read_json, read_manifest,
    staged_folder, verify_file, verify_files, write_manifest,
)
from .data import FLOAT32_MAX, Preprocessing, Series, Windows, load_series, seed_sequence, window_series
from .errors import DataError, IntegrityError, ParityError, UsageError
from .golden import REFERENCE_FILE
from .parity import DEFAULT_ATOL, ParityReport, Tolerance, check_tolerance, compare

KERAS_FILE = "model.keras"
TRAINING_FILE = "training.json"
PARITY_INPUTS_FILE = "parity_inputs.npz"
PARITY_REPORT_FILE = "parity.json"
ONNX_FILES = {"autoencoder": "autoencoder.onnx", "encoder": "encoder.onnx"}
PARITY_SAMPLE = 1024
RANDOM_BATCH = 300


@dataclass
class Training:
    """A trained model with everything needed to export and re-verify it."""

    config: Any  # model.TrainConfig
    preprocessing: Preprocessing
    autoencoder: Any
    encoder: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    train_windows: np.ndarray  # raw units
    validation_windows: np.ndarray  # raw units, possibly empty
    data: dict[str, Any]

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        """Keras reconstructions of raw windows, in raw units: the training side's reference."""
        from .model import predict

        pre = self.preprocessing
        return pre.invert(predict(self.autoencoder, pre.apply(windows)))

    @functools.cached_property
    def _summary(self) -> dict[str, Any]:
        recon = self.reconstruct(self.train_windows)
        return {
            "config": self.config.to_dict(),
            "parameters": int(self.autoencoder.count_params()),
            "final_loss": float(self.history["loss"][-1]),
            "final_val_loss": float(self.history["val_loss"][-1]) if "val_loss" in self.history else None,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "train_reconstruction_max_abs": float(np.abs(recon - self.train_windows).max()),
            "data": self.data,
        }

    def summary(self) -> dict[str, Any]:
        """What the manifest and the terminal say about the training (computed once)."""
        return dict(self._summary)


# ---------------------------------------------------------------- data


def prepare_windows(config, series: Series | None) -> Windows:
    """Raw training and validation windows, from a user's series or the seed data."""
    if series is None:
        if config.stride is not None or config.validation_fraction:
            given = "a stride" if config.stride is not None else "a validation fraction"
            raise UsageError(f"the seed data is one ready-made window: {given} applies to a series given as data")
        windows = seed_sequence(config.timesteps, config.features).astype(np.float64)
        return Windows(windows, windows[:0], windows,
                       {"source": "seed", "description": "np.arange(n)/n, one window", "windows": 1})
    return window_series(series, config.timesteps, config.features, config.stride, config.validation_fraction)


def _check_config(config: Any) -> None:
    from .model import TrainConfig

    if not isinstance(config, TrainConfig):
        raise UsageError(f"config must be an edgeae.model.TrainConfig, got {type(config).__name__}")


def _check_data_args(data: Any, columns: Any, progress: Any) -> Path | None:
    """train's data, columns and progress, checked: a string of column names would otherwise be
    read letter by letter as names."""
    if columns is not None and (isinstance(columns, str) or not isinstance(columns, (tuple, list))
                                or not all(isinstance(c, str) and c for c in columns)):
        raise UsageError(f"columns must be a tuple of column names or indices as text, e.g. ('a', 'b') or "
                         f"('0', '2'), got {columns!r}")
    if progress is not None and not callable(progress):
        raise UsageError(f"progress must be a function or None, got {progress!r}")
    return None if data is None else as_path(data, "data")


def train(config, data: Path | None = None, columns: tuple[str, ...] | None = None,
          progress: Callable[[int | None, dict[str, float]], None] | None = None) -> Training:
    """Learn the preprocessing from the training part (rows, not overlapping windows), then fit."""
    from . import model

    _check_config(config)
    data = _check_data_args(data, columns, progress)
    series = load_series(data, tuple(columns) if columns else None) if data is not None else None
    windows = prepare_windows(config, series)
    train_w, val_w, info = windows.train, windows.validation, windows.info
    pre = Preprocessing.fit(windows.fit_values, config.clip_quantiles, config.scaling,
                            tuple(series.columns) if series is not None else None)
    result = model.train(config, pre.apply(train_w), pre.apply(val_w) if len(val_w) else None, progress)
    training = Training(config, pre, result.autoencoder, result.encoder, result.history, result.epochs_run,
                        result.best_epoch, train_w, val_w, info)
    # Unscaling multiplies by the range: near float32's limit a reconstruction can overflow to inf.
    if not np.isfinite(training.summary()["train_reconstruction_max_abs"]):
        raise DataError("the model's reconstructions of the training data overflow float32 once unscaled "
                        "(the values lie too close to the float32 limit); rescale the data")
    return training


def save_training(training: Training, out: Path, force: bool = False) -> Path:
    """Write a training folder: the Keras model, what it was trained on, and a manifest."""
    from .model import save

    with staged_folder(as_path(out, "out"), force) as stage:
        save(training.autoencoder, stage / KERAS_FILE)
        np.savez(stage / PARITY_INPUTS_FILE, training=training.train_windows.astype(np.float32),
                 validation=training.validation_windows.astype(np.float32))
        atomic_write_json(stage / TRAINING_FILE, {
            **training.summary(), "history": training.history, "preprocessing": training.preprocessing.to_dict()})
        write_manifest(stage, {
            "kind": "training",
            "edgeae_version": __version__,
            "files": {KERAS_FILE: file_entry(stage / KERAS_FILE, "keras"),
                      PARITY_INPUTS_FILE: file_entry(stage / PARITY_INPUTS_FILE, "data"),
                      TRAINING_FILE: file_entry(stage / TRAINING_FILE, "training")},
        })
    return Path(out)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every float array of a checked .npz file; one that is unreadable or holds anything else is refused.

    Its checksum only says the file is the one the manifest lists, and anyone who can write
    the folder can reseal a manifest: what the file holds is checked here too.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"{path.name}: unreadable ({exc})") from None
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise IntegrityError(f"{path.name}: {key} holds {array.dtype}, not floats")
    return arrays


def saved_windows(folder: Path, timesteps: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The raw training and validation windows a folder keeps (the file checked against the
    manifest by the caller), each (n, timesteps, features) and finite, at least one to train on."""
    saved = _read_npz(Path(folder) / PARITY_INPUTS_FILE)
    missing = [key for key in ("training", "validation") if key not in saved]
    if missing:
        raise IntegrityError(f"{PARITY_INPUTS_FILE}: no {' or '.join(missing)} windows")
    for key in ("training", "validation"):
        array = saved[key]
        if array.ndim != 3 or array.shape[1:] != (timesteps, features):
            raise IntegrityError(f"{PARITY_INPUTS_FILE}: {key} windows are {array.shape}, "
                                 f"expected (n, {timesteps}, {features}) as the manifest says")
        if not np.isfinite(array).all():
            raise IntegrityError(f"{PARITY_INPUTS_FILE}: {key} windows hold NaN or inf")
    if not len(saved["training"]):
        raise IntegrityError(f"{PARITY_INPUTS_FILE}: no training windows")
    return saved["training"].astype(np.float64), saved["validation"].astype(np.float64)


def load_training(folder: Path) -> Training:
    """Read a training (or export) folder back, checking every file first."""
    from . import model

    folder = as_path(folder, "training folder")
    manifest = read_manifest(folder)
    verify_file(folder, KERAS_FILE, manifest["files"].get(KERAS_FILE))
    verify_file(folder, PARITY_INPUTS_FILE, manifest["files"].get(PARITY_INPUTS_FILE))
    record = manifest.get("training") or read_json(verify_file(folder, TRAINING_FILE, manifest["files"].get(TRAINING_FILE)), "training record")
    source = "manifest.json" if manifest.get("training") else TRAINING_FILE
    check_training_record(record, source)
    pre = Preprocessing.from_dict(manifest.get("preprocessing") or record["preprocessing"], source)
    try:  # settings this version cannot export (an older edgeae's) are the caller's to change
        config = model.TrainConfig.from_dict(record["config"])
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if len(pre.scale) != config.features:
        raise IntegrityError(f"{source}: preprocessing has {len(pre.scale)} features, config {config.features}")
    autoencoder, encoder = model.load(folder / KERAS_FILE)
    model.check_matches(autoencoder, encoder, config, KERAS_FILE)
    train_w, val_w = saved_windows(folder, config.timesteps, config.features)
    history = record.get("history") or {"loss": [record.get("final_loss", float("nan"))]}
    return Training(config, pre, autoencoder, encoder, history, int(record.get("epochs_run", 0)),
                    int(record.get("best_epoch", 0)), train_w, val_w, dict(record.get("data", {})))


# ---------------------------------------------------------------- parity


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
    from .runtime import CPU, CUDA, available_providers, resolve_providers

    if which == "all":
        return [CPU] + ([CUDA] if CUDA in available_providers() else [])
    return [resolve_providers(which)[0]]


def keras_references(training: Training, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Keras outputs on verify's inputs, raw units: computed once, used for every file and stored."""
    from .model import predict

    pre = training.preprocessing
    return {
        "autoencoder": {k: training.reconstruct(x) for k, x in inputs.items()},
        "encoder": {k: predict(training.encoder, pre.apply(x)) for k, x in inputs.items()},
    }


def write_golden_vectors(stage: Path, inputs: dict[str, np.ndarray], references: dict[str, dict[str, np.ndarray]],
                         variants: dict[str, dict[str, Any]], pre: Preprocessing) -> dict[str, dict]:
    """Store the golden vectors (golden.py) of the export in `stage`: the inputs, Keras's outputs
    and scores, and each published reduced-precision variant's own outputs and scores here."""
    from .golden import KERAS, SCORE, write_golden
    from .runtime import OnnxModel, reconstruction_error

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


def stored_inputs(folder: Path, manifest: dict, training: Training | None = None) -> dict[str, np.ndarray]:
    """The inputs an export was verified on, read from its golden vectors; an export made before
    they were stored (edgeae 0.1) has its inputs regenerated from its training windows and seed."""
    from .golden import INDEX_FILE, read_golden

    if INDEX_FILE in manifest["files"] or training is None:
        return read_golden(folder, manifest).inputs
    return parity_inputs(training.train_windows, training.preprocessing, training.config.seed)


def verify_models(pre: Preprocessing, references: dict[str, dict[str, np.ndarray]], onnx_paths: dict[str, Path],
                  inputs: dict[str, np.ndarray], providers: list[str], atol: float = DEFAULT_ATOL,
                  internal_check: bool = True, batch_graphs: list[tuple[str, str, Path]] | None = None,
                  variants: list[tuple[str, str, Path, Tolerance]] | None = None) -> ParityReport:
    """Compare both ONNX files with the Keras outputs on every input set and provider.

    `batch_graphs` adds (role, label, file) for each graph the runtime hands some batch
    sizes to; a one-window graph runs window by window. `internal_check` also proves the
    encoder equals the autoencoder's own encoding; it edits the graph with onnx, which a
    runtime-only machine may not have. `variants` adds (role, variant, file, tolerance) for
    each other file the runtime may load, each held to its own tolerance.
    """
    from .optimize import variant_parity
    from .runtime import OnnxModel, placement_summary

    results, placement, encoder_check = [], {}, None
    internal = None
    if internal_check:
        import onnx

        from .export import ExportError, internal_encoding

        try:
            internal = internal_encoding(onnx.load(str(onnx_paths["autoencoder"]))).SerializeToString()
        except ExportError as exc:  # e.g. an int8 or foreign file in the default file's place
            raise IntegrityError(f"{onnx_paths['autoencoder'].name}: {exc}: not this export's model") from None
    for provider in providers:
        short = "cuda" if provider.startswith("CUDA") else "cpu"
        models = [(role, role, path) for role, path in onnx_paths.items()]
        models += list(batch_graphs or [])
        for role, label, path in models:
            session = OnnxModel(path, [provider], name=path.name)
            placement[f"{label}/{short}"] = placement_summary(session.node_placement())
            scale = pre.arrays()["scale"] if role == "autoencoder" else None
            for dataset, x in inputs.items():
                results.append(compare(references[role][dataset], session.run_windows(x), model=label, provider=short,
                                       dataset=dataset, tolerance_abs=atol, scale=scale, source=path.name))
        if internal is None:
            continue
        both = OnnxModel(internal, [provider], name="autoencoder (internal encoding)")
        encoder = OnnxModel(onnx_paths["encoder"], [provider], name="encoder")
        x = np.concatenate([inputs["training"], inputs["in_range"], inputs["outside_range"]])
        # The encoder's shape has just matched Keras's, so an encoding of another width is the autoencoder's fault.
        check = compare(encoder.run_windows(x), both.run_windows(x, output=1), model="encoder-vs-autoencoder",
                        provider=short, dataset="internal encoding", tolerance_abs=atol,
                        source=f"{onnx_paths['autoencoder'].name}'s encoding")
        if encoder_check is None or check.max_abs > encoder_check.max_abs:
            encoder_check = check
    checked = tuple(r for role, name, path, tolerance in variants or () for r in variant_parity(
        path, role, name, references[role], inputs, providers, tolerance, pre.arrays()["scale"]).results)
    return ParityReport(tuple(results), encoder_check, placement, checked)


# ---------------------------------------------------------------- export


def _versions() -> dict[str, str]:
    out = {"edgeae": __version__, "python": platform.python_version()}
    for dist in ("numpy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def export(training: Training, out: Path, opset: int | None = None, atol: float = DEFAULT_ATOL,
           providers: str = "all", force: bool = False, threshold_quantile: float | None = None,
           variants: tuple[str, ...] | None = None) -> tuple[Path, ParityReport]:
    """Export both models, verify them against Keras, and publish the folder only if parity holds.

    `variants` names the edge variants to build (optimize.DEFAULT_BUILT when None). The anomaly threshold is calibrated here, at `threshold_quantile` (default: the training
    configuration's) of the validation windows' scores, and stored in the manifest.
    """
    import onnx

    from .detector import calibrate, variant_thresholds
    from .export import DEFAULT_OPSET, export_model
    from .model import save
    from .optimize import PLAIN_FILES, TARGETS_FILE, build_variants, check_variant_names, clean_graph, model_entry

    if not isinstance(training, Training):
        raise UsageError(f"training must be an edgeae.pipeline.Training (from train or load_training), "
                         f"got {type(training).__name__}")
    out = as_path(out, "out")
    opset = DEFAULT_OPSET if opset is None else opset
    atol = check_tolerance(atol)
    variants = check_variant_names(variants)
    config, pre = training.config, training.preprocessing
    summary = training.summary()
    provider_list = verification_providers(providers)
    detector = calibrate(training, config.threshold_quantile if threshold_quantile is None else threshold_quantile)
    with staged_folder(Path(out), force) as stage:
        models: dict[str, Any] = {}
        paths: dict[str, Path] = {}
        for role, keras_model in (("autoencoder", training.autoencoder), ("encoder", training.encoder)):
            proto = export_model(keras_model, role, pre, config.timesteps, config.features, opset,
                                 training={k: summary[k] for k in ("parameters", "final_loss", "epochs_run")})
            onnx.save(proto, str(stage / PLAIN_FILES[role]))  # tf2onnx's graph, kept for comparison
            proto = clean_graph(proto, role)
            paths[role] = stage / ONNX_FILES[role]
            onnx.save(proto, str(paths[role]))
            models[role] = model_entry(proto, ONNX_FILES[role])
        inputs = parity_inputs(training.train_windows, pre, config.seed)
        references = keras_references(training, inputs)
        report = verify_models(pre, references, paths, inputs, provider_list, atol)
        if not report:
            raise ParityError("parity failed, nothing published: " + "; ".join(report.failures()))
        save(training.autoencoder, stage / KERAS_FILE)
        np.savez(stage / PARITY_INPUTS_FILE, training=training.train_windows.astype(np.float32),
                 validation=training.validation_windows.astype(np.float32))
        atomic_write_json(stage / PARITY_REPORT_FILE, report.to_dict())
        files = {name: file_entry(stage / name, role) for name, role in (
            (ONNX_FILES["autoencoder"], "onnx"), (ONNX_FILES["encoder"], "onnx"), (KERAS_FILE, "keras"),
            (PARITY_INPUTS_FILE, "data"), (PARITY_REPORT_FILE, "report"))}
        built = build_variants(stage, training, inputs, provider_list, atol, references=references, variants=variants)
        files.update(built.files)
        files.update(write_golden_vectors(stage, inputs, references, built.manifest_section(), pre))
        detector["variants"] = variant_thresholds(stage, built.manifest_section()["autoencoder"], training,
                                                  detector["quantile"])
        write_manifest(stage, {
            "kind": "export",
            "edgeae_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "files": files,
            "models": models,
            "opset": opset,
            "window": {"timesteps": config.timesteps, "features": config.features, "stride": config.stride or 1},
            "preprocessing": pre.to_dict(),
            "training": {**summary, "history": training.history},
            "detector": detector,
            "parity": {"passed": report.passed, "tolerance_abs": atol, "providers": provider_list,
                       "summary": report.summary(),
                       "encoder_matches_autoencoder_max_abs": report.encoder_matches_autoencoder.max_abs,
                       "report": PARITY_REPORT_FILE},
            "variants": built.manifest_section(),
            "targets": TARGETS_FILE,
            "versions": _versions(),
        })
    return Path(out), report


def _installed(module: str) -> bool:
    """Whether a module can be imported, without importing it (a broken install counts as absent)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def verify(folder: Path, providers: str = "all", atol: float = DEFAULT_ATOL, against: str = "auto") -> ParityReport:
    """Re-run parity on a published export folder.

    against="keras" runs the Keras model stored in the folder (needs edgeae[train]);
    against="stored" compares with the Keras outputs saved at export, so a device or a GPU
    machine with only the runtime installed can prove parity on its own providers;
    "auto" takes Keras where TensorFlow is installed, the stored outputs otherwise.
    """
    from .runtime import batch_label, batch_routes

    atol = check_tolerance(atol)
    if against not in ("auto", "keras", "stored"):
        raise UsageError(f"verify against 'auto', 'keras' or 'stored', got {against!r}")
    if against == "auto":
        against = "keras" if _installed("tensorflow") else "stored"
    folder = as_path(folder, "export folder")
    manifest = read_manifest(folder)
    if manifest.get("kind") != "export":
        raise UsageError(f"{folder} is not an export folder (run edgeae export on it first)")
    verify_files(folder, manifest)
    for role, file in ONNX_FILES.items():  # the file the runtime loads must be the one checked at fp32's tolerance
        if manifest["models"].get(role, {}).get("file") != file:
            raise IntegrityError(f"manifest field models.{role}.file must be {file!r}, "
                                 f"got {manifest['models'].get(role, {}).get('file')!r}")
    paths = {role: folder / ONNX_FILES[role] for role in ONNX_FILES}
    extra = [(role, f"{role} ({batch_label(first, last)})", folder / file)
             for role in ONNX_FILES for first, last, file in batch_routes(manifest, role, "fp32")]
    variants = published_variants(folder, manifest, {path.name for path in paths.values()} | {p.name for *_, p in extra})
    provider_list = verification_providers(providers)
    if against == "keras":
        training = load_training(folder)
        inputs = stored_inputs(folder, manifest, training)
        return verify_models(training.preprocessing, keras_references(training, inputs), paths, inputs,
                             provider_list, atol, batch_graphs=extra, variants=variants)
    from .golden import read_golden

    pre = Preprocessing.from_dict(manifest["preprocessing"])
    golden = read_golden(folder, manifest)
    references = {role: golden.reference(role) for role in ONNX_FILES}
    return verify_models(pre, references, paths, golden.inputs, provider_list, atol,
                         internal_check=_installed("onnx"), batch_graphs=extra, variants=variants)


def published_variants(folder: Path, manifest: dict, checked: set[str]) -> list[tuple[str, str, Path, Tolerance]]:
    """(role, variant, file, tolerance) for every published variant file not in `checked`.

    Each is held to the tolerance its export recorded (fp16 and int8 relative to the
    range), so a file swapped for another model's, and the manifest resealed, fails verify.
    """
    out = []
    for role, by_name in (manifest.get("variants") or {}).items():
        for name, entry in by_name.items():
            if not entry["published"] or entry["file"] in checked:
                continue
            if role not in ONNX_FILES:
                raise IntegrityError(f"manifest field variants.{role}: no such model (expected "
                                     f"{' or '.join(ONNX_FILES)})")
            tolerance = Tolerance.from_manifest(entry.get("tolerance"), f"variants.{role}.{name}.tolerance")
            out.append((role, name, verify_file(folder, entry["file"], manifest["files"].get(entry["file"])), tolerance))
    return out


def run_pipeline(config, out: Path, data: Path | None = None, columns: tuple[str, ...] | None = None,
                 opset: int | None = None, atol: float = DEFAULT_ATOL, providers: str = "all", force: bool = False,
                 progress: Callable[[int, dict[str, float]], None] | None = None,
                 variants: tuple[str, ...] | None = None) -> tuple[Path, ParityReport, Training]:
    """train -> export -> verify -> publish, refusing early if the target exists."""
    from .export import check_opset
    from .optimize import check_variant_names

    _check_config(config)
    _check_data_args(data, columns, progress)
    out = as_path(out, "out")
    check_target(out, force)  # fail before minutes of training, not after: so do the export's settings
    atol = check_tolerance(atol)
    if opset is not None:
        check_opset(opset)
    verification_providers(providers)
    check_variant_names(variants)
    training = train(config, data, columns, progress)
    path, report = export(training, out, opset, atol, providers, force, variants=variants)
    return path, report, training
