"""Which graph runs which batch sizes of the fp32 model, and in runs of how many windows: measured
on the machine, not assumed.

A rule tuned on one model and one CPU does not carry over: "the unrolled graph from 128 windows, in
runs of 256" was measured on the seed model on an AVX-512 machine, and on a 64 x 9 x 32 tanh model
the fp32 path it chose ran at 0.76-0.81x the plain tf2onnx export's throughput (issue 20). So every
export (and `bench --rewrite-routing`, on the device itself) runs each equivalent fp32 graph of a
role (the clean one, tf2onnx's own, and the one-window and unrolled ones where published)
at a few probe batch sizes, as the runtime runs them, interleaved and paired as `bench` times
(timing.time_rounds). The fastest, in most rounds, takes the batch sizes from its probe to the next.
Of the large probes (CHUNKS) the one whose fastest graph runs the most windows a second becomes the
chunk: larger runs are cut into runs of it, so it decides every size above it. Measuring needs only
the runtime install.
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract import progress
from edgeae.contract.records import Manifest
from edgeae.measure.timing import cpu_description, load_average, onnx_model, paired_ratio, time_rounds

# Each probe decides the batch sizes up to the next one; bench's 1, 64 and 4096 are measured as such.
PROBES = (1, 2, 8, 64, 256, 1024, 4096)
CHUNKS = (256, 1024, 4096)  # the probes a larger run may be cut into
BUDGET_S = 0.1  # timed seconds per graph and probe (at least two calls a round): 3-42 s an export, tiny model to 64 x 9 x 32
ROUNDS = 9
MAX_RUNS = 20 * ROUNDS
# A graph's time over the base graph's is this quantile of its per-round ratios: the worst of five rounds
# read 1.44x for a graph whose other rounds gave 0.73-0.84x (a neighbour's burst on a 2-core machine),
# and a median alone let a graph of many small nodes through that was 1.05x and 1.37x a minute apart.
QUANTILE = 0.75
SETTLE_S = 0.003  # bench pauses 50 ms after each block and warms 10 ms before: most blocks here take less
WARM_S = 0.002
# Another graph (or chunk) is chosen over the base one only when at least this much faster, in two
# measurements: at 1,024 windows the portable graph read 0.59x the clean one while routing and 0.78x
# the plain one in the benchmark a minute later (a graph of many small nodes on a 2-core machine), and
# the one-window graph's gain at batch 1 is 8-15%.
TIE = 0.95


# The portable graph is not a candidate: its speed at large batches swings between runs (64 x 9 x 32 at
# 4,096 windows: routed there after reading 0.71x the clean graph's time twice, it ran 0.85x the plain
# export's throughput in the benchmark a minute later, and 1.47-1.67x in three other runs).
NOT_ROUTED = ("portable",)


def candidates(manifest: Manifest, role: str, base: str) -> dict[str, bool]:
    """The published fp32 ONNX graphs of `role` equivalent to `base`'s, but NOT_ROUTED, each with
    whether it takes one window only (a one-window graph can serve batch 1 alone)."""
    by_name = manifest.variants_of(role)
    return {entry.file: entry.one_window for name, entry in by_name.items()
            if name == base or (entry.published and entry.precision == by_name[base].precision
                                and entry.file.endswith(".onnx") and name not in NOT_ROUTED)}


def measure(folder: Path, manifest: Manifest, role: str, graphs: dict[str, bool], base_file: str,
            probes: tuple[int, ...] = PROBES, budget_s: float = BUDGET_S,
            ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each graph's time over `base_file`'s at each probe batch size (the QUANTILE of its per-round
    ratios: faster in most rounds, not only in the middle one; for a graph that read faster than TIE,
    the larger of two measurements), {file: {batch: ratio}}, and the base graph's median seconds per
    call, {batch: seconds}. Each graph runs a probe in one call."""
    models = {file: onnx_model(Path(folder) / file, [], None, manifest) for file in graphs}
    base = models[base_file]
    rng = np.random.default_rng(0)
    ratios: dict[str, dict[str, float]] = {file: {} for file in graphs}
    seconds: dict[str, float] = {}
    for batch in progress.each(probes, f"routing {role}", "batch sizes", note=lambda b: f"timing batch {b}"):
        runners = {file: (lambda run, batch=batch: lambda x: run(x, batch))(model.run_windows)
                   for file, model in models.items() if batch == 1 or not graphs[file]}
        x = rng.uniform(0, 1, (batch, base.timesteps, base.features)).astype(np.float32)
        runners[base_file](x)  # the first call allocates; the second tells how long one takes
        start = time.perf_counter()
        runners[base_file](x)
        runs = int(min(MAX_RUNS, max(2 * ROUNDS, budget_s / max(time.perf_counter() - start, 1e-6))))
        samples = time_rounds(runners, x, runs, warmup=1, settle_s=SETTLE_S, warm_s=WARM_S, rounds=ROUNDS)
        found = _over_base(samples, base_file)
        faster = [file for file in runners if found[file] < TIE]
        if faster:  # confirmed or not: a graph must win again, timed against the base graph alone
            again = _over_base(time_rounds({file: runners[file] for file in [base_file, *faster]}, x, runs, warmup=1,
                                           settle_s=SETTLE_S, warm_s=WARM_S, rounds=ROUNDS), base_file)
            found.update({file: max(found[file], again[file]) for file in faster})
        for file, ratio in found.items():
            ratios[file][str(batch)] = ratio
        seconds[str(batch)] = float(np.median(np.concatenate(samples[base_file])))
    return ratios, seconds


def _over_base(samples: dict[str, list[np.ndarray]], base_file: str) -> dict[str, float]:
    """Each path's QUANTILE of its per-round time over the base path's."""
    return {file: paired_ratio(times, samples[base_file], QUANTILE) for file, times in samples.items()}


def choose(ratios: dict[str, dict[str, float]], seconds: dict[str, float], base_file: str, graphs: dict[str, bool],
           probes: tuple[int, ...] = PROBES) -> tuple[list[dict[str, Any]], int]:
    """The manifest's `by_batch` routes and chunk: from each probe to the next, the graph fastest
    there (the base graph unless another beats it by more than TIE; a one-window graph takes batch 1
    only), up to the chunk, the probe of CHUNKS whose fastest graph runs the most windows a second
    (a larger one only where TIE faster than every smaller one)."""
    def fastest(batch: int, one_window: bool) -> str:  # one_window: may the choice be a one-window graph
        timed = {file: r[str(batch)] for file, r in ratios.items() if str(batch) in r and (one_window or not graphs[file])}
        best = min(timed, key=timed.__getitem__)
        return best if timed[best] < TIE * timed[base_file] else base_file

    chunk, best = None, np.inf
    for batch in (b for b in probes if b in CHUNKS):
        per_window = seconds[str(batch)] * ratios[fastest(batch, False)][str(batch)] / batch
        if per_window < TIE * best:
            chunk, best = batch, per_window
    chunk = chunk or probes[-1]  # probes without any of CHUNKS: the largest
    served = [b for b in probes if b <= chunk]
    routes: list[dict[str, Any]] = []
    for index, batch in enumerate(served):
        last = served[index + 1] - 1 if index + 1 < len(served) else None
        file = fastest(batch, last == 1)
        if routes and routes[-1]["file"] == file:
            routes[-1]["batches"][1] = last
        else:
            routes.append({"batches": [batch, last], "file": file})
    return routes, chunk


def measured_routes(folder: Path, manifest: Manifest, role: str,
                    base: str = "fp32") -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """`role`'s routes and chunk for variant `base` measured here, and the record of the measurement
    (CPU, load, ratios, the base graph's time per call) that the manifest keeps beside them."""
    base_file = manifest.variant(role, base).file
    graphs = candidates(manifest, role, base)
    ratios, seconds = measure(folder, manifest, role, graphs, base_file)
    routes, chunk = choose(ratios, seconds, base_file, graphs)
    record = {"measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_description(),
              "load_average": load_average(), "probes": list(PROBES), "chunks": list(CHUNKS),
              "time_over_base": ratios, "base_seconds_per_call": seconds}
    return routes, chunk, record
