"""The detector graph: reconstruction, score and flag from one standard-operator ONNX file, equal to the runtime's."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.verifier import verification
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, EXIT_PARITY
from edgeae.contract.golden import read_golden
from edgeae.detection.graph import detector_graph

CPU = ["CPUExecutionProvider"]


def run(model, x):
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=CPU)
    return session.run(None, {"sequence": x})


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_scores_and_flags_equal_the_python_runtimes(tiny_export, rng, precision):
    manifest = read_manifest(tiny_export).to_body()
    graph = manifest["detector"]["graphs"][precision]
    model = onnx.load(str(tiny_export / graph["file"]))
    assert {n.domain for n in model.graph.node} == {""} and [o.name for o in model.graph.output] == [
        "reconstruction", "score", "anomaly"]
    edge = runtime.load(tiny_export, "cpu", variant=precision)
    assert graph["threshold"] == edge.threshold
    golden = read_golden(tiny_export, read_manifest(tiny_export))
    sets = [*golden.inputs.values(), rng.uniform(-1, 2, (500, 6, 3)).astype(np.float32)]
    for x in sets:
        reconstruction, score, anomaly = run(tiny_export / graph["file"], x)
        expected = edge.score(x)
        assert score.dtype == np.float64 and anomaly.dtype == bool
        np.testing.assert_allclose(score, expected.scores, rtol=1e-6)
        np.testing.assert_array_equal(anomaly, expected.flags)


def test_a_score_equal_to_the_threshold_is_not_anomalous_in_either(fixed_routes):
    tiny_export = fixed_routes  # 20 windows run on the clean graph the detector graph is built from: the same bits
    manifest = read_manifest(tiny_export).to_body()
    x = read_golden(tiny_export, read_manifest(tiny_export)).inputs["in_range"][:20]
    edge = runtime.load(tiny_export, "cpu")
    clean = onnx.load(str(tiny_export / "autoencoder.onnx"))
    scale = np.asarray(manifest["preprocessing"]["scale"])
    _, scores, _ = run(detector_graph(clean, scale, 1.0, "fp32").SerializeToString(), x)
    at = float(scores[7])  # a threshold exactly on one window's score
    for threshold, flagged in ((at, False), (np.nextafter(at, -np.inf), True)):
        _, score, anomaly = run(detector_graph(clean, scale, threshold, "fp32").SerializeToString(), x)
        assert score[7] == at and bool(anomaly[7]) == flagged
        assert bool(edge.score(x, threshold=threshold).flags[7]) == flagged


def test_verify_checks_every_detector_graph(tiny_export):
    report = verification.verify(tiny_export, providers="cpu", against="stored")
    assert report and {r.model for r in report.detectors} == {
        "detector/fp32 (detector.onnx)", "detector/fp16 (detector.fp16.onnx)", "detector/int8 (detector.int8.onnx)"}


def test_a_detector_graph_with_another_threshold_fails_verify(export_copy):
    manifest = read_manifest(export_copy).to_body()
    scores = read_golden(export_copy, read_manifest(export_copy)).expected["score"]["keras"]["in_range"]
    model = detector_graph(onnx.load(str(export_copy / "autoencoder.onnx")), np.asarray(manifest["preprocessing"]["scale"]),
                           float(np.median(scores)), "fp32")
    (export_copy / "detector.onnx").write_bytes(model.SerializeToString())
    manifest["files"]["detector.onnx"] = file_entry(export_copy / "detector.onnx", "onnx-detector")
    write_manifest(export_copy, manifest)
    result = CliRunner().invoke(main, ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"])
    assert result.exit_code == EXIT_PARITY and "detector.onnx [cpu] in_range: score off by" in result.stderr
    assert "flag(s) differ from score >" in result.stderr


def test_a_broken_detector_entry_is_refused(export_copy):
    manifest = read_manifest(export_copy).to_body()
    manifest["detector"]["graphs"]["fp32"]["threshold"] = "high"
    write_manifest(export_copy, manifest)
    result = CliRunner().invoke(main, ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"])
    assert result.exit_code == EXIT_INTEGRITY and "detector.graphs.fp32.threshold" in result.stderr
