import json

import numpy as np
import pytest

from edgeae.verifier import verification
from edgeae.contract.variants import UNROLLED_FROM
from edgeae.contract.errors import EXIT_INTEGRITY
from edgeae.contract.parity import (DEFAULT_ATOL, DEFAULT_RTOL, MismatchError, ParityReport, Tolerance, compare,
                                   fp32_tolerance)

from .conftest import PROVIDERS


def test_compare_reports_abs_and_range_relative_error():
    ref = np.array([[0.0, 10.0], [5.0, 2.0]])
    out = ref + np.array([[0.0, 1e-4], [0.0, 0.0]])
    r = compare(ref, out, model="m", provider="cpu", dataset="d", tolerance=Tolerance(1e-5))
    assert r.max_abs == pytest.approx(1e-4)
    assert r.max_rel_range == pytest.approx(1e-5)
    assert r.value_range == 10.0
    assert not r and "FAIL" in r.line() and "m [cpu] d" in r.line()
    assert compare(ref, ref, model="m", provider="cpu", dataset="d")


def test_relative_error_stays_put_when_the_range_grows():
    """The seed's finding, as arithmetic: scale values and error together, the relative error stays."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (50, 5))
    noise = rng.normal(0, 1e-6, ref.shape)
    small = compare(ref, ref + noise, model="m", provider="cpu", dataset="d")
    large = compare(ref * 1000, (ref + noise) * 1000, model="m", provider="cpu", dataset="d")
    assert large.max_abs == pytest.approx(small.max_abs * 1000)
    assert large.max_rel_range == pytest.approx(small.max_rel_range)


def test_shape_mismatch_is_an_error():
    with pytest.raises(MismatchError, match="shape") as caught:  # an IntegrityError (exit 4) that is a ValueError too
        compare(np.zeros((2, 3)), np.zeros((3, 2)), model="m", provider="cpu", dataset="d")
    assert isinstance(caught.value, ValueError) and caught.value.exit_code == EXIT_INTEGRITY
    assert str(caught.value) == "m gives shape (3, 2), the reference (2, 3): not this export's model"


def test_report_collects_every_failure():
    ok = compare(np.zeros(3), np.zeros(3), model="a", provider="cpu", dataset="x")
    bad1 = compare(np.zeros(3), np.ones(3), model="a", provider="cpu", dataset="y")
    bad2 = compare(np.zeros(3), np.ones(3), model="b", provider="cpu", dataset="y")
    report = ParityReport((ok, bad1, bad2))
    assert not report
    assert len(report.failures()) == 2
    assert ParityReport((ok,))
    assert not ParityReport(())


def test_export_parity_holds_on_every_input_set(tiny_export):
    report = json.loads((tiny_export / "parity.json").read_text())
    assert report["passed"]
    datasets = {(r["model"], r["dataset"]) for r in report["results"]}
    for model in ("autoencoder", "encoder"):
        for dataset in ("training", "single", "in_range", "outside_range"):
            assert (model, dataset) in datasets
    batches = {r["batch"] for r in report["results"]}
    assert 1 in batches and max(batches) >= 256
    for r in report["results"]:
        assert r["max_abs"] <= 1e-5


def test_standalone_encoder_equals_the_autoencoders_internal_encoding(tiny_export):
    report = verification.verify(tiny_export, providers="cpu")
    check = report.encoder_matches_autoencoder
    assert check is not None and check.batch > 300
    assert check.max_abs == 0.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_verify_on_each_provider(fixed_routes, provider):
    report = verification.verify(fixed_routes, providers=provider)
    assert report
    assert {r.provider for r in report.results} == {provider}
    placement = report.placement[f"autoencoder/{provider}"]
    assert sum(placement.values()) > 0
    # the graphs the runtime hands some batch sizes to are checked too (the one-window graph window by window)
    graphs = ("autoencoder", "autoencoder (batch 1)", f"autoencoder (batches {UNROLLED_FROM}+)", "encoder")
    assert set(report.summary()) == {f"{m}/{provider}" for m in graphs}
    assert {r.batch for r in report.results if r.model == "autoencoder (batch 1)"} > {1}


def test_verify_fails_beyond_a_tight_tolerance(tiny_export):
    report = verification.verify(tiny_export, providers="cpu", atol=1e-12, rtol=1e-12)
    assert not report
    assert any("autoencoder [cpu]" in line for line in report.failures())


def test_fp32_bound_is_the_larger_of_the_floor_and_the_share_of_range():
    """float32 rounding grows with the values: a 1e-3 miss on outputs spanning 1e3 is noise
    (1e-6 of range), the same share of a small range passes by the floor, and a wrong graph's
    miss (tenths of the range) fails at any scale."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (20, 4))
    bound = fp32_tolerance()
    assert (bound.abs, bound.rel_range) == (DEFAULT_ATOL, DEFAULT_RTOL)

    def check(scale: float, miss: float):
        out = ref.copy()
        out[3, 2] += miss
        return compare(ref * scale, out * scale, model="m", provider="cpu", dataset="d", tolerance=bound)

    assert check(1000.0, 1e-6)  # 1e-3 abs in raw units, 1e-6 of the range
    assert not check(1000.0, 3e-4)  # 0.3 abs, 3e-4 of the range
    assert check(1e-3, 5e-3)  # 5e-6 abs: under the floor although 5e-3 of the range
    for scale in (1e-3, 1.0, 1e3):  # a wrong gate order or activation misses by tenths of the range
        assert not check(scale, 0.3)
    line = check(1000.0, 3e-4).line()
    assert "allowed max abs 1e-05 or 1e-04 of range, whichever is larger" in line and "FAIL" in line


def test_verify_holds_fp32_to_the_tolerance_the_export_recorded(tiny_training, tmp_path):
    """An export published at a looser bound verifies at that bound, not the library's default;
    a bound given to verify replaces it for that run."""
    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions

    out, _ = publish.export(tiny_training, tmp_path / "loose",
                            ExportOptions(providers="cpu", atol=2e-3, rtol=3e-3, variants=()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["parity"]["tolerance_abs"], manifest["parity"]["tolerance_rel_range"]) == (2e-3, 3e-3)
    report = verification.verify(out, providers="cpu", against="stored")
    assert report and {(r.tolerance_abs, r.tolerance_rel_range) for r in report.results} == {(2e-3, 3e-3)}
    tight = verification.verify(out, providers="cpu", against="stored", atol=1e-12, rtol=1e-12)
    assert not tight and {(r.tolerance_abs, r.tolerance_rel_range) for r in tight.results} == {(1e-12, 1e-12)}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stored_references_verify_without_tensorflow(tiny_export, provider):
    """What a GPU machine or a device runs: parity against the Keras outputs saved at export,
    with TensorFlow, Keras and tf2onnx unimportable."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'onnx'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgeae.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "verify", str(tiny_export), "--provider", provider,
                           "--against", "stored", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(proc.stdout)
    keras = verification.verify(tiny_export, providers=provider, against="keras").to_dict()
    assert stored["passed"] and stored["summary"] and stored["summary"].keys() == keras["summary"].keys()
    for key, s in stored["summary"].items():
        assert s["max_abs"] == pytest.approx(keras["summary"][key]["max_abs"], rel=1e-3, abs=1e-9)


def test_stored_references_are_checked(export_copy):
    from edgeae.contract.errors import IntegrityError

    path = export_copy / "parity_reference.npz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="parity_reference.npz"):
        verification.verify(export_copy, providers="cpu", against="stored")
