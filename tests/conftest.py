"""Shared fixtures: one tiny trained model and export per session, so most tests stay fast."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The once-per-process note on an unsigned export (test_signing.py checks it) would be one more stderr line in
# whichever test loads one first, here and in the CLI and Node processes the tests start.
os.environ.setdefault("EDGEAE_QUIET_UNSIGNED", "1")

REPO = Path(__file__).resolve().parents[1]


def assert_within_recorded_tolerance(folder: Path, model, variant: str) -> dict[str, float]:
    """`model` (runtime.load(folder, variant=variant)) against an independent reference, Keras's outputs stored at
    export (parity_reference.npz), at the variant's own recorded tolerance, on every golden input set: in the
    model's units (the autoencoder's errors times the preprocessing scale), the larger of the absolute bound and
    the relative one times the set's range, as parity.compare judges it. Returns the worst share of range per role."""
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    scale = np.asarray(manifest["preprocessing"].get("scale", 1.0), np.float64)
    worst = {}
    with np.load(folder / "parity_reference.npz") as saved:
        names = [key.split("__", 1)[1] for key in saved.files if key.startswith("inputs__")]
        assert {"in_range", "outside_range"} <= set(names), names
        for role in model.models:
            recorded = manifest["variants"][role][variant]["tolerance"]
            units = scale if role == "autoencoder" else 1.0
            worst[role] = 0.0
            for name in names:
                x, keras = saved[f"inputs__{name}"], saved[f"expected__{role}__keras__{name}"] * units
                got = (model.reconstruct(x) if role == "autoencoder" else model.encode(x)).astype(np.float64) * units
                span = float(np.ptp(keras)) or max(float(np.abs(keras).max()), 1.0)  # parity.compare's denominator
                error = float(np.abs(got - keras).max())
                allowed = max(recorded["abs"] or 0.0, (recorded["rel_range"] or 0.0) * span)
                assert error <= allowed, (role, variant, name, error, allowed)
                worst[role] = max(worst[role], error / span)
    return worst


def in_ci(environ=os.environ) -> bool:
    """Whether this run is CI's: .ci/run exports CI=1 (hosted CI services set CI=true)."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs_tools(*tools: str, install: str, missing=None) -> pytest.MarkDecorator:
    """Mark a test that runs system tools (`tools` looked up on PATH, or `missing()` naming those absent);
    `install` says how to get them ("Debian: apt-get install gcc").

    In CI a missing tool fails the test (.ci/run installs every one, so a missing one is a broken CI, not a
    reason to pass quietly); elsewhere it is skipped with a reason naming the tool and how to install it.
    GPU tests are not marked so: CI has no GPU, and they keep skipping.
    """
    return pytest.mark.needs_tools(tools=tools, install=install, missing=missing)


def needs_module(module: str, extra: str) -> pytest.MarkDecorator:
    """needs_tools for a Python module of one of edgeae's extras (CI installs them all: edgeae[dev])."""
    import importlib.util

    return needs_tools(install=f"pip install 'edgeae[{extra}]'",
                       missing=lambda: [] if importlib.util.find_spec(module) else [f"Python module {module}"])


def import_or_skip(module: str, extra: str):
    """pytest.importorskip outside CI; in CI the import itself, so a missing extra fails instead of skipping."""
    if in_ci():
        return __import__("importlib").import_module(module)
    return pytest.importorskip(module, reason=f"needs the {extra} extra: pip install 'edgeae[{extra}]'")


def missing_tools_outcome(mark, environ=os.environ) -> tuple[str, str] | None:
    """("fail" or "skip", why) for a needs_tools mark whose tools are missing here; None when all are present."""
    check = mark.kwargs.get("missing")
    absent = list(check()) if check is not None else [t for t in mark.kwargs["tools"] if shutil.which(t) is None]
    if not absent:
        return None
    why = f"{', '.join(absent)} not installed ({mark.kwargs['install']})"
    if in_ci(environ):
        return "fail", f"CI must have every tool the suite runs, and {why}: .ci/run installs it"
    return "skip", why


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_tools(tools, install, missing): system tools the test runs; "
                                       "missing ones fail it in CI (CI=1) and skip it elsewhere")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_tools"):
        outcome = missing_tools_outcome(mark)
        if outcome is not None:
            kind, why = outcome
            if kind == "fail":
                pytest.fail(why, pytrace=False)
            pytest.skip(why)

# Tests parametrised over execution providers: CUDA runs where onnxruntime has it, else is skipped.
PROVIDERS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                           reason="CUDAExecutionProvider is not available in this onnxruntime"),
    ]),
]
EXPORTED = REPO / "exported"


@pytest.fixture(scope="session")
def tiny_config():
    from edgeae.trainer.model import TrainConfig

    return TrainConfig(timesteps=6, features=3, units=8, epochs=40, learning_rate=0.01, seed=3)


@pytest.fixture(scope="session")
def tiny_training(tiny_config):
    from edgeae.trainer import training as trainer

    return trainer.train(tiny_config)


@pytest.fixture(scope="session")
def tiny_export(tiny_training, tmp_path_factory) -> Path:
    """A published export folder of the tiny model (treat as read-only; copy to modify)."""
    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions

    out = tmp_path_factory.mktemp("tiny") / "export"
    publish.export(tiny_training, out, ExportOptions(providers="cpu"))
    return out


@pytest.fixture()
def export_copy(tiny_export, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "export"
    shutil.copytree(tiny_export, dst)
    return dst


FIXED_ROUTES = [{"batches": [1, 1], "file": "autoencoder.b1.onnx"}, {"batches": [2, 127], "file": "autoencoder.onnx"},
                {"batches": [128, None], "file": "autoencoder.unrolled.onnx"}]  # the rule --fixed-routing keeps


@pytest.fixture()
def fixed_routes(export_copy) -> Path:
    """The tiny export with --fixed-routing's table in place of the one measured on this machine (resealed),
    for tests of which graph runs which sizes."""
    from edgeae.contract.manifest import read_manifest, write_manifest

    manifest = read_manifest(export_copy).to_body()
    for role, by_name in manifest["variants"].items():
        for field in ("by_batch", "chunk", "routing"):
            by_name["fp32"].pop(field, None)
    manifest["variants"]["autoencoder"]["fp32"]["by_batch"] = FIXED_ROUTES
    write_manifest(export_copy, manifest)
    return export_copy


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def scaled_export(tmp_path_factory) -> Path:
    """An export whose graph carries real preprocessing: quantile clipping and min-max scaling."""
    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions
    from edgeae.trainer import training as trainer
    from edgeae.trainer.model import TrainConfig

    folder = tmp_path_factory.mktemp("scaled")
    t = np.arange(400)
    series = np.stack([50 + 20 * np.sin(t / 7), 1000 + 300 * np.cos(t / 11), -3 + 0.5 * np.sin(t / 3)], axis=1)
    np.save(folder / "series.npy", series)
    config = TrainConfig(timesteps=8, features=3, units=6, epochs=5, learning_rate=0.01, stride=4,
                         clip_quantiles=(0.05, 0.95), scaling="minmax", seed=5)
    training = trainer.train(config, folder / "series.npy")
    out = folder / "export"
    # Five epochs learn little: this export is about the preprocessing in the graph, so its run is accepted.
    publish.export(training, out, ExportOptions(providers="cpu", accept_unlearned=True))
    return out


def record_fits(monkeypatch) -> list[dict]:
    """Record each Keras fit while the test runs: whether it was compiled by XLA (jit_compile) and whether it
    finished, so a test can check what a run reports about XLA against what ran, on any CPU."""
    from keras import Model

    fits, real_fit = [], Model.fit

    def fit(self, *args, **kwargs):
        fits.append({"xla": bool(self.jit_compile), "finished": False})
        history = real_fit(self, *args, **kwargs)
        fits[-1]["finished"] = True
        return history

    monkeypatch.setattr(Model, "fit", fit)
    return fits


@contextlib.contextmanager
def serve_folder(folder):
    """A local static file server over `folder` on a free port, for a headless browser: its base address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()
