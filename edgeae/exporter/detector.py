"""The anomaly detector of an export: its threshold, calibrated (or chosen by the user) before
anything is built, and the detector graphs (reconstruction, score, flag) made for each published
precision with that precision's own threshold inside, each proven before it is published.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeae.contract.errors import ParityError, UsageError, require
from edgeae.contract.layout import DETECTOR_ROLE, detector_file
from edgeae.contract.manifest import file_entry
from edgeae.contract.variants import DEFAULT_VARIANT, DETECTOR_PRECISIONS
from edgeae.detection.graph import ANOMALY, SCORE, detector_graph
from edgeae.detection.threshold import calibrate, set_threshold
from edgeae.exporter.build import BuiltExport
from edgeae.exporter.options import ExportOptions
from edgeae.exporter.user_model import is_foreign
from edgeae.trainer.training import Training
from edgeae.verifier.verification import detector_parity


def calibrated_detector(training: Training, options: ExportOptions) -> dict[str, Any] | None:
    """The detector section an export starts from: the anomaly threshold calibrated at
    `options.threshold_quantile` (default: the training configuration's) of the validation windows'
    scores (a user's model: of its calibration data), replaced by `options.threshold` where given.
    None for a user's model given no calibration data: its scores stay in the model's units."""
    threshold, quantile = options.threshold, options.threshold_quantile
    if threshold is not None and quantile is not None:
        raise UsageError("give a threshold or a quantile to calibrate one at, not both")
    foreign = is_foreign(training)
    detector = None
    if not foreign or len(training.validation_windows):  # a user's model is calibrated on the data they give
        detector = calibrate(training, training.config.threshold_quantile if quantile is None else quantile,
                             options.min_calibration_windows)
        if foreign:
            detector["calibrated_on"] = f"calibration data {training.data['calibration']['source']}"
    elif threshold is not None or quantile is not None:
        raise UsageError("a threshold for a model edgeae did not train needs calibration data: give --calibrate FILE")
    if threshold is not None:
        detector = set_threshold(detector, threshold, options.threshold_source)
    return detector


def detector_graphs(stage: Path, built: BuiltExport, detector: dict[str, Any], training: Training,
                    providers: list[str]) -> tuple[dict[str, dict], dict[str, Any]]:
    """A detector graph (reconstruction, score, flag) for each published precision of the autoencoder,
    with that precision's threshold inside, proven against Keras and the Python runtime's score."""
    onnx = require("onnx", "train")
    autoencoders = built.variants.section()["autoencoder"]
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
