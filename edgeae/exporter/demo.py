"""A real, public time series with a labelled anomaly, from files an installed package ships.

InternalBleeding16 is dataset 135 of the UCR time-series anomaly archive (the KDD 2021
anomaly-detection competition): a vital-sign recording of a patient with internal bleeding,
7,501 samples, whose first 1,200 are known to be normal and whose one labelled anomaly
(rows 4187-4198) is a short burst of jitter on the falling edge of a beat. The package `aeon` ships it as two CSV files
(`edgeae[dataset]` installs it). edgeae reads those files with its own CSV loader and
never imports aeon, so nothing is downloaded and aeon's numba stack is never loaded.

`demo` is the whole path a user takes with their own data: train on the normal part,
export with a calibrated threshold, score the rest on the device runtime, and measure.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae import runtime
from edgeae.contract.errors import IntegrityError, MissingDependencyError, install_hint
from edgeae.contract.files import check_target
from edgeae.contract.records import Detector, thawed
from edgeae.contract.parity import DEFAULT_ATOL, DEFAULT_RTOL, fp32_tolerance
from edgeae.data.series import load_labels, load_series
from edgeae.detection.quality import evaluate
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.trainer.model import TrainConfig
from edgeae.trainer.training import train

PACKAGE = "aeon"
EXTRA = "dataset"


@dataclass(frozen=True)
class LabelledDataset:
    """A normal training file and a labelled test file of the same series."""

    name: str
    description: str
    train_file: Path
    test_file: Path
    columns: tuple[str, ...]
    label_column: str
    train_rows: int  # the test file repeats the training rows first; evaluation skips them


def package_folder(package: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the {package} package ships this dataset: {install_hint(EXTRA)}")
    return Path(next(iter(spec.submodule_search_locations)))


def internal_bleeding() -> LabelledDataset:
    """UCR anomaly archive 135, InternalBleeding16, as aeon ships it."""
    folder = package_folder(PACKAGE) / "datasets" / "data" / "KDD-TSAD_135"
    stem = "135_UCR_Anomaly_InternalBleeding16"
    dataset = LabelledDataset(
        name="InternalBleeding16",
        description="UCR anomaly archive 135 (KDD-TSAD 2021): a patient's vital-sign recording, one labelled anomaly",
        train_file=folder / f"{stem}_TRAIN.csv",
        test_file=folder / f"{stem}_TEST.csv",
        columns=("value",),
        label_column="is_anomaly",
        train_rows=1200,
    )
    for path in (dataset.train_file, dataset.test_file):
        if not path.is_file():
            raise IntegrityError(f"{PACKAGE} is installed but lacks {path.name}; reinstall 'edgeae[{EXTRA}]'")
    return dataset


def demo_config(**overrides: Any) -> TrainConfig:
    """Settings that suit this series: a 64-sample window sees the jitter against a beat's shape."""
    settings: dict[str, Any] = {
        "timesteps": 64, "features": 1, "units": 32, "epochs": 150, "batch_size": 32, "learning_rate": 2e-3,
        "stride": 1, "validation_fraction": 0.25, "patience": 20, "clip_quantiles": (0.001, 0.999),
        "scaling": "standard", "threshold_quantile": 0.99, "seed": 1,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


@dataclass
class DemoResult:
    """What the demo measured, with where it put the export."""

    dataset: LabelledDataset
    export: Path
    detection: Any  # detection.quality.Detection
    training: dict[str, Any]  # training.Training.summary()
    detector: Detector  # the manifest's record
    train_seconds: float
    evaluated_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset.name, "description": self.dataset.description, "export": str(self.export),
                "evaluated_rows": self.evaluated_rows, "train_seconds": self.train_seconds,
                "detection": self.detection.to_dict(), "detector": thawed(self.detector.details),
                "training": self.training}

    def lines(self) -> list[str]:
        t = self.training
        d = self.detector
        first = self.dataset.train_rows
        return [
            f"dataset: {self.dataset.name} ({self.dataset.description})",
            (f"trained {t['parameters']:,} parameters on {t['data']['windows']} windows for {t['epochs_run']} epochs "
             f"(weights of epoch {t['best_epoch']} kept) in {self.train_seconds:.1f} s"),
            (f"threshold {d.threshold:.4g}: the {d.quantile:g} quantile of the scores of "
             f"{d.windows} {d.calibrated_on} windows"),
            f"scored rows {first}-{first + self.evaluated_rows - 1} (never trained on) with onnxruntime:",
            *("  " + line for line in self.detection.lines()),
            f"exported to {self.export}; to picture it: edgeae report {self.export} --data {self.dataset.test_file} "
            f"--columns {','.join(self.dataset.columns)} --labels {self.dataset.label_column}",
        ]


def evaluation_part(dataset: LabelledDataset) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows after the training part: (values (rows, features), labels (rows,))."""
    values = load_series(dataset.test_file, dataset.columns).values
    labels = load_labels(dataset.test_file, dataset.label_column)
    return values[dataset.train_rows:], labels[dataset.train_rows:]


def demo(out: Path, config: Any = None, providers: str = "cpu", force: bool = False,
         progress: Callable[[int | None, dict[str, float]], None] | None = None,
         atol: float | None = DEFAULT_ATOL, rtol: float | None = DEFAULT_RTOL) -> DemoResult:
    """Train on the normal part, export with a calibrated threshold, score the rest on the runtime.

    `atol` and `rtol` are the export's fp32 parity bounds, as for `export`; a run that fails them
    is kept as a training folder beside `out`.
    """
    dataset = internal_bleeding()
    config = config or demo_config()
    out = Path(out)
    check_target(out, force)  # before minutes of training
    fp32_tolerance(atol, rtol)
    start = time.perf_counter()
    training = train(config, dataset.train_file, dataset.columns, progress)
    train_seconds = time.perf_counter() - start
    path, _ = publish.export_or_keep(training, out, ExportOptions(atol=atol, rtol=rtol, providers=providers, force=force))
    model = runtime.load(path, "cpu")
    values, labels = evaluation_part(dataset)
    detection, _ = evaluate(model, values, labels, stride=1)
    return DemoResult(dataset, path, detection, training.summary(), model.manifest.detector,
                      round(train_seconds, 1), len(values))
