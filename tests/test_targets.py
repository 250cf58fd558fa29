"""The target report (targets.py): every node of every published file, and which provider runs it."""
import json

import onnx

from edgeae.contract import layout
from edgeae.contract.manifest import read_manifest

# ---------------------------------------------------------------- target report


def test_target_report_lists_every_node_and_provider(tiny_export):
    targets = json.loads((tiny_export / layout.TARGETS_FILE).read_text())
    manifest = read_manifest(tiny_export).to_body()
    published = {v["file"] for variants in manifest["variants"].values() for name, v in variants.items()
                 if v["published"] and name != "plain"}
    assert set(targets["models"]) == published
    for file, report in targets["models"].items():
        assert report["bytes"] == (tiny_export / file).stat().st_size
        if file.endswith(".onnx"):
            assert [row["name"] for row in report["node_list"]] == [n.name for n in onnx.load(str(tiny_export / file)).graph.node]
        for row in report["node_list"]:
            assert set(row["providers"]) == {"CPU", "CUDA", "NNAPI", "CoreML-MLProgram", "CoreML-NeuralNetwork"}
            if "LSTM" in row["op"]:
                assert row["providers"]["CUDA"] == "cpu-fallback" and row["providers"]["NNAPI"] == "no"
        assert sum(report["summary"]["CPU"].values()) == report["nodes"] == len(report["node_list"])
