"""What the runtime trusts is checked where it is read: a model's outputs, the manifest's
fields, the caller's arguments, and symbolic links where edgeae reads or writes."""
import copy
import io
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeae import runtime
from edgeae.runtime import providers
from edgeae.contract.files import check_output_file, check_target, staged_folder
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, EXIT_USAGE, IntegrityError, ProviderError, UsageError
from edgeae.trainer import training as trainer


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------- a model's outputs


def _graph(path, node, output_type, output_shape, role=None, initializer=None):
    """A one-node graph over (batch, 4, 3) windows, declaring the output given."""
    outputs = [] if output_shape is None else [helper.make_tensor_value_info("y", output_type, output_shape)]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3])],
                              outputs, [initializer] if initializer is not None else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if role:
        helper.set_model_props(model, {"edgeae.role": role})
    onnx.save(model, str(path))
    return path


FIRST_TWO = numpy_helper.from_array(np.array([0, 1], np.int64), "first_two")
BAD_OUTPUTS = {
    "scalar": (helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0), TensorProto.FLOAT, [], None, None,
               r"output 'y' is tensor\(float\) \(\), expected float \(batch, 4, 3\)"),
    "too few features": (helper.make_node("Gather", ["x", "first_two"], ["y"], axis=2), TensorProto.FLOAT,
                         ["batch", 4, 2], None, FIRST_TWO, r"\(batch, 4, 2\), expected float \(batch, 4, 3\)"),
    "flat autoencoder": (helper.make_node("Flatten", ["x"], ["y"]), TensorProto.FLOAT, ["batch", 12], "autoencoder",
                         None, r"\(batch, 12\), expected float \(batch, 4, 3\)"),
    "3-d encoder": (helper.make_node("Identity", ["x"], ["y"]), TensorProto.FLOAT, ["batch", 4, 3], "encoder", None,
                    r"expected float \(batch, units\)"),
    "strings": (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING), TensorProto.STRING, ["batch", 4, 3],
                None, None, r"tensor\(string\)"),
    "no outputs": (helper.make_node("Identity", ["x"], ["y"]), None, None, None, None, "has no outputs"),
    "unknown role": (helper.make_node("Identity", ["x"], ["y"]), TensorProto.FLOAT, ["batch", 4, 3], "decoder", None,
                     "role 'decoder'"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_a_model_whose_outputs_do_not_fit_its_role_is_refused_on_load(tmp_path, case):
    node, output_type, shape, role, initializer, message = BAD_OUTPUTS[case]
    path = _graph(tmp_path / "odd.onnx", node, output_type, shape, role, initializer)
    with pytest.raises(IntegrityError, match=message):
        runtime.load(path, "cpu")


def test_a_graph_that_lies_about_its_output_shape_cannot_pass_a_result(tmp_path, rng):
    """Declared (batch, 4, 3), computes (batch, 4, 2): caught after the run, one call or chunked."""
    path = _graph(tmp_path / "liar.onnx", helper.make_node("Gather", ["x", "first_two"], ["y"], axis=2),
                  TensorProto.FLOAT, ["batch", 4, 3], initializer=FIRST_TWO)
    model = runtime.load(path, "cpu")
    x = rng.uniform(0, 1, (5, 4, 3))
    for call in (lambda: model.reconstruct(x[0]), lambda: model.reconstruct(x, chunk=2), lambda: model.score(x)):
        with pytest.raises(IntegrityError, match=r"came out \(\d, 4, 2\), expected \(\d, 4, 3\)"):
            call()


def test_the_cli_refuses_a_scalar_output_model(tmp_path):
    path = _graph(tmp_path / "scalarout.onnx", helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0),
                  TensorProto.FLOAT, [])
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 4, 3)))
    for command in ("score", "reconstruct"):
        result = run(command, path, data, "--provider", "cpu")
        assert result.exit_code == EXIT_INTEGRITY and "expected float (batch, 4, 3)" in result.stderr, result.output


# ---------------------------------------------------------------- the manifest's fields


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


WRONG_FIELDS = {
    "models.autoencoder must be an object": _set("models", "autoencoder", "autoencoder.onnx"),
    "detector must be an object, got 'x'": _set("detector", "x"),
    "detector must be an object, got \\[\\]": _set("detector", []),
    "window must be an object": _set("window", "x"),
    "variants.autoencoder must be an object": _set("variants", "autoencoder", "x"),
    "training must be an object": _set("training", []),
    "training.data must be an object": _set("training", "data", "x"),
    "training.data.columns must be a list, got 5": _set("training", "data", {"source": "x.csv", "columns": 5}),
    "training.config.seed is missing": _set("training", "config", {}),
    "window.stride must be a whole number ≥ 1, got 'x'": _set("window", "stride", "x"),
    "detector.threshold must be a finite number ≥ 0, got True": _set("detector", "threshold", True),
    "detector.threshold must be a finite number ≥ 0, got -1": _set("detector", "threshold", -1),
    "detector.threshold is missing": _set("detector", {"quantile": 0.99}),
    "detector.variants.int8.threshold must be a finite number": _set("detector", "variants", "int8", "threshold", "x"),
    "models.autoencoder.value_bound must be a finite number ≥ 0, got 'x'":
        _set("models", "autoencoder", "value_bound", "x"),
    "models.encoder.value_bound must be a finite number ≥ 0, got True": _set("models", "encoder", "value_bound", True),
    "kind must be 'training' or 'export', got 7": _set("kind", 7),
    r"files\['autoencoder.onnx'\].bytes must be a whole number ≥ 0, got '\d+'":
        lambda m: m["files"]["autoencoder.onnx"].update(bytes=str(m["files"]["autoencoder.onnx"]["bytes"])),
    r"files\['encoder.onnx'\].sha256 must be 64 lowercase hex digits": _set("files", "encoder.onnx", "sha256", "abc"),
    "preprocessing.scale\\[0\\] must be a finite number > 0": lambda m: m["preprocessing"]["scale"].__setitem__(0, 0),
    "preprocessing has clip_low, clip_high, offset and scale of different lengths":
        lambda m: m["preprocessing"]["offset"].append(0.0),
    "preprocessing is missing": lambda m: m.pop("preprocessing"),
    r"variants.autoencoder.fp32.by_batch\[0\].batches must be \[first, last\]":
        _set("variants", "autoencoder", "fp32", "by_batch", [{"batches": [0, 1], "file": "autoencoder.b1.onnx"}]),
    r"variants.autoencoder.fp32.by_batch\[0\].file must be the file of one of the autoencoder variants, "
    r"got 'encoder.onnx'":
        _set("variants", "autoencoder", "fp32", "by_batch", [{"batches": [2, None], "file": "encoder.onnx"}]),
    "variants.autoencoder.fp32.chunk must be a whole number ≥ 1 and ≤ 65536, got 0":
        _set("variants", "autoencoder", "fp32", "chunk", 0),
    "variants.encoder.fp32.chunk must be a whole number ≥ 1 and ≤ 65536, got 65537":
        _set("variants", "encoder", "fp32", "chunk", 65537),
    "variants.encoder.fp32.chunk must be a whole number ≥ 1 and ≤ 65536, got True":
        _set("variants", "encoder", "fp32", "chunk", True),
    "variants.encoder.int8.published must be true or false": _set("variants", "encoder", "int8", "published", "yes"),
    "detector.chosen.calibrated_threshold must be a finite number": _set("detector", "chosen",
                                                                          {"source": "F1", "calibrated_threshold": "x"}),
    "detector.chosen.source is missing": _set("detector", "chosen", {"calibrated_threshold": 0.1}),
    "parity.tolerance_rel_range must be a finite number > 0": _set("parity", "tolerance_rel_range", 0),
    "skipped.autoencoder.fp16 must be a non-empty string, got 3": _set("skipped", {"autoencoder": {"fp16": 3}}),
    "scores must be a non-empty string": _set("scores", ["no threshold"]),
}


@pytest.fixture(scope="module")
def sealed(tiny_export):
    return read_manifest(tiny_export).to_body()


@pytest.mark.parametrize("message", list(WRONG_FIELDS))
def test_a_resealed_manifest_with_a_wrong_field_is_refused_naming_it(sealed, tmp_path, message):
    """As another tool or version might write it: the checksum is valid, a field is not."""
    manifest = copy.deepcopy(sealed)
    WRONG_FIELDS[message](manifest)
    write_manifest(tmp_path, manifest)
    with pytest.raises(IntegrityError, match="manifest field " + message):
        read_manifest(tmp_path)


@pytest.mark.parametrize("command, edit", [
    ("score", _set("models", "autoencoder", "x")),
    ("score", _set("training", "data", {"source": "x.csv", "columns": 5})),
    ("verify", _set("training", [])),
    ("verify", _set("variants", "autoencoder", "fp32", "by_batch", [{"batches": [1, 1], "file": "encoder.onnx"}])),
])
def test_the_cli_gives_an_integrity_error_for_a_wrong_field(export_copy, tmp_path, command, edit):
    manifest = read_manifest(export_copy).to_body()
    edit(manifest)
    write_manifest(export_copy, manifest)
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 6, 3)))
    args = [export_copy, data] if command == "score" else [export_copy, "--against", "stored"]
    result = run(command, *args, "--provider", "cpu")
    assert result.exit_code == EXIT_INTEGRITY and "manifest field" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_manifest_edgeae_writes_passes_its_own_schema(tiny_export, tiny_training, tmp_path):
    trainer.save_training(tiny_training, tmp_path / "run")
    assert read_manifest(tmp_path / "run").to_body()["kind"] == "training"
    assert read_manifest(tiny_export).to_body()["kind"] == "export"


# ---------------------------------------------------------------- the caller's arguments


@pytest.mark.parametrize("threads", [-1, 0, 1.5, True, "x", 10**10])
def test_bad_thread_counts_are_usage_errors(tiny_export, threads):
    with pytest.raises(UsageError, match="threads must be a whole number from 1 to 1024"):
        runtime.load(tiny_export, "cpu", threads=threads)


@pytest.mark.parametrize("providers", [None, 5, {"cpu": 1}, ["cpu", 1]])
def test_providers_that_are_not_names_are_usage_errors(tiny_export, providers):
    with pytest.raises(UsageError, match="providers must be a name or a list of names"):
        runtime.load(tiny_export, providers)


@pytest.mark.parametrize("name", ["", "gpu", " ", "cuda-11"])
def test_unknown_provider_names_are_usage_errors_naming_the_accepted_ones(name):
    with pytest.raises(UsageError, match=f"unknown execution provider {name!r}: expected auto, cpu, cuda"):
        providers.resolve_providers(name)
    with pytest.raises(UsageError):
        providers.resolve_providers(["cpu", name])


def test_a_known_provider_that_is_not_installed_stays_a_provider_error(monkeypatch):
    monkeypatch.setattr(providers, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="CUDAExecutionProvider requested"):
        providers.resolve_providers("CUDA")
    assert providers.resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_the_cli_exit_codes_for_provider_names(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(providers, "available_providers", lambda: ["CPUExecutionProvider"])
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 6, 3)))
    for provider, code in (("", EXIT_USAGE), ("gpu", EXIT_USAGE), ("cuda", 5)):
        result = run("score", tiny_export, data, "--provider", provider)
        assert result.exit_code == code, (provider, result.output)


@pytest.mark.parametrize("path", [None, 5, b"exported", ""])
def test_a_model_path_that_is_not_a_name_is_a_usage_error(path):
    with pytest.raises(UsageError, match="model path must be"):
        runtime.load(path, "cpu")


@pytest.mark.parametrize("threshold", [True, np.bool_(False), "0.5"])
def test_a_threshold_must_be_a_real_number(tiny_export, threshold):
    model = runtime.load(tiny_export, "cpu")
    with pytest.raises(UsageError, match="threshold must be a number"):
        model.score(np.zeros((6, 3)), threshold=threshold)
    assert model.score(np.zeros((6, 3)), threshold=np.float32(0.5)).threshold == 0.5


# ---------------------------------------------------------------- symbolic links


def test_an_output_file_that_is_a_dangling_link_is_not_replaced(tiny_export, tmp_path):
    link = tmp_path / "dlink.csv"
    link.symlink_to(tmp_path / "missing" / "x.csv")
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 6, 3)))
    for force in ((), ("--force",)):
        result = run("score", tiny_export, data, "-o", link, "--provider", "cpu", *force)
        assert result.exit_code == EXIT_USAGE and "is a symbolic link" in result.stderr, result.output
        assert link.is_symlink()
    with pytest.raises(UsageError, match="symbolic link"):
        check_output_file(link)


def test_a_target_folder_that_is_a_link_is_refused_before_any_work(export_copy, tmp_path):
    link = tmp_path / "linkexp"
    link.symlink_to(export_copy)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UsageError, match="is a symbolic link; give the real folder"):
        check_target(link, force=True)
    with pytest.raises(UsageError, match="is a symbolic link; give the real folder"), staged_folder(link, force=True):
        pytest.fail("a staging folder was made for a linked target")
    assert sorted(os.listdir(tmp_path)) == before and link.is_symlink()
    assert json.loads((export_copy / "manifest.json").read_text())["kind"] == "export"


def test_a_linked_manifest_is_refused_like_a_linked_model(export_copy, tmp_path):
    real = tmp_path / "elsewhere.json"
    (export_copy / "manifest.json").replace(real)
    (export_copy / "manifest.json").symlink_to(real)
    with pytest.raises(IntegrityError, match="manifest.json is a symbolic link"):
        runtime.load(export_copy, "cpu")
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 6, 3)))
    assert run("score", export_copy, data, "--provider", "cpu").exit_code == EXIT_INTEGRITY


# ---------------------------------------------------------------- a training folder rewritten and resealed


def _reseal(folder, name, content: bytes) -> None:
    (folder / name).write_bytes(content)
    manifest = read_manifest(folder).to_body()
    manifest["files"][name] = file_entry(folder / name, manifest["files"][name]["role"])
    write_manifest(folder, manifest)


@pytest.fixture(scope="module")
def training_folder(tiny_training, tmp_path_factory):
    return trainer.save_training(tiny_training, tmp_path_factory.mktemp("run") / "run")


def _edit_record(edit):
    def apply(record):
        edit(record)
        return json.dumps(record).encode()
    return apply


def _edit_windows(edit):
    def apply(saved):
        arrays = dict(saved)
        edit(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    return apply


TAMPERED_TRAINING = {
    "other units": ("training.json", _edit_record(lambda r: r["config"].update(units=7)),
                    r"model.keras: the model reads \(6, 3\) windows into 8 units; its training record says \(6, 3\) and 7"),
    "other window": ("training.json", _edit_record(lambda r: r["config"].update(timesteps=5)), "its training record says"),
    "no config": ("training.json", _edit_record(lambda r: r.pop("config")), "training.json: the training record has no config"),
    "clip low above high": ("training.json", _edit_record(lambda r: r["preprocessing"].update(
        clip_low=[1e9] * 3)), "clip_low <= clip_high"),
    "zero scale": ("training.json", _edit_record(lambda r: r["preprocessing"].update(scale=[0.0, 1.0, 1.0])),
                   r"training.json field preprocessing.scale\[0\] must be a finite number > 0"),
    "unknown scaling": ("training.json", _edit_record(lambda r: r["preprocessing"].update(scaling="weird")),
                        "scaling must be one of none, minmax, standard"),
    "history as text": ("training.json", _edit_record(lambda r: r.update(history="x")),
                        "training.json field history must be an object"),
    "windows too short": ("parity_inputs.npz", _edit_windows(lambda a: a.update(training=a["training"][:, :3])),
                          r"training windows are \(\d+, 3, 3\), expected \(n, 6, 3\)"),
    "no training windows": ("parity_inputs.npz", _edit_windows(lambda a: a.update(training=a["training"][:0])),
                            "no training windows"),
    "inf in the windows": ("parity_inputs.npz", _edit_windows(lambda a: a["training"].__setitem__((0, 0, 0), np.inf)),
                           "training windows hold NaN or inf"),
}


@pytest.mark.parametrize("case", list(TAMPERED_TRAINING))
def test_a_rewritten_and_resealed_training_folder_is_refused_naming_what(training_folder, tmp_path, case):
    """Whoever can write the folder can reseal it: what the record and the saved windows say is
    still checked against the model, so export fails with one line (exit 4), never publishing."""
    name, edit, message = TAMPERED_TRAINING[case]
    folder = tmp_path / "run"
    shutil.copytree(training_folder, folder)
    if name.endswith(".json"):
        content = edit(json.loads((folder / name).read_text()))
    else:
        with np.load(folder / name) as saved:
            content = edit(saved)
    _reseal(folder, name, content)
    with pytest.raises(IntegrityError, match=message):
        trainer.load_training(folder)
    result = run("export", folder, "--out", tmp_path / "exp", "--provider", "cpu")
    assert result.exit_code == 4 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "exp").exists()
