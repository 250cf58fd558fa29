"""The static value bound: sound for any input, refused where it proves nothing, trusted only where it may be."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgeae import runtime
from edgeae.runtime.routes import FINITE_PROOF_LIMIT, batch_routes, variant_of_file
from edgeae.contract.manifest import read_manifest, write_manifest
from edgeae.contract.records import Manifest
from edgeae.exporter.bounds import bound_entry, value_bound
from edgeae.contract.errors import EXIT_RUNTIME, InferenceError, IntegrityError

CPU = ["CPUExecutionProvider"]


def _scaled(proto, factor: float):
    """The same graph with every LSTM weight times `factor`: relu states then grow fast."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        if tensor.name.split("/")[-1] in ("W", "R", "B"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    return copy


def _hostile_inputs(rng, timesteps: int, features: int) -> np.ndarray:
    """Inside and far outside the training range, down to float32's limits."""
    shape = (64, timesteps, features)
    return np.concatenate([rng.uniform(0, 1, shape), rng.uniform(-1e6, 1e6, shape), np.full(shape, 3e38),
                           np.full(shape, -3e38), rng.choice([-3e38, 0.0, 3e38], shape)]).astype(np.float32)


@pytest.mark.parametrize("factor", [1.0, 3.0])
@pytest.mark.parametrize("role", ["autoencoder", "encoder"])
@pytest.mark.parametrize("folder", ["tiny_export", "scaled_export"])
def test_no_output_exceeds_the_bound_for_any_input(request, rng, folder, role, factor):
    export = request.getfixturevalue(folder)
    proto = _scaled(onnx.load(str(export / f"{role}.onnx")), factor)
    bound = value_bound(proto)
    assert bound is not None and np.isfinite(bound)
    session = ort.InferenceSession(proto.SerializeToString(), providers=CPU)
    dims = session.get_inputs()[0].shape
    out = session.run(None, {"sequence": _hostile_inputs(rng, dims[1], dims[2])})[0]
    assert np.isfinite(out).all() and np.abs(out).max() <= bound
    if factor > 1:  # the relu recurrence makes the bound grow with the weights: it is not a constant
        assert bound > value_bound(onnx.load(str(export / f"{role}.onnx")))


def test_graphs_it_does_not_cover_prove_nothing(tiny_export):
    clean = onnx.load(str(tiny_export / "autoencoder.onnx"))
    unclipped = onnx.ModelProto()
    unclipped.CopyFrom(clean)
    nodes = [n for n in unclipped.graph.node if not n.name.startswith("preprocess/")]
    nodes.insert(0, helper.make_node("Identity", ["sequence"], ["model_input"], name="pass"))
    del unclipped.graph.node[:]
    unclipped.graph.node.extend(nodes)
    assert value_bound(unclipped) is None  # without the clip, the input and every value are unbounded

    affine = onnx.ModelProto()
    affine.CopyFrom(clean)
    lstm = next(n for n in affine.graph.node if n.name == "decoder/LSTM")
    next(a for a in lstm.attribute if a.name == "activations").strings[:] = [b"Sigmoid", b"Affine", b"Relu"]
    assert value_bound(affine) is None
    with np.errstate(over="ignore", invalid="ignore"):
        assert value_bound(_scaled(clean, 1e30)) is None  # overflows the analysis itself: no bound, no proof


def test_runtime_skips_the_output_check_only_where_the_manifest_proves_float32_finite(tiny_export, export_copy):
    manifest = read_manifest(tiny_export).to_body()
    assert 0 < manifest["models"]["autoencoder"]["value_bound"] < FINITE_PROOF_LIMIT
    model = runtime.load(tiny_export, "cpu")
    graphs = [graph for m in model.models.values() for graph in (m, *(g for _, _, g in m.routes))]
    routed = sum(len(batch_routes(Manifest.of(manifest), role, "fp32")) for role in ("autoencoder", "encoder"))
    assert len(graphs) == 2 + routed and all(g.proven_finite for g in graphs)
    for variant in ("fp32-b1", "fp32-unrolled", "ort", "plain"):
        assert all(m.proven_finite for m in runtime.load(tiny_export, "cpu", variant=variant).models.values())
    for variant in ("fp16", "int8"):  # float16 tops out at 65504; int8 is not covered by the analysis
        assert not any(m.proven_finite for m in runtime.load(tiny_export, "cpu", variant=variant).models.values())
    assert not runtime.load(tiny_export / "autoencoder.onnx", "cpu").models["autoencoder"].proven_finite  # no manifest
    files = {"autoencoder.onnx": "fp32", "autoencoder.b1.onnx": "fp32-b1", "autoencoder.int8.onnx": "int8",
             "autoencoder.plain.onnx": "plain", "encoder.onnx": None}  # the benchmark's view: file -> variant
    assert {f: variant_of_file(Manifest.of(manifest), "autoencoder", f) for f in files} == files

    for bound in (None, FINITE_PROOF_LIMIT):  # no bound, or one too large to prove anything
        manifest["models"]["autoencoder"]["value_bound"] = bound
        write_manifest(export_copy, manifest)
        assert not runtime.load(export_copy, "cpu").models["autoencoder"].proven_finite, bound
    for bound in (-1.0, True, "1"):  # not a bound at all: the manifest is refused, not half-trusted
        manifest["models"]["autoencoder"]["value_bound"] = bound
        write_manifest(export_copy, manifest)
        with pytest.raises(IntegrityError, match="models.autoencoder.value_bound"):
            runtime.load(export_copy, "cpu")


def test_an_unproven_overflow_is_still_caught(tiny_export, tmp_path, rng):
    """Weights this large overflow float32; nothing is proved, so the runtime's check says so."""
    proto = _scaled(onnx.load(str(tiny_export / "autoencoder.onnx")), 1e30)
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    onnx.save(proto, str(folder / "autoencoder.onnx"))
    manifest = read_manifest(tiny_export).to_body()
    manifest["models"]["autoencoder"].update(bound_entry(proto))
    manifest["variants"]["autoencoder"]["fp32"]["by_batch"] = []
    manifest["files"]["autoencoder.onnx"]["sha256"] = __import__("hashlib").sha256(
        (folder / "autoencoder.onnx").read_bytes()).hexdigest()
    manifest["files"]["autoencoder.onnx"]["bytes"] = (folder / "autoencoder.onnx").stat().st_size
    write_manifest(folder, manifest)
    # The self-check's golden run refuses it at load: its output check, before any comparison with Keras, names
    # the file in one line (InferenceError: exit 5, runtime).
    with pytest.raises(InferenceError, match=r"^autoencoder.onnx: produced non-finite values$") as refused:
        runtime.load(folder, "cpu")
    assert refused.value.exit_code == EXIT_RUNTIME
    model = runtime.load(folder, "cpu", self_check=False)
    assert not model.models["autoencoder"].proven_finite
    with pytest.raises(InferenceError, match="non-finite"):
        model.reconstruct(rng.uniform(0, 1, (5, 6, 3)))
