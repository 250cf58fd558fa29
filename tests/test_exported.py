"""The committed reference artifacts load, match their manifest, and reproduce the seed."""
import json

import numpy as np
import onnxruntime as ort

from edgeae import runtime
from edgeae.contract.files import sha256_file
from edgeae.data.windows import seed_sequence

from .conftest import EXPORTED, assert_within_recorded_tolerance


def test_committed_files_match_the_manifest():
    manifest = json.loads((EXPORTED / "manifest.json").read_text())
    assert manifest["kind"] == "export"
    for name, entry in manifest["files"].items():
        path = EXPORTED / name
        assert path.is_file(), name
        assert sha256_file(path) == entry["sha256"], name
        assert path.stat().st_size == entry["bytes"]
    for key in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        assert manifest["versions"][key]
    assert manifest["training"]["config"]["epochs"] == 300
    assert manifest["training"]["parameters"] == 123_305
    assert manifest["parity"]["passed"]


def test_committed_models_load_and_reconstruct_the_seed():
    manifest = json.loads((EXPORTED / "manifest.json").read_text())
    for role in ("autoencoder", "encoder"):
        entry = manifest["models"][role]
        session = ort.InferenceSession(str(EXPORTED / entry["file"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in entry["inputs"]]
        assert [o.name for o in session.get_outputs()] == [o["name"] for o in entry["outputs"]]
    model = runtime.load(EXPORTED, "cpu")
    seq = seed_sequence()
    recon = model.reconstruct(seq)
    assert np.abs(recon - seq).max() <= 2.5e-2
    assert model.encode(seq).shape == (1, 100)


def test_every_committed_variant_passes_its_self_check_on_this_cpu():
    """Whatever CPU runs the suite: the committed reduced-precision files hold their tolerance on it."""
    manifest = json.loads((EXPORTED / "manifest.json").read_text())
    published = {name for by_name in manifest["variants"].values() for name, v in by_name.items() if v["published"]}
    assert {"fp16", "int8"} <= published and "int8-dynamic" not in published  # its numbers depend on the CPU
    for variant in published:
        model = runtime.load(EXPORTED, "cpu", variant=variant)
        assert model.reconstruct(seed_sequence()).shape == (1, 10, 5), variant
        # Not only the load's own self-check: each role against Keras's stored outputs, at its recorded bound.
        assert_within_recorded_tolerance(EXPORTED, model, variant)


def test_the_committed_target_table_was_measured_on_every_runtime():
    """`edgeae targets exported` ran: the portable graph holds on all five runtimes, and the relu-LSTM
    graphs are named wrong (or failing) on the two that compute tanh."""
    manifest = json.loads((EXPORTED / "manifest.json").read_text())
    table = json.loads((EXPORTED / manifest["targets"]).read_text())["runtimes"]
    assert table["measured_on"]["cpu"] and table["measured_on"]["onnxruntime"]
    files = table["files"]
    for role in ("autoencoder", "encoder"):
        assert {r: m["verdict"] for r, m in files[f"{role}.portable.onnx"].items()} == dict.fromkeys(
            ("onnxruntime", "onnxruntime-web", "tract", "openvino", "onnx-reference"), "ok")
        assert files[f"{role}.onnx"]["onnx-reference"]["verdict"] == "wrong"
        assert files[f"{role}.onnx"]["tract"]["verdict"] in ("wrong", "fails")
        assert files[f"{role}.onnx"]["onnxruntime"]["verdict"] == "ok"
