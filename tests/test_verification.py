"""verify re-checks every published variant against its recorded tolerance, and refuses a file
of another model (exit 4) instead of crashing; optimize refuses tolerances of the wrong type.

Each case replaces a file of an export and reseals the manifest, as anyone who can write the
folder can: the checksums then hold, so only the numbers can tell.
"""
import json
import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeae.exporter import publish
from edgeae.exporter.options import OPTIMIZE_DEFAULTS, ExportOptions
from edgeae.verifier import verification
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, EXIT_PARITY, IntegrityError, UsageError
from edgeae.contract.parity import Tolerance, check_tolerance, compare
from edgeae.trainer import training as trainer


@pytest.fixture(scope="module")
def narrow_export(tiny_config, tmp_path_factory):
    """Another export of the tiny export's window shape, with 3 units instead of 8."""
    out = tmp_path_factory.mktemp("narrow") / "export"
    publish.export(trainer.train(replace(tiny_config, units=3, epochs=2)), out, ExportOptions(providers="cpu"))
    return out


def reseal(folder, name, content: bytes) -> None:
    (folder / name).write_bytes(content)
    manifest = read_manifest(folder).to_body()
    manifest["files"][name] = file_entry(folder / name, manifest["files"][name]["role"])
    write_manifest(folder, manifest)


def cli_verify(folder, against="stored"):
    return CliRunner().invoke(main, ["verify", str(folder), "--provider", "cpu", "--against", against])


def test_verify_rechecks_every_published_variant_against_its_recorded_tolerance(tiny_export):
    report = verification.verify(tiny_export, providers="cpu", against="stored")
    manifest = read_manifest(tiny_export).to_body()
    assert report and report.variants
    routed = {route["file"] for by_name in manifest["variants"].values() for route in by_name["fp32"]["by_batch"]}
    # a one-window or unrolled graph the routing measured here sends batches to is checked as that route
    expected = {f"{role}/{name} ({v['file']})/cpu" for role, by_name in manifest["variants"].items()
                for name, v in by_name.items() if v["published"] and name != "fp32"
                and not (name in ("fp32-b1", "fp32-unrolled") and v["file"] in routed)}
    assert set(report.variant_summary()) == expected
    assert {n.split(" ")[0] for n in expected} >= {f"{role}/{name}" for role in ("autoencoder", "encoder")
                                                    for name in ("plain", "portable", "fp16", "int8", "ort")}
    assert len(payload := report.to_dict()["variants"]) == len(expected) * 4 and all(r["passed"] for r in payload)
    for r in report.variants:
        role, name = r.model.split(" ")[0].split("/")
        assert Tolerance(r.tolerance_abs, r.tolerance_rel_range).to_dict() == manifest["variants"][role][name]["tolerance"]
    assert any("int8" in line and "of range" in line and line.endswith("ok") for line in report.variant_lines())


def test_a_batch_graph_no_route_uses_is_verified_as_a_variant(fixed_routes):
    manifest = read_manifest(fixed_routes).to_body()  # batch 1 on the one-window graph, the rest on the clean one
    manifest["variants"]["autoencoder"]["fp32"]["by_batch"] = [
        {"batches": [1, 1], "file": "autoencoder.b1.onnx"}, {"batches": [2, None], "file": "autoencoder.onnx"}]
    write_manifest(fixed_routes, manifest)
    report = verification.verify(fixed_routes, providers="cpu", against="stored")
    names = {r.model.split(" ")[0] for r in report.variants}
    assert report and "autoencoder/fp32-unrolled" in names and "autoencoder/fp32-b1" not in names
    assert "autoencoder (batch 1)/cpu" in report.summary()


@pytest.mark.parametrize("name", ["autoencoder.int8.onnx", "autoencoder.ort", "autoencoder.plain.onnx",
                                  "autoencoder.fp16.onnx"])
def test_a_variant_swapped_for_another_models_fails_verify(export_copy, narrow_export, name):
    reseal(export_copy, name, (narrow_export / name).read_bytes())
    result = cli_verify(export_copy)
    assert result.exit_code == EXIT_PARITY, result.output
    variant = {".int8.onnx": "int8", ".ort": "ort", ".plain.onnx": "plain", ".fp16.onnx": "fp16"}[name[len("autoencoder"):]]
    assert f"autoencoder/{variant} ({name}) [cpu]" in result.stderr and "FAIL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_variant_swapped_for_another_models_fails_verify_against_keras(export_copy, narrow_export):
    reseal(export_copy, "autoencoder.int8.onnx", (narrow_export / "autoencoder.int8.onnx").read_bytes())
    result = cli_verify(export_copy, against="keras")
    assert result.exit_code == EXIT_PARITY and "autoencoder/int8" in result.stderr


def test_an_int8_file_with_halved_weight_scales_fails_verify(export_copy):
    """The export's own int8 model, altered: same shapes and ops, wrong numbers."""
    model = onnx.load(str(export_copy / "autoencoder.int8.onnx"))
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    halved = 0
    for tensor in model.graph.initializer:
        if tensor.name in scales:
            array = onnx.numpy_helper.to_array(tensor) * np.float32(0.5)
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
            halved += 1
    assert halved
    reseal(export_copy, "autoencoder.int8.onnx", model.SerializeToString())
    result = cli_verify(export_copy)
    assert result.exit_code == EXIT_PARITY
    assert "autoencoder/int8 (autoencoder.int8.onnx)" in result.stderr and "rel-to-range" in result.stderr
    assert "> 1e-02" in result.stderr  # the int8 tolerance the manifest records, with the figure that missed it


def test_verify_holds_a_variant_to_the_tolerance_its_manifest_records(export_copy):
    manifest = read_manifest(export_copy).to_body()
    manifest["variants"]["encoder"]["fp16"]["tolerance"] = {"abs": None, "rel_range": 1e-9}
    write_manifest(export_copy, manifest)
    report = verification.verify(export_copy, providers="cpu", against="stored")
    assert not report and report.results and all(report.results)
    assert all("encoder/fp16" in line for line in report.failures())
    for bad in ({"abs": "tight"}, {"abs": None, "rel_range": None}, {"abs": True}, {"atol": 1e-5}, 0.01):
        manifest["variants"]["encoder"]["fp16"]["tolerance"] = bad
        write_manifest(export_copy, manifest)
        result = cli_verify(export_copy)
        assert result.exit_code == EXIT_INTEGRITY and "variants.encoder.fp16.tolerance" in result.stderr, bad


@pytest.mark.parametrize("name", ["encoder.onnx", "encoder.ort", "encoder.int8.onnx"])
def test_an_encoder_of_another_width_is_not_this_exports_model(export_copy, narrow_export, name):
    reseal(export_copy, name, (narrow_export / name).read_bytes())
    for against in ("stored", "keras"):
        result = cli_verify(export_copy, against)
        assert result.exit_code == EXIT_INTEGRITY, result.output
        assert re.search(rf"{name} gives shape \((\d+), 3\), the reference \(\1, 8\): not this export's model",
                         result.stderr), result.stderr


def test_an_autoencoder_of_another_width_is_not_this_exports_model(export_copy, narrow_export):
    reseal(export_copy, "autoencoder.onnx", (narrow_export / "autoencoder.onnx").read_bytes())
    result = cli_verify(export_copy)
    assert result.exit_code == EXIT_INTEGRITY and "autoencoder.onnx's encoding gives shape" in result.stderr
    reseal(export_copy, "autoencoder.onnx", (export_copy / "autoencoder.int8.onnx").read_bytes())
    result = cli_verify(export_copy)  # the same network at int8: held to fp32's 1e-5, it fails parity
    assert result.exit_code == EXIT_PARITY and "autoencoder [cpu]" in result.stderr


def test_stored_references_of_another_model_are_refused(export_copy, narrow_export):
    for name in ("golden.json", "golden.bin"):
        reseal(export_copy, name, (narrow_export / name).read_bytes())
    result = cli_verify(export_copy)
    assert result.exit_code == EXIT_INTEGRITY and "not this export's reference" in result.stderr
    with np.load(export_copy / "parity_inputs.npz") as saved:
        np.savez(export_copy / "odd.npz", training=saved["training"].astype(str), validation=saved["validation"])
    reseal(export_copy, "parity_inputs.npz", (export_copy / "odd.npz").read_bytes())
    result = cli_verify(export_copy, against="keras")
    assert result.exit_code == EXIT_INTEGRITY and "parity_inputs.npz: training holds" in result.stderr


def test_compare_refuses_outputs_of_another_shape_as_an_integrity_error():
    with pytest.raises(IntegrityError, match=r"^x.onnx gives shape \(2, 4\), the reference \(2, 8\)"):
        compare(np.zeros((2, 8)), np.zeros((2, 4)), model="m", provider="cpu", dataset="d", source="x.onnx")
    rel = compare(np.array([0.0, 10.0]), np.array([0.0, 10.5]), model="m", provider="cpu", dataset="d",
                  tolerance=Tolerance(rel_range=0.1))
    assert rel and rel.tolerance_abs is None and "rel-to-range 5.00e-02 <= 1e-01" in rel.line()
    assert not compare(np.array([0.0, 10.0]), np.array([0.0, 12.0]), model="m", provider="cpu", dataset="d",
                       tolerance=Tolerance(rel_range=0.1))


@pytest.mark.parametrize("tolerances, message", [
    ({"int8": 0.1}, "must be a Tolerance"),
    ([1], "must be a dict"),
    ({"int9": Tolerance(rel_range=0.1)}, "no variant named 'int9'"),
    ({1: Tolerance(rel_range=0.1)}, "no variant named 1"),
])
def test_optimize_refuses_tolerances_of_the_wrong_type(tiny_export, tolerances, message):
    before = (tiny_export / "manifest.json").read_bytes()
    with pytest.raises(UsageError, match=message):
        publish.optimize(tiny_export, replace(OPTIMIZE_DEFAULTS, providers="cpu", tolerances=tolerances))
    assert (tiny_export / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("value", [True, 10 ** 400, float("nan"), -1.0, 0, "1e-5"])
def test_a_tolerance_is_a_positive_finite_number(value):
    with pytest.raises(UsageError, match="positive number"):
        Tolerance(abs=value)
    with pytest.raises(UsageError, match="positive number"):
        check_tolerance(value)
    assert Tolerance(rel_range=1).to_dict() == {"abs": None, "rel_range": 1.0}


def test_the_committed_export_verifies_with_every_variant():
    from .conftest import EXPORTED

    report = verification.verify(EXPORTED, providers="cpu", against="stored")
    assert report and len(report.variant_summary()) == 10  # plain, portable, fp16, int8, ort of both
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["variant_summary"]  # plain JSON


def test_verify_refuses_a_manifest_whose_default_model_is_not_the_file_it_checks(export_copy):
    """The runtime loads models.<role>.file: pointed at the int8 file, fp32's 1e-5 would never be checked."""
    manifest = read_manifest(export_copy).to_body()
    manifest["models"]["autoencoder"]["file"] = "autoencoder.int8.onnx"
    write_manifest(export_copy, manifest)
    result = cli_verify(export_copy)
    assert result.exit_code == EXIT_INTEGRITY and "models.autoencoder.file" in result.output


def test_verify_prints_every_variant_against_its_tolerance(tiny_export):
    result = CliRunner().invoke(main, ["verify", str(tiny_export), "--provider", "cpu", "--against", "stored"])
    assert result.exit_code == 0, result.output
    assert "each against the tolerance its export recorded" in result.output
    assert sum("coder/int8 (" in line and line.endswith("ok") for line in result.output.splitlines()) == 2  # both roles
    assert "detector/int8 (detector.int8.onnx)/cpu" in result.output


def test_verify_refuses_what_the_runtime_would_refuse(export_copy, monkeypatch):
    """A threshold moved so no golden outlier is flagged, the manifest resealed: verify's own threshold check
    refuses it; with that check gone, the runtime's load that ends a passing verify still does (its
    self-check), so verify never passes an export the runtime refuses."""
    manifest = read_manifest(export_copy).to_body()
    manifest["detector"]["threshold"] = 1e30
    write_manifest(export_copy, manifest)
    result = cli_verify(export_copy, "stored")
    assert result.exit_code == EXIT_INTEGRITY and "manifest field detector.threshold (1e+30) flags 0" in result.stderr
    monkeypatch.setattr(verification, "check_thresholds", lambda *args: None)
    for against in ("stored", "keras"):
        result = cli_verify(export_copy, against)
        assert result.exit_code == EXIT_INTEGRITY, result.output
        assert result.stderr.startswith("error: self-check: with threshold 1e+30"), result.stderr
