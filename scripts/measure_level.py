"""Measure the level rule (`--level auto`, edgeae's default with --data) on real series: what it
chooses, and what the detector flags before (level kept) and after (the default).

For each series it prints the share of held-out windows that lie at levels the training windows
never reached (the rule removes the level above 10%), then trains and exports with the level kept
and with the default, injects into the held-out tail a spike (one row raised by the training
range) and a flat stretch (three windows long, held at its first value), and reports for each:
the threshold, the share of the tail's normal windows flagged, whether the spike and the flat
stretch were flagged (any window over them), VUS-PR and event-wise F1 on the injected labels.

The series: the four aeon ships that scripts/measure_defaults.py measures, the weekly Mauna Loa
CO2 record in tests/data (trend, seasonal cycle, 59 gaps), and any `--csv NAME=PATH[:COLUMNS]`.

    python scripts/measure_level.py [--epochs 60] [--only co2,airline] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_defaults import SERIES, cpu, data_folder  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]


def series_files(extra: list[str]) -> dict[str, tuple[Path, tuple[str, ...] | None]]:
    folder = data_folder()
    files = {name: (folder / file, columns) for name, (file, columns, _) in SERIES.items()}
    files["co2"] = (REPO / "tests" / "data" / "co2_mauna_loa_weekly.csv", None)
    for item in extra:
        name, _, rest = item.partition("=")
        path, _, columns = rest.partition(":")
        files[name] = (Path(path), tuple(columns.split(",")) if columns else None)
    return files


def injected(values: np.ndarray, tail_start: int, timesteps: int, span: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The series with a spike and a flat stretch placed in its held-out tail, and their row labels."""
    x, labels = values.copy(), np.zeros(len(values), bool)
    tail = len(values) - tail_start
    spike = tail_start + tail // 3
    flat = (tail_start + 2 * tail // 3, tail_start + 2 * tail // 3 + 3 * timesteps)
    x[spike, 0] += span
    x[flat[0]:flat[1], :] = x[flat[0], :]
    labels[spike] = True
    labels[flat[0]:flat[1]] = True
    return x, labels, {"spike": spike, "flat": flat}


def measure(name: str, path: Path, columns, level: str, epochs: int, work: Path) -> dict:
    from edgeae.data.gaps import fill_gaps
    from edgeae.data.series import load_series
    from edgeae.data.windows import choose_level, make_windows, window_labels
    from edgeae.detection.quality import evaluate
    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions
    from edgeae.runtime import load
    from edgeae.trainer import training as trainer

    config = trainer.config_for(path, columns, epochs=epochs, level=level)
    started = time.perf_counter()
    training = trainer.train(config, path, columns)
    out = work / f"{name}-{level}"
    publish.export(training, out, ExportOptions(providers="cpu", variants=(), measure_routing=False,
                                                accept_unlearned=True, min_calibration_windows=1, force=True))
    seconds = time.perf_counter() - started
    model = load(out, "cpu")
    raw = load_series(path, columns, missing_ok=True).values
    values, _ = fill_gaps(raw, len(raw))  # every gap filled: the injected labels stay exact
    T = config.timesteps
    tail_start = len(values) - round(len(values) * config.validation_fraction)
    train_part = values[:tail_start]
    span = float(np.nanmax(train_part[:, 0]) - np.nanmin(train_part[:, 0]))
    x, labels, where = injected(values, tail_start, T, span)
    quality, scores = evaluate(model, x, labels)
    flags = scores > model.threshold
    truth = window_labels(labels, T, 1)
    starts = np.arange(len(scores))
    tail = starts >= tail_start
    spike_windows = (starts <= where["spike"]) & (starts > where["spike"] - T)
    flat_windows = (starts < where["flat"][1]) & (starts > where["flat"][0] - T)
    rule = choose_level("auto", make_windows(train_part, T), make_windows(values[tail_start:], T))
    return {
        "series": name, "level": level, "chosen": training.preprocessing.level,
        "outside_share": rule.outside_share, "epochs_run": training.epochs_run, "seconds": round(seconds, 1),
        "threshold": model.threshold, "calibration_windows": int(read_windows(out)),
        "tail_normal_flagged": float(flags[tail & ~truth].mean()),
        "spike_flagged": bool(flags[spike_windows].any()), "flat_flagged": bool(flags[flat_windows].any()),
        "flat_windows_flagged": f"{int(flags[flat_windows].sum())}/{int(flat_windows.sum())}",
        "vus_pr": quality.ranges.vus_pr, "event_f1": quality.ranges.event_f1, "roc_auc": quality.roc_auc,
    }


def read_windows(out: Path) -> int:
    from edgeae.contract.manifest import read_manifest

    return read_manifest(out).detector.windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--only", default=None, help="comma-separated series names")
    parser.add_argument("--csv", action="append", default=[], help="NAME=PATH[:COL,COL] another series")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    files = series_files(args.csv)
    names = args.only.split(",") if args.only else list(files)
    print(f"# {cpu()}, {time.strftime('%Y-%m-%d')}, {args.epochs} epochs (patience 20)")
    print("series | level | rule: held-out outside | threshold | tail normal flagged | spike | flat (windows) | "
          "VUS-PR | event F1 | ROC AUC")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path, columns = files[name]
            for level in ("keep", "auto"):
                row = measure(name, path, columns, level, args.epochs, Path(tmp))
                rows.append(row)
                print(f"{name} | {level} -> {row['chosen']} | {row['outside_share']:.0%} | {row['threshold']:.3g} | "
                      f"{row['tail_normal_flagged']:.1%} | {'yes' if row['spike_flagged'] else 'no'} | "
                      f"{'yes' if row['flat_flagged'] else 'no'} ({row['flat_windows_flagged']}) | "
                      f"{row['vus_pr']:.3f} | {row['event_f1']:.3f} | {row['roc_auc']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "epochs": args.epochs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
