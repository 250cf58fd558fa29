"""Pictures of an export: windows against their reconstructions, the score over time with
the threshold, the loss curves, and Keras-against-onnxruntime parity.

matplotlib is optional (`edgeae[plot]`) and imported only here, inside the functions; the
figures are drawn on matplotlib's Agg canvas directly, never through pyplot, so no global
backend or figure state is touched. Scoring uses the device runtime, so a report needs
numpy, onnxruntime and matplotlib, never TensorFlow.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae import runtime
from edgeae.contract.errors import DataError, ExportExistsError, UsageError, require
from edgeae.contract.checks import is_whole
from edgeae.contract.files import as_path, atomic_write_bytes, read_json
from edgeae.contract.layout import PARITY_INPUTS_FILE, PARITY_REPORT_FILE, PLOT_FILES, PLOT_ROLE
from edgeae.contract.manifest import amend_export, verify_file
from edgeae.contract.records import thawed
from edgeae.data.series import load_features, load_labelled, trained_columns
from edgeae.data.windows import cut_windows, window_labels

MAX_FEATURES_SHOWN = 6
DPI = 100


def _figure(width: float, height: float):
    require("matplotlib", "plot")  # first: a missing matplotlib is named as such
    figure = require("matplotlib.figure", "plot").Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    require("matplotlib.backends.backend_agg", "plot").FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def reconstruction_png(windows: np.ndarray, reconstructions: np.ndarray, columns: Sequence[str],
                       titles: Sequence[str], shown: Sequence[int] | None = None, why: str = "") -> bytes:
    """One column per window, one row per feature shown (`shown`, by index; the first few by
    default): input against reconstruction. `why` says how the features were chosen."""
    windows, reconstructions = np.asarray(windows), np.asarray(reconstructions)
    if windows.shape != reconstructions.shape or windows.ndim != 3 or len(windows) == 0:
        raise DataError(f"need matching (n, timesteps, features) windows, got {windows.shape} "
                        f"and {reconstructions.shape}")
    n, steps, features = windows.shape
    shown = list(range(min(features, MAX_FEATURES_SHOWN)) if shown is None else shown)
    figure = _figure(3.2 * n + 0.8, 1.9 * len(shown) + 0.8)
    axes = figure.subplots(len(shown), n, squeeze=False, sharex=True)
    for i in range(n):
        for row, j in enumerate(shown):
            ax = axes[row, i]
            ax.plot(np.arange(steps), windows[i, :, j], color="tab:blue", label="input")
            ax.plot(np.arange(steps), reconstructions[i, :, j], color="tab:orange", linestyle="--",
                    label="reconstruction")
            if i == 0:
                ax.set_ylabel(str(columns[j]) if j < len(columns) else f"feature {j}")
            if row == 0:
                ax.set_title(titles[i], fontsize=9)
        axes[-1, i].set_xlabel("step")
    axes[0, 0].legend(fontsize=8, loc="best")
    note = f" ({len(shown)} of {features} features{': ' + why if why else ''})" if len(shown) < features else ""
    figure.suptitle("Input windows and their reconstructions (onnxruntime)" + note)
    return _png(figure)


def driving_features(parts: np.ndarray, names: Sequence[str], chosen: Sequence[str] | None = None,
                     limit: int = MAX_FEATURES_SHOWN) -> tuple[list[int], str]:
    """The features to draw for windows whose score parts are `parts` (n, features), the worst
    window last: those named in `chosen`, else the `limit` with the largest part of the worst
    window's score (the channels that caused it), largest first. And why, in words."""
    names = [str(n) for n in names]
    if chosen:
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise UsageError(f"no feature {unknown[0]!r} to draw; the model's features are {', '.join(names)}")
        if len(set(chosen)) != len(chosen):
            raise UsageError(f"a feature is named twice in {','.join(chosen)}")
        return [names.index(c) for c in chosen], "as chosen"
    worst = np.asarray(parts)[-1]
    order = [int(j) for j in np.argsort(-worst, kind="mergesort")[:limit]]
    return order, "those with the largest part in the worst window's score"


def scores_png(starts: np.ndarray, scores: np.ndarray, threshold: float | None,
               labels: np.ndarray | None = None, spans: Sequence[tuple[float, float, str]] = (),
               xlabel: str = "first row of the window") -> bytes:
    """Score per window against its first row, the threshold line, flags, labelled anomalies."""
    starts, scores = np.asarray(starts, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    figure = _figure(11, 4)
    ax = figure.subplots()
    for start, end, name in spans:
        ax.axvspan(start, end, color="0.92", zorder=0)
        ax.text((start + end) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    if labels is not None and np.asarray(labels).any():
        labelled = np.asarray(labels, dtype=bool)
        ax.scatter(starts[labelled], scores[labelled], s=36, facecolors="none", edgecolors="tab:green",
                   label="labelled anomalous", zorder=3)
    ax.plot(starts, scores, color="tab:blue", marker="." if len(scores) < 200 else None, linewidth=0.8, label="score")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
        flagged = scores > threshold
        if flagged.any():
            ax.scatter(starts[flagged], scores[flagged], s=10, color="tab:red", zorder=4,
                       label=f"flagged ({int(flagged.sum())})")
    if (scores > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reconstruction error")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Anomaly score over time" + ("" if threshold is not None else " (no threshold in the manifest)"),
                 pad=14 if spans else 6)
    return _png(figure)


def loss_png(history: dict[str, Sequence[float]], best_epoch: int | None = None) -> bytes:
    """Training and validation loss per epoch, with the epoch whose weights were kept."""
    if not history.get("loss"):
        raise DataError("the training history has no loss values")
    figure = _figure(8, 4)
    ax = figure.subplots()
    for key, name in (("loss", "training loss"), ("val_loss", "validation loss")):
        values = np.asarray(history.get(key) or [], dtype=np.float64)
        if len(values):
            ax.plot(np.arange(1, len(values) + 1), values, marker="." if len(values) < 60 else None, label=name)
    if best_epoch:
        ax.axvline(best_epoch, color="0.5", linestyle=":", label=f"kept: epoch {best_epoch}")
    all_values = np.concatenate([np.asarray(v, dtype=np.float64) for v in history.values() if len(v)])
    if (all_values > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error (model units)")
    ax.legend(fontsize=8)
    ax.set_title("Training history")
    return _png(figure)


def parity_png(report: dict[str, Any]) -> bytes:
    """Max abs and range-relative error of every ONNX-against-Keras comparison, with the tolerance."""
    results = list(report.get("results") or [])
    check = report.get("encoder_matches_autoencoder")
    if check:
        results.append(check)
    if not results:
        raise DataError("the parity report holds no comparisons")
    names = [f"{r['model']} [{r['provider']}] {r['dataset']}" for r in results]
    floor = 1e-12  # an exact match (0) still needs a visible bar on a log axis
    figure = _figure(11, 1.2 + 0.32 * len(results))
    left, right = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(results))
    for ax, key, title in ((left, "max_abs", "max abs error"), (right, "max_rel_range", "max error / output range")):
        exact = [float(r[key]) for r in results]
        colours = ["tab:green" if r.get("passed", True) else "tab:red" for r in results]
        ax.barh(y, np.maximum(exact, floor), color=colours, left=floor / 10)
        for row, value in zip(y, exact):
            ax.text(max(value, floor), row, f" {value:.1e}" if value else " exact (0)", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
    # fp32's bound: the larger of an absolute floor (left) and a share of the range (right)
    for ax, key in ((left, "tolerance_abs"), (right, "tolerance_rel_range")):
        if results[0].get(key) is not None:
            bound = float(results[0][key])
            ax.axvline(bound, color="tab:red", linestyle="--", label=f"allowed {bound:.0e}")
            ax.legend(fontsize=8, loc="lower right")
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    verdict = "passed" if report.get("passed") else "FAILED"
    figure.suptitle(f"onnxruntime against Keras: parity {verdict}")
    return _png(figure)


# ---------------------------------------------------------------- the report command


def _pick_windows(scores: np.ndarray, count: int) -> np.ndarray:
    """Windows worth looking at: the typical one, the worst one, and between."""
    order = np.argsort(scores, kind="mergesort")
    positions = np.unique(np.round(np.linspace(0.5, 1.0, max(count, 1)) * (len(order) - 1)).astype(int))
    return order[positions]


def _series_scores(model: Any, data: Path, columns: tuple[str, ...] | None, labels_column: str | None,
                   stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Windows of a user's series, their first rows, scores and (optional) labels."""
    if labels_column:
        series, labels = load_labelled(data, model.features, columns, trained_columns(model.manifest, data), labels_column)
    else:
        series, labels = load_features(data, model.features, columns, trained_columns(model.manifest, data)), None
    windows, first_rows = cut_windows(series, model.timesteps, None, stride)
    starts = np.arange(len(windows), dtype=np.float64) if first_rows is None else first_rows.astype(np.float64)
    if labels is not None and first_rows is not None:
        labels = window_labels(labels, model.timesteps, stride)
    return windows, starts, np.asarray(model.score(windows).scores), labels, list(series.columns)


def _check_targets(target: Path, ours: set[str], force: bool) -> None:
    """Refuse, before anything is drawn, to replace a file the report did not write unless `force`.

    `ours` are the PNGs an export's manifest lists as its plots: redrawing those loses nothing.
    """
    taken = []
    for name in PLOT_FILES.values():
        path = target / name
        if path.is_dir():
            raise UsageError(f"{path} is a folder; cannot write the picture there")
        if path.is_symlink():  # the atomic write would refuse it, after the pictures before it were written
            raise UsageError(f"{path} is a symbolic link; remove it or write the report elsewhere")
        if os.path.lexists(path) and name not in ours and not force:
            taken.append(path)
    if taken:
        also = f" (so do {', '.join(p.name for p in taken[1:])})" if len(taken) > 1 else ""
        raise ExportExistsError(f"{taken[0]} exists{also}; pass --force to replace it")


@dataclass(frozen=True)
class ReportOptions:
    """What the pictures show, as `edgeae report` takes it: a series of the user's (`data`, its
    `columns` and `labels` column) in place of the training windows, the `features` drawn, and how
    many windows; they travel together from the command to `report`."""

    data: Path | None = None
    columns: tuple[str, ...] | None = None
    labels: str | None = None
    features: tuple[str, ...] | None = None
    windows_shown: int = 4


def report(export_dir: Path, options: ReportOptions = ReportOptions(), out: Path | None = None,
           provider: str = "cpu", force: bool = False) -> list[Path]:
    """Write the four PNGs into the export folder (listed in its manifest) or into `out`.

    Without `options.data`, the windows the model was trained and calibrated on are pictured. The
    reconstructions show `options.features` (names), else those that drive the worst window's score.
    Adding files to a published export happens under its lock: every listed file is
    checked first, the PNGs are written atomically, and the manifest is rewritten last.
    An existing PNG the report did not write is kept unless `force`; all are checked
    before any is written. An `out` that is the export folder itself counts as no `out`,
    so the manifest keeps matching the files.
    """
    data = options.data
    if options.labels is not None and data is None:
        raise UsageError("--labels marks rows of a series: give that series with --data")
    if options.columns is not None and data is None:
        raise UsageError("--columns chooses columns of --data; without it the training windows are pictured")
    if not is_whole(options.windows_shown, 1, 64):
        raise UsageError(f"windows shown must be a whole number from 1 to 64, got {options.windows_shown!r}")
    require("matplotlib", "plot")
    export_dir = as_path(export_dir, "export folder").absolute()
    if out is not None and as_path(out, "out").is_symlink():
        raise UsageError(f"{out} is a symbolic link; give the real folder")
    if not export_dir.is_dir():
        raise UsageError(f"export folder not found: {export_dir}")
    if out is not None and Path(out).resolve() == export_dir.resolve():
        out = None
    # Only adding files to the export needs its lock; a read-only export can still be pictured elsewhere.
    # Added to the export, the plots go into the amendment's staging copy, published whole with its manifest.
    with amend_export(export_dir, write=out is None) as amendment:
        target = amendment.folder if out is None else Path(out)
        manifest = amendment.manifest
        ours = {name for name, entry in manifest.files.items() if out is None and entry.role == PLOT_ROLE}
        _check_targets(target, ours, force)
        model = runtime.load(export_dir, provider)
        stride = int(manifest.window.stride)
        threshold = model.threshold
        spans: list[tuple[float, float, str]] = []
        xlabel = "first row of the window"
        if data is not None:
            windows, starts, scores, window_flags, names = _series_scores(model, Path(data), options.columns,
                                                                          options.labels, stride)
        else:
            with np.load(verify_file(export_dir, PARITY_INPUTS_FILE, manifest.files.get(PARITY_INPUTS_FILE)),
                         allow_pickle=False) as saved:
                train_w, val_w = saved["training"], saved["validation"]
            windows = np.concatenate([train_w, val_w]) if len(val_w) else train_w
            scores = np.asarray(model.score(windows).scores)
            starts, window_flags = np.arange(len(windows), dtype=np.float64), None
            spans = [(-0.5, len(train_w) - 0.5, "training windows")]
            if len(val_w):
                spans.append((len(train_w) - 0.5, len(windows) - 0.5, "validation windows (calibration)"))
            names = list(manifest.columns or [])
            xlabel = "window, in time order"
        picked = _pick_windows(scores, options.windows_shown)  # the worst last
        titles = [f"window at {starts[i]:g}: score {scores[i]:.3g}"
                  + (" FLAGGED" if threshold is not None and scores[i] > threshold else "") for i in picked]
        names = names or [str(j) for j in range(model.features)]
        shown, why = driving_features(model.score(windows[picked]).contributions, names, options.features)
        trained = manifest.training
        history = (thawed(trained.history) if trained else None) or {"loss": [trained.final_loss if trained else None]}
        parity = read_json(verify_file(export_dir, PARITY_REPORT_FILE, manifest.files.get(PARITY_REPORT_FILE)), "parity report")
        images = {
            "reconstruction": reconstruction_png(windows[picked], model.reconstruct(windows[picked]), names, titles,
                                                 shown, why),
            "scores": scores_png(starts, scores, threshold, window_flags, spans, xlabel),
            "loss": loss_png(history, trained.best_epoch if trained else None),
            "parity": parity_png(parity),
        }
        _check_targets(target, ours, force)  # again: drawing takes a while, and `out` is not locked
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {target}: {exc.strerror}") from None
        written = []
        for key, image in images.items():
            path = target / PLOT_FILES[key]
            atomic_write_bytes(path, image)
            written.append(path)
        if out is None:
            for path in written:
                amendment.add_file(path, PLOT_ROLE)
    return [export_dir / path.name for path in written] if out is None else written
