"""The device profile: the wheel installed with its base dependencies only (numpy, onnxruntime, click).

Every command a device runs works on the committed export from the installed package; every command
that needs an extra says which one in one line and exits 7.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeae
from edgeae import runtime
from edgeae.runtime import streaming
from edgeae.contract import versions
from edgeae.contract.manifest import read_export_manifest
from edgeae.contract.errors import EXIT_DEPENDENCY, EXIT_INTEGRITY, IntegrityError
from edgeae.contract.golden import KERAS, read_golden


TRAINING = ("tensorflow", "keras", "tf2onnx", "onnx")


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The CLI's contract: exit `code`, one `error:` line on stderr naming `words`, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return result


def test_the_installed_package_is_imported_not_the_checkout(checkout):
    import edgeae.cli
    import edgeae.conversion.graphs

    for module in (edgeae, edgeae.cli, edgeae.conversion.graphs, runtime):
        where = Path(module.__file__).resolve()
        assert where.is_relative_to(Path(sys.prefix).resolve()), where
        assert not where.is_relative_to(checkout / "edgeae"), where


def test_the_device_profile_has_no_training_stack():
    assert [name for name in TRAINING if importlib.util.find_spec(name) is not None] == []


def test_one_version_everywhere(edgeae_cli):
    assert importlib.metadata.version("edgeae") == edgeae.__version__
    shown = ok(edgeae_cli("--version")).stdout
    as_module = subprocess.run([sys.executable, "-m", "edgeae", "--version"], capture_output=True, text=True)
    assert ok(as_module).stdout == shown
    lines = shown.splitlines()
    assert lines[0] == f"edgeae, version {edgeae.__version__}"
    for name in ("onnxruntime", "numpy", "click"):
        assert f"  {name} {importlib.metadata.version(name)}" in lines
    assert lines[-1].startswith("  not installed: tensorflow, keras, tf2onnx, onnx")


def test_inspect_shows_the_export_versions_beside_the_installed_ones(edgeae_cli, exported):
    result = ok(edgeae_cli("inspect", exported, "--json"))
    shown = json.loads(result.stdout)
    made_with = read_export_manifest(exported).to_body()["versions"]
    assert shown["versions"]["onnxruntime"] == {"export": made_with["onnxruntime"],
                                                "installed": importlib.metadata.version("onnxruntime")}
    assert shown["versions"]["tensorflow"] == {"export": made_with["tensorflow"], "installed": None}
    older = versions.release(importlib.metadata.version("onnxruntime")) < versions.release(made_with["onnxruntime"])
    assert bool(shown["version_warnings"]) == older
    assert ("warning: onnxruntime" in result.stderr) == older
    assert "exported with -> installed here" in ok(edgeae_cli("inspect", exported)).stdout


def test_inspect_warns_when_this_onnxruntime_is_older_than_the_exporting_one(edgeae_cli, export_copy):
    from edgeae.contract.manifest import write_manifest

    manifest = read_export_manifest(export_copy).to_body()
    manifest["versions"]["onnxruntime"] = "99.0.0"
    write_manifest(export_copy, manifest)
    result = ok(edgeae_cli("inspect", export_copy))
    assert f"warning: onnxruntime {importlib.metadata.version('onnxruntime')} is older than the 99.0.0" in result.stderr


@pytest.fixture(scope="module")
def windows(exported) -> np.ndarray:
    """The golden in-range windows the export was checked on."""
    return read_golden(exported, read_export_manifest(exported)).inputs["in_range"][:20]


def test_the_runtime_api_matches_keras_on_the_golden_windows(exported):
    manifest = read_export_manifest(exported)
    golden = read_golden(exported, manifest)
    model = runtime.load(exported)  # the golden self-check runs on load
    bound = manifest.parity.tolerance_abs
    for name, x in golden.inputs.items():
        for role, got in (("autoencoder", model.reconstruct(x)), ("encoder", model.encode(x))):
            want = golden.expected[role][KERAS][name]
            assert np.abs(got - want).max() <= max(bound, 1e-4 * np.ptp(want)), (role, name)
    for variant in ("fp16", "int8"):  # the reduced-precision graphs pass their self-check on this CPU too
        assert runtime.load(exported, variant=variant).reconstruct(golden.inputs["single"]).shape == (1, 10, 5)


def test_the_golden_self_check_refuses_a_tampered_export(export_copy):
    data = bytearray((export_copy / "golden.bin").read_bytes())
    data[100] ^= 0xFF
    (export_copy / "golden.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="golden.bin"):
        runtime.load(export_copy, variant="int8")


def test_encode_reconstruct_and_score_commands(edgeae_cli, exported, windows, tmp_path):
    np.save(tmp_path / "windows.npy", windows)
    model = runtime.load(exported)
    encoded = json.loads(ok(edgeae_cli("encode", exported, "windows.npy")).stdout)["embedding"]
    np.testing.assert_allclose(encoded, model.encode(windows), rtol=0, atol=1e-6)
    ok(edgeae_cli("reconstruct", exported, "windows.npy", "-o", "rebuilt.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "rebuilt.npy"), model.reconstruct(windows), rtol=0, atol=1e-6)
    series = np.concatenate([windows[0], windows[1]])
    np.savetxt(tmp_path / "readings.csv", series, delimiter=",", header="a,b,c,d,e", comments="")
    scored = json.loads(ok(edgeae_cli("score", exported, "readings.csv", "--json")).stdout)
    expected = model.score(np.stack([series[s:s + 10] for s in range(len(series) - 9)]))
    np.testing.assert_allclose(scored["score"], expected.scores, rtol=1e-6)
    assert scored["anomaly"] == expected.flags.astype(int).tolist()


def test_streaming_gives_the_batch_scores(exported, windows):
    model = runtime.load(exported)
    series = windows[:3].reshape(-1, model.features)
    scorer = streaming.StreamScorer(model)
    streamed = [w for row in series for w in scorer.push(row)]
    batch = model.score(np.stack([series[s:s + 10] for s in range(0, len(series) - 9, model.stride)]))
    np.testing.assert_allclose([w.score for w in streamed], batch.scores, rtol=1e-6)


def test_verify_checks_files_and_golden_vectors_without_tensorflow(edgeae_cli, exported, export_copy):
    assert "parity passed" in ok(edgeae_cli("verify", exported, "--against", "stored", "--provider", "cpu")).stdout
    model = export_copy / "encoder.onnx"
    model.write_bytes(model.read_bytes()[:-16] + bytes(16))
    one_line_error(edgeae_cli("verify", export_copy, "--against", "stored", "--provider", "cpu"), EXIT_INTEGRITY,
                   "encoder.onnx")


@pytest.mark.parametrize("args, extra", [
    (("train", "--epochs", "1", "--quiet"), "edgeae[train]"),
    (("pipeline", "--epochs", "1", "--quiet"), "edgeae[train]"),
    (("export", "EXPORTED", "--out", "new"), "edgeae[train]"),
    (("optimize", "COPY"), "edgeae[train]"),
    (("c", "EXPORTED", "--out", "c"), "edgeae[train]"),
    (("report", "EXPORTED", "--out", "plots"), "edgeae[plot]"),
    (("demo", "--quiet"), "edgeae[dataset]"),
    (("fleet", "score", "EXPORTED", "readings.csv", "--by", "a", "--order", "b", "-o", "fleet"), "edgeae[dask]"),
    (("inspect", "EXPORTED", "--trusted-key", "trusted.pem"), "edgeae[signing]"),
    (("score", "EXPORTED", "readings.csv", "--trusted-key", "trusted.pem"), "edgeae[signing]"),
    (("keygen", "signing.pem", "trusted.pem"), "edgeae[signing]"),
    (("sign", "COPY", "--key", "signing.pem"), "edgeae[signing]"),
])
def test_a_command_that_needs_an_extra_names_it(edgeae_cli, exported, export_copy, tmp_path, args, extra):
    np.savetxt(tmp_path / "readings.csv", np.zeros((20, 5)), delimiter=",", header="a,b,c,d,e", comments="")
    given = [{"EXPORTED": exported, "COPY": export_copy}.get(a, a) for a in args]
    one_line_error(edgeae_cli(*given), EXIT_DEPENDENCY, f"pip install '{extra}'")
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("readings.csv", "export")] == []  # nothing written


def test_the_runtime_never_loads_the_training_stack(exported):
    code = ("import sys, numpy, edgeae.runtime as r; r.load(sys.argv[1]).score(numpy.zeros((2, 10, 5), 'float32')); "
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {TRAINING!r}))")
    out = subprocess.run([sys.executable, "-c", code, str(exported)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_onnxruntime_web_needs_a_checkout_and_says_how_to_point_at_one(checkout, monkeypatch):
    from edgeae.verifier import runtimes as other_runtimes

    monkeypatch.delenv("EDGEAE_NODE_DIR", raising=False)
    why = other_runtimes.unavailable("onnxruntime-web")
    if shutil.which("node") is None:
        assert why.startswith("Node.js is not installed")
        return
    assert "checkout's node/ folder" in why and "EDGEAE_NODE_DIR=CHECKOUT/node" in why
    if (checkout / "node" / "node_modules" / "onnxruntime-web").is_dir():  # .ci/run installs it before this
        monkeypatch.setenv("EDGEAE_NODE_DIR", str(checkout / "node"))
        assert other_runtimes.unavailable("onnxruntime-web") is None
