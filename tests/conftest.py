"""Shared fixtures: one tiny trained model and export per session, so most tests stay fast."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
EXPORTED = REPO / "exported"


@pytest.fixture(scope="session")
def tiny_config():
    from edgeae.model import TrainConfig

    return TrainConfig(timesteps=6, features=3, units=8, epochs=40, learning_rate=0.01, seed=3)


@pytest.fixture(scope="session")
def tiny_training(tiny_config):
    from edgeae import pipeline

    return pipeline.train(tiny_config)


@pytest.fixture(scope="session")
def tiny_export(tiny_training, tmp_path_factory) -> Path:
    """A published export folder of the tiny model (treat as read-only; copy to modify)."""
    from edgeae import pipeline

    out = tmp_path_factory.mktemp("tiny") / "export"
    pipeline.export(tiny_training, out, providers="cpu")
    return out


@pytest.fixture()
def export_copy(tiny_export, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "export"
    shutil.copytree(tiny_export, dst)
    return dst


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)
