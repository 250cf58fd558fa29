"""The package as users meet it: one version everywhere, what a device runs, the warning when its onnxruntime is
older than the export's, and the public API at the top."""
import importlib.metadata
import pkgutil
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner

import edgeae
from edgeae.contract import versions
from edgeae.contract.manifest import read_manifest, write_manifest
from edgeae.cli import main
from .conftest import REPO


def test_the_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edgeae.contract.versions.__version__"}
    assert importlib.metadata.version("edgeae") == edgeae.__version__ == versions.__version__


def test_the_changelog_has_this_release():
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{edgeae.__version__}] - " in changelog and "## [Unreleased]" in changelog


@pytest.mark.parametrize("text, release", [("1.32.0", (1, 32)), ("1.32", (1, 32)), ("2.21.0rc1", (2, 21)),
                                           ("1.9.1", (1, 9, 1)), ("v3", (3,)), ("", ()), ("dev", ())])
def test_release_reads_the_numeric_part(text, release):
    assert versions.release(text) == release


def test_releases_order_numerically_not_as_text():
    assert versions.release("1.9.0") < versions.release("1.10.0") < versions.release("1.10.1")


def test_version_names_what_edgeae_runs_on():
    shown = CliRunner().invoke(main, ["--version"]).output.splitlines()
    assert shown[0] == f"edgeae, version {edgeae.__version__}"
    for name in ("onnxruntime", "numpy", "tensorflow", "keras", "tf2onnx"):  # the dev install has them all
        assert f"  {name} {importlib.metadata.version(name)}" in shown
    module = subprocess.run([sys.executable, "-m", "edgeae", "--version"], capture_output=True, text=True, check=True)
    assert module.stdout.splitlines() == shown


@pytest.mark.parametrize("exported_with, warns", [("0.1", False), ("INSTALLED", False), ("999.0.0", True), (None, False)])
def test_against_export_warns_only_for_an_older_onnxruntime(exported_with, warns):
    installed = importlib.metadata.version("onnxruntime")
    made = {"onnxruntime": installed if exported_with == "INSTALLED" else exported_with, "tensorflow": "2.0"}
    table, warnings = versions.against_export(made)
    assert table["onnxruntime"] == {"export": made["onnxruntime"], "installed": installed}
    assert table["edgeae"]["installed"] == edgeae.__version__
    assert len(warnings) == int(warns)
    if warns:
        assert warnings[0].startswith(f"onnxruntime {installed} is older than the 999.0.0")


def test_inspect_shows_and_warns(export_copy):
    manifest = read_manifest(export_copy).to_body()
    manifest["versions"]["onnxruntime"] = "999.0.0"
    write_manifest(export_copy, manifest)
    result = CliRunner().invoke(main, ["inspect", str(export_copy), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert "  onnxruntime: 999.0.0 -> " in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("warning: onnxruntime")]


def test_the_public_api_is_the_modules_own_and_loads_lazily():
    from edgeae import runtime
    from edgeae.exporter import publish
    from edgeae.runtime import streaming
    from edgeae.trainer import training
    from edgeae.verifier import verification

    assert (edgeae.load, edgeae.export, edgeae.train, edgeae.verify, edgeae.StreamScorer) == (
        runtime.load, publish.export, training.train, verification.verify, streaming.StreamScorer)
    assert set(edgeae.__all__) <= set(dir(edgeae))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        edgeae.nothing  # noqa: B018
    code = ("import sys, edgeae; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numpy', 'onnxruntime', 'onnx', 'tensorflow', 'keras', 'tf2onnx', 'click'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_no_runtime_module_imports_a_workstation_dependency():
    """What a device runs, module by module (found, not listed, so a new module is covered too)."""
    from edgeae import runtime

    modules = [f"edgeae.runtime.{m.name}" for m in pkgutil.iter_modules(runtime.__path__)]
    assert {"edgeae.runtime.loading", "edgeae.runtime.streaming"} <= set(modules)
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'tensorflow', 'keras', 'tf2onnx', 'click'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
