"""Shared fixtures: one tiny trained model and export per session, so most tests stay fast."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]

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
