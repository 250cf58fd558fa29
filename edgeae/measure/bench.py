"""Side-by-side speed: every deployment path timed in one run, interleaved, against a named baseline.

Timing rounds visit every path in turn (in short blocks), so drift on a shared machine
hits all paths alike. Keras and TensorFlow are imported only when Keras paths are asked for; over ONNX
files this needs nothing beyond the runtime install.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.files import as_path, read_manifest, verify_file, verify_files
from edgeae.contract.checks import is_whole
from edgeae.contract.errors import IntegrityError, UsageError
from edgeae.contract.layout import KERAS_FILE, ROLES
from edgeae.contract.variants import serving_files

DEFAULT_BATCHES = (64, 4096)
# One batch is allocated whole (and fed whole to the baseline session): past this it
# measures the machine's memory, not the model, and can exhaust it.
MAX_BATCH = 65536
KERAS_PATHS = ("keras-predict", "keras-tf.function", "keras-tf.function-xla")
XLA_PATH = KERAS_PATHS[2]  # the best a Keras user can do: the yardstick the speed goals name


def lstm_flops(inputs: int, units: int, steps: int) -> int:
    """Multiply-adds of one LSTM over a sequence, counted as 2 FLOPs each (4 gates)."""
    return 2 * 4 * units * (inputs + units) * steps


def model_flops(role: str, timesteps: int, features: int, units: int) -> int:
    """FLOPs per sequence: 2.45 M for the seed autoencoder, 0.84 M for its encoder."""
    encoder = lstm_flops(features, units, timesteps)
    if role == "encoder":
        return encoder
    return encoder + lstm_flops(units, units, timesteps) + 2 * units * features * timesteps


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matmul rate in FLOP/s (best of a few), the yardstick for throughput."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


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


@dataclass
class PathResult:
    """One deployment path's figures; ratios are against the baseline of the same role."""

    name: str
    role: str
    kind: str
    size_bytes: int | None
    latency_us_median: float | None = None
    latency_us_p99: float | None = None
    throughput: dict[str, float] = field(default_factory=dict)  # batch -> sequences/s
    percent_of_matmul: dict[str, float] = field(default_factory=dict)
    latency_ratio: float | None = None
    throughput_ratio: dict[str, float] = field(default_factory=dict)
    # how many times faster than Keras under tf.function with XLA ("1": batch-1 latency; else throughput)
    versus_xla: dict[str, float] = field(default_factory=dict)
    cold_start_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None


@dataclass
class TrainingResult:
    """Keras `fit` of one model shape with and without XLA-compiled steps, timed in alternation.

    The first epoch holds the tracing (and XLA's compiling); later epochs are the steady rate.
    `run_s` is what a whole run of the export's epochs costs at those rates.
    """

    shape: str
    windows: int
    batch_size: int
    epochs_timed: int
    first_epoch_s: dict[str, float]
    epochs_per_s: dict[str, float]
    run_s: dict[str, float]
    run_epochs: int
    final_loss: dict[str, float]
    speedup: float  # steady epochs/s with XLA over without, median of the pairs
    xla_ran: bool  # False: XLA failed here and the run fell back

    def line(self) -> str:
        k, x = "keras", "keras-xla"
        return (f"training {self.shape}, {self.windows:,} windows, batch {self.batch_size}: "
                f"{self.epochs_per_s[k]:.2f} -> {self.epochs_per_s[x]:.2f} epochs/s ({self.speedup:.2f}x"
                f"{'' if self.xla_ran else ', XLA failed here: fell back'}); first epoch {self.first_epoch_s[k]:.1f} s"
                f" -> {self.first_epoch_s[x]:.1f} s; {self.run_epochs} epochs {self.run_s[k]:.0f} s -> {self.run_s[x]:.0f} s;"
                f" final loss {self.final_loss[k]:.4e} vs {self.final_loss[x]:.4e}")


@dataclass
class BenchReport:
    machine_matmul_gflops: float
    runs: int
    threads: int | None
    batches: tuple[int, ...]
    baseline: dict[str, str]
    results: list[PathResult]
    cpu: dict[str, Any] = field(default_factory=cpu_description)
    load_average: tuple[float, float, float] | None = None  # at the end of the run: other work on the machine
    training: TrainingResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "results": [asdict(r) for r in self.results]}

    def table(self) -> str:
        head = (f"{'path':42} {'size KB':>8} {'b1 med us':>10} {'b1 p99 us':>10} {'x base':>7}"
                + "".join(f" {'b' + str(b) + ' seq/s':>13} {'x base':>7} {'%mm':>5}" for b in self.batches)
                + f" {'cold s':>7} {'peak MB':>8}")
        load = (f"; load average {' '.join(f'{v:.2f}' for v in self.load_average)}"
                if self.load_average else "")
        lines = [f"CPU: {cpu_line(self.cpu)}{load}", f"float32 matmul rate: {self.machine_matmul_gflops:.0f} GFLOP/s; baselines: "
                 + ", ".join(f"{r} = {n}" for r, n in self.baseline.items())
                 + "; x base: median of per-round ratios to the baseline", head, "-" * len(head)]
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        for r in self.results:
            if r.error:
                lines.append(f"{r.role + '/' + r.name:42} failed: {r.error}")
                continue
            row = (f"{r.role + '/' + r.name:42} {fmt(r.size_bytes and r.size_bytes / 1024, '8.0f'):>8} "
                   f"{fmt(r.latency_us_median, '10.1f'):>10} {fmt(r.latency_us_p99, '10.1f'):>10} "
                   f"{fmt(r.latency_ratio, '7.2f'):>7}")
            for b in self.batches:
                key = str(b)
                row += (f" {fmt(r.throughput.get(key), '13,.0f'):>13} {fmt(r.throughput_ratio.get(key), '7.2f'):>7}"
                        f" {fmt(r.percent_of_matmul.get(key), '5.1f'):>5}")
            row += f" {fmt(r.cold_start_s, '7.2f'):>7} {fmt(r.peak_rss_mb, '8.0f'):>8}"
            lines.append(row)
        if self.training:
            lines.append(self.training.line())
        faster = [r for r in self.results if r.versus_xla]
        if faster:
            lines.append(f"times faster than {XLA_PATH} (from the paired ratios):")
            lines += [f"  {r.role + '/' + r.name:42} " + ", ".join(
                f"{'b' + key:>6} {value:6.2f}x" for key, value in r.versus_xla.items()) for r in faster]
        return "\n".join(lines)


# ---------------------------------------------------------------- the paths


Routes = list[tuple[int, int | None, Path]]  # (first, last batch size, file) the runtime hands to another graph


def onnx_paths(folder: Path, manifest: dict) -> list[tuple[str, str, Path, Routes]]:
    """(name, role, file, its batch routes) for every model the export lists, baseline first.

    Graphs the runtime runs for some batch sizes of a variant are timed inside the path they
    serve (named `file+b1+unrolled`), since that is what an application loading it gets.
    """
    from edgeae.runtime import batch_routes

    routes: dict[str, Routes] = {}
    for role, by_name in (manifest.get("variants") or {}).items():
        for name, entry in by_name.items():
            if isinstance(entry, dict) and entry.get("by_batch"):
                routes[entry["file"]] = [(a, b, folder / f) for a, b, f in batch_routes(manifest, role, name)]
    # A one-window or unrolled graph exists only to serve its sizes; the yardstick and the portable graph
    # (a variant in its own right, for other runtimes) are timed alone too.
    baselines = {((by_name.get("plain") or {}).get("file")) for by_name in (manifest.get("variants") or {}).values()}
    served = {path.name for found in routes.values() for _, _, path in found} & serving_files()
    paths = []
    for name in manifest["files"]:
        role = name.split(".")[0]
        if name.endswith((".onnx", ".ort")) and name not in served and role in ROLES:
            found = routes.get(name, [])
            label = "+".join(dict.fromkeys([name, *(path.name.split(".")[-2] for _, _, path in found)]))
            paths.append((label, role, folder / name, found))
    return sorted(paths, key=lambda t: (t[1], t[2].name not in baselines, t[0]))


def onnx_model(path: Path, routes: Routes, threads: int | None, manifest: dict) -> Any:
    """An edgeae file as an application loads it from its export folder: the runtime's model,
    with its batch routes and what the manifest proves about its values."""
    from edgeae.runtime import OnnxModel, manifest_sizes, proven_finite, routed_chunk, variant_of_file

    role = path.name.split(".")[0]
    sizes = manifest_sizes(manifest)
    model = OnnxModel(path, "cpu", threads=threads, role=role, **sizes)
    for first, last, other in routes:
        model.route(OnnxModel(other, "cpu", threads=threads, role=role, **sizes), first, last)
    variant = variant_of_file(manifest, role, path.name)
    model.chunk = routed_chunk(manifest, role, variant)
    model.set_proven_finite(proven_finite(manifest, role, variant))
    return model


def _onnx_runner(path: Path, routes: Routes, threads: int | None, baseline: bool,
                 manifest: dict) -> Callable[[np.ndarray], Any]:
    """The baseline is what a user gets by hand: one onnxruntime session, one run per batch.
    edgeae's own files run through `edgeae.runtime`, as an application would use them."""
    import onnxruntime as ort

    if baseline:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    return onnx_model(path, routes, threads, manifest).run_windows


def _keras_runners(folder: Path, role: str, threads: int | None) -> dict[str, Callable[[np.ndarray], Any]]:
    """Keras predict, and the model under tf.function with and without XLA; raw in, raw out."""
    from edgeae.trainer import model as km
    from edgeae.data.series import Preprocessing

    tf, _ = km.import_keras()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process
    manifest = read_manifest(folder)
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    autoencoder, encoder = km.load(folder / KERAS_FILE)
    net = autoencoder if role == "autoencoder" else encoder
    post = pre.invert if role == "autoencoder" else (lambda y: y)
    graph = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    xla = tf.function(lambda x: net(x, training=False), jit_compile=True, reduce_retracing=True)
    return {
        "keras-predict": lambda x: post(net.predict(pre.apply(x), batch_size=len(x), verbose=0)),
        "keras-tf.function": lambda x: post(graph(pre.apply(x)).numpy()),
        "keras-tf.function-xla": lambda x: post(xla(pre.apply(x)).numpy()),
    }


_COLD_CHILD = """
import sys, time, json, resource
kind, folder, target, batch, routes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
import numpy as np
if kind == "onnx":
    from pathlib import Path
    from edgeae.contract.files import read_manifest
    from edgeae.measure.bench import onnx_model
    m = onnx_model(Path(target), [(a, b, Path(f)) for a, b, f in routes], None, read_manifest(Path(folder)))
    x = np.zeros((batch, m.timesteps, m.features), np.float32)
    m.run_windows(x)
else:
    from edgeae.measure.bench import _keras_runners
    role, path = target.split(":")
    run = _keras_runners(__import__("pathlib").Path(folder), role, None)[path]
    from edgeae.contract.files import read_manifest
    w = read_manifest(__import__("pathlib").Path(folder))["window"]
    run(np.zeros((batch, w["timesteps"], w["features"]), np.float32))
done = time.time()
try:  # VmHWM is this process image's own peak; ru_maxrss would include the parent's, inherited over fork
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"done": done, "peak_rss_kb": peak}))
"""


def cold_start(kind: str, folder: Path, target: str, batch: int = 64, routes: Routes = ()) -> tuple[float, float]:
    """Process start to first result (s), and the process's peak RSS (MB), in a fresh interpreter."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.time()
    routes_arg = json.dumps([(a, b, str(f)) for a, b, f in routes])
    proc = subprocess.run([sys.executable, "-c", _COLD_CHILD, kind, str(folder), target, str(batch), routes_arg],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["done"] - start, out["peak_rss_kb"] / 1024


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


def _check_arguments(runs: Any, warmup: Any, threads: Any, batches: Any, roles: Any, keras: Any, cold: Any) -> None:
    """Refuse, before anything loads, arguments the CLI's option types would have refused."""
    from edgeae.runtime import check_threads

    if not isinstance(keras, (bool, np.bool_)) or not isinstance(cold, (bool, np.bool_)):
        raise UsageError(f"keras and cold must be True or False, got {keras!r} and {cold!r}")
    if not is_whole(runs, 3) or not is_whole(warmup, 0):
        raise UsageError(f"runs must be a whole number of at least 3 and warm-up one of at least 0, "
                         f"got {runs!r} and {warmup!r}")
    check_threads(threads)
    if not isinstance(batches, (tuple, list)) or not batches or not all(is_whole(b, 1, MAX_BATCH) for b in batches):
        raise UsageError(f"batch sizes must be a non-empty list of whole numbers from 1 to {MAX_BATCH}, got {batches!r}")
    if not isinstance(roles, (tuple, list)) or not roles or not set(roles) <= set(ROLES):
        raise UsageError(f"roles must be a non-empty list of {', '.join(ROLES)}, got {roles!r}")


def run_bench(folder: Path, keras: bool = False, runs: int = 200, warmup: int = 10, threads: int | None = None,
              batches: tuple[int, ...] = DEFAULT_BATCHES, cold: bool = True, roles: tuple[str, ...] = ("autoencoder", "encoder"),
              progress: Callable[[str], None] | None = None, training: bool = False) -> BenchReport:
    """Time every path of an export folder (and Keras, if asked), side by side; with `training`, also
    Keras training of the export's model shape with and without XLA (bench_training)."""
    from edgeae.contract.files import read_export_manifest

    _check_arguments(runs, warmup, threads, batches, roles, keras, cold)
    if not isinstance(training, (bool, np.bool_)):
        raise UsageError(f"training must be True or False, got {training!r}")
    batches = tuple(dict.fromkeys(int(b) for b in batches))  # each timed once, as plain ints for the JSON
    roles = tuple(dict.fromkeys(roles))
    folder = as_path(folder, "export folder")
    manifest = read_export_manifest(folder)
    verify_files(folder, manifest)
    window = manifest["window"]
    units = int(manifest["training"]["config"]["units"])
    say = progress or (lambda _msg: None)
    rate = matmul_rate()
    results: list[PathResult] = []
    baseline: dict[str, str] = {}
    for role in roles:
        candidates = [p for p in onnx_paths(folder, manifest) if p[1] == role]
        if not candidates:
            continue
        baseline[role] = candidates[0][0]
        runners: dict[str, Callable] = {}
        entries: dict[str, PathResult] = {}
        files = {name: (path, routes) for name, _, path, routes in candidates}
        for _, _, other in (route for _, routes in files.values() for route in routes):
            verify_file(folder, other.name, manifest["files"].get(other.name))  # as the runtime's load does
        for name, (path, routes) in files.items():
            size = path.stat().st_size + sum(other.stat().st_size for _, _, other in routes)  # what a device stores
            try:
                runners[name] = _onnx_runner(path, routes, threads, name == baseline[role], manifest)
            except Exception as exc:  # a variant this onnxruntime cannot run is reported, not fatal
                entries[name] = PathResult(name, role, "onnx", size, error=str(exc).splitlines()[0][:160])
                continue
            entries[name] = PathResult(name, role, "onnx", size)
        if entries[baseline[role]].error:
            raise IntegrityError(f"{baseline[role]}: the baseline cannot be run here, so nothing can be compared "
                                 f"with it: {entries[baseline[role]].error}")
        if keras:
            for name, runner in _keras_runners(folder, role, threads).items():
                runners[name] = runner
                entries[name] = PathResult(name, role, "keras", (folder / KERAS_FILE).stat().st_size)
        flops = model_flops(role, window["timesteps"], window["features"], units)
        shape = (window["timesteps"], window["features"])
        rng = np.random.default_rng(0)
        say(f"{role}: batch 1, {runs} timed runs per path, interleaved over {len(runners)} paths")
        latency = time_rounds(runners, rng.uniform(0, 1, (1, *shape)).astype(np.float32), runs, warmup)
        for name, rounds in latency.items():
            s = np.concatenate(rounds)
            entries[name].latency_us_median = float(np.median(s) * 1e6)
            entries[name].latency_us_p99 = float(np.percentile(s, 99) * 1e6)
        timed = {}  # throughput rounds by batch size, kept apart from the latency rounds even for --batch 1
        for batch in batches:
            big_runs = max(5, min(runs, int(runs * 64 / batch) + 5))
            say(f"{role}: batch {batch}, {big_runs} timed runs per path, interleaved")
            timed[batch] = time_rounds(runners, rng.uniform(0, 1, (batch, *shape)).astype(np.float32), big_runs,
                                        min(warmup, 2))
            for name, rounds in timed[batch].items():
                seq_s = batch / float(np.median(np.concatenate(rounds)))
                entries[name].throughput[str(batch)] = seq_s
                entries[name].percent_of_matmul[str(batch)] = 100 * seq_s * flops / rate
        base = baseline[role]
        for name in runners:
            entries[name].latency_ratio = paired_ratio(latency[name], latency[base])
            entries[name].throughput_ratio = {str(b): 1 / paired_ratio(timed[b][name], timed[b][base]) for b in batches}
            if XLA_PATH in runners and entries[name].kind == "onnx":
                entries[name].versus_xla = {"1": paired_ratio(latency[XLA_PATH], latency[name]), **{  # b1: latency
                    str(b): paired_ratio(timed[b][XLA_PATH], timed[b][name]) for b in batches if b != 1}}
        if cold:
            for name, entry in entries.items():
                if entry.error:
                    continue
                say(f"{role}: cold start of {name}")
                try:
                    path, routes = files.get(name, (None, []))
                    target = str(path) if entry.kind == "onnx" else f"{role}:{name}"
                    entry.cold_start_s, entry.peak_rss_mb = cold_start(entry.kind, folder, target, routes=routes)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    entry.error = f"cold start failed: {exc}"[:160]
        results.extend(entries.values())
    if not results:
        raise UsageError(f"{folder}: no autoencoder or encoder ONNX files to benchmark")
    trained = None
    if training:
        from edgeae.trainer.model import TrainConfig

        trained = bench_training(TrainConfig.from_dict(manifest["training"]["config"]), progress=say)
    return BenchReport(rate / 1e9, runs, threads, tuple(batches), baseline, results, load_average=load_average(),
                       training=trained)


TRAINING_WINDOWS = 1769  # the user's run the issue measured (64 x 9 x 32 tanh)
TRAINING_EPOCHS = 4


def training_windows(timesteps: int, features: int, count: int = TRAINING_WINDOWS, seed: int = 0) -> np.ndarray:
    """`count` standardized windows of a smooth, noisy series: work like a user's, cut with stride 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(count + timesteps - 1)[:, None] / 17.0
    series = np.sin(t * np.linspace(0.5, 2.0, features) + rng.uniform(0, 6, features))
    series += 0.1 * rng.standard_normal(series.shape)
    windows = np.lib.stride_tricks.sliding_window_view(series, timesteps, axis=0).transpose(0, 2, 1)
    return ((windows - series.mean(0)) / series.std(0)).astype(np.float32)


def bench_training(config: Any, count: int = TRAINING_WINDOWS, epochs: int = TRAINING_EPOCHS, pairs: int = 1,
                   progress: Callable[[str], None] | None = None) -> TrainingResult:
    """Train `config`'s model shape for `epochs` on `count` windows without and with XLA, `pairs` times
    in alternation (a loaded machine slows both alike), timing each epoch from its progress call."""
    from dataclasses import replace

    from edgeae.trainer.model import train

    if not is_whole(count, 1) or not is_whole(epochs, 2) or not is_whole(pairs, 1):
        raise UsageError(f"training bench needs at least 1 window, 2 epochs and 1 pair, got {count!r}, {epochs!r}, {pairs!r}")
    say = progress or (lambda _msg: None)
    run = replace(config, epochs=epochs, validation_fraction=0.0, patience=0)
    x = training_windows(config.timesteps, config.features, count)
    first: dict[str, list[float]] = {"keras": [], "keras-xla": []}
    steady: dict[str, list[float]] = {"keras": [], "keras-xla": []}
    loss: dict[str, float] = {}
    xla_ran = True
    for _ in range(pairs):
        for name in first:
            say(f"training: {name}, {epochs} epochs of {count} windows")
            ends: list[float] = []

            def epoch_ended(epoch: int | None, _logs: dict[str, float], ends: list[float] = ends) -> None:
                if epoch is not None:
                    ends.append(time.perf_counter())

            start = time.perf_counter()
            result = train(run, x, progress=epoch_ended, xla=name == "keras-xla")
            xla_ran &= result.xla or name == "keras"
            first[name].append(ends[0] - start)
            steady[name].append(float(np.median(np.diff(ends))))
            loss[name] = result.history["loss"][-1]
    rate = {name: 1 / float(np.median(times)) for name, times in steady.items()}
    first_s = {name: float(np.median(times)) for name, times in first.items()}
    return TrainingResult(
        f"{config.timesteps}x{config.features}x{config.units} {config.activation}", count, config.batch_size, epochs,
        first_s, rate, {name: first_s[name] + (config.epochs - 1) / rate[name] for name in rate}, config.epochs, loss,
        float(np.median([k / x for k, x in zip(steady["keras"], steady["keras-xla"])])), xla_ran)


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, where the system tells them."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None
