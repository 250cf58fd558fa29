"""Other runtimes than this process's onnxruntime, measured: the portable graph holds 1e-5 on every one,
the relu-LSTM graphs are named wrong where a runtime mis-runs them, and a runtime that aborts does not
take the caller with it."""
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.verifier import runtimes as other_runtimes
from edgeae.exporter import publish
from edgeae.contract.manifest import read_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_USAGE, UsageError
from edgeae.contract.golden import read_golden
from edgeae.verifier.runtimes import RUNTIMES, RuntimeFailed


def installed(name: str) -> str:
    """CI installs every runtime (edgeae[runtimes], npm ci --prefix node); a device may opt out of the missing ones."""
    why = other_runtimes.unavailable(name)
    if why and os.environ.get("EDGEAE_ALLOW_MISSING_RUNTIMES") == "1":
        pytest.skip(f"{name}: {why}")
    assert why is None, f"{name}: {why}"
    return name


@pytest.fixture(scope="module")
def golden(tiny_export):
    return read_golden(tiny_export, read_manifest(tiny_export))


def _all_windows(golden, role):
    names = list(golden.inputs)
    return (np.concatenate([golden.inputs[k] for k in names]),
            np.concatenate([golden.reference(role)[k] for k in names]))


@pytest.mark.parametrize("name", RUNTIMES)
@pytest.mark.parametrize("role", ["autoencoder", "encoder"])
def test_the_portable_graph_matches_keras_within_1e_5_on_every_runtime(tiny_export, golden, name, role):
    x, keras = _all_windows(golden, role)
    for fixed in (False, True):  # as tract needs for an LSTM; the portable graph takes either
        out = other_runtimes.run(installed(name), tiny_export / f"{role}.portable.onnx", x, fixed_batch=fixed)
        assert out.shape == keras.shape and np.abs(out - keras).max() <= 1e-5, (name, fixed)


@pytest.mark.parametrize("name, right", [("onnxruntime", True), ("onnxruntime-web", True), ("openvino", True),
                                         ("onnx-reference", False), ("tract", False)])
def test_the_relu_lstm_graph_is_right_or_wrong_as_measured(tiny_export, golden, name, right):
    """onnx's reference evaluator and tract compute tanh whatever the LSTM's activations say."""
    x, keras = _all_windows(golden, "encoder")
    out = other_runtimes.run(installed(name), tiny_export / "encoder.onnx", x, fixed_batch=name == "tract")
    assert (np.abs(out - keras).max() <= 1e-5) == right


def test_a_runtime_that_aborts_is_a_one_line_failure_and_the_caller_lives_on(tiny_export, golden):
    x, _ = _all_windows(golden, "autoencoder")
    with pytest.raises(RuntimeFailed, match=r"^tract died of signal SIGABRT on autoencoder.onnx: .*batch"):
        other_runtimes.run(installed("tract"), tiny_export / "autoencoder.onnx", x)
    assert other_runtimes.run("onnxruntime", tiny_export / "autoencoder.onnx", x).shape == x.shape


def test_bad_runtime_names_and_files_are_refused_in_one_line(tiny_export, tmp_path):
    x = np.zeros((2, 6, 3), np.float32)
    with pytest.raises(UsageError, match="no runtime named 'trt'"):
        other_runtimes.run("trt", tiny_export / "encoder.onnx", x)
    with pytest.raises(UsageError, match="no such model file"):
        other_runtimes.run("onnxruntime", tmp_path / "missing.onnx", x)
    (tmp_path / "bad.onnx").write_bytes(b"not a model" * 20)
    for name in ("onnxruntime", "onnx-reference"):
        with pytest.raises(RuntimeFailed, match=rf"^{name} failed \(exit 1\) on bad.onnx: ") as caught:
            other_runtimes.run(name, tmp_path / "bad.onnx", x)
        assert "\n" not in str(caught.value)


def test_the_measured_table_is_recorded_in_targets_json(export_copy):
    measured = publish.measure_targets(export_copy, ("onnx-reference", installed("tract")))
    table = json.loads((export_copy / "targets.json").read_text())["runtimes"]
    assert table == json.loads(json.dumps(measured)) and table["measured_on"]["cpu"]
    files = table["files"]
    manifest = read_manifest(export_copy).to_body()
    published = {v["file"] for by_name in manifest["variants"].values() for v in by_name.values() if v["published"]}
    assert set(files) == published | {g["file"] for g in manifest["detector"]["graphs"].values()}
    for role in ("autoencoder", "encoder"):
        assert files[f"{role}.portable.onnx"]["onnx-reference"]["verdict"] == "ok"
        assert files[f"{role}.portable.onnx"]["tract"] == {**files[f"{role}.portable.onnx"]["tract"], "verdict": "ok",
                                                          "batch": "any"}
        assert files[f"{role}.onnx"]["onnx-reference"]["verdict"] == "wrong"
        assert files[f"{role}.ort"]["tract"]["verdict"] == "n/a"
    assert files["encoder.onnx"]["tract"]["verdict"] == "wrong" and files["encoder.onnx"]["tract"]["batch"] == "fixed"
    assert "died of signal SIGABRT" in files["encoder.onnx"]["tract"]["note"]  # with a free batch
    runtime.load(export_copy, "cpu")  # the manifest was resealed with the new targets.json


def test_cli_targets_prints_the_table_and_refuses_unknown_runtimes(export_copy):
    result = CliRunner().invoke(main, ["targets", str(export_copy), "--runtime", "onnx-reference"])
    assert result.exit_code == 0, result.output
    assert "measured on" in result.output and "encoder.portable.onnx" in result.output and "wrong" in result.output
    result = CliRunner().invoke(main, ["targets", str(export_copy), "--runtime", "tensorrt"])
    assert result.exit_code == EXIT_USAGE and "no runtime named 'tensorrt'" in result.stderr


def test_a_new_measurement_keeps_the_runtimes_it_did_not_measure(export_copy):
    publish.measure_targets(export_copy, ("onnx-reference",))
    publish.measure_targets(export_copy, ("onnxruntime",))
    files = json.loads((export_copy / "targets.json").read_text())["runtimes"]["files"]
    assert all(set(cells) == {"onnx-reference", "onnxruntime"} for cells in files.values())


def test_a_file_that_gives_nan_is_recorded_wrong_not_a_crash(export_copy):
    from onnx import numpy_helper

    from edgeae.contract.manifest import file_entry, write_manifest

    model = onnx.load(str(export_copy / "autoencoder.portable.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == "dense/bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, np.nan, np.float32), "dense/bias"))
    (export_copy / "autoencoder.portable.onnx").write_bytes(model.SerializeToString())
    manifest = read_manifest(export_copy).to_body()
    manifest["files"]["autoencoder.portable.onnx"] = file_entry(export_copy / "autoencoder.portable.onnx", "onnx-portable")
    write_manifest(export_copy, manifest)
    cell = publish.measure_targets(export_copy, ("onnx-reference",))["files"]["autoencoder.portable.onnx"]["onnx-reference"]
    assert cell["verdict"] == "wrong" and cell["note"] == "gives NaN or inf"
