"""What an export is asked to do, as one typed value: the entry points (export, export_keras,
optimize, run_pipeline) take an ExportOptions instead of a dozen keyword arguments, so the CLI,
the pipeline and the demo pass one object down and every layer reads the same defaults.

Nothing is checked when an options value is made: each entry point checks the fields it reads,
in the order it always has (the target first, before minutes of training or TensorFlow loading).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeae.contract.errors import UsageError
from edgeae.contract.parity import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance
from edgeae.detection.threshold import MIN_CALIBRATION_WINDOWS


@dataclass(frozen=True)
class ExportOptions:
    """How to export, verify and publish a model: `edgeae.export(training, "exported", ExportOptions(...))`.

    `atol`/`rtol` hold the fp32 graphs to `atol` (model units) or `rtol` of the output's range,
    whichever is larger; None leaves that bound out, except in optimize, where None keeps the
    bound the export recorded (OPTIMIZE_DEFAULTS). `tolerances` replaces single variants' bounds.
    `threshold_quantile` recalibrates the anomaly threshold (default: the training's quantile);
    `threshold` replaces it for every precision, recorded with `threshold_source`.
    `measure_routing` False keeps the built-in routing rule instead of timing the graphs here.
    `min_calibration_windows` is the fewest windows a threshold is calibrated on; `accept_unlearned`
    publishes a trained run that learned nothing (trainer.training.check_learned), recorded as such.
    `sign_key` (a PEM EC private key file) signs the folder (contract/signing.py) before it is published.
    optimize reads providers, variants, tolerances, atol, rtol, measure_routing and sign_key only.
    """

    opset: int | None = None  # None: convert.DEFAULT_OPSET
    atol: float | None = DEFAULT_ATOL
    rtol: float | None = DEFAULT_RTOL
    providers: str = "all"
    force: bool = False
    variants: tuple[str, ...] | None = None  # None: the variant table's defaults
    tolerances: dict[str, Tolerance] | None = None
    threshold_quantile: float | None = None
    threshold: float | None = None
    threshold_source: str = "edgeae export --threshold"
    measure_routing: bool = True
    min_calibration_windows: int = MIN_CALIBRATION_WINDOWS  # fewer: the threshold is refused (detection/threshold.py)
    accept_unlearned: bool = False  # publish a run whose loss shows it learned nothing (the user said so)
    sign_key: Path | None = None  # a PEM EC private key: the export is signed in staging, before it is published


OPTIMIZE_DEFAULTS = ExportOptions(atol=None, rtol=None)  # optimize's default: the fp32 bounds the export recorded


@dataclass(frozen=True)
class UserModelOptions:
    """How to read a Keras model edgeae did not train (export_keras, training_for).

    `data` (CSV/NPY, read like training data, its `columns`) teaches the preprocessing at
    `scaling` and `clip_quantiles` and gives the windows parity runs on, cut every `stride`
    steps; `scaling_values` gives the scaling the model was trained with instead of learning it:
    {"mean": [...], "std": [...]} with scaling="standard", {"min": [...], "max": [...]} with
    "minmax". `calibrate` gives the windows the threshold is calibrated on; `encoder_layer`
    names the encoder where the RepeatVector's input is not it.
    """

    encoder_layer: str | None = None
    data: Path | None = None
    columns: tuple[str, ...] | None = None
    scaling: str = "none"
    clip_quantiles: tuple[float, float] = (0.0, 1.0)
    stride: int | None = None
    calibrate: Path | None = None
    scaling_values: dict[str, Any] | None = None


def check_options(value: Any, name: str = "options", kind: type = ExportOptions) -> None:
    """Refuse, in one line, a value that is not the options object an entry point reads (a dict of
    the old keyword arguments, say), before it fails deep inside as an AttributeError."""
    if not isinstance(value, kind):
        raise UsageError(f"{name} must be an edgeae.{kind.__name__}, got {type(value).__name__}")
