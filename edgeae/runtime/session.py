"""One onnxruntime session over an edgeae graph, checked at load and on every run.

A graph's declared inputs and outputs are only a claim: OnnxModel holds it to the contract its
manifest states (window, units, role) and checks each result's shape, and its values unless the
export proved they cannot overflow. At batch 1 every microsecond outside the graph counts, hence
the direct binding call and the buffers bound once per thread.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.errors import InferenceError, IntegrityError, ProviderError, ShapeError, UsageError
from edgeae.contract.layout import ROLES
from edgeae.contract.onnx_scan import inside, scan_model
from edgeae.runtime.inputs import all_finite, as_windows, check_chunk, shape_text
from edgeae.runtime.providers import CPU, check_threads, resolve_providers
from edgeae.runtime.routes import DEFAULT_CHUNK

ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
MAX_MODEL_BYTES = 2 * 1024**3

# onnxruntime logs its own errors (a failed load or run) on stderr before edgeae raises, which would break
# the one-line promise: only fatal ones pass, everything else reaches the user as edgeae's one error line.
LOG_FATAL_ONLY = 4
ort.set_default_logger_severity(LOG_FATAL_ONLY)


def _check_model(path: Path, external: frozenset[str]) -> None:
    """Refuse a model with custom operator domains, or with a tensor anywhere (initializer, node attribute,
    subgraph) stored in a file other than those in `external`: the ones its caller verified (none by default)."""
    scan = scan_model(path.read_bytes(), path.name)
    if not scan.domains <= ALLOWED_DOMAINS:
        raise IntegrityError(f"{path.name}: uses operator domains edgeae does not produce: "
                             f"{sorted(scan.domains - ALLOWED_DOMAINS)}")
    for tensor, location in scan.external:
        if not inside(location):
            raise IntegrityError(f"{path.name}: tensor {tensor!r} reads external data from {location!r}, outside "
                                 "the model's folder: refused")
        if location not in external:
            raise IntegrityError(f"{path.name}: tensor {tensor!r} reads external data from {location!r}, a file no "
                                 "manifest lists with a checksum: refused")


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



class OnnxModel:
    """One onnxruntime session over an edgeae model, with its input and output contract.

    `role` ("autoencoder" or "encoder") is what the caller loads the graph as; by default the
    graph's own metadata, else its first output's rank. `window` (timesteps, features) and
    `units` are what the caller's manifest says the graph reads and encodes to: a graph of
    another model, swapped in and resealed, is refused at load and on every run.
    """

    def __init__(self, source: Path | bytes, providers: str | Sequence[str] = "auto",
                 threads: int | None = None, name: str | None = None, role: str | None = None,
                 window: tuple[int, int] | None = None, units: int | None = None,
                 external: frozenset[str] = frozenset()) -> None:
        self.providers_requested = resolve_providers(providers)
        self._external = external  # external-data files the caller verified against its manifest
        check_threads(threads)
        self.name = name or (Path(source).name if isinstance(source, (str, Path)) else "model")
        self._source = source
        options = ort.SessionOptions()
        options.log_severity_level = LOG_FATAL_ONLY
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
            raise IntegrityError(f"{self.name}: input {spec.name} is {shape_text(spec.shape)}, expected "
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
                _check_model(path, self._external)
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
            raise IntegrityError(f"{self.name}: output {spec.name!r} is {spec.type} {shape_text(shape)}, "
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
                if model.proven_finite or all_finite(result):
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
        if not model.proven_finite and not all_finite(result):
            raise InferenceError(f"{model.name}: produced non-finite values")
        return result

    def node_placement(self) -> dict[str, str]:
        """Which execution provider each node actually ran on (from onnxruntime's profiler)."""
        with tempfile.TemporaryDirectory(prefix="edgeae-profile-") as tmp:
            options = ort.SessionOptions()
            options.log_severity_level = LOG_FATAL_ONLY
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "profile")
            session = self._open(options)
            outputs = session.run(None, {self.input_name: np.zeros((1, self.timesteps, self.features), np.float32)})
            with open(session.end_profiling()) as handle:
                events = json.load(handle)
        for output, result in enumerate(outputs):  # what inspect shows must be what the graph gives
            if result.shape != (1, *self._tails[output]):
                raise self._wrong_output(result, 1, output)
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

