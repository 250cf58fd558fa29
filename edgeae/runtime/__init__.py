"""What applications and edge devices run: numpy + onnxruntime, nothing else.

Load an exported model set (a folder with a manifest, checked file by file) or a single
`.onnx` file, choose execution providers honestly, check every input before onnxruntime
sees it, and run in bounded chunks. This module must never import TensorFlow, Keras,
tf2onnx or click: a test proves it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.files import read_export_manifest, verify_file
from edgeae.contract.checks import check_threshold, is_whole
from edgeae.contract.errors import DataError, InferenceError, IntegrityError, ParityError, ProviderError, ShapeError, UsageError
from edgeae.contract.layout import ROLES
from edgeae.contract.variants import DEFAULT_VARIANT, SELF_CHECKED

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Every provider onnxruntime knows (installed or not), by its full name or short ("cpu", "cuda", "tensorrt").
KNOWN_PROVIDERS = {key: name for name in ort.get_all_providers()
                   for key in (name.lower(), name.lower().removesuffix("executionprovider"))}
DEFAULT_CHUNK = 256  # windows per session.run where the manifest measured no other (routing.py)
MAX_THREADS = 1024
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
MAX_MODEL_BYTES = 2 * 1024**3
FINITE_PROOF_LIMIT = 1e30  # float32 tops out at 3.4e38: a proven bound below this leaves 8 orders of magnitude

ort.set_default_logger_severity(3)  # onnxruntime's own warnings are replaced by edgeae's errors


# ---------------------------------------------------------------- providers


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Turn "auto" / "cpu" / "cuda" (or full provider names) into onnxruntime's list.

    onnxruntime only warns and runs on the CPU when CUDA is missing; edgeae refuses instead
    when CUDA was asked for explicitly. CUDA always keeps the CPU behind it, since the CUDA
    provider hands some nodes (relu LSTMs) back to the CPU.
    """
    available = available_providers()
    if isinstance(providers, str) and providers.strip().lower() == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    requested = [providers] if isinstance(providers, str) else providers
    if not isinstance(requested, (list, tuple)) or not all(isinstance(p, str) for p in requested):
        raise UsageError(f"providers must be a name or a list of names (auto, cpu, cuda), got {providers!r}")
    if not requested:
        raise ProviderError("no execution provider requested")
    names = []
    for given in requested:
        name = KNOWN_PROVIDERS.get(given.strip().lower())
        if name is None:
            shorts = sorted({key for key in KNOWN_PROVIDERS if not key.endswith("executionprovider")} - {"cpu", "cuda"})
            raise UsageError(f"unknown execution provider {given!r}: expected auto, cpu, cuda, or another that "
                             f"onnxruntime knows ({', '.join(shorts)}, or its full name)")
        if name not in names:  # a provider named twice is asked for once
            names.append(name)
    for name in names:
        if name not in available:
            raise ProviderError(f"{name} requested; available: {', '.join(available)}")
    if CPU not in names:
        names.append(CPU)
    return names


# ---------------------------------------------------------------- input checks


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value is finite: one sum of squares (a BLAS call, 0.5 µs for a window) is
    finite exactly when every value is, barring squares past float32's range; only a sum that
    is not pays for the exact element-wise check."""
    return math.isfinite(np.vdot(array, array)) or bool(np.isfinite(array).all())


def real_array(x: Any, expected: str) -> np.ndarray:
    """`x` as a numpy array of real numbers (any shape), or the one-line error that says why not:
    text, a dict, None, masked values, ragged or non-numeric input, booleans or complex numbers."""
    if isinstance(x, (str, bytes, dict, set)) or x is None:
        raise DataError(f"expected {expected}, got {type(x).__name__}")
    if np.ma.isMaskedArray(x) and np.ma.getmaskarray(x).any():
        raise DataError("input has masked (missing) values")
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"expected {expected}; could not read one: {exc}") from None
    if array.dtype == object:
        raise ShapeError(f"expected {expected}; could not read one: ragged or non-numeric input")
    if array.dtype.kind not in "iuf":
        raise DataError(f"expected real numbers, got dtype {array.dtype}")
    return array


def as_windows(x: Any, timesteps: int, features: int) -> tuple[np.ndarray, bool]:
    """Check raw input and return (float32 C-contiguous (n, timesteps, features), was_single).

    Every way a caller can get this wrong ends here, with expected and actual named,
    before onnxruntime is called.
    """
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim in (2, 3) and x.shape[-2:] == (timesteps, features):
        # The common call, and the one a single window's latency pays for; what fails here
        # goes on to the checks below, which name the bad value.
        windows = np.ascontiguousarray(x if x.ndim == 3 else x[None])
        if _all_finite(windows):
            return windows, x.ndim == 2
    expected = f"(batch, {timesteps}, {features}) or ({timesteps}, {features})"
    array = real_array(x, f"a numeric array {expected}")
    if array.ndim not in (2, 3):
        raise ShapeError(f"expected {expected}, got {tuple(array.shape)}")
    single = array.ndim == 2
    if single:
        array = array[None]
    if array.shape[1:] != (timesteps, features):
        raise ShapeError(f"expected {expected}, got {tuple(array.shape[1 if single else 0:])}")
    if array.dtype == np.float32:  # the common case: no conversion can overflow
        converted = np.ascontiguousarray(array)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(converted).all():
        n, t, f = (int(i) for i in np.argwhere(~np.isfinite(converted))[0])
        original = array[n, t, f]
        reason = "does not fit in float32" if np.isfinite(original) else "is not finite"
        where = f"step {t}, feature {f}" if single else f"window {n}, step {t}, feature {f}"
        raise DataError(f"input value {original!r} at {where} {reason}")
    return converted, single


def check_chunk(chunk: Any) -> int:
    """A chunk size as a Python int: a numpy uint8 of 200 would wrap around in the chunk arithmetic."""
    if not is_whole(chunk, 1):
        raise UsageError(f"chunk size must be a whole number of at least 1, got {chunk!r}")
    return int(chunk)


def check_threads(threads: Any) -> None:
    """None (onnxruntime's default) or a plausible thread count: 0, 1.5 or True would otherwise
    be taken silently, a huge number fail deep inside onnxruntime's bindings."""
    if threads is not None and not is_whole(threads, 1, MAX_THREADS):
        raise UsageError(f"threads must be a whole number from 1 to {MAX_THREADS} (or None for the default), "
                         f"got {threads!r}")


# ---------------------------------------------------------------- one ONNX model


def _check_domains(path: Path) -> None:
    """Refuse models with custom operator domains or external data pointing anywhere else."""
    try:
        import onnx  # optional here: the workstation has it; a device relies on the manifest hash
    except ImportError:
        return
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise IntegrityError(f"{path.name}: not a valid ONNX model") from None
    domains = {n.domain for n in proto.graph.node}
    if not domains <= ALLOWED_DOMAINS:
        raise IntegrityError(f"{path.name}: uses operator domains edgeae does not produce: {sorted(domains - ALLOWED_DOMAINS)}")
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise IntegrityError(f"{path.name}: refers to external data ({tensor.name}); edgeae exports are self-contained")


def _fast_run(session: ort.InferenceSession) -> Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]:
    """session.run without its per-call wrapper work, when the binding exposes it.

    onnxruntime's Python `run` re-validates the feed names and retries on a provider
    failure with its fallback providers on every call; edgeae feeds checked inputs by their
    known name and never falls back silently, so it calls the binding directly (1.5-2 µs of
    a 30 µs call here), and the public method where a build has no such binding.
    """
    binding = getattr(session, "_sess", None)
    if binding is None or not callable(getattr(binding, "run", None)):
        return session.run
    options = ort.RunOptions()
    return lambda names, feed: binding.run(names, feed, options)


class _BoundWindow:
    """One window through input and output buffers bound to the session once per thread.

    At batch 1 the per-call cost outside the graph is what is left to cut: a run over
    buffers bound in advance skips building the feed and allocating the result (about
    2 µs of a 54 µs autoencoder call here). Each thread has its own buffers, so
    concurrent calls never share one; the caller gets a copy, never the buffer itself.
    """

    def __init__(self, session: ort.InferenceSession, input_name: str, input_shape: tuple[int, ...],
                 outputs: list[tuple[str, tuple[int, ...]]]) -> None:
        self._session, self._input_name, self._input_shape, self._outputs = session, input_name, input_shape, outputs
        self._local = threading.local()

    def _bind(self, output: int) -> tuple[np.ndarray, np.ndarray, Callable[[], None]]:
        """The buffers and the run for `output` alone: only what is asked for is computed into them."""
        binding = self._session.io_binding()
        feed = np.empty(self._input_shape, dtype=np.float32)
        binding.bind_input(self._input_name, "cpu", 0, np.float32, feed.shape, feed.ctypes.data)
        name, shape = self._outputs[output]
        result = np.empty(shape, dtype=np.float32)
        binding.bind_output(name, "cpu", 0, np.float32, shape, result.ctypes.data)
        raw, options = getattr(binding, "_iobinding", None), ort.RunOptions()
        options.log_severity_level = 4  # a failure here is retried on the plain path, which reports it
        if raw is not None and hasattr(self._session, "_sess"):
            session = self._session._sess
            run = lambda: session.run_with_iobinding(raw, options)  # noqa: E731
        else:
            run = lambda: self._session.run_with_iobinding(binding, options)  # noqa: E731
        if not hasattr(self._local, "bound"):
            self._local.bound = {}
        self._local.bound[output] = (feed, result, run)
        return feed, result, run

    def run(self, window: np.ndarray, output: int) -> np.ndarray:
        """Output `output` for one checked window; any failure raises, for the plain path to report."""
        bound = getattr(self._local, "bound", None)
        feed, result, run = bound[output] if bound and output in bound else self._bind(output)
        if window.shape != feed.shape:  # copyto would broadcast a part of a window to the whole
            raise ShapeError(f"a window of shape {window.shape}, expected {feed.shape}")
        np.copyto(feed, window, casting="equiv")  # float32 in any byte order; anything else is refused
        run()
        return result.copy()


def _shape_text(shape: Sequence[Any]) -> str:
    """A declared shape as people write it: (batch, 10, 5), an unknown dimension as ?."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class OnnxModel:
    """One onnxruntime session over an edgeae model, with its input and output contract.

    `role` ("autoencoder" or "encoder") is what the caller loads the graph as; by default the
    graph's own metadata, else its first output's rank. `window` (timesteps, features) and
    `units` are what the caller's manifest says the graph reads and encodes to: a graph of
    another model, swapped in and resealed, is refused at load and on every run.
    """

    def __init__(self, source: Path | bytes, providers: str | Sequence[str] = "auto",
                 threads: int | None = None, name: str | None = None, role: str | None = None,
                 window: tuple[int, int] | None = None, units: int | None = None) -> None:
        self.providers_requested = resolve_providers(providers)
        check_threads(threads)
        self.name = name or (Path(source).name if isinstance(source, (str, Path)) else "model")
        self._source = source
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = self._open(options)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise IntegrityError(f"{self.name}: expected one input, found {len(inputs)}")
        spec = inputs[0]
        if spec.shape and spec.shape[0] == 1:
            # A one-window graph: a batch of one never splits across threads, and its few small
            # buffers come sooner from malloc than from the arena (about 1 µs of 54 here).
            options.enable_cpu_mem_arena = False
            if threads is None:
                options.intra_op_num_threads = 1
            self.session = self._open(options)
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if spec.type != "tensor(float)" or len(spec.shape) != 3 or not all(isinstance(d, int) for d in spec.shape[1:]):
            raise IntegrityError(f"{self.name}: input {spec.name} is {spec.type} {spec.shape}, not float (batch, timesteps, features)")
        if isinstance(spec.shape[0], int) and spec.shape[0] != 1:
            raise IntegrityError(f"{self.name}: input batch is fixed at {spec.shape[0]}; edgeae runs a free batch or one window")
        self.input_name = spec.name
        self.output_names = [o.name for o in outputs]
        self._output_lists = [[name] for name in self.output_names]
        self.timesteps, self.features = int(spec.shape[1]), int(spec.shape[2])
        if window is not None and (self.timesteps, self.features) != tuple(window):
            raise IntegrityError(f"{self.name}: input {spec.name} is {_shape_text(spec.shape)}, expected "
                                 f"(batch, {window[0]}, {window[1]}) as the manifest's window says")
        self.units = units
        self.one_window = spec.shape[0] == 1  # a single-window graph: run window by window
        self.proven_finite = False  # set by load() where the manifest proves no value can overflow
        self.routes: list[tuple[int, int | None, OnnxModel]] = []  # graphs this model hands some batch sizes to
        self.chunk = DEFAULT_CHUNK  # windows per call where a run is larger: load() sets the one the export measured
        self._call = _fast_run(self.session)
        self._bound: _BoundWindow | None = None
        try:
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        except (UnicodeDecodeError, ValueError, RuntimeError):
            raise IntegrityError(f"{self.name}: the model's metadata is unreadable (corrupt file?)") from None
        if not outputs:
            raise IntegrityError(f"{self.name}: the graph has no outputs")
        self.role = role or self.metadata.get("edgeae.role") or (
            "encoder" if len(outputs[0].shape) == 2 else "autoencoder")
        if self.role not in ROLES:
            raise IntegrityError(f"{self.name}: role {self.role!r} is not one edgeae runs ({', '.join(ROLES)})")
        # What each output must be after the batch, on every run: the declared shapes are only a claim.
        self._tails = [self._output_tail(index, output) for index, output in enumerate(outputs)]
        used = self.session.get_providers()
        missing = [p for p in self.providers_requested if p not in used]
        if missing:
            raise ProviderError(f"{', '.join(missing)} requested but onnxruntime could not use it; session runs on {', '.join(used)}")
        self.providers = used
        if used == [CPU]:
            self._bound = _BoundWindow(self.session, self.input_name, (1, self.timesteps, self.features),
                                       [(name, (1, *tail)) for name, tail in zip(self.output_names, self._tails)])

    def _open(self, options) -> ort.InferenceSession:
        source = self._source
        try:
            if isinstance(source, bytes):
                return ort.InferenceSession(source, options, providers=self.providers_requested)
            path = Path(source)
            if not path.is_file():
                raise UsageError(f"model file not found: {path}")
            if path.stat().st_size > MAX_MODEL_BYTES:
                raise IntegrityError(f"{path.name}: implausibly large model file")
            if path.suffix == ".onnx":
                _check_domains(path)
            return ort.InferenceSession(str(path), options, providers=self.providers_requested)
        except (UsageError, IntegrityError):
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise IntegrityError(f"{self.name}: onnxruntime cannot load it: {first[:200]}") from None

    def _output_tail(self, index: int, spec: Any) -> tuple[int, ...]:
        """The shape after the batch that output `index` must have, refusing a declaration that
        contradicts it: the first output is the role's (batch, timesteps, features) or
        (batch, units), units as the caller's manifest says where it does, any other a float
        with fixed sizes after the batch."""
        shape = list(spec.shape or [])
        if index == 0 and self.role == "autoencoder":
            tail, expected = (self.timesteps, self.features), f"float (batch, {self.timesteps}, {self.features})"
        elif index == 0 and self.units is not None:
            tail, expected = (self.units,), f"float (batch, {self.units}) as the manifest's units say"
        else:
            tail = tuple(shape[1:])
            expected = "float (batch, units)" if index == 0 else "float (batch, sizes fixed in the graph)"
        batch_fits = bool(shape) and (not isinstance(shape[0], int) or (self.one_window and shape[0] == 1))
        rank_fits = len(shape) == 1 + len(tail) and (index > 0 or self.role == "autoencoder" or len(tail) == 1)
        sizes_fit = all(isinstance(want, int) and want >= 1 and (not isinstance(got, int) or got == want)
                        for got, want in zip(shape[1:], tail))
        if spec.type != "tensor(float)" or not (batch_fits and rank_fits and sizes_fit):
            raise IntegrityError(f"{self.name}: output {spec.name!r} is {spec.type} {_shape_text(shape)}, "
                                 f"expected {expected}")
        return tail

    def _wrong_output(self, result: np.ndarray, count: int, output: int) -> IntegrityError:
        """The error for a run whose output shape is not the one the graph declared (a graph that lies)."""
        return IntegrityError(f"{self.name}: output {self.output_names[output]!r} came out {tuple(result.shape)}, "
                              f"expected {(count, *self._tails[output])}")

    def run(self, x: Any, chunk: int | None = None, output: int = 0) -> np.ndarray:
        """Run on raw input; a single window in gives a single result out."""
        windows, single = as_windows(x, self.timesteps, self.features)
        result = self.run_windows(windows, chunk, output)
        return result[0] if single else result

    def route(self, other: OnnxModel, first: int, last: int | None) -> None:
        """Hand every run of `first` to `last` windows (no limit: None) to `other`, an equivalent graph."""
        if (other.timesteps, other.features, other.role, other._tails) != (
                self.timesteps, self.features, self.role, self._tails):
            raise IntegrityError(f"{other.name}: its inputs or outputs differ from {self.name}'s")
        if other.one_window and (first, last) != (1, 1):
            raise IntegrityError(f"{other.name}: a one-window graph cannot run batches of {first} to {last or 'any'}")
        self.routes.append((first, last, other))

    def set_proven_finite(self, proven: bool) -> None:
        """Say whether this graph, and the graphs it routes to, are proven unable to overflow."""
        for graph in (self, *(other for _, _, other in self.routes)):
            graph.proven_finite = proven

    def graph_for(self, count: int) -> OnnxModel:
        """The graph that runs `count` windows in one call: a routed one, or this model's own."""
        for first, last, other in self.routes:
            if first <= count and (last is None or count <= last):
                return other
        return self

    def run_windows(self, windows: np.ndarray, chunk: int | None = None, output: int = 0) -> np.ndarray:
        """Run on checked float32 windows (as_windows: finite, the right shape), `chunk` at a
        time (None: this model's measured chunk) so memory stays flat.

        Kept lean: at batch 1 every microsecond here is a few percent of the whole call.
        """
        if chunk is None:
            chunk = self.chunk
        elif type(chunk) is not int or chunk < 1:
            chunk = check_chunk(chunk)
        count = len(windows)
        if count == 0:
            return np.empty((0, *self._tails[output]), dtype=np.float32)
        if self.one_window:
            chunk = 1
        model = self.graph_for(min(count, chunk))
        if count == 1 and model._bound is not None:
            try:
                result = model._bound.run(windows, output)
            except Exception:  # the plain run below reports it, or finds it passing
                pass
            else:
                if model.proven_finite or _all_finite(result):
                    return result
        try:
            if count <= chunk:  # one call: the latency-critical path
                result = model._call(model._output_lists[output], {model.input_name: windows})[0]
            else:
                parts = []
                for start in range(0, count, chunk):
                    part = windows[start:start + chunk]
                    model = self.graph_for(len(part))
                    parts.append(model._call(model._output_lists[output], {model.input_name: part})[0])
                result = np.concatenate(parts)  # parts of different shapes fail here, as inference
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InferenceError(f"{model.name}: inference failed: {first[:200]}") from None
        # Declared output shapes are a claim onnxruntime does not enforce (element types it
        # does, at load): one tuple compare (0.15 µs) keeps a wrong-shaped result from passing.
        if result.shape != (count,) + model._tails[output]:
            raise model._wrong_output(result, count, output)
        # A graph proven not to overflow (bounds.py) cannot give inf or NaN from checked input.
        if not model.proven_finite and not _all_finite(result):
            raise InferenceError(f"{model.name}: produced non-finite values")
        return result

    def node_placement(self) -> dict[str, str]:
        """Which execution provider each node actually ran on (from onnxruntime's profiler)."""
        with tempfile.TemporaryDirectory(prefix="edgeae-profile-") as tmp:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "profile")
            session = self._open(options)
            session.run(None, {self.input_name: np.zeros((1, self.timesteps, self.features), np.float32)})
            with open(session.end_profiling()) as handle:
                events = json.load(handle)
        placement: dict[str, str] = {}
        for event in events:
            if event.get("cat") == "Node" and "provider" in event.get("args", {}):
                node = event["name"].rsplit("_kernel_time", 1)[0]
                placement[node] = event["args"]["provider"]
        return placement


def placement_summary(placement: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for provider in placement.values():
        counts[provider] = counts.get(provider, 0) + 1
    return counts


# ---------------------------------------------------------------- a model set


# A share of input values outside the training range above which `score` warns. Values beyond the clip
# bounds reach the network pruned to them, so a window full of them is scored as data the model never
# saw: its flag then says "unlike training", not "anomalous". Training data itself holds the clip
# quantiles' tails outside (none with the default 0/1, 0.2% with 0.001/0.999): 1% is five times that.
DRIFT_WARN_SHARE = 0.01


@dataclass(frozen=True)
class Drift:
    """How many input values lie below and above the training range (the export's clip bounds), per feature.

    Counted over the values handed in (every value of every window scored; a row that several
    overlapping windows hold counts once per window), in float32 as the graph compares them.
    """

    names: tuple[str, ...]
    below: np.ndarray  # (features,) counts
    above: np.ndarray
    values: int  # values counted per feature
    lowest: np.ndarray  # (features,) the extremes seen (NaN when no values were counted)
    highest: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    limit: float = DRIFT_WARN_SHARE

    @classmethod
    def count(cls, values: np.ndarray, clip_low: np.ndarray, clip_high: np.ndarray, names: tuple[str, ...],
              limit: float = DRIFT_WARN_SHARE) -> Drift:
        """Count checked float32 values (..., features) against the bounds."""
        flat = values.reshape(-1, values.shape[-1])
        empty = np.full(flat.shape[1], np.nan)
        return cls(names, (flat < clip_low).sum(axis=0), (flat > clip_high).sum(axis=0),
                   len(flat), flat.min(axis=0) if len(flat) else empty, flat.max(axis=0) if len(flat) else empty,
                   clip_low, clip_high, limit)

    def __add__(self, other: Drift) -> Drift:
        """The counts of both: a stream adds each chunk's."""
        return Drift(self.names, self.below + other.below, self.above + other.above, self.values + other.values,
                     np.fmin(self.lowest, other.lowest), np.fmax(self.highest, other.highest),
                     self.clip_low, self.clip_high, self.limit)

    @property
    def share(self) -> np.ndarray:
        """Per feature, the share of values outside the training range (0 when none were counted)."""
        return (self.below + self.above) / max(self.values, 1)

    @property
    def drifted(self) -> list[int]:
        """The features whose share outside passes the limit."""
        return [int(j) for j in np.flatnonzero(self.share > self.limit)]

    def __bool__(self) -> bool:
        """True when some feature drifted past the limit (a warning is due)."""
        return bool(self.drifted)

    def warning(self) -> str | None:
        """One line naming each drifted feature, or None."""
        parts = []
        for j in self.drifted:
            sides = [f"{self.above[j] / self.values:.1%} above (up to {self.highest[j]:.6g} > {self.clip_high[j]:.6g})"
                     if self.above[j] else "",
                     f"{self.below[j] / self.values:.1%} below (down to {self.lowest[j]:.6g} < {self.clip_low[j]:.6g})"
                     if self.below[j] else ""]
            parts.append(f"{self.names[j]!r} {', '.join(s for s in sides if s)}")
        if not parts:
            return None
        return (f"drift: values outside the training range ({'; '.join(parts)}; warns above {self.limit:.0%}): "
                "the model sees them pruned to the range it was trained on, so flags here mark data unlike "
                "training, not necessarily anomalies")

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "values_per_feature": self.values, "warning": self.warning(),
                "features": {name: {"share_outside": float(self.share[j]), "below": int(self.below[j]),
                                    "above": int(self.above[j]), "lowest": _number(self.lowest[j]),
                                    "highest": _number(self.highest[j]), "clip_low": float(self.clip_low[j]),
                                    "clip_high": float(self.clip_high[j])}
                             for j, name in enumerate(self.names)}}


def _number(value: float) -> float | None:
    """A float for JSON: NaN (nothing counted) as None."""
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class ScoreResult:
    """Per-window reconstruction error (mean squared, in model units) and anomaly flags.

    For one window the arrays are 0-d (`contributions` (features,)); for a batch they have one
    entry per window (`contributions` (n, features)). `contributions` splits each score into
    each feature's part, and its rows sum to the score exactly (that sum *is* the score), so
    after a flag it says which sensor caused it. `drift` counts the input values outside the
    training range, where the export records it.
    """

    scores: np.ndarray
    threshold: float | None
    flags: np.ndarray | None
    contributions: np.ndarray | None = None
    drift: Drift | None = None


def error_parts(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each feature's part of each window's score: (n, features), each row summing to the score
    (within float64 rounding: the score itself is summed in the detector graph's order).

    The squared errors (features weighed by the model's scaling) summed over the window's steps
    and divided by the window's value count: the score, a mean over steps and features, is then
    these parts summed. The raw input is not clipped here: a value beyond the training range is
    exactly what an anomaly score must see.
    """
    diff = (np.asarray(x, np.float64) - np.asarray(reconstruction, np.float64)) * np.asarray(scale, np.float64)
    return np.einsum("ntf,ntf->nf", diff, diff) / (diff.shape[1] * diff.shape[2])


def reconstruction_error(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean squared error per window, features weighed by the model's scaling: the sum of `error_parts`.

    One mean over steps and features, as the detector graph's ReduceMean takes it: summed per
    feature first (einsum's vector kernels differ between AVX2 and AVX-512), a score could miss
    the graph's by a float64 step and a window exactly at the threshold be flagged by one only.
    """
    diff = (np.asarray(x, np.float64) - np.asarray(reconstruction, np.float64)) * np.asarray(scale, np.float64)
    return np.mean(diff * diff, axis=(1, 2))


def _scored_chunk(x: np.ndarray, reconstruction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reconstruction_error and error_parts of one chunk, from one reconstruction."""
    return reconstruction_error(x, reconstruction, scale), error_parts(x, reconstruction, scale)


class EdgeModel:
    """An exported model set: autoencoder and/or encoder, plus what the manifest says."""

    def __init__(self, models: dict[str, OnnxModel], manifest: dict | None = None, folder: Path | None = None,
                 variant: str = DEFAULT_VARIANT, unpublished: dict[str, UsageError] | None = None) -> None:
        self.variant = variant
        self._unpublished = unpublished or {}  # role -> why its file of this variant is not there
        if not models:
            raise UsageError("no models to load")
        self.models = models
        self.manifest = manifest or {}
        self.folder = folder
        first = next(iter(models.values()))
        self.timesteps, self.features = first.timesteps, first.features
        for model in models.values():
            if (model.timesteps, model.features) != (self.timesteps, self.features):
                raise IntegrityError("autoencoder and encoder disagree on the window shape")
        pre = self._preprocessing(self.manifest.get("preprocessing") or first.metadata.get("edgeae.preprocessing"))
        self.scale = self._vector(pre, "scale", [1.0] * self.features, positive=True)
        # The clip bounds the graph prunes its input to; None where neither manifest nor graph records them.
        self.clip_bounds = ((self._vector(pre, "clip_low", None), self._vector(pre, "clip_high", None))
                            if "clip_low" in pre and "clip_high" in pre else None)
        detector = self.manifest.get("detector", {})  # read_manifest checked its types and ranges
        threshold = detector.get("threshold")
        if variant != DEFAULT_VARIANT:  # a variant scores a little differently: it has its own threshold
            threshold = detector.get("variants", {}).get(variant, {}).get("threshold")
        self.threshold = None if threshold is None else float(threshold)

    @staticmethod
    def _preprocessing(record: dict | str | None) -> dict:
        """The preprocessing record (from the manifest, or the model's metadata as JSON text)."""
        try:
            pre = json.loads(record) if isinstance(record, str) else (record or {})
        except ValueError:
            pre = None
        if not isinstance(pre, dict):
            raise IntegrityError("the model's preprocessing record is unreadable")
        return pre

    def _vector(self, pre: dict, key: str, default: list[float] | None, positive: bool = False) -> np.ndarray:
        """One per-feature float32 vector of the preprocessing record, checked to fit the model."""
        try:
            with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused below
                vector = np.asarray(pre.get(key, default), dtype=np.float32)
        except (ValueError, TypeError):
            raise IntegrityError("the model's preprocessing record is unreadable") from None
        if vector.shape != (self.features,) or not np.isfinite(vector).all() or (positive and (vector <= 0).any()):
            raise IntegrityError(f"preprocessing {key} {vector.tolist()} does not fit {self.features} features")
        return vector

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The names of the columns the model was trained on, in the order it reads them
        (CSV header names, or indices of an .npy); None where the export does not record them (the seed)."""
        names = ((self.manifest.get("training") or {}).get("data") or {}).get("columns")
        return tuple(str(n) for n in names) if names and len(names) == self.features else None

    @property
    def window(self) -> int:
        """The window length in time steps (the same as `timesteps`)."""
        return self.timesteps

    @property
    def stride(self) -> int:
        """Rows between the starts of windows cut from a series: the export's (its training stride, 1 by
        default); scoring, evaluation, reports and streaming all cut with it unless told otherwise."""
        return int((self.manifest.get("window") or {}).get("stride", 1))

    def drift(self, values: Any) -> Drift | None:
        """Values outside the training range in raw (..., features) input, counted per feature;
        None where the export records no clip bounds."""
        if self.clip_bounds is None:
            return None
        array = np.asarray(values, np.float32)
        if array.ndim < 1 or array.shape[-1] != self.features:
            raise ShapeError(f"expected values with {self.features} features in the last axis, got {array.shape}")
        names = self.feature_names or tuple(str(j) for j in range(self.features))
        return Drift.count(array, *self.clip_bounds, names)

    @property
    def providers(self) -> list[str]:
        return next(iter(self.models.values())).providers

    def _model(self, role: str) -> OnnxModel:
        if role in self._unpublished:
            raise self._unpublished[role]
        if role not in self.models:
            raise UsageError(f"this model set has no {role} (it has: {', '.join(self.models)})")
        return self.models[role]

    def encode(self, x: Any, chunk: int | None = None) -> np.ndarray:
        """Raw window(s) -> embedding(s): (n, units), or (units,) for one window."""
        return self._model("encoder").run(x, chunk)

    def reconstruct(self, x: Any, chunk: int | None = None) -> np.ndarray:
        """Raw window(s) -> reconstruction(s) in raw units."""
        return self._model("autoencoder").run(x, chunk)

    def score(self, x: Any, chunk: int | None = None, threshold: float | None = None) -> ScoreResult:
        """Per-window reconstruction error, each feature's part of it, drift, and flags where the
        model set has a threshold. `chunk` None: the windows per call the export measured."""
        model = self._model("autoencoder")
        limit = self.threshold if threshold is None else check_threshold(threshold)
        windows, single = as_windows(x, self.timesteps, self.features)
        chunk = model.chunk if chunk is None else check_chunk(chunk)
        scored = [_scored_chunk(part, model.run_windows(part, chunk), self.scale)  # no full-size reconstruction held
                  for part in (windows[i:i + chunk] for i in range(0, len(windows), chunk))]
        scores = np.concatenate([s for s, _ in scored]) if scored else np.empty(0)
        parts = np.concatenate([p for _, p in scored]) if scored else np.empty((0, self.features))
        flags = scores > limit if limit is not None else None
        drift = self.drift(windows)
        if single:  # one window in, one (0-d) score out, as encode/reconstruct do
            return ScoreResult(np.asarray(scores[0]), limit, None if flags is None else np.asarray(flags[0]),
                               parts[0], drift)
        return ScoreResult(scores, limit, flags, parts, drift)

    def node_placement(self) -> dict[str, dict[str, str]]:
        return {role: model.node_placement() for role, model in self.models.items()}


def _published(manifest: dict, role: str | None = None) -> list[str]:
    """The variants published for `role` (for any role when None); fp32 always is."""
    names = {n for r, by_name in (manifest.get("variants") or {}).items() if role in (None, r)
             for n, e in by_name.items() if e.get("published")}
    return sorted(names | {DEFAULT_VARIANT})


def _variant_entry(manifest: dict, role: str, variant: str) -> dict | None:
    return ((manifest.get("variants") or {}).get(role) or {}).get(variant)


def _variant_file(manifest: dict, role: str, variant: str) -> str | None:
    """The file holding `role` in `variant`; None where that variant is not made for the role
    (the batch graphs exist for the autoencoder only)."""
    if variant == DEFAULT_VARIANT:
        return ((manifest.get("models") or {}).get(role) or {}).get("file")
    entry = _variant_entry(manifest, role, variant)
    if entry is None:
        return None
    if not entry.get("published"):
        raise UsageError(f"the {variant!r} variant of the {role} missed its tolerance and was not published; "
                         f"the {role} has: {', '.join(_published(manifest, role))}")
    return entry.get("file")


def variant_of_file(manifest: dict, role: str, file: str) -> str | None:
    """The variant `file` holds for `role` (the inverse of _variant_file); None if none names it."""
    for name, entry in ((manifest.get("variants") or {}).get(role) or {}).items():
        if entry["file"] == file:
            return name
    return DEFAULT_VARIANT if file == _variant_file(manifest, role, DEFAULT_VARIANT) else None


def proven_finite(manifest: dict, role: str, variant: str | None) -> bool:
    """Whether the export's value bound (bounds.py) proves that `role` in `variant` cannot
    overflow: float32 graphs only, with the bound far below float32's largest value."""
    entry = _variant_entry(manifest, role, variant) or {}
    precision = entry.get("precision", "fp32" if variant == DEFAULT_VARIANT else None)
    bound = ((manifest.get("models") or {}).get(role) or {}).get("value_bound")  # None or a number ≥ 0
    return precision == "fp32" and bound is not None and bound < FINITE_PROOF_LIMIT


def batch_label(first: int, last: int | None) -> str:
    """'batch 1', 'batches 2-31', 'batches 32+'."""
    if first == last:
        return f"batch {first}"
    return f"batches {first}+" if last is None else f"batches {first}-{last}"


def batch_routes(manifest: dict, role: str, variant: str) -> list[tuple[int, int | None, str]]:
    """(first, last, file) for each batch range the manifest gives `variant` to another graph
    (read_manifest has checked each range, and that the file is a graph of `role`)."""
    entry = _variant_entry(manifest, role, variant) or {}
    return [(*route["batches"], route["file"]) for route in entry.get("by_batch", ())
            if route["file"] != entry["file"]]


def routed_chunk(manifest: dict, role: str, variant: str | None) -> int:
    """The windows per call the export measured for `variant` (routing.py), else DEFAULT_CHUNK
    (read_manifest has checked it is a whole number from 1 to layout.MAX_CHUNK)."""
    return (_variant_entry(manifest, role, variant) or {}).get("chunk") or DEFAULT_CHUNK


def manifest_sizes(manifest: dict) -> dict[str, Any]:
    """The window and embedding width an export's manifest promises, as OnnxModel's `window` and
    `units`: every graph loaded from the folder must read and give exactly these."""
    window = manifest.get("window") or {}
    config = (manifest.get("training") or {}).get("config") or {}
    found = {"window.timesteps": window.get("timesteps"), "window.features": window.get("features"),
             "training.config.units": config.get("units")}
    missing = [field for field, value in found.items() if value is None]  # read_manifest checked any present
    if missing:
        raise IntegrityError(f"manifest field {missing[0]} is missing")
    return {"window": (window["timesteps"], window["features"]), "units": config["units"]}


class SelfCheckError(ParityError):
    """A graph gives other numbers on this device than its export verified: it is not served."""


def run_self_check(path: Path, manifest: dict, models: dict[str, OnnxModel], variant: str) -> None:
    """Run each loaded graph of a reduced-precision variant on the export's golden vectors and refuse
    it, naming the error and the recorded tolerance, when this device misses that tolerance."""
    from edgeae.contract.golden import read_golden
    from edgeae.contract.parity import Tolerance, compare

    if variant not in SELF_CHECKED:
        return
    checked = {role: _variant_entry(manifest, role, variant) or {} for role in models}
    golden = read_golden(path, manifest)
    scale = np.asarray((manifest.get("preprocessing") or {}).get("scale", 1.0), np.float32)
    for role, entry in checked.items():
        tolerance = Tolerance.from_manifest(entry.get("tolerance"), f"variants.{role}.{variant}.tolerance")
        results = [compare(golden.reference(role)[dataset], models[role].run_windows(x), model=role, provider="device",
                           dataset=dataset, tolerance_abs=tolerance.abs, tolerance_rel_range=tolerance.rel_range,
                           scale=scale if role == "autoencoder" else None, source=models[role].name)
                   for dataset, x in golden.inputs.items()]
        failed = [r for r in results if not r]
        if failed:
            worst = max(failed, key=lambda r: r.max_rel_range)
            parity = entry.get("parity")
            recorded = parity.get("max_rel_range") if isinstance(parity, dict) else None
            recorded = recorded if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) else None
            raise SelfCheckError(
                f"self-check: {models[role].name} misses Keras on this device by {worst.max_abs:.2e} "
                f"({worst.max_rel_range:.2e} of range) on the golden {worst.dataset!r} windows; allowed "
                f"{tolerance.describe()}" + (f", {recorded:.2e} of range where it was exported" if recorded else "")
                + "; use another variant (fp32 holds on every CPU), or skip the check: self_check=False / "
                "--no-self-check")


def _load_folder(path: Path, manifest: dict, providers: str | Sequence[str], threads: int | None,
                 variant: str, check: bool = True) -> EdgeModel:
    """The models of an export folder as its (checked) manifest describes them, each file verified."""
    models, unpublished = {}, {}
    for role in ROLES:
        try:
            name = _variant_file(manifest, role, variant)
        except UsageError as exc:  # the other role's file of this variant may still be used
            unpublished[role] = exc
            continue
        if not name:
            continue
        source = verify_file(path, name, manifest["files"].get(name))  # before the sizes: a bad entry is named first
        sizes = manifest_sizes(manifest)
        models[role] = OnnxModel(source, providers, threads, name=name, role=role, **sizes)
        for first, last, file in batch_routes(manifest, role, variant):
            models[role].route(OnnxModel(verify_file(path, file, manifest["files"].get(file)), providers, threads,
                                         name=file, role=role, **sizes), first, last)
        models[role].chunk = routed_chunk(manifest, role, variant)
        models[role].set_proven_finite(proven_finite(manifest, role, variant))
    if not models and unpublished:
        raise next(iter(unpublished.values()))
    if not models and variant != DEFAULT_VARIANT:
        raise UsageError(f"no published {variant!r} variant; this export has: {', '.join(_published(manifest))}")
    if not models:
        raise IntegrityError(f"{path}: the manifest lists no autoencoder or encoder")
    if check:
        run_self_check(path, manifest, models, variant)
    return EdgeModel(models, manifest, path, variant, unpublished)


def load(path: str | Path, providers: str | Sequence[str] = "auto", threads: int | None = None,
         variant: str = DEFAULT_VARIANT, self_check: bool = True) -> EdgeModel:
    """Load an export folder (every file checked against the manifest first) or one .onnx/.ort file.

    `variant` picks among what the export published: "fp32" (the default clean graph),
    "fp16", "int8", "int8-dynamic", "ort" or "plain" (tf2onnx's own graph). fp32 hands some
    batch sizes to the equivalent graphs its manifest entry names (`by_batch`, measured at export),
    in runs of the `chunk` measured there; "fp32-b1" and "fp32-unrolled" load one of
    those alone. A reduced-precision variant (fp16, int8, int8-dynamic) is first run on the
    export's golden vectors and refused (SelfCheckError) where this device's kernels miss its
    recorded tolerance; `self_check=False` skips that.
    """
    if not isinstance(path, (str, os.PathLike)) or path == "":
        raise UsageError(f"model path must be a folder or file name (str or os.PathLike), got {path!r}")
    if not isinstance(variant, str):
        raise UsageError(f"variant must be a name such as 'fp32' or 'int8', got {variant!r}")
    if not isinstance(self_check, bool):
        raise UsageError(f"self_check must be True or False, got {self_check!r}")
    resolve_providers(providers)  # an impossible request fails before any file is read
    check_threads(threads)
    path = Path(path)
    if path.is_dir():
        manifest = read_export_manifest(path)
        try:
            return _load_folder(path, manifest, providers, threads, variant, self_check)
        except IntegrityError:
            # `export --force` swaps a new folder in at once: a file read after the old manifest
            # may be the new one. Only a manifest that changed meanwhile earns one more try.
            again = read_export_manifest(path)
            if again["checksum"] == manifest["checksum"]:
                raise
            return _load_folder(path, again, providers, threads, variant, self_check)
    if variant != DEFAULT_VARIANT:
        raise UsageError("variant applies to an export folder; a single file is loaded as it is")
    if not path.exists():
        raise UsageError(f"no such model file or folder: {path}")
    if path.suffix.lower() not in (".onnx", ".ort"):
        raise UsageError(f"{path.name}: expected an export folder, an .onnx or an .ort file")
    model = OnnxModel(path, providers, threads)
    return EdgeModel({model.role: model})
