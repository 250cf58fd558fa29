"""Does the autoencoder help on data like yours? edgeae's default detector beside simple baselines,
on labelled public series, in the measures the field reports (detection.ranges).

The series are the labelled ones the `aeon` package ships in its wheel (`edgeae[dataset]`; edgeae
reads the CSV files and never imports aeon):

- InternalBleeding16 (UCR anomaly archive 135, KDD-TSAD 2021): train on the 1,200 normal rows of
  TRAIN, evaluate the TEST rows after them (one 12-row anomaly).
- ecg-diff-count-3 (a GutenTAG synthetic ECG, TimeEval): train on TRAIN_NA (10,000 normal rows);
  evaluate TEST and, with the same model, TRAIN_A (10,000 rows each, 300 anomalous in 3 kinds).

Daphnet_S06R02E0 is not used: the excerpt aeon ships holds no labelled anomaly.

edgeae runs as `edgeae pipeline --data TRAIN` does (`config_for`'s defaults, `train`, the
calibrated threshold), exported to a temporary folder (fp32 only: the threshold is the same) and
scored on onnxruntime as `evaluate` scores. Each baseline scores rows directly and gets its
threshold the same way: the same quantile of its scores on the same validation rows (the training
file's last part). Every figure is on the rows of the evaluated part (a row takes the highest score
of the windows covering it), with VUS buffers up to the model's window, so the columns compare.
"""
from __future__ import annotations

import datetime
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae import runtime
from edgeae.contract.errors import DataError, UsageError, require
from edgeae.contract.checks import is_whole
from edgeae.data.series import load_labels, load_series
from edgeae.detection.quality import Detection, Timeline, detection_quality, evaluate, row_timeline
from edgeae.detection.threshold import calibrate_threshold
from edgeae.exporter import publish
from edgeae.exporter.demo import EXTRA as DATASET_EXTRA, PACKAGE, package_folder
from edgeae.exporter.options import ExportOptions
from edgeae.measure.timing import cpu_description, cpu_line
from edgeae.trainer.training import config_for, train

AUTOENCODER = "edgeae"
DIFFERENCE = "one-step difference"
ZSCORE = "moving z-score"
MEASURES = (("VUS-PR", "vus_pr"), ("VUS-ROC", "vus_roc"), ("event F1", "event_f1"),
            ("affil. F1", "affiliation_f1"), ("ROC AUC", "roc_auc"), ("F1", "f1"))


@dataclass(frozen=True)
class BenchSeries:
    """A normal training file and a labelled file to evaluate, of the same kind of series."""

    name: str
    train_file: Path
    test_file: Path
    columns: tuple[str, ...]
    label_column: str
    skip_rows: int = 0  # leading rows of the test file that repeat the training part


def shipped_series() -> tuple[BenchSeries, ...]:
    """The labelled series aeon's wheel ships, as the module docstring describes them."""
    data = package_folder(PACKAGE) / "datasets" / "data"
    bleeding = data / "KDD-TSAD_135" / "135_UCR_Anomaly_InternalBleeding16"
    ecg = data / "UnitTest" / "ecg-diff-count-3"
    series = (
        BenchSeries("InternalBleeding16", Path(f"{bleeding}_TRAIN.csv"), Path(f"{bleeding}_TEST.csv"), ("value",),
                    "is_anomaly", 1200),
        BenchSeries("ecg-diff-count-3 TEST", Path(f"{ecg}_TRAIN_NA.csv"), Path(f"{ecg}_TEST.csv"), ("value-0",),
                    "is_anomaly"),
        BenchSeries("ecg-diff-count-3 TRAIN_A", Path(f"{ecg}_TRAIN_NA.csv"), Path(f"{ecg}_TRAIN_A.csv"), ("value-0",),
                    "is_anomaly"),
    )
    for item in series:
        for path in (item.train_file, item.test_file):
            if not path.is_file():
                raise DataError(f"{PACKAGE} is installed but lacks {path.name}; reinstall 'edgeae[{DATASET_EXTRA}]'")
    return series


# ---------------------------------------------------------------- baselines


def difference_scores(values: np.ndarray, step_scale: np.ndarray) -> np.ndarray:
    """Each row's largest one-step change |x[t] - x[t-1]| over the features, each in units of its
    typical step on the training rows (`step_scale`); the first row, with no step, scores 0."""
    steps = np.abs(np.diff(values, axis=0)) / step_scale
    return np.r_[0.0, steps.max(axis=1)]


def moving_zscore(values: np.ndarray, window: int, value_scale: np.ndarray) -> np.ndarray:
    """Each row's largest |x[t] - mean| / std over the features, mean and std those of the `window`
    rows before it; rows with fewer before them score 0. A flat history's std is floored at 1e-6 of
    the feature's training spread (`value_scale`), so a change after it scores high but finite."""
    scores = np.zeros(len(values))
    if len(values) <= window:
        return scores
    history = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)[:-1]  # (rows - window, features, window)
    spread = np.maximum(history.std(axis=2), 1e-6 * value_scale)
    scores[window:] = (np.abs(values[window:] - history.mean(axis=2)) / spread).max(axis=1)
    return scores


def _scale(values: np.ndarray) -> np.ndarray:
    """A per-feature spread that is never 0 (a constant feature is measured in its own units)."""
    spread = values.std(axis=0)
    return np.where(spread > 0, spread, 1.0)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Measured:
    """One detector on one series: the measures of the table, on the evaluated rows."""

    series: str
    detector: str
    threshold: float
    rows: int
    anomalous_rows: int
    flagged_rows: int
    vus_pr: float
    vus_roc: float
    event_f1: float
    affiliation_f1: float
    roc_auc: float
    f1: float


def _measured(series: str, detector: str, detection: Detection) -> Measured:
    r = detection.ranges
    return Measured(series, detector, detection.threshold, r.rows, r.anomalous_rows, r.flagged_rows, r.vus_pr,
                    r.vus_roc, r.event_f1, r.affiliation_f1, detection.roc_auc, detection.f1)


@dataclass
class QualityBench:
    """The table, and where and when it was measured."""

    results: list[Measured]
    trained: dict[str, dict[str, Any]]  # per training file: its settings and epochs run
    cpu: dict[str, Any] = field(default_factory=cpu_description)
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "date": self.date, "trained": self.trained,
                "results": [asdict(m) for m in self.results]}

    def table(self) -> list[str]:
        width = max([len(m.series) for m in self.results] + [6])
        head = f"{'series':<{width}}  {'detector':<19}" + "".join(f"{name:>10}" for name, _ in MEASURES)
        rows = [f"{m.series:<{width}}  {m.detector:<19}" + "".join(f"{getattr(m, key):>10.3f}" for _, key in MEASURES)
                for m in self.results]
        trained = [f"  {name}: {t['epochs_run']} epochs (of {t['epochs']}), window {t['timesteps']}, "
                   f"stride {t['stride']}, threshold quantile {t['threshold_quantile']:g}"
                   for name, t in self.trained.items()]
        return [f"measured {self.date} on {cpu_line(self.cpu)}", "edgeae trained with the default flags:", *trained,
                head, *rows,
                "(on the evaluated rows, each taking the highest score of its windows; F1 at each detector's "
                "threshold, the same quantile of its validation scores; VUS buffers up to one window)"]


def _train_and_export(item: BenchSeries, epochs: int | None, out: Path) -> tuple[Any, dict[str, Any]]:
    """The default pipeline's model of a training file, exported to `out` and loaded on onnxruntime."""
    config = config_for(item.train_file, item.columns, epochs=epochs)
    training = train(config, item.train_file, item.columns)
    path, _ = publish.export(training, out, ExportOptions(providers="cpu", variants=(), measure_routing=False,
                                                          accept_unlearned=True))
    summary = training.summary()
    info = {"epochs": config.epochs, "epochs_run": summary["epochs_run"], "timesteps": config.timesteps,
            "stride": config.stride or 1, "threshold_quantile": config.threshold_quantile,
            "validation_fraction": config.validation_fraction}
    return runtime.load(path, "cpu"), info


def _baselines(item: BenchSeries, values: np.ndarray, labels: np.ndarray, settings: dict[str, Any]) -> list[Measured]:
    """Both baselines on the evaluated rows, thresholds calibrated on the training file's validation rows."""
    train_values = load_series(item.train_file, item.columns).values
    held = round(len(train_values) * settings["validation_fraction"])
    validation = train_values[len(train_values) - held:] if held else train_values
    step_scale, value_scale = _scale(np.diff(train_values, axis=0)), _scale(train_values)
    window = settings["timesteps"]
    out = []
    for name, score in ((DIFFERENCE, lambda v: difference_scores(v, step_scale)),
                        (ZSCORE, lambda v: moving_zscore(v, window, value_scale))):
        threshold = calibrate_threshold(score(validation), settings["threshold_quantile"])
        scores = score(values)
        detection = detection_quality(scores, labels, threshold, Timeline(scores, labels, window))
        out.append(_measured(item.name, name, detection))
    return out


def run_quality_bench(series: tuple[BenchSeries, ...] | None = None, epochs: int | None = None,
                      progress: Callable[[str], None] | None = None) -> QualityBench:
    """Train edgeae's default model per training file, score each series with it and the baselines.

    `series` None means the shipped ones (`shipped_series`); `epochs` None the default training length.
    """
    if epochs is not None and not is_whole(epochs, 1):
        raise UsageError(f"epochs must be a whole number of at least 1, got {epochs!r}")
    series = shipped_series() if series is None else tuple(series)
    if not series or not all(isinstance(s, BenchSeries) for s in series):
        raise UsageError("series must be one or more BenchSeries")
    require("tensorflow", "train")  # before anything is read: one line naming the extra
    say = progress or (lambda message: None)
    models: dict[tuple[Path, tuple[str, ...]], tuple[Any, dict[str, Any]]] = {}
    results: list[Measured] = []
    trained: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeae-quality-bench-") as folder:
        for item in series:
            key = (item.train_file, item.columns)
            if key not in models:
                say(f"training on {item.train_file.name} ...")
                models[key] = _train_and_export(item, epochs, Path(folder) / f"export-{len(models)}")
                trained[item.train_file.name] = models[key][1]
            model, settings = models[key]
            values = load_series(item.test_file, item.columns).values[item.skip_rows:]
            labels = load_labels(item.test_file, item.label_column)[item.skip_rows:]
            say(f"scoring {item.name} ({len(values)} rows) ...")
            _, scores = evaluate(model, values, labels)
            timeline = row_timeline(scores, labels, model.timesteps, model.stride)
            rows = detection_quality(timeline.scores, timeline.labels, model.threshold, timeline)
            results.append(_measured(item.name, AUTOENCODER, rows))
            results += _baselines(item, values, labels, settings)
    return QualityBench(results, trained)
