"""The self-check on load covers what a user relies on: every served graph, fp32 included, keeps its
bound from Keras on the golden windows, and the served threshold flags the golden windows the export's
threshold flagged; a resealed threshold or model is refused in one line (exit 4), by load and by verify."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract import golden
from edgeae.contract.errors import EXIT_INTEGRITY, IntegrityError
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.runtime.scoring import reconstruction_error
from edgeae.verifier import verification

VARIANTS = ("fp32", "fp32-b1", "fp32-unrolled", "fp16", "int8", "plain")


def set_threshold(folder, value: float) -> None:
    """What someone who can write the folder does: edit the threshold and reseal the manifest."""
    manifest = read_manifest(folder).to_body()
    manifest["detector"]["threshold"] = value
    write_manifest(folder, manifest)


def replace_model(folder, name: str, graph_output: str) -> None:
    """Swap `name` for a model of the same inputs and outputs that returns its input (Identity) or
    zeros (Mul by 0), and reseal its checksum: what an attacker who rewrites the folder ships."""
    declared = onnx.load(str(folder / name)).graph
    source, target = declared.input[0], declared.output[0]
    nodes = ([helper.make_node("Identity", [source.name], [target.name])] if graph_output == "identity" else
             [helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
              helper.make_node("Mul", [source.name, "zero"], [target.name])])
    model = helper.make_model(helper.make_graph(nodes, "swapped", [source], [target]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / name))
    manifest = read_manifest(folder).to_body()
    manifest["files"][name] = file_entry(folder / name, manifest["files"][name]["role"])
    write_manifest(folder, manifest)


def test_the_export_records_golden_windows_its_threshold_flags_and_some_it_does_not(tiny_export):
    manifest = read_manifest(tiny_export)
    stored = golden.read_golden(tiny_export, manifest)
    chosen = manifest.detector.golden
    assert set(chosen) == set(stored.inputs)
    flagged = [i for entry in chosen.values() for i in entry["flagged"]]
    calm = [i for entry in chosen.values() for i in entry["windows"] if i not in entry["flagged"]]
    assert flagged and calm
    for name, entry in chosen.items():  # each chosen window lies well clear of the threshold, on Keras's scores
        scores = stored.expected[golden.SCORE][golden.KERAS][name][entry["windows"]]
        flags = np.isin(entry["windows"], entry["flagged"])
        assert (scores[flags] > golden.CLEAR * manifest.detector.threshold).all()
        assert (scores[~flags] * golden.CLEAR < manifest.detector.threshold).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_its_self_check_on_the_export_it_came_from(tiny_export, variant):
    assert runtime.load(tiny_export, "cpu", variant=variant).variant == variant


@pytest.mark.parametrize("threshold", [1e30, 0.0])
def test_a_resealed_threshold_is_refused_at_load_in_one_line(export_copy, tmp_path, threshold):
    set_threshold(export_copy, threshold)
    with pytest.raises(IntegrityError, match=r"self-check: with threshold .* flags \d+ of the \d+ golden '\w+' windows "
                                             r"checked, where the export flagged \d+"):
        runtime.load(export_copy, "cpu")
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((6, 3)))
    result = CliRunner().invoke(main, ["score", str(export_copy), str(data), "--provider", "cpu"])
    assert result.exit_code == EXIT_INTEGRITY, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "self-check" in result.stderr
    assert runtime.load(export_copy, "cpu", self_check=False).threshold == threshold  # the user's own choice to skip


def test_a_resealed_threshold_fails_verify_against_the_stored_outputs(export_copy):
    set_threshold(export_copy, 1e30)
    with pytest.raises(IntegrityError, match=r"manifest field detector.threshold \(1e\+30\) flags 0 of the"):
        verification.verify(export_copy, "cpu", against="stored")
    result = CliRunner().invoke(main, ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"])
    assert result.exit_code == EXIT_INTEGRITY and len(result.stderr.strip().splitlines()) == 1, result.output


def test_a_variants_resealed_threshold_is_refused_too(export_copy):
    manifest = read_manifest(export_copy).to_body()
    manifest["detector"]["variants"]["int8"]["threshold"] = 1e30
    write_manifest(export_copy, manifest)
    runtime.load(export_copy, "cpu")  # fp32 keeps its own
    with pytest.raises(IntegrityError, match="self-check: with threshold 1e\\+30, autoencoder.int8.onnx flags 0"):
        runtime.load(export_copy, "cpu", variant="int8")
    with pytest.raises(IntegrityError, match=r"detector.variants.int8.threshold \(1e\+30\)"):
        verification.verify(export_copy, "cpu", against="stored")


@pytest.mark.parametrize("kind", ["identity", "zeros"])
@pytest.mark.parametrize("name", ["autoencoder.onnx", "autoencoder.b1.onnx"])
def test_a_resealed_identity_or_all_zero_fp32_autoencoder_is_refused(fixed_routes, kind, name):
    """fixed_routes: the fp32 variant hands batches of one to the b1 graph whatever this machine measured."""
    replace_model(fixed_routes, name, kind)
    with pytest.raises(IntegrityError, match=rf"self-check: {name} misses the Keras outputs stored at export by .* "
                                             r"not the model this export verified"):
        runtime.load(fixed_routes, "cpu")


def test_an_export_without_the_record_still_checks_its_outputs(export_copy):
    """An export from before the golden windows were recorded: outputs are checked on the first golden
    windows of each set, flags cannot be (nothing says what was flagged), and nothing claims they were."""
    manifest = read_manifest(export_copy).to_body()
    del manifest["detector"]["golden"]
    write_manifest(export_copy, manifest)
    inputs = golden.read_golden(export_copy, read_manifest(export_copy)).inputs
    windows, flagged = golden.subset(inputs, read_manifest(export_copy))
    assert flagged is None and {name: len(index) for name, index in windows.items()} == {
        name: min(golden.SUBSET, len(x)) for name, x in inputs.items()}
    runtime.load(export_copy, "cpu")
    verification.verify(export_copy, "cpu", against="stored")
    replace_model(export_copy, "autoencoder.onnx", "zeros")
    with pytest.raises(IntegrityError, match="self-check: autoencoder.onnx misses the Keras outputs"):
        runtime.load(export_copy, "cpu")


@pytest.mark.parametrize("edit", [{"windows": [5, 2], "flagged": []}, {"windows": [1], "flagged": [3]},
                                  {"windows": [10**6], "flagged": []}])
def test_a_golden_record_that_does_not_fit_the_golden_vectors_is_refused(export_copy, edit):
    manifest = read_manifest(export_copy).to_body()
    manifest["detector"]["golden"]["training"] = edit
    write_manifest(export_copy, manifest)
    with pytest.raises(IntegrityError, match="manifest field detector.golden.training"):
        runtime.load(export_copy, "cpu")


def test_the_self_check_scores_as_the_runtime_scores(tiny_export):
    """The flags the self-check compares are those `score` gives on the same windows."""
    manifest = read_manifest(tiny_export)
    stored = golden.read_golden(tiny_export, manifest)
    model = runtime.load(tiny_export, "cpu")
    assert manifest.detector.golden and all(len(entry["windows"]) for entry in manifest.detector.golden.values())
    for name, entry in manifest.detector.golden.items():
        x = stored.inputs[name][entry["windows"]]
        result = model.score(x)
        assert np.array_equal(result.flags, np.isin(entry["windows"], entry["flagged"]))
        np.testing.assert_allclose(result.scores, reconstruction_error(x, model.reconstruct(x), model.scale))
