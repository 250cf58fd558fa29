"""Measure training defaults on real series: does each activation/scaling pair learn, and how far
does its fp32 export sit from Keras?

The series are public files the `aeon` package ships (edgeae[dataset] installs it): a 9-channel
accelerometer recording in raw sensor units (Daphnet S06R02E0), monthly airline passengers with a
rising trend (Airline), five quarterly US macro series (Uschange), and the demo's vital-sign
recording (UCR anomaly archive 135). For each series and setting it prints one line: epochs run,
the best validation loss as a share of the loss of predicting each feature's mean (below
edgeae's learned-nothing bar means the model learned), seconds, and the fp32 parity against Keras
(max abs in the model's units and as a share of the output's range).

    python scripts/measure_defaults.py [--epochs 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

SERIES = {
    # name: (file under aeon/datasets/data, columns, what it is)
    "daphnet": ("Daphnet_S06R02E0/S06R02E0.csv",
                ("ankle_horiz_fwd", "ankle_vert", "ankle_horiz_lateral", "leg_horiz_fwd", "leg_vert",
                 "leg_horiz_lateral", "trunk_horiz_fwd", "trunk_vert", "trunk_horiz_lateral"),
                "9-channel accelerometer, raw units (hundreds to a thousand), 7,040 rows"),
    "airline": ("Airline/Airline.csv", ("Passengers",), "monthly passengers, rising trend, 144 rows"),
    "uschange": ("Uschange/Uschange.csv", ("Consumption", "Income", "Production", "Savings", "Unemployment"),
                 "5 quarterly US macro series, 187 rows"),
    "bleeding": ("KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TRAIN.csv", ("value",),
                 "vital-sign recording (the demo's training part), 1,200 rows"),
}
SETTINGS = (("relu", "none"), ("tanh", "none"), ("relu", "standard"), ("tanh", "standard"), ("tanh", "minmax"))


def data_folder() -> Path:
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install edgeae[dataset] (aeon ships the series)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return f"{fields.get('Model name', '?').strip()} ({', '.join(f for f in ('avx2', 'avx512f', 'avx512_vnni') if f in flags)})"


def measure(name: str, activation: str, scaling: str, epochs: int, out: Path) -> dict:
    import numpy as np

    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions
    from edgeae.trainer.training import config_for, train, learning_ratio

    file, columns, _ = SERIES[name]
    path = data_folder() / file
    config = config_for(path, columns, activation=activation, scaling=scaling, epochs=epochs)
    start = time.perf_counter()
    training = train(config, path, columns)
    seconds = time.perf_counter() - start
    _, report = publish.export(training, out / f"{name}-{activation}-{scaling}",
                               ExportOptions(atol=1.0, providers="cpu", variants=()))
    worst = report.summary()
    return {
        "series": name, "activation": activation, "scaling": scaling, "epochs_run": training.epochs_run,
        "first_loss": training.history["loss"][0], "best_val_loss": float(np.min(training.history["val_loss"])),
        "learning_ratio": learning_ratio(training), "seconds": seconds,
        "parity_max_abs": max(s["max_abs"] for s in worst.values()),
        "parity_rel_range": max(s["max_rel_range"] for s in worst.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--series", nargs="*", default=list(SERIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"CPU: {cpu()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.series:
            for activation, scaling in SETTINGS:
                row = measure(name, activation, scaling, args.epochs, Path(tmp))
                rows.append(row)
                print(f"{name:9s} {activation:5s} {scaling:9s} epochs {row['epochs_run']:3d}  "
                      f"best val loss / mean's {row['learning_ratio']:.3f}  {row['seconds']:6.1f} s  "
                      f"parity max abs {row['parity_max_abs']:.2e} = {row['parity_rel_range']:.2e} of range",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
