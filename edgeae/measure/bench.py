"""Side-by-side speed: every deployment path timed in one run, interleaved, against a named baseline.

Timing rounds visit every path in turn (in short blocks), so drift on a shared machine
hits all paths alike. Keras and TensorFlow are imported only when Keras paths are asked for; over ONNX
files this needs nothing beyond the runtime install.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.files import as_path
from edgeae.contract.manifest import read_export_manifest, read_manifest, verify_file, verify_files
from edgeae.contract.records import Manifest
from edgeae.contract.checks import is_whole
from edgeae.contract.errors import IntegrityError, UsageError
from edgeae.contract.layout import KERAS_FILE, ROLES
from edgeae.contract.variants import serving_files
from edgeae.data.windows import Preprocessing
from edgeae.measure.timing import Routes, cpu_description, cpu_line, load_average, onnx_model, paired_ratio, time_rounds
from edgeae.runtime.providers import check_threads
from edgeae.runtime.routes import batch_routes
from edgeae.trainer import model as km

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


def onnx_paths(folder: Path, manifest: Manifest) -> list[tuple[str, str, Path, Routes]]:
    """(name, role, file, its batch routes) for every model the export lists, baseline first.

    Graphs the runtime runs for some batch sizes of a variant are timed inside the path they
    serve (named `file+b1+unrolled`), since that is what an application loading it gets.
    """
    routes: dict[str, Routes] = {}
    for role, entry in manifest.all_variants():
        if entry.routes:
            routes[entry.file] = [(a, b, folder / f) for a, b, f in batch_routes(manifest, role, entry.name)]
    # A one-window or unrolled graph exists only to serve its sizes; the yardstick and the portable graph
    # (a variant in its own right, for other runtimes) are timed alone too.
    baselines = {by_name["plain"].file for by_name in manifest.variants.values() if "plain" in by_name}
    served = {path.name for found in routes.values() for _, _, path in found} & serving_files()
    paths = []
    for name in manifest.files:
        role = name.split(".")[0]
        if name.endswith((".onnx", ".ort")) and name not in served and role in ROLES:
            found = routes.get(name, [])
            label = "+".join(dict.fromkeys([name, *(path.name.split(".")[-2] for _, _, path in found)]))
            paths.append((label, role, folder / name, found))
    return sorted(paths, key=lambda t: (t[1], t[2].name not in baselines, t[0]))


def _onnx_runner(path: Path, routes: Routes, threads: int | None, baseline: bool,
                 manifest: Manifest) -> Callable[[np.ndarray], Any]:
    """The baseline is what a user gets by hand: one onnxruntime session, one run per batch.
    edgeae's own files run through `edgeae.runtime`, as an application would use them."""
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
    tf, _ = km.import_keras()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process
    manifest = read_manifest(folder)
    pre = Preprocessing.from_dict(manifest.preprocessing)
    autoencoder, encoder = km.load(folder / KERAS_FILE)
    net = autoencoder if role == "autoencoder" else encoder
    post = pre.invert if role == "autoencoder" else (lambda y, _: y)
    graph = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    xla = tf.function(lambda x: net(x, training=False), jit_compile=True, reduce_retracing=True)
    return {
        "keras-predict": lambda x: post(net.predict(pre.apply(x), batch_size=len(x), verbose=0), x),
        "keras-tf.function": lambda x: post(graph(pre.apply(x)).numpy(), x),
        "keras-tf.function-xla": lambda x: post(xla(pre.apply(x)).numpy(), x),
    }


_COLD_CHILD = """
import sys, time, json, resource
from pathlib import Path
kind, folder, target, batch, routes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
import numpy as np
from edgeae.contract.manifest import read_manifest
if kind == "onnx":
    from edgeae.measure.timing import onnx_model
    m = onnx_model(Path(target), [(a, b, Path(f)) for a, b, f in routes], None, read_manifest(Path(folder)))
    x = np.zeros((batch, m.timesteps, m.features), np.float32)
    m.run_windows(x)
else:
    from edgeae.measure.bench import _keras_runners
    role, path = target.split(":")
    run = _keras_runners(Path(folder), role, None)[path]
    w = read_manifest(Path(folder)).window
    run(np.zeros((batch, w.timesteps, w.features), np.float32))
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


@dataclass(frozen=True)
class BenchOptions:
    """What `edgeae bench` asks run_bench to time, built once by the command (or by a caller of the
    API); run_bench checks every field before anything loads, as the CLI's option types would.

    `keras` adds the Keras paths, `cold` the cold start and peak memory of each path in a fresh
    process, `training` Keras training of the export's model shape with and without XLA.
    """

    keras: bool = False
    runs: int = 200
    warmup: int = 10
    threads: int | None = None
    batches: tuple[int, ...] = DEFAULT_BATCHES
    cold: bool = True
    roles: tuple[str, ...] = ("autoencoder", "encoder")
    training: bool = False


def _check_options(options: BenchOptions) -> None:
    """Refuse, before anything loads, options the CLI's option types would have refused."""
    keras, cold, runs, warmup = options.keras, options.cold, options.runs, options.warmup
    batches, roles, training = options.batches, options.roles, options.training
    if not isinstance(keras, (bool, np.bool_)) or not isinstance(cold, (bool, np.bool_)):
        raise UsageError(f"keras and cold must be True or False, got {keras!r} and {cold!r}")
    if not is_whole(runs, 3) or not is_whole(warmup, 0):
        raise UsageError(f"runs must be a whole number of at least 3 and warm-up one of at least 0, "
                         f"got {runs!r} and {warmup!r}")
    check_threads(options.threads)
    if not isinstance(batches, (tuple, list)) or not batches or not all(is_whole(b, 1, MAX_BATCH) for b in batches):
        raise UsageError(f"batch sizes must be a non-empty list of whole numbers from 1 to {MAX_BATCH}, got {batches!r}")
    if not isinstance(roles, (tuple, list)) or not roles or not set(roles) <= set(ROLES):
        raise UsageError(f"roles must be a non-empty list of {', '.join(ROLES)}, got {roles!r}")
    if not isinstance(training, (bool, np.bool_)):
        raise UsageError(f"training must be True or False, got {training!r}")


def run_bench(folder: Path, options: BenchOptions = BenchOptions(),
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Time every path of an export folder (and Keras, if asked), side by side; with `options.training`,
    also Keras training of the export's model shape with and without XLA (bench_training)."""
    _check_options(options)
    keras, runs, warmup, threads = options.keras, options.runs, options.warmup, options.threads
    batches = tuple(dict.fromkeys(int(b) for b in options.batches))  # each timed once, as plain ints for the JSON
    roles = tuple(dict.fromkeys(options.roles))
    folder = as_path(folder, "export folder")
    manifest = read_export_manifest(folder)
    verify_files(folder, manifest)
    window = manifest.window
    units = int(manifest.units)
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
            verify_file(folder, other.name, manifest.files.get(other.name))  # as the runtime's load does
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
        flops = model_flops(role, window.timesteps, window.features, units)
        shape = (window.timesteps, window.features)
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
        if options.cold:
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
    if options.training:
        trained = bench_training(km.TrainConfig.from_dict(manifest.training.config), progress=say)
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
            result = km.train(run, x, progress=epoch_ended, xla=name == "keras-xla")
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

