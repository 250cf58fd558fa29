"""Golden vectors any runtime can read, and the self-check a device runs on them before serving a variant."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.contract import golden
from edgeae.verifier import verification
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, EXIT_PARITY, IntegrityError, UsageError
from edgeae.trainer.model import predict
from edgeae.runtime import SelfCheckError
from edgeae.runtime.scoring import reconstruction_error


def reseal(folder, name, content: bytes) -> None:
    (folder / name).write_bytes(content)
    manifest = read_manifest(folder).to_body()
    manifest["files"][name] = file_entry(folder / name, manifest["files"][name]["role"])
    write_manifest(folder, manifest)


def raw(folder, entry) -> np.ndarray:
    """What a C or JavaScript reader does: the index's offset and shape over raw little-endian float32."""
    data = (folder / golden.DATA_FILE).read_bytes()
    count = int(np.prod(entry["shape"]))
    assert entry["byte_offset"] == 4 * entry["offset"] and entry["count"] == count
    return np.frombuffer(data[entry["byte_offset"]:entry["byte_offset"] + 4 * count], "<f4").reshape(entry["shape"])


def test_golden_vectors_are_raw_float32_with_a_json_index_and_match_keras(tiny_export, tiny_training):
    manifest = read_manifest(tiny_export).to_body()
    assert {golden.INDEX_FILE, golden.DATA_FILE, golden.REFERENCE_FILE} <= set(manifest["files"])
    index = json.loads((tiny_export / golden.INDEX_FILE).read_text())
    assert (index["dtype"], index["byte_order"], index["data"]) == ("float32", "little", golden.DATA_FILE)
    assert set(index["inputs"]) == {"training", "single", "in_range", "outside_range"}
    ends = [e["offset"] + e["count"] for e in index["inputs"].values()]
    ends += [e["offset"] + e["count"] for by_source in index["expected"].values() for by_set in by_source.values()
             for e in by_set.values()]
    assert max(ends) * 4 == (tiny_export / golden.DATA_FILE).stat().st_size  # nothing unindexed
    pre = tiny_training.preprocessing
    assert set(index["inputs"]) == {"training", "single", "in_range", "outside_range"}
    with np.load(tiny_export / golden.REFERENCE_FILE) as npz:
        for name, entry in index["inputs"].items():
            x = raw(tiny_export, entry)
            np.testing.assert_array_equal(x, npz[f"inputs__{name}"])
            keras_out = raw(tiny_export, index["expected"]["autoencoder"]["keras"][name])
            np.testing.assert_allclose(keras_out, tiny_training.reconstruct(x), atol=1e-6)
            np.testing.assert_allclose(raw(tiny_export, index["expected"]["encoder"]["keras"][name]),
                                       predict(tiny_training.encoder, pre.apply(x)), atol=1e-6)
            np.testing.assert_allclose(raw(tiny_export, index["expected"]["score"]["keras"][name]),
                                       reconstruction_error(x, keras_out, pre.arrays()["scale"]), rtol=1e-6)
    # Reduced-precision variants carry their own outputs; fp32 graphs are held to Keras's.
    assert set(index["expected"]["autoencoder"]) == {"keras", "fp16", "int8"}
    assert set(index["expected"]["score"]) == {"keras", "fp16", "int8"}


def test_an_edited_input_fails_verify_against_keras_and_stored(export_copy):
    """Nothing is regenerated from a seed: verify runs the stored inputs, so one edited value (resealed) shows."""
    index = json.loads((export_copy / golden.INDEX_FILE).read_text())
    data = bytearray((export_copy / golden.DATA_FILE).read_bytes())
    at = index["inputs"]["in_range"]["byte_offset"]
    data[at:at + 4] = np.float32(123.0).tobytes()
    reseal(export_copy, golden.DATA_FILE, bytes(data))
    for against in ("stored", "keras"):
        report = verification.verify(export_copy, providers="cpu", against=against)
        failed = {r.dataset for r in report.results if not r}
        assert (not report and failed == {"in_range"}) if against == "stored" else report, (against, failed)


@pytest.mark.parametrize("edit, message", [
    (lambda ix: ix["inputs"]["training"].update(offset=10**9), "lies outside golden.bin"),
    (lambda ix: ix["inputs"]["training"].update(shape=[1, 2], count=2), "not windows of this export"),
    (lambda ix: ix["inputs"]["training"].update(offset="0"), "needs a whole offset"),
    (lambda ix: ix["expected"]["encoder"]["keras"].pop("single"), "one output for each input set"),
    (lambda ix: ix["expected"].pop("encoder"), "no Keras output of the encoder"),
    (lambda ix: ix.update(format="other"), "not an edgeae golden index"),
    (lambda ix: ix["expected"]["encoder"]["keras"]["single"].update(shape=[1, 3], count=3),
     "not this export's reference"),
    (lambda ix: ix["inputs"]["single"].update(shape=[2**32, 2**32, 1]), "lies outside golden.bin"),  # no wrap-around
    (lambda ix: ix["inputs"]["single"].update(shape=[10**30, 10, 5]), "lies outside golden.bin"),
    (lambda ix: ix["inputs"]["single"].update(count=7), "count and byte_offset must agree"),
    (lambda ix: ix["inputs"]["single"].update(byte_offset=3), "count and byte_offset must agree"),
    (lambda ix: ix.update(dtype="float64"), "little-endian float32 expected"),
    (lambda ix: ix.update(byte_order="big"), "little-endian float32 expected"),
    (lambda ix: ix.update(format_version=99), "little-endian float32 expected"),
])
def test_a_broken_golden_index_is_refused_in_one_line(export_copy, edit, message):
    index = json.loads((export_copy / golden.INDEX_FILE).read_text())
    edit(index)
    reseal(export_copy, golden.INDEX_FILE, json.dumps(index).encode())
    with pytest.raises(IntegrityError, match=message):
        golden.read_golden(export_copy, read_manifest(export_copy))
    result = CliRunner().invoke(main, ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"])
    assert result.exit_code == EXIT_INTEGRITY and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_golden_data_with_nan_or_a_partial_value_is_refused(export_copy):
    data = (export_copy / golden.DATA_FILE).read_bytes()
    reseal(export_copy, golden.DATA_FILE, data[:-2])
    with pytest.raises(IntegrityError, match="not a whole number of float32"):
        golden.read_golden(export_copy, read_manifest(export_copy))
    reseal(export_copy, golden.DATA_FILE, np.float32(np.nan).tobytes() + data[4:])
    with pytest.raises(IntegrityError, match="inputs.training holds NaN"):
        golden.read_golden(export_copy, read_manifest(export_copy))


# ---------------------------------------------------------------- the self-check on load


def _tighten(folder, role: str, variant: str, rel_range: float) -> None:
    manifest = read_manifest(folder).to_body()
    manifest["variants"][role][variant]["tolerance"] = {"abs": None, "rel_range": rel_range}
    write_manifest(folder, manifest)


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_a_variant_this_device_computes_outside_its_tolerance_is_refused_on_load(export_copy, variant):
    model = runtime.load(export_copy, "cpu", variant=variant)  # within its tolerance here
    assert model.variant == variant
    _tighten(export_copy, "encoder", variant, 1e-9)  # what a CPU whose kernels are off looks like
    with pytest.raises(SelfCheckError, match=rf"self-check: encoder.{variant}.onnx misses Keras on this device by "
                                             r".* of range\) on the golden '\w+' windows; allowed 1e-09 of range, .* where it was exported"):
        runtime.load(export_copy, "cpu", variant=variant)
    assert runtime.load(export_copy, "cpu", variant=variant, self_check=False).variant == variant
    assert runtime.load(export_copy, "cpu").variant == "fp32"  # fp32 keeps its own bound


def test_the_cli_refuses_a_variant_failing_its_self_check_with_exit_6(export_copy, tmp_path):
    _tighten(export_copy, "autoencoder", "int8", 1e-9)
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((6, 3)))
    result = CliRunner().invoke(main, ["score", str(export_copy), str(data), "--provider", "cpu", "--variant", "int8"])
    assert result.exit_code == EXIT_PARITY and "self-check: autoencoder.int8.onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["score", str(export_copy), str(data), "--provider", "cpu", "--variant", "int8",
                                       "--no-self-check"])
    assert result.exit_code == 0, result.output


def test_the_self_check_is_decided_by_the_variants_name_not_a_manifest_field(export_copy):
    manifest = read_manifest(export_copy).to_body()
    entry = manifest["variants"]["encoder"]["int8"]
    entry["tolerance"], entry["parity"] = {"abs": None, "rel_range": 1e-9}, [1]
    del entry["precision"]
    write_manifest(export_copy, manifest)
    with pytest.raises(SelfCheckError, match="self-check: encoder.int8.onnx misses Keras"):
        runtime.load(export_copy, "cpu", variant="int8")


def test_self_check_reads_golden_vectors_checked_against_the_manifest(export_copy):
    (export_copy / golden.DATA_FILE).write_bytes(b"\0" * 8)  # not resealed
    with pytest.raises(IntegrityError, match="golden.bin"):
        runtime.load(export_copy, "cpu", variant="int8")
    with pytest.raises(IntegrityError, match="golden.bin"):
        runtime.load(export_copy, "cpu")  # fp32 is self-checked on them too
    with pytest.raises(IntegrityError, match="golden.bin: size 8 bytes"):
        runtime.load(export_copy, "cpu", self_check=False)  # not the self-check's: every listed file is checked
    with pytest.raises(UsageError, match="self_check must be True or False"):
        runtime.load(export_copy, "cpu", variant="int8", self_check="no")


def test_the_golden_reader_needs_only_numpy():
    code = ("import sys, edgeae.contract.golden, edgeae.runtime; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
