"""Measured routing: which fp32 graph serves which batch sizes, chosen from timings (no timing asserted)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.runtime.routes import DEFAULT_CHUNK
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.measure import routing
from edgeae.contract.manifest import read_manifest
from edgeae.measure.bench import onnx_paths
from edgeae.cli import main
from edgeae.contract.errors import EXIT_USAGE, UsageError

from .conftest import FIXED_ROUTES

GRAPHS = {"a.onnx": False, "a.b1.onnx": True, "a.plain.onnx": False, "a.unrolled.onnx": False}
EVEN = {str(b): b * 1e-5 for b in routing.PROBES}  # the base graph: the same time per window at every probe


def ratios(**by_file):
    """Times over the base graph a.onnx at each probe, 1.0 unless given (file stem -> {batch: ratio})."""
    out = {file: {str(b): 1.0 for b in routing.PROBES if b == 1 or not one} for file, one in GRAPHS.items()}
    for stem, values in by_file.items():
        out[f"a.{stem}.onnx"].update({str(b): r for b, r in values.items()})
    return out


def test_the_fastest_graph_takes_the_sizes_from_its_probe_to_the_next_up_to_the_chunk():
    measured = ratios(b1={1: 0.8}, plain={64: 0.8}, unrolled={256: 0.85, 64: 0.85})
    assert routing.choose(measured, EVEN, "a.onnx", GRAPHS) == ([
        {"batches": [1, 1], "file": "a.b1.onnx"}, {"batches": [2, 63], "file": "a.onnx"},
        {"batches": [64, 255], "file": "a.plain.onnx"}, {"batches": [256, None], "file": "a.unrolled.onnx"}], 256)


def test_the_chunk_is_the_large_probe_with_the_most_windows_a_second():
    # the base graph runs 4096 windows in one call 0.8x as long a window as 256; the unrolled one beats it at 1024
    seconds = {**EVEN, "4096": 4096 * 0.8e-5}
    assert routing.choose(ratios(unrolled={1024: 0.5}), seconds, "a.onnx", GRAPHS) == (
        [{"batches": [1, 1023], "file": "a.onnx"}, {"batches": [1024, None], "file": "a.unrolled.onnx"}], 1024)
    assert routing.choose(ratios(), seconds, "a.onnx", GRAPHS) == ([{"batches": [1, None], "file": "a.onnx"}], 4096)
    # within the noise a larger chunk is not worth its memory
    assert routing.choose(ratios(), {**EVEN, "4096": 4096 * 0.99e-5}, "a.onnx", GRAPHS)[1] == 256


def test_a_difference_inside_the_noise_keeps_the_base_graph_and_ranges_merge():
    measured = ratios(b1={1: 1.2}, plain={b: 0.97 for b in routing.PROBES})
    assert routing.choose(measured, EVEN, "a.onnx", GRAPHS) == ([{"batches": [1, None], "file": "a.onnx"}], 256)


def test_a_one_window_graph_serves_batch_1_only():
    measured = ratios(b1={1: 0.5}, plain={1: 0.7, 2: 0.7})
    assert routing.choose(measured, EVEN, "a.onnx", GRAPHS)[0] == [
        {"batches": [1, 1], "file": "a.b1.onnx"}, {"batches": [2, 7], "file": "a.plain.onnx"},
        {"batches": [8, None], "file": "a.onnx"}]


def covers_every_size(routes):
    following = 1
    for route in routes:
        assert route["batches"][0] == following
        following = route["batches"][1] and route["batches"][1] + 1
    return following is None


def test_an_export_measures_its_routing_and_the_runtime_runs_in_its_chunk(tiny_export, monkeypatch):
    manifest = read_manifest(tiny_export).to_body()
    edge = runtime.load(tiny_export, "cpu")
    for role in ("autoencoder", "encoder"):
        entry = manifest["variants"][role]["fp32"]
        assert covers_every_size(entry["by_batch"]) and entry["chunk"] in routing.CHUNKS
        assert set(entry["routing"]["time_over_base"]) == set(routing.candidates(read_manifest(tiny_export), role, "fp32"))
        assert entry["routing"]["cpu"]["cores"] >= 1
        model = edge.models[role]
        assert model.chunk == entry["chunk"]
        for route in entry["by_batch"]:
            assert model.graph_for(route["batches"][0]).name == route["file"]
    model = edge.models["encoder"]
    calls = []
    for graph in {model, *(other for _, _, other in model.routes)}:
        monkeypatch.setattr(graph, "_call", (lambda call: lambda names, feed: calls.append(
            len(next(iter(feed.values())))) or call(names, feed))(graph._call))
    x = np.random.default_rng(0).uniform(0, 1, (2 * model.chunk + 3, model.timesteps, model.features)).astype(np.float32)
    whole = edge.encode(x)
    assert calls == [model.chunk, model.chunk, 3]
    calls.clear()
    np.testing.assert_allclose(edge.encode(x, chunk=5), whole, rtol=1e-5, atol=1e-6)  # a caller's chunk still rules
    assert calls == [5] * (len(x) // 5) + ([len(x) % 5] if len(x) % 5 else [])


def test_fixed_routing_keeps_the_rule_and_is_a_flag(tiny_training, tmp_path):
    path, _ = publish.export(tiny_training, tmp_path / "fixed", ExportOptions(providers="cpu", measure_routing=False))
    entry = read_manifest(path).to_body()["variants"]["autoencoder"]["fp32"]
    assert entry["by_batch"] == FIXED_ROUTES
    assert "chunk" not in entry and "routing" not in entry
    assert runtime.load(path, "cpu").models["autoencoder"].chunk == DEFAULT_CHUNK
    with pytest.raises(UsageError, match="^measure_routing must be True or False, got 'no'$"):  # exit 2
        publish.export(tiny_training, tmp_path / "bad", ExportOptions(providers="cpu", measure_routing="no"))
    assert not (tmp_path / "bad").exists()


def test_rewrite_routing_measures_and_rewrites_only_the_routing_sealed(export_copy, monkeypatch):
    before = read_manifest(export_copy).to_body()
    measured, real_measure = [], routing.measure

    def plain_made_fastest(folder, manifest, role, graphs, base_file):
        """The real measurement (short), with the plain autoencoder graph made the fastest everywhere."""
        measured.append((role, sorted(graphs), base_file))
        found, seconds = real_measure(folder, manifest, role, graphs, base_file, budget_s=0.01)
        if role == "autoencoder":
            found["autoencoder.plain.onnx"] = {str(b): 0.01 for b in routing.PROBES}
        return found, seconds

    monkeypatch.setattr(routing, "measure", plain_made_fastest)
    chosen = publish.rewrite_routing(export_copy)
    assert [m[0] for m in measured] == ["autoencoder", "encoder"]
    assert measured[0][1] == ["autoencoder.b1.onnx", "autoencoder.onnx", "autoencoder.plain.onnx",
                              "autoencoder.unrolled.onnx"]  # the portable graph is published, and not routed
    assert chosen["autoencoder"] == [{"batches": [1, None], "file": "autoencoder.plain.onnx"}]
    after = read_manifest(export_copy).to_body()  # sealed: read_manifest checks the checksum
    for role in ("autoencoder", "encoder"):
        entry = after["variants"][role]["fp32"]
        assert entry["by_batch"] == chosen[role]
        graphs = next(files for name, files, _ in measured if name == role)
        assert entry["routing"]["cpu"]["cores"] >= 1 and sorted(entry["routing"]["time_over_base"]) == graphs
        del entry["by_batch"], entry["routing"], entry["chunk"]
        for field in ("by_batch", "routing", "chunk"):
            before["variants"][role]["fp32"].pop(field, None)
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
    for role, by_name in read_manifest(export_copy).to_body()["variants"].items():
        assert covers_every_size(by_name["fp32"]["by_batch"])  # measured for real: every size has exactly one graph
        assert edge.models[role].graph_for(1).name == by_name["fp32"]["by_batch"][0]["file"]
    bad = CliRunner().invoke(main, ["bench", str(tmp_path), "--rewrite-routing"])
    # A folder without a manifest is a usage error (exit 2, "missing file" in errors.EXIT_CODES), said in one line.
    assert bad.exit_code == EXIT_USAGE and len(bad.output.strip().splitlines()) == 1, bad.output
    assert bad.output.startswith(f"error: {tmp_path} is not an edgeae folder: it has no manifest.json")


def test_optimize_fixed_routing_option_keeps_the_rule(export_copy):
    result = CliRunner().invoke(main, ["optimize", str(export_copy), "--provider", "cpu", "--fixed-routing"])
    assert result.exit_code == 0, result.output
    entry = read_manifest(export_copy).to_body()["variants"]["autoencoder"]["fp32"]
    assert entry["by_batch"] == FIXED_ROUTES and "chunk" not in entry and "routing" not in entry
