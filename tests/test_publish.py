"""optimize on a folder (publish.py): what is published, what is left out, and what never changes."""
import json
import subprocess
import sys
from dataclasses import replace

import onnx
import pytest
from click.testing import CliRunner

from edgeae.exporter import publish
from edgeae.exporter.options import OPTIMIZE_DEFAULTS
from edgeae.contract import variants
from edgeae.contract.manifest import read_manifest, verify_files, write_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_PARITY, IntegrityError
from edgeae.contract.parity import Tolerance

CLEAN_OPS = {
    "autoencoder": ["Min", "Max", "Transpose", "LSTM", "Expand", "LSTM", "Squeeze", "MatMul", "Add", "Transpose"],
    "encoder": ["Min", "Max", "Transpose", "LSTM", "Squeeze"],
}


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# ---------------------------------------------------------------- optimize on a folder


def test_variant_missing_its_tolerance_is_not_published(export_copy):
    result = publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu",
                                                   tolerances={"int8": Tolerance(rel_range=1e-9)}))
    manifest = read_manifest(export_copy).to_body()
    verify_files(export_copy, read_manifest(export_copy))
    for role in ("autoencoder", "encoder"):
        entry = manifest["variants"][role]["int8"]
        assert not entry["published"] and entry["parity"]["failures"] and entry["weights"] == "per-row"
        assert not (export_copy / f"{role}.int8.onnx").exists() and f"{role}.int8.onnx" not in manifest["files"]
        assert manifest["variants"][role]["fp16"]["published"]
    assert any("int8" in line and "NOT published" in line for line in result.lines())
    assert not any(f.endswith(".int8.onnx") for f in json.loads((export_copy / "targets.json").read_text())["models"])


def test_optimize_upgrades_an_export_made_before_variants(export_copy):
    manifest = read_manifest(export_copy).to_body()
    for role in ("autoencoder", "encoder"):  # what an older export held: tf2onnx's graph as the default
        (export_copy / f"{role}.plain.onnx").replace(export_copy / f"{role}.onnx")
    for name in list(manifest["files"]):
        if name.endswith((".plain.onnx", ".b1.onnx", ".unrolled.onnx", ".fp16.onnx", ".int8.onnx", ".ort", ".config")) \
                or name == "targets.json":
            (export_copy / name).unlink(missing_ok=True)
            del manifest["files"][name]
    from edgeae.contract.manifest import file_entry

    for role in ("autoencoder", "encoder"):
        manifest["files"][f"{role}.onnx"] = file_entry(export_copy / f"{role}.onnx", "onnx")
        manifest["models"][role]["nodes"] = len(ops(export_copy / f"{role}.onnx"))
    del manifest["variants"], manifest["targets"]
    write_manifest(export_copy, manifest)
    publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu"))
    after = read_manifest(export_copy).to_body()
    verify_files(export_copy, read_manifest(export_copy))
    assert ops(export_copy / "autoencoder.onnx") == CLEAN_OPS["autoencoder"]
    assert after["models"]["autoencoder"]["nodes"] == len(CLEAN_OPS["autoencoder"])
    assert after["parity"]["passed"] and after["preprocessing"] == manifest["preprocessing"]
    assert set(after["variants"]["encoder"]) == {"plain", "fp32", "portable", "fp16", "int8", "ort"}
    assert {"fp32-b1", "fp32-unrolled"} <= set(after["variants"]["autoencoder"])  # the batch graphs come too
    for role in ("autoencoder", "encoder"):  # the routing is measured again over the rebuilt graphs
        fp32 = after["variants"][role]["fp32"]
        assert fp32["routing"]["measured"] and fp32["chunk"] >= 256 and fp32["by_batch"][-1]["batches"][1] is None
        assert set(fp32["routing"]["time_over_base"]) >= {f"{role}.onnx", f"{role}.plain.onnx"}


def test_optimize_refuses_a_tampered_export_and_changes_nothing(export_copy):
    path = export_copy / "encoder.fp16.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    before = {p.name: p.read_bytes() for p in export_copy.iterdir()}
    with pytest.raises(IntegrityError, match="encoder.fp16.onnx"):
        publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu"))
    assert {p.name: p.read_bytes() for p in export_copy.iterdir()} == before


def test_cli_optimize_prints_variants_and_targets(export_copy):
    runner = CliRunner()
    assert "Example" in runner.invoke(main, ["optimize", "--help"]).output
    result = runner.invoke(main, ["optimize", str(export_copy), "--provider", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "autoencoder/int8" in result.output and "NNAPI" in result.output and "published to" in result.output
    result = runner.invoke(main, ["optimize", str(export_copy), "--provider", "cpu", "--json"], catch_exceptions=False)
    payload = json.loads(result.stdout)
    assert payload["variants"]["encoder"]["ort"]["published"]


def test_strict_optimize_fails_when_a_variant_is_left_out(export_copy, monkeypatch):
    monkeypatch.setitem(variants.DEFAULT_TOLERANCES, "fp16", Tolerance(rel_range=1e-12))
    result = CliRunner().invoke(main, ["optimize", str(export_copy), "--provider", "cpu", "--strict"])
    assert result.exit_code == EXIT_PARITY
    assert "fp16" in result.stderr and not (export_copy / "encoder.fp16.onnx").exists()


def test_runtime_does_not_import_the_graph_builders():
    """The runtime reads the variant table (edgeae.contract.variants), never what builds or publishes graphs."""
    code = ("import sys, edgeae.runtime; print(any(m.startswith(('edgeae.conversion.graphs', 'edgeae.exporter.publish', 'edgeae.conversion.convert')) "
            "for m in sys.modules), 'onnxruntime.quantization' in sys.modules, 'onnx' in sys.modules, "
            "'edgeae.contract.variants' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "True"]


def test_optimize_keeps_the_variants_the_export_was_given(export_copy):
    # int8-dynamic at the table's own tolerance (1e-2 of range, about twice its worst measured error on AVX2,
    # AVX-512 VNNI and ARM: variants.py), not a bound widened until any CPU passes.
    publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu", variants=("int8", "int8-dynamic")))
    assert read_manifest(export_copy).to_body()["variants"]["autoencoder"]["int8-dynamic"]["published"]
    # the defaults, and int8-dynamic since the export has it
    publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu"))
    manifest = read_manifest(export_copy).to_body()
    rebuilt = manifest["variants"]["autoencoder"]["int8-dynamic"]  # rebuilt, and published again at its own bound
    assert rebuilt["published"] and rebuilt["tolerance"] == variants.DEFAULT_TOLERANCES["int8-dynamic"].to_dict()
    assert rebuilt["parity"]["max_rel_range"] <= rebuilt["tolerance"]["rel_range"]
    assert {"fp32-b1", "portable", "fp16", "ort"} <= set(manifest["variants"]["autoencoder"])


def test_optimize_holds_fp32_to_the_recorded_bounds_or_the_ones_given(export_copy):
    """optimize checks the rebuilt clean graph at the export's recorded fp32 bounds; bounds given
    replace them, are recorded, and a bound nothing can meet publishes nothing (exit 6)."""
    publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu", variants=(), atol=2e-5, rtol=3e-4))
    parity = read_manifest(export_copy).to_body()["parity"]
    assert (parity["tolerance_abs"], parity["tolerance_rel_range"]) == (2e-5, 3e-4)
    publish.optimize(export_copy, replace(OPTIMIZE_DEFAULTS, providers="cpu", variants=()))
    assert read_manifest(export_copy).to_body()["parity"]["tolerance_rel_range"] == 3e-4  # kept when none is given
    before = (export_copy / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["optimize", str(export_copy), "--provider", "cpu", "--atol", "1e-15",
                                       "--rtol", "1e-15"])
    assert result.exit_code == EXIT_PARITY and "--rtol" in result.stderr, result.output
    assert (export_copy / "manifest.json").read_bytes() == before
