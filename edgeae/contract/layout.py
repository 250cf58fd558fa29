"""Every file name and file role of training and export folders, defined once.

A variant's model files are named `<role><suffix>` with the suffix its row in variants.py
gives; everything else a folder may hold is named here. Readers and writers import these
names instead of spelling them, so a renamed file cannot leave one of them behind.
"""
from __future__ import annotations

ROLES = ("autoencoder", "encoder")  # the two models of every export
MAX_CHUNK = 65536  # the most windows per call a manifest may name for a model (measure/routing.py measures it)

MANIFEST_FILE = "manifest.json"
KERAS_FILE = "model.keras"
TRAINING_FILE = "training.json"  # a training folder's record
PARITY_INPUTS_FILE = "parity_inputs.npz"  # the raw training and validation windows
PARITY_REPORT_FILE = "parity.json"  # every comparison of the last parity run
GOLDEN_INDEX_FILE = "golden.json"
GOLDEN_DATA_FILE = "golden.bin"
REFERENCE_FILE = "parity_reference.npz"  # the golden vectors again, for numpy
TARGETS_FILE = "targets.json"
ORT_CONFIG_FILE = "ort_operators.config"
SIGNATURE_FILE = "model.sig"  # an export's signature (model-signing's bundle over every other file); never listed
PLOT_FILES = {
    "reconstruction": "reconstruction.png",
    "scores": "scores.png",
    "loss": "loss.png",
    "parity": "parity.png",
}

# The `role` of each file entry in a manifest (model files take their variant's, see variants.py).
KERAS_ROLE = "keras"
TRAINING_ROLE = "training"
DATA_ROLE = "data"
REPORT_ROLE = "report"
GOLDEN_ROLE = "golden"
REFERENCE_ROLE = "reference"
ORT_CONFIG_ROLE = "ort-config"
PLOT_ROLE = "plot"
DETECTOR_ROLE = "onnx-detector"


def detector_file(precision: str) -> str:
    """The detector graph (reconstruction, score and flag) of one precision: detector.onnx, detector.int8.onnx."""
    return "detector.onnx" if precision == "fp32" else f"detector.{precision}.onnx"


def model_file(role: str, suffix: str = ".onnx") -> str:
    """The file name of `role` in the variant whose suffix is `suffix`: autoencoder.int8.onnx."""
    return f"{role}{suffix}"
