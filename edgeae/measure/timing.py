"""The timing kernel bench and routing share: rounds of interleaved calls paired by round, and
what a figure needs beside it (the CPU it was measured on, the load on the machine).

Every path an export serves is timed here as an application loads it (onnx_model), so the
benchmark and the routing measurement compare the same thing.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.records import Manifest
from edgeae.runtime.routes import manifest_sizes, proven_finite, routed_chunk, variant_of_file
from edgeae.runtime.session import OnnxModel

# The CPU features that decide which kernels onnxruntime and XLA pick, as /proc/cpuinfo names them
# (x86 "flags", ARM "Features"), under the names a reader looks for.
CPU_FEATURES = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX", "asimd": "NEON", "asimddp": "ARM dot product",
                "i8mm": "ARM i8mm", "sve": "SVE", "sve2": "SVE2"}


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU a figure was measured on (model, vector features, cores), so no figure is read on
    the wrong machine: int8 and fp32 kernels, and so every ratio, differ between AVX2, AVX-512
    and ARM. Read from /proc/cpuinfo where there is one, else what Python's platform module says."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine() or "unknown"
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "features": [name for flag, name in CPU_FEATURES.items() if flag in flags]}


def cpu_line(cpu: dict[str, Any]) -> str:
    """'AMD EPYC (x86_64), 2 cores: AVX2, FMA, AVX-512, AVX-512 VNNI'."""
    return (f"{cpu['model']} ({cpu['machine']}), {cpu['cores']} cores: "
            + (", ".join(cpu["features"]) or "no AVX2, AVX-512 or ARM vector features found"))


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, where the system tells them."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None


Routes = list[tuple[int, int | None, Path]]  # (first, last batch size, file) the runtime hands to another graph


def onnx_model(path: Path, routes: Routes, threads: int | None, manifest: Manifest) -> OnnxModel:
    """An edgeae file as an application loads it from its export folder: the runtime's model,
    with its batch routes and what the manifest proves about its values."""
    role = path.name.split(".")[0]
    sizes = manifest_sizes(manifest)
    model = OnnxModel(path, "cpu", threads=threads, role=role, **sizes)
    for first, last, other in routes:
        model.route(OnnxModel(other, "cpu", threads=threads, role=role, **sizes), first, last)
    variant = variant_of_file(manifest, role, path.name)
    model.chunk = routed_chunk(manifest, role, variant)
    model.set_proven_finite(proven_finite(manifest, role, variant))
    return model


# ---------------------------------------------------------------- timing


BLOCK = 10
SETTLE_S = 0.05  # after a block: longer than onnxruntime's and TensorFlow's pool threads spin when idle
WARM_S = 0.01  # untimed calls before a block: a core idle for the pause needs milliseconds to reach full speed


def time_rounds(runners: dict[str, Callable], x: np.ndarray, runs: int, warmup: int,
                settle_s: float = SETTLE_S, warm_s: float = WARM_S, rounds: int | None = None) -> dict[str, list[np.ndarray]]:
    """Interleaved in blocks: each round gives every path, in a fresh random order, WARM_S of
    untimed calls (at least one), up to BLOCK timed ones, and then a pause.

    Idle pool threads (onnxruntime's, TensorFlow's) keep working or spinning for a while after
    a run and slow whatever runs next. The pause lets them go quiet, and the order changes
    every round, so whatever is left of that hits every path alike instead of always the one
    after Keras. After the pause the core itself is slow for a few milliseconds (one call of
    30-100 µs measured up to 1.7x its steady time, and not the same for every path), so the
    untimed calls bring it, and the path's own threads, back to the steady speed of an
    application that runs continuously. Drift over the run hits every path alike too.
    Returns each path's times, round by round, so ratios can be taken between paths timed
    in the same round.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](x)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    # at least five rounds (or `rounds`), so drift is shared out at large batches too
    block = max(1, -(-runs // rounds) if rounds else min(BLOCK, runs // 5))
    rounds = -(-runs // block)
    shuffle = np.random.default_rng(0)
    for r in range(rounds):
        for name in shuffle.permutation(names):
            run = runners[name]
            warm_until = time.perf_counter() + warm_s
            run(x)
            while time.perf_counter() < warm_until:
                run(x)
            times = []
            for _ in range(min(block, runs - r * block)):
                start = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - start)
            samples[name].append(np.asarray(times))
            time.sleep(settle_s)
    return samples


def paired_ratio(path: list[np.ndarray], base: list[np.ndarray], quantile: float = 0.5) -> float:
    """Median (or another `quantile`) over rounds of (the path's median time / the baseline's, in
    the same round).

    A shared machine changes speed over seconds; comparing within a round cancels that,
    where a ratio of two overall medians would compare different moments.
    """
    return float(np.quantile([np.median(p) / np.median(b) for p, b in zip(path, base)], quantile))
