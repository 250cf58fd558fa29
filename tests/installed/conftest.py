"""Tests of the installed wheel, not the checkout: `.ci/shipped` copies this folder out of the checkout and
runs it inside a virtual environment that holds only the built wheel and its dependencies.

EDGEAE_EXPORTED names the committed export (read-only here) and EDGEAE_CHECKOUT the checkout that
whose edgeae/ must *not* be what is imported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the virtual environment's scripts, `edgeae` among them
os.environ.setdefault("EDGEAE_QUIET_UNSIGNED", "1")  # no note on the unsigned committed export in every CLI run


def _environment(name: str) -> Path:
    if not os.environ.get(name):
        pytest.exit(f"{name} is not set: run these tests through .ci/shipped", returncode=4)
    return Path(os.environ[name]).resolve()


@pytest.fixture(scope="session")
def exported() -> Path:
    return _environment("EDGEAE_EXPORTED")


@pytest.fixture(scope="session")
def checkout() -> Path:
    return _environment("EDGEAE_CHECKOUT")


@pytest.fixture()
def export_copy(exported: Path, tmp_path: Path) -> Path:
    """A copy of the committed export to change."""
    return Path(shutil.copytree(exported, tmp_path / "export"))


@pytest.fixture()
def edgeae_cli(tmp_path: Path):
    """Run the installed `edgeae` console script, in a folder of its own, as a user would."""
    def run(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "edgeae"), *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=timeout)
    return run

