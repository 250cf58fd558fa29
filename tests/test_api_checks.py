"""Python API calls refuse bad arguments with edgeae's one-line errors, as the CLI does: a graph
of another model resealed into an export, settings export cannot carry, a training folder
given to the benchmark, and labels, scores, strides or models the detector cannot measure."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.runtime import loading
from edgeae.detection import quality as detector
from edgeae.detection import threshold
from edgeae.contract import layout
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.verifier import verification
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.contract.records import Manifest
from edgeae.measure.bench import BenchOptions, run_bench
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, EXIT_USAGE, DataError, IntegrityError, UsageError
from edgeae.trainer.model import ACTIVATIONS, TrainConfig
from edgeae.trainer import training as trainer

# ---------------------------------------------------------------- a resealed graph of another model


def _narrow_encoder(export, file: str, declared: int | None) -> None:
    """Replace `file` by an encoder whose embedding is 4 wide and reseal the manifest with its new
    size and sha256, as a tamperer who holds the tools would. It declares a width of `declared`;
    with None, none at all, and the 4 is computed at run time so no shape inference can find it."""
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(export / file))
    graph = proto.graph
    out = graph.output[0]
    graph.initializer.extend([numpy_helper.from_array(np.array(value, dtype), name) for name, value, dtype in (
        ("narrow/start", [0], np.int64), ("narrow/axis", [1], np.int64), ("narrow/shape", [1], np.int64),
        ("narrow/end", [4], np.int64), ("narrow/zero", 0, np.float32), ("narrow/four", 4, np.float32))])
    for node in graph.node:
        node.output[:] = ["wide" if name == out.name else name for name in node.output]
    end = "narrow/end"
    if declared is None:  # 0 * max(embedding) + 4, as int64: known only once it runs
        graph.node.extend([helper.make_node("ReduceMax", ["wide"], ["narrow/max"]),
                           helper.make_node("Reshape", ["narrow/max", "narrow/shape"], ["narrow/flat"]),
                           helper.make_node("Mul", ["narrow/flat", "narrow/zero"], ["narrow/nought"]),
                           helper.make_node("Add", ["narrow/nought", "narrow/four"], ["narrow/width"]),
                           helper.make_node("Cast", ["narrow/width"], ["narrow/computed"], to=TensorProto.INT64)])
        end = "narrow/computed"
    graph.node.append(helper.make_node("Slice", ["wide", "narrow/start", end, "narrow/axis"], [out.name]))
    dim = out.type.tensor_type.shape.dim[1]
    dim.Clear()
    if declared is not None:
        dim.dim_value = declared
    onnx.save(proto, str(export / file))
    manifest = read_manifest(export).to_body()
    manifest["files"][file] = file_entry(export / file, "encoder")
    write_manifest(export, manifest)


@pytest.mark.parametrize("file, variant", [("encoder.onnx", "fp32"), ("encoder.fp16.onnx", "fp16")])
def test_a_resealed_encoder_of_another_width_is_refused_at_load(export_copy, file, variant):
    _narrow_encoder(export_copy, file, 4)
    with pytest.raises(IntegrityError, match=rf"{file}: output 'embedding' .* expected float \(batch, 8\)"):
        runtime.load(export_copy, "cpu", variant=variant)
    np.save(export_copy.parent / "windows.npy", np.zeros((2, 6, 3)))
    result = CliRunner().invoke(main, ["encode", str(export_copy), str(export_copy.parent / "windows.npy"),
                                       "--variant", variant, "--provider", "cpu"])
    assert result.exit_code == EXIT_INTEGRITY, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and file in result.stderr


def test_an_encoder_that_hides_its_width_is_refused_on_its_first_run(export_copy):
    _narrow_encoder(export_copy, "encoder.onnx", None)
    with pytest.raises(IntegrityError, match=r"encoder.onnx: output 'embedding' came out \(\d+, 4\), expected "
                                             r"\(\d+, 8\)"):
        runtime.load(export_copy, "cpu")  # the self-check's golden run finds it at load
    model = runtime.load(export_copy, "cpu", self_check=False)
    with pytest.raises(IntegrityError, match=r"encoder.onnx: output 'embedding' came out \(1, 4\), expected \(1, 8\)"):
        model.encode(np.zeros((6, 3)))  # and, unchecked at load, on its first run


def test_graphs_must_read_the_manifests_window(export_copy):
    manifest = read_manifest(export_copy).to_body()
    manifest["window"]["timesteps"] = 7
    write_manifest(export_copy, manifest)
    with pytest.raises(IntegrityError, match=r"autoencoder.onnx: input sequence is \(batch, 6, 3\), expected "
                                             r"\(batch, 7, 3\)"):
        runtime.load(export_copy, "cpu")


def test_a_manifest_without_units_is_refused(export_copy):
    manifest = read_manifest(export_copy).to_body()
    del manifest["training"]["config"]["units"]
    write_manifest(export_copy, manifest)
    with pytest.raises(IntegrityError, match="manifest field training.config.units is missing"):
        runtime.load(export_copy, "cpu")


# ---------------------------------------------------------------- settings export cannot carry


@pytest.mark.parametrize("activation", ["elu", "selu", "softsign", "linear"])
def test_activations_tf2onnx_writes_as_a_loop_are_refused(activation):
    assert activation not in ACTIVATIONS
    with pytest.raises(UsageError, match="activation must be one of relu, tanh, sigmoid"):
        TrainConfig(activation=activation)


def test_one_step_windows_are_refused_and_two_export(tmp_path):
    with pytest.raises(UsageError, match="timesteps must be at least 2"):
        TrainConfig(timesteps=1)
    training = trainer.train(TrainConfig(timesteps=2, features=2, units=2, epochs=1, seed=2))
    out, _ = publish.export(training, tmp_path / "export", ExportOptions(providers="cpu"))
    assert runtime.load(out, "cpu").encode(np.ones((2, 2))).shape == (2,)


def test_cli_refuses_them_before_training(tmp_path):
    for option in (["--activation", "elu"], ["--timesteps", "1"]):
        result = CliRunner().invoke(main, ["train", *option, "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")])
        assert result.exit_code == EXIT_USAGE, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()


def test_exporting_an_old_training_folder_with_such_settings_is_a_usage_error(tiny_training, tmp_path):
    folder = trainer.save_training(tiny_training, tmp_path / "run")
    record = json.loads((folder / layout.TRAINING_FILE).read_text())
    record["config"]["activation"] = "elu"  # what an older edgeae trained
    (folder / layout.TRAINING_FILE).write_text(json.dumps(record))
    manifest = read_manifest(folder).to_body()
    manifest["files"][layout.TRAINING_FILE] = file_entry(folder / layout.TRAINING_FILE, "training")
    write_manifest(folder, manifest)
    result = CliRunner().invoke(main, ["export", str(folder), "--out", str(tmp_path / "export")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "training.json: activation must be one of" in result.stderr and not (tmp_path / "export").exists()


# ---------------------------------------------------------------- the benchmark


def test_bench_on_a_training_folder_says_export_it_first(tiny_training, tmp_path):
    folder = trainer.save_training(tiny_training, tmp_path / "run")
    with pytest.raises(UsageError, match="is a training folder; export it first"):
        run_bench(folder, BenchOptions(runs=3, batches=(2,), cold=False))
    result = CliRunner().invoke(main, ["bench", str(folder), "--runs", "3"])
    assert result.exit_code == EXIT_USAGE and "export it first" in result.stderr


@pytest.mark.parametrize("kwargs", [{"keras": "yes"}, {"cold": None}, {"keras": 1}, {"cold": "false"}])
def test_bench_flags_must_be_bools(tiny_export, kwargs):
    with pytest.raises(UsageError, match="keras and cold must be True or False"):
        run_bench(tiny_export, BenchOptions(**{"runs": 3, "batches": (2,), "cold": False, **kwargs}))


# ---------------------------------------------------------------- the detector


@pytest.fixture(scope="module")
def labelled():
    t = np.arange(60)
    values = np.column_stack([np.sin(t / 3), np.cos(t / 5), np.sin(t / 7)])
    labels = np.zeros(60, dtype=int)
    labels[30:33] = 1
    return values, labels


@pytest.mark.parametrize("change, error, message", [
    (lambda v, y: (v, y * 2), DataError, "label 2 at index 30 is not 0 or 1"),
    (lambda v, y: (v, np.where(y == 1, np.nan, y)), DataError, "label nan at index 30 is not 0 or 1"),
    (lambda v, y: (v, y.astype(str)), DataError, "labels must be 0/1 or true/false, got dtype <U"),
    (lambda v, y: (v, y[:, None]), DataError, r"labels must be one per row or window \(1-D\)"),
    (lambda v, y: (v, y[:-1]), DataError, "60 rows of values but 59 labels"),
    (lambda v, y: (None, y), DataError, r"expected a \(time, features\) series"),
])
def test_evaluate_refuses_labels_it_cannot_measure(tiny_export, labelled, change, error, message):
    values, labels = change(*labelled)
    with pytest.raises(error, match=message):
        detector.evaluate(runtime.load(tiny_export, "cpu"), values, labels)


@pytest.mark.parametrize("stride", [1.5, True, 0, "2"])
def test_evaluate_refuses_a_stride_that_is_not_a_whole_number(tiny_export, labelled, stride):
    with pytest.raises(UsageError, match="stride must be a whole number of at least 1"):
        detector.evaluate(runtime.load(tiny_export, "cpu"), *labelled, stride=stride)


@pytest.mark.parametrize("model", [None, "exported", runtime])
def test_evaluate_refuses_what_is_not_a_loaded_model(labelled, model):
    with pytest.raises(UsageError, match="model must be a model set from edgeae.runtime.load"):
        detector.evaluate(model, *labelled)


def test_evaluate_still_measures_good_input(tiny_export, labelled):
    values, labels = labelled
    quality, scores = detector.evaluate(runtime.load(tiny_export, "cpu"), values, labels.astype(bool), stride=np.int64(2))
    assert quality.windows == len(scores) == (60 - 6) // 2 + 1
    assert quality.anomalous_windows == 4  # windows starting at 26, 28, 30 and 32 hold rows 30-32


@pytest.mark.parametrize("measure", [detector.roc_auc, detector.average_precision,
                                     lambda s, y: detector.detection_quality(s, y, 0.5)])
def test_measures_refuse_scores_and_labels_they_cannot_rank(measure):
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="score nan at index 2 is not a finite number"):
        measure(np.array([0.1, 0.9, np.nan, 0.8]), labels)
    with pytest.raises(DataError, match=r"scores must be one per window \(1-D\)"):
        measure(np.ones((2, 2)), labels)
    with pytest.raises(DataError, match="scores must be real numbers"):
        measure(np.array(["0.1", "0.9", "0.2", "0.8"]), labels)
    with pytest.raises(DataError, match="label 2 at index 1 is not 0 or 1"):
        measure(np.array([0.1, 0.9, 0.2, 0.8]), labels * 2)
    with pytest.raises(DataError, match="4 scores but 3 labels"):
        measure(np.array([0.1, 0.9, 0.2, 0.8]), labels[:3])


@pytest.mark.parametrize("threshold", [None, "0.5", np.nan, True])
def test_detection_quality_refuses_a_threshold_that_is_not_a_number(threshold):
    with pytest.raises(UsageError, match="threshold must be a"):
        detector.detection_quality(np.array([0.1, 0.9]), np.array([0, 1]), threshold)


@pytest.mark.parametrize("scores, quantile, error, message", [
    (np.ones((2, 2)), 0.5, DataError, r"scores must be one per window \(1-D\)"),
    (np.array([0.1, np.inf]), 0.5, DataError, "score inf at index 1 is not a finite number"),
    (np.array([0.1, 0.2]), True, UsageError, r"threshold quantile must be in \(0, 1\], got True"),
    (np.array([0.1, 0.2]), "0.5", UsageError, r"threshold quantile must be in \(0, 1\], got '0.5'"),
])
def test_calibrate_threshold_refuses_what_it_cannot_calibrate_on(scores, quantile, error, message):
    with pytest.raises(error, match=message):
        threshold.calibrate_threshold(scores, quantile)



def test_a_variant_published_for_one_role_only_serves_that_role(export_copy, rng):
    """fp16 of the autoencoder missed its tolerance, the encoder's did not: encode works, reconstruct says why not."""
    manifest = read_manifest(export_copy).to_body()
    manifest["variants"]["autoencoder"]["fp16"]["published"] = False
    write_manifest(export_copy, manifest)
    model = runtime.load(export_copy, "cpu", variant="fp16")
    window = rng.uniform(0, 1, (model.timesteps, model.features))
    assert model.encode(window).shape == (model.models["encoder"].units,)
    with pytest.raises(UsageError, match="'fp16' variant of the autoencoder missed its tolerance.*the autoencoder has: "
                                         "fp32, fp32-b1, fp32-unrolled, int8, ort, plain, portable$"):
        model.reconstruct(window)
    manifest["variants"]["encoder"]["fp16"]["published"] = False
    write_manifest(export_copy, manifest)
    with pytest.raises(UsageError, match="missed its tolerance"):
        runtime.load(export_copy, "cpu", variant="fp16")


def test_load_retries_once_when_the_folder_was_replaced_while_it_read(tiny_export, export_copy, monkeypatch):
    """A reader racing `export --force` may read the old manifest, then a file of the new folder."""
    stale = read_manifest(tiny_export).to_body()
    stale["files"]["encoder.onnx"]["sha256"] = "0" * 64  # the old folder's encoder, gone by the time it is read
    stale["checksum"] = "older"
    reads = iter([Manifest.of(stale), read_manifest(export_copy)])
    monkeypatch.setattr(loading, "read_export_manifest", lambda folder: next(reads))
    assert set(runtime.load(export_copy, "cpu").models) == {"autoencoder", "encoder"}

    tampered = read_manifest(export_copy).to_body()
    tampered["files"]["encoder.onnx"]["sha256"] = "0" * 64  # the same manifest both times: a real mismatch
    monkeypatch.setattr(loading, "read_export_manifest", lambda folder: Manifest.of(tampered))
    with pytest.raises(IntegrityError, match="encoder.onnx"):
        runtime.load(export_copy, "cpu")


# ---------------------------------------------------------------- the pipeline API's arguments


def _wrong_kinds(tiny_config, tiny_training, tiny_export, tmp_path):
    """(call, message) pairs: each wrong kind of argument the pipeline API may be handed."""
    from edgeae.exporter.publish import optimize

    data = tmp_path / "ab.csv"
    data.write_text("a,b,c\n" + "".join(f"{i},{i % 3},{i % 5}\n" for i in range(30)))
    return [
        (lambda: trainer.load_training(None), "training folder must be a file or folder name"),
        (lambda: trainer.load_training(5), "training folder must be a file or folder name"),
        (lambda: verification.verify(None), "export folder must be a file or folder name"),
        (lambda: optimize(1), "export folder must be a file or folder name"),
        (lambda: trainer.train(None), "config must be an edgeae.trainer.model.TrainConfig"),
        (lambda: trainer.train({"timesteps": 4}), "config must be an edgeae.trainer.model.TrainConfig"),
        (lambda: trainer.train(tiny_config, np.zeros((30, 3))), "data must be a file .* got a ndarray"),
        (lambda: trainer.train(tiny_config, data, (0, 1)), "columns must be a tuple of column names"),
        (lambda: trainer.train(tiny_config, data, "ab"), "columns must be a tuple of column names"),  # not a, b
        (lambda: trainer.train(tiny_config, data, None, 5), "progress must be a function or None"),
        (lambda: publish.export(None, tmp_path / "e"), "training must be an edgeae.trainer.training.Training"),
        (lambda: publish.export(str(tiny_export), tmp_path / "e"), "training must be an edgeae.trainer.training.Training"),
        (lambda: publish.export(tiny_training, None), "out must be a file or folder name"),
        (lambda: publish.export(tiny_training, tmp_path / "e", {"providers": "cpu"}),
         "options must be an edgeae.ExportOptions, got dict"),
        (lambda: publish.run_pipeline(None, tmp_path / "p"), "config must be an edgeae.trainer.model.TrainConfig"),
        (lambda: publish.run_pipeline(tiny_config, None), "out must be a file or folder name"),
        # the export's own settings are refused before any training, not after it
        (lambda: publish.run_pipeline(tiny_config, tmp_path / "p", options=ExportOptions(opset=13)),
         "opset must be between"),
        (lambda: publish.run_pipeline(tiny_config, tmp_path / "p", options=ExportOptions(providers="tpu")),
         "unknown execution provider"),
        (lambda: publish.run_pipeline(tiny_config, tmp_path / "p", options={"opset": 17}),
         "options must be an edgeae.ExportOptions, got dict"),
    ]


def test_the_pipeline_api_refuses_wrong_kinds_of_arguments_by_name(tiny_config, tiny_training, tiny_export, tmp_path,
                                                                   monkeypatch):
    import edgeae.trainer.model

    monkeypatch.setattr(edgeae.trainer.model, "train", lambda *a, **k: pytest.fail("trained although an argument was refused"))
    for call, message in _wrong_kinds(tiny_config, tiny_training, tiny_export, tmp_path):
        with pytest.raises(UsageError, match=message):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab.csv"]  # nothing written
