"""Which graph runs which batch sizes of the fp32 model: measured on the machine, not assumed.

A rule tuned on one model and one CPU does not carry over: "the unrolled graph from 128 windows"
was measured on the seed model, and on a 64 x 9 x 32 tanh model the fp32 path it chose ran at
0.76-0.81x the plain tf2onnx export's throughput (issue 20). So at a few probe batch sizes every
equivalent fp32 graph of a role (the clean one, tf2onnx's own, and the one-window, unrolled and
portable ones where published) runs as the runtime runs it, interleaved and paired as `bench` times
(bench.time_rounds), and the fastest, in its slowest round, takes the batch sizes from its probe to
the next. The runtime runs larger batches in chunks of DEFAULT_CHUNK windows, so the last probe is
that chunk and decides every size above it. Measuring needs only the runtime install, so it can run on the device itself.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from .bench import onnx_model, time_rounds, cpu_description, load_average
from .runtime import DEFAULT_CHUNK

# Each probe decides the batch sizes up to the next one; bench's 1, 64 and 4096 (chunks of 256) are measured as such.
PROBES = (1, 2, 8, 64, DEFAULT_CHUNK)
RUNS = 50  # timed calls per graph and probe, in 5 rounds: 10-40 s per role from a small model to 64 x 9 x 32
# Another graph takes sizes from the base graph only when at least this much faster: paired ratios of
# five rounds on a loaded 2-core machine scatter by a few percent, and noise is not worth one more session.
TIE = 0.97


def candidates(manifest: dict, role: str, base: str) -> dict[str, bool]:
    """The published fp32 ONNX graphs of `role` equivalent to `base`'s, each with whether it takes
    one window only (a one-window graph can serve batch 1 alone)."""
    by_name = (manifest.get("variants") or {}).get(role) or {}
    return {entry["file"]: entry.get("batch") == 1 for name, entry in by_name.items()
            if name == base or (entry.get("published") and entry.get("precision") == by_name[base].get("precision")
                                and entry["file"].endswith(".onnx"))}


def measure(folder: Path, manifest: dict, role: str, graphs: dict[str, bool], base_file: str,
            probes: tuple[int, ...] = PROBES, runs: int = RUNS) -> dict[str, dict[str, float]]:
    """Each graph's time over `base_file`'s at each probe batch size in its worst round: {file: {batch: ratio}}.

    The worst round, not the median: a graph of many small nodes (the portable one at 64 steps) ran
    1.05x and 1.37x the plain export's time in two measurements a minute apart where the clean graph
    held 0.87-0.89x, so a graph takes sizes from the base one only if it is faster in every round.
    """
    models = {file: onnx_model(Path(folder) / file, [], None, manifest) for file in graphs}
    base = models[base_file]
    rng = np.random.default_rng(0)
    ratios: dict[str, dict[str, float]] = {file: {} for file in graphs}
    for batch in probes:
        runners = {file: model.run_windows for file, model in models.items() if batch == 1 or not graphs[file]}
        x = rng.uniform(0, 1, (batch, base.timesteps, base.features)).astype(np.float32)
        samples = time_rounds(runners, x, runs, warmup=2)
        for file in runners:
            ratios[file][str(batch)] = max(float(np.median(mine) / np.median(base_times))
                                           for mine, base_times in zip(samples[file], samples[base_file]))
    return ratios


def choose(ratios: dict[str, dict[str, float]], base_file: str, graphs: dict[str, bool],
           probes: tuple[int, ...] = PROBES) -> list[dict[str, Any]]:
    """The manifest's `by_batch` routes: from each probe to the next, the graph fastest there (the base
    graph unless another beats it by more than TIE); a one-window graph takes batch 1 only."""
    def fastest(batch: int, one_window: bool) -> str:  # one_window: may the choice be a one-window graph
        timed = {file: r[str(batch)] for file, r in ratios.items() if str(batch) in r and (one_window or not graphs[file])}
        best = min(timed, key=timed.__getitem__)
        return best if timed[best] < TIE * timed[base_file] else base_file

    ranges: list[tuple[int, int | None, str]] = []
    for index, batch in enumerate(probes):
        last = probes[index + 1] - 1 if index + 1 < len(probes) else None
        ranges.append((batch, last, fastest(batch, last == 1)))
    routes: list[dict[str, Any]] = []
    for first, last, file in ranges:
        if routes and routes[-1]["file"] == file:
            routes[-1]["batches"][1] = last
        else:
            routes.append({"batches": [first, last], "file": file})
    return routes


def measured_routes(folder: Path, manifest: dict, role: str, base: str = "fp32") -> tuple[list[dict], dict[str, Any]]:
    """`role`'s routes for variant `base` measured here, and the record of the measurement (CPU, load,
    ratios) that the manifest keeps beside them."""
    base_file = manifest["variants"][role][base]["file"]
    graphs = candidates(manifest, role, base)
    ratios = measure(folder, manifest, role, graphs, base_file)
    record = {"measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_description(),
              "load_average": load_average(), "probes": list(PROBES), "time_over_base": ratios}
    return choose(ratios, base_file, graphs), record
