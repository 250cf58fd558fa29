"""Measured routing: which fp32 graph serves which batch sizes, chosen from timings (no timing asserted)."""
import json

import pytest
from click.testing import CliRunner

from edgeae import publish, routing, runtime
from edgeae.artifacts import read_manifest
from edgeae.bench import onnx_paths
from edgeae.cli import main
from edgeae.errors import EdgeAEError

GRAPHS = {"a.onnx": False, "a.b1.onnx": True, "a.plain.onnx": False, "a.unrolled.onnx": False}


def ratios(**by_file):
    """Times over the base graph a.onnx at each probe, 1.0 unless given (file stem -> {batch: ratio})."""
    out = {file: {str(b): 1.0 for b in routing.PROBES if b == 1 or not one} for file, one in GRAPHS.items()}
    for stem, values in by_file.items():
        out[f"a.{stem}.onnx"].update({str(b): r for b, r in values.items()})
    return out


def test_the_fastest_graph_takes_the_sizes_from_its_probe_to_the_next():
    measured = ratios(b1={1: 0.8}, plain={64: 0.9}, unrolled={256: 0.95, 64: 0.95})
    assert routing.choose(measured, "a.onnx", GRAPHS) == [
        {"batches": [1, 1], "file": "a.b1.onnx"}, {"batches": [2, 63], "file": "a.onnx"},
        {"batches": [64, 255], "file": "a.plain.onnx"}, {"batches": [256, None], "file": "a.unrolled.onnx"}]


def test_a_difference_inside_the_noise_keeps_the_base_graph_and_ranges_merge():
    measured = ratios(b1={1: 1.2}, plain={1: 0.995, 2: 0.995, 8: 0.995, 64: 0.995, 256: 0.995})
    assert routing.choose(measured, "a.onnx", GRAPHS) == [{"batches": [1, None], "file": "a.onnx"}]


def test_a_one_window_graph_serves_batch_1_only():
    measured = ratios(b1={1: 0.5}, plain={1: 0.7, 2: 0.7})
    assert routing.choose(measured, "a.onnx", GRAPHS) == [
        {"batches": [1, 1], "file": "a.b1.onnx"}, {"batches": [2, 7], "file": "a.plain.onnx"},
        {"batches": [8, None], "file": "a.onnx"}]


def test_rewrite_routing_measures_and_rewrites_only_the_routing_sealed(export_copy, monkeypatch):
    before = read_manifest(export_copy)
    measured, real_measure = [], routing.measure

    def plain_made_fastest(folder, manifest, role, graphs, base_file):
        """The real measurement (short), with the plain autoencoder graph made the fastest everywhere."""
        measured.append((role, sorted(graphs), base_file))
        found = real_measure(folder, manifest, role, graphs, base_file, runs=5)
        return found | ({"autoencoder.plain.onnx": {str(b): 0.01 for b in routing.PROBES}} if role == "autoencoder" else {})

    monkeypatch.setattr(routing, "measure", plain_made_fastest)
    chosen = publish.rewrite_routing(export_copy)
    assert [m[0] for m in measured] == ["autoencoder", "encoder"]
    assert measured[0][1] == ["autoencoder.b1.onnx", "autoencoder.onnx", "autoencoder.plain.onnx",
                              "autoencoder.portable.onnx", "autoencoder.unrolled.onnx"]
    assert chosen["autoencoder"] == [{"batches": [1, None], "file": "autoencoder.plain.onnx"}]
    after = read_manifest(export_copy)  # sealed: read_manifest checks the checksum
    for role in ("autoencoder", "encoder"):
        entry = after["variants"][role]["fp32"]
        assert entry["by_batch"] == chosen[role]
        graphs = next(files for name, files, _ in measured if name == role)
        assert entry["routing"]["cpu"]["cores"] >= 1 and sorted(entry["routing"]["time_over_base"]) == graphs
        del entry["by_batch"], entry["routing"]
        before["variants"][role]["fp32"].pop("by_batch", None)
    for key in set(before) | set(after):
        if key != "checksum":
            assert after[key] == before[key], key
    model = runtime.load(export_copy, "cpu")
    assert model.models["autoencoder"].graph_for(64).name == "autoencoder.plain.onnx"
    names = [name for name, *_ in onnx_paths(export_copy, read_manifest(export_copy))]
    assert "autoencoder.plain.onnx" in names and "autoencoder.onnx+plain" in names  # the baseline is still timed alone


def test_bench_rewrite_routing_option_prints_the_routes_and_refuses_a_wrong_folder(export_copy, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(export_copy), "--rewrite-routing", "--role", "encoder", "--runs", "3",
                                       "--batch", "4", "--no-cold-start", "--json"])
    assert result.exit_code == 0, result.output
    assert "autoencoder routing: batch" in result.stderr and "encoder routing: batch" in result.stderr  # sizes as measured
    assert json.loads(result.stdout)["results"]
    edge = runtime.load(export_copy, "cpu")
    for role, by_name in read_manifest(export_copy)["variants"].items():
        following = 1  # measured for real: every batch size has exactly one graph
        for route in by_name["fp32"]["by_batch"]:
            assert route["batches"][0] == following
            following = route["batches"][1] and route["batches"][1] + 1
        assert following is None
        assert edge.models[role].graph_for(1).name == by_name["fp32"]["by_batch"][0]["file"]
    bad = CliRunner().invoke(main, ["bench", str(tmp_path), "--rewrite-routing"])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1
