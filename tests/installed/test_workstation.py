"""The workstation profile: the wheel installed with [train]. A short train, export and verify run from
the installed package (tf2onnx, the graph builders in edgeae.conversion.graphs, the publisher)."""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import edgeae

TINY = ("--epochs", "3", "--units", "4", "--timesteps", "4", "--features", "2", "--quiet")


def test_the_installed_package_is_imported_not_the_checkout(checkout):
    from edgeae.conversion import graphs
    from edgeae.exporter import publish

    for module in (edgeae, graphs, publish):
        where = Path(module.__file__).resolve()
        assert where.is_relative_to(Path(sys.prefix).resolve()) and not where.is_relative_to(checkout / "edgeae"), where


def test_version_names_the_training_stack(edgeae_cli):
    shown = edgeae_cli("--version").stdout.splitlines()
    for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        assert f"  {name} {importlib.metadata.version(name)}" in shown
    assert not any(line.startswith("  not installed") for line in shown)


def test_train_export_verify_from_the_wheel(edgeae_cli, tmp_path):
    trained = edgeae_cli("train", *TINY, "--out", "run", "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = edgeae_cli("export", "run", "--out", "exp", "--provider", "cpu", "--json")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads(exported.stdout)["parity"]["passed"]
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["edgeae_version"] == edgeae.__version__
    assert manifest["versions"]["tf2onnx"] == importlib.metadata.version("tf2onnx")
    verified = edgeae_cli("verify", "exp", "--provider", "cpu", "--against", "keras")
    assert verified.returncode == 0 and "parity passed" in verified.stdout, verified.stderr[-2000:]
