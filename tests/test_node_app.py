"""The Node.js example app (node/score_csv.mjs, onnxruntime-node) against the Python runtime on the same CSV."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from edgeae import runtime
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.data.series import load_features
from edgeae.data.windows import cut_windows

from .conftest import REPO

APP = REPO / "node" / "score_csv.mjs"


def node_app(*args):
    if shutil.which("node") is None or not (REPO / "node" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("Node.js and `npm ci --prefix node` are needed (.ci/run installs them)")
    return subprocess.run(["node", str(APP), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def series_csv(tmp_path, rng):
    t = np.arange(240)
    values = np.stack([0.5 + 0.4 * np.sin(t / 5 + k) for k in range(3)], axis=1) + rng.normal(0, 0.05, (240, 3))
    values[100:104, 1] += 3.0  # a fault
    path = tmp_path / "series.csv"
    path.write_text("x,y,z\n" + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in values))
    return path


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_the_node_app_gives_the_python_runtimes_scores_and_flags(tiny_export, series_csv, variant):
    result = node_app(tiny_export, series_csv, "--variant", variant, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    edge = runtime.load(tiny_export, "cpu", variant=variant)
    windows, starts = cut_windows(load_features(series_csv, edge.features), edge.timesteps, None, 1)
    expected = edge.score(windows)
    assert out["window_start"] == starts.tolist()
    np.testing.assert_allclose(out["score"], expected.scores, rtol=1e-6)
    assert out["anomaly"] == expected.flags.tolist() and any(out["anomaly"])  # the fault is flagged
    assert {g["set"] for g in out["golden"]} == {"training", "single", "in_range", "outside_range"}


@pytest.mark.parametrize("content, message", [
    ("x,y,z\n0.1,0.2\n" * 1, "row 2 has 2 cells, the header has 3"),
    ("x,y,z\n0.1,abc,0.3\n", "row 2, column 'y': 'abc' is not a number"),
    ("x,y,z\n0.1,nan,0.3\n", "row 2, column 'y': 'nan' is not a finite number"),
    ("x,y,z\n0.1,,0.3\n", "row 2, column 'y': missing value"),
    ("x,y\n0.1,0.2\n", "2 feature column(s), the model expects 3"),
    ("x,y,z\n" + "0.1,0.2,0.3\n" * 3, "has 3 rows, fewer than one window of 6"),
    ("", "the file is empty"),
])
def test_bad_data_gets_the_python_runtimes_message_and_exit_3(tiny_export, tmp_path, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    result = node_app(tiny_export, data)
    assert result.returncode == 3 and message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_an_export_this_runtime_misses_is_refused_by_its_golden_check(export_copy, series_csv):
    manifest = read_manifest(export_copy).to_body()
    manifest["variants"]["autoencoder"]["fp32"]["tolerance"] = {"abs": 1e-12, "rel_range": None}
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv)
    assert result.returncode == 6 and "golden check: detector.onnx misses Keras here by" in result.stderr
    assert "allowed max abs 1e-12" in result.stderr and result.stdout == ""


def test_missing_detector_graph_and_folder_are_one_line(export_copy, series_csv, tmp_path):
    manifest = read_manifest(export_copy).to_body()
    del manifest["detector"]["graphs"]["int8"]
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv, "--variant", "int8")
    assert result.returncode == 4 and "no int8 detector graph (it has: fp32, fp16)" in result.stderr.replace("fp16, fp32", "fp32, fp16")
    result = node_app(tmp_path / "nowhere", series_csv)
    assert result.returncode == 2 and "manifest.json: not found" in result.stderr
    (export_copy / "golden.bin").write_bytes(b"\0" * 6)
    manifest["files"]["golden.bin"] = file_entry(export_copy / "golden.bin", "golden")
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv)
    assert result.returncode == 4 and "golden.bin: not a whole number of float32 values" in result.stderr
