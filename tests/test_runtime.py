"""The runtime: numpy + onnxruntime only, preprocessing inside the graph, honest providers,
every input checked before onnxruntime sees it."""
import json
import subprocess
import sys
import tomllib
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeae import runtime
from edgeae.runtime import providers
from edgeae.runtime.session import OnnxModel, _fast_run
from edgeae.contract.manifest import read_manifest, write_manifest
from edgeae.data.windows import Preprocessing
from edgeae.contract.errors import DataError, InferenceError, IntegrityError, ProviderError, ShapeError, UsageError
from edgeae.contract import variants as variant_table
from edgeae.contract.variants import UNROLLED_FROM

from .conftest import PROVIDERS, REPO, assert_within_recorded_tolerance

HEAVY = ("tensorflow", "keras", "tf2onnx", "tf_keras")


def test_importing_the_runtime_loads_no_tensorflow():
    code = ("import sys, edgeae.runtime, edgeae.cli; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runtime_cli_commands_load_no_tensorflow(tiny_export, tmp_path):
    """encode/score through the real CLI entry point, with heavy modules made unimportable."""
    np.save(tmp_path / "w.npy", np.zeros((2, 6, 3)))
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r}: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgeae.cli import main\n"
        "main()\n"
    )
    for command in ("encode", "score", "reconstruct", "inspect"):
        args = [command, str(tiny_export)] + ([str(tmp_path / "w.npy")] if command != "inspect" else []) + ["--provider", "cpu"]
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_default_install_has_no_training_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]}
    assert names == {"numpy", "onnxruntime", "click"}
    assert not names & {"tensorflow", "keras", "tf2onnx", "onnx", "tf-keras"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_api_on_the_committed_export(provider):
    model = runtime.load(REPO / "exported", provider)
    seq = (np.arange(50) / 50).reshape(10, 5)
    assert model.encode(seq).shape == (100,)
    assert model.encode(np.stack([seq] * 3)).shape == (3, 100)
    assert model.reconstruct(seq).shape == (10, 5)
    assert np.abs(model.reconstruct(seq) - seq).max() <= 2.5e-2
    single = model.score(seq)
    assert single.scores.shape == ()
    batch = model.score(np.stack([seq, seq * 3]))
    assert batch.scores.shape == (2,) and batch.scores[1] > batch.scores[0]
    assert float(single.scores) == pytest.approx(float(batch.scores[0]))


def test_single_onnx_file_loads_without_a_manifest(tiny_export):
    model = runtime.load(tiny_export / "encoder.onnx", "cpu")
    assert list(model.models) == ["encoder"]
    with pytest.raises(UsageError, match="no autoencoder"):
        model.reconstruct(np.zeros((6, 3)))


def _keras_side(export):
    from edgeae.trainer import model as keras_model
    from edgeae.trainer.training import load_training

    training = load_training(export)
    pre = training.preprocessing
    return training, pre, keras_model


def test_preprocessing_parity_inside_and_far_outside_the_training_range(scaled_export, rng):
    training, pre, km = _keras_side(scaled_export)
    assert not pre.is_identity_scale and pre.clip_quantiles == (0.05, 0.95)
    low, high = np.array(pre.clip_low), np.array(pre.clip_high)
    span = high - low
    inside = rng.uniform(low, high, (200, 8, 3))
    outside = rng.uniform(low - 1000 * span, high + 1000 * span, (200, 8, 3))
    model = runtime.load(scaled_export, "cpu")
    for x in (inside, outside):
        expected = pre.invert(km.predict(training.autoencoder, pre.apply(x)))
        got = model.reconstruct(x)
        assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(span.max()))
        np.testing.assert_allclose(model.encode(x), km.predict(training.encoder, pre.apply(x)), atol=1e-5)
    # far outside, clipping makes the model see the bounds: reconstructions stay in a sane range
    assert np.abs(model.reconstruct(outside)).max() < 10 * np.abs(np.concatenate([low, high])).max()


def test_manifest_records_the_preprocessing_in_plain_numbers(scaled_export):
    manifest = json.loads((scaled_export / "manifest.json").read_text())
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    assert pre.scaling == "minmax" and len(pre.clip_low) == 3
    x = np.linspace(-5000, 5000, 8 * 3).reshape(1, 8, 3)
    scaled = pre.apply(x)
    assert scaled.min() >= -1e-6 and scaled.max() <= 1 + 1e-6


def test_chunked_runs_match_one_big_run(fixed_routes, rng):
    model = runtime.load(fixed_routes, "cpu")
    x = rng.uniform(0, 1, (1001, 6, 3))
    whole = model.reconstruct(x, chunk=4096)  # on the unrolled graph; 7 and 13 at a time on the clean one
    np.testing.assert_array_equal(model.reconstruct(x, chunk=7), model.reconstruct(x, chunk=13))
    np.testing.assert_allclose(model.reconstruct(x, chunk=7), whole, atol=1e-6)
    np.testing.assert_array_equal(model.encode(x, chunk=1), model.encode(x))
    with pytest.raises(UsageError):
        model.encode(x, chunk=0)


def test_one_model_many_threads_same_results(tiny_export, rng):
    model = runtime.load(tiny_export, "cpu")
    batches = [rng.uniform(0, 1, (n, 6, 3)) for n in range(1, 41)]
    serial = [model.reconstruct(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(model.reconstruct, batches))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_node_placement_names_every_node(tiny_export):
    import onnx

    model = runtime.load(tiny_export, "cpu")
    placement = model.models["autoencoder"].node_placement()
    graph = onnx.load(str(tiny_export / "autoencoder.onnx")).graph
    lstms = {n.name for n in graph.node if n.op_type == "LSTM"}
    assert placement and set(placement.values()) == {"CPUExecutionProvider"}
    assert set(placement) <= {n.name for n in graph.node}
    assert len(lstms) == 2 and lstms <= set(placement)


def test_providers_resolve_honestly(monkeypatch):
    assert providers.resolve_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(providers, "available_providers", lambda: ["CPUExecutionProvider"])
    assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="CUDAExecutionProvider requested; available: CPUExecutionProvider"):
        providers.resolve_providers("cuda")
    with pytest.raises(ProviderError):
        providers.resolve_providers("tensorrt")
    with pytest.raises(ProviderError):
        providers.resolve_providers([])
    monkeypatch.setattr(providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers.resolve_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers.resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_silent_cuda_fallback_is_an_error(tiny_export, monkeypatch):
    """onnxruntime would quietly run on the CPU; edgeae must not."""
    monkeypatch.setattr(providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine really has CUDA")
    with pytest.raises(ProviderError):
        runtime.load(tiny_export, "cuda")


# ---------------------------------------------------------------- bad inputs


BAD_INPUTS = [
    ("str", "hello", DataError),
    ("none", None, DataError),
    ("dict", {"a": 1}, DataError),
    ("bool dtype", np.ones((6, 3), dtype=bool), DataError),
    ("complex", np.ones((6, 3), dtype=complex), DataError),
    ("strings array", np.full((6, 3), "x"), DataError),
    ("ragged list", [[1, 2, 3], [1, 2]], ShapeError),
    ("scalar", 3.0, ShapeError),
    ("1-d", np.ones(18), ShapeError),
    ("4-d", np.ones((1, 1, 6, 3)), ShapeError),
    ("wrong steps", np.ones((2, 7, 3)), ShapeError),
    ("wrong features", np.ones((2, 6, 4)), ShapeError),
    ("transposed", np.ones((3, 6)), ShapeError),
    ("inf", np.full((2, 6, 3), np.inf), DataError),  # NaN is a missing value, not refused: tests/test_missing.py
    ("-inf float32 batch", np.where(np.arange(36).reshape(2, 6, 3) == 35, -np.inf, 0.5).astype(np.float32), DataError),
    ("overflows float32", np.full((6, 3), 1e300), DataError),
    ("masked", np.ma.masked_array(np.ones((6, 3)), mask=np.eye(6, 3)), DataError),
]


@pytest.mark.parametrize("label, value, error", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_fail_clearly_before_onnxruntime(tiny_export, label, value, error):
    model = runtime.load(tiny_export, "cpu")
    for call in (model.encode, model.reconstruct, model.score):
        with pytest.raises(error) as info:
            call(value)
        message = str(info.value)
        assert "\n" not in message and len(message) < 300


def test_float32_input_whose_squares_overflow_is_still_accepted(tiny_export):
    """The quick finiteness test sums squares; values near float32's limit overflow it, yet are finite."""
    model = runtime.load(tiny_export, "cpu")
    huge = np.full((2, 6, 3), 3e38, np.float32)
    assert np.isfinite(model.reconstruct(huge)).all() and np.isfinite(model.encode(huge[0])).all()


def test_shape_error_names_expected_and_actual(tiny_export):
    model = runtime.load(tiny_export, "cpu")
    with pytest.raises(ShapeError, match=r"expected \(batch, 6, 3\) or \(6, 3\), got \(3, 7, 3\)"):
        model.encode(np.ones((3, 7, 3)))


def test_odd_but_valid_inputs_work(tiny_export, rng):
    model = runtime.load(tiny_export, "cpu")
    x = rng.uniform(0, 1, (5, 6, 3))
    expected = model.reconstruct(x.astype(np.float32))
    variants = {
        "float64": x,
        "fortran order": np.asfortranarray(x),
        "strided view": np.repeat(x, 2, axis=0)[::2],
        "big-endian": x.astype(">f4"),
        "read-only": np.require(x, requirements=["O"]).copy(),
        "list": x.tolist(),
        "float16": x.astype(np.float16),
    }
    variants["read-only"].setflags(write=False)
    for label, value in variants.items():
        tol = 1e-3 if label == "float16" else 1e-6
        np.testing.assert_allclose(model.reconstruct(value), expected, atol=tol, err_msg=label)
    assert model.reconstruct(np.zeros((5, 6, 3), dtype=np.int64)).shape == (5, 6, 3)
    empty = model.encode(np.zeros((0, 6, 3)))
    assert empty.shape == (0, 8)
    assert model.score(np.zeros((0, 6, 3))).scores.shape == (0,)


# ---------------------------------------------------------------- integrity


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "empty", "replace"])
def test_damaged_files_are_refused_on_load(export_copy, damage):
    path = export_copy / "autoencoder.onnx"
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes((export_copy / "encoder.onnx").read_bytes())
    with pytest.raises(IntegrityError) as info:
        runtime.load(export_copy, "cpu")
    assert "autoencoder.onnx" in str(info.value)


def test_manifest_damage_is_refused(export_copy):
    manifest = export_copy / "manifest.json"
    edited = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**edited, "detector": {"threshold": 1e9}}))
    with pytest.raises(IntegrityError, match="modified after it was written"):
        runtime.load(export_copy, "cpu")
    manifest.write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        runtime.load(export_copy, "cpu")

    edited["files"]["../outside.onnx"] = {"sha256": "0" * 64}
    edited["models"]["encoder"]["file"] = "../outside.onnx"
    write_manifest(export_copy, edited)
    with pytest.raises(IntegrityError, match="outside its folder"):
        runtime.load(export_copy, "cpu")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(IntegrityError, match="bogus.onnx"):
        runtime.load(bogus, "cpu")


@pytest.mark.parametrize("variant", ["fp32", "fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "ort", "plain"])
def test_every_published_variant_loads_and_scores_with_its_own_threshold(tiny_export, variant, rng):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    model = runtime.load(tiny_export, "cpu", variant=variant)
    assert model.variant == variant
    expected_file = (manifest["models"]["autoencoder"]["file"] if variant == "fp32"
                     else manifest["variants"]["autoencoder"][variant]["file"])
    assert model.models["autoencoder"].name == expected_file
    detector = manifest["detector"]
    expected = detector["threshold"] if variant == "fp32" else detector["variants"][variant]["threshold"]
    assert model.threshold == expected
    # The bound is the variant's own: the tolerance its export recorded (the table's for reduced precision,
    # the export's fp32 bound for the fp32 graphs), held against an independent reference, Keras's outputs
    # stored at export (parity_reference.npz), never against another graph of the same export.
    recorded = manifest["variants"]["autoencoder"][variant]["tolerance"]
    if variant_table.BY_NAME[variant].precision == "fp32":
        assert recorded == {"abs": manifest["parity"]["tolerance_abs"], "rel_range": manifest["parity"]["tolerance_rel_range"]}
    else:
        assert recorded == variant_table.DEFAULT_TOLERANCES[variant].to_dict()
    assert_within_recorded_tolerance(tiny_export, model, variant)
    x = rng.uniform(0, 1, (20, 6, 3))
    result = model.score(x)
    np.testing.assert_array_equal(result.flags, result.scores > expected)


def test_variant_flags_agree_with_their_calibration(tiny_export):
    """On the calibration windows each variant flags what its manifest record says it flags."""
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    with np.load(tiny_export / "parity_inputs.npz") as saved:
        windows = saved["validation"] if len(saved["validation"]) else saved["training"]
    assert set(manifest["detector"]["variants"]) == {"plain", "fp32-b1", "fp32-unrolled", "portable", "fp16", "int8", "ort"}
    for name, record in manifest["detector"]["variants"].items():
        flags = runtime.load(tiny_export, "cpu", variant=name).score(windows).flags
        assert int(flags.sum()) == record["flagged"], name


def _count_runs(model: OnnxModel, counts: dict, key: str) -> None:
    """Count the runs of `model`'s graph, by feed or over its bound one-window buffers."""
    call = model._call
    def counted(names, feed):
        counts[key] += 1
        return call(names, feed)
    model._call = counted
    if model._bound is not None:
        run_bound = model._bound.run
        def counted_bound(window, output):
            counts[key] += 1
            return run_bound(window, output)
        model._bound.run = counted_bound


def test_each_batch_size_runs_on_the_graph_the_manifest_names(fixed_routes, rng):
    tiny_export = fixed_routes
    manifest = read_manifest(tiny_export).to_body()
    assert manifest["variants"]["autoencoder"]["fp32"]["by_batch"] == [
        {"batches": [1, 1], "file": "autoencoder.b1.onnx"},
        {"batches": [2, UNROLLED_FROM - 1], "file": "autoencoder.onnx"},
        {"batches": [UNROLLED_FROM, None], "file": "autoencoder.unrolled.onnx"}]
    model = runtime.load(tiny_export, "cpu")
    auto = model.models["autoencoder"]
    assert [(a, b, m.name) for a, b, m in auto.routes] == [(1, 1, "autoencoder.b1.onnx"),
                                                          (UNROLLED_FROM, None, "autoencoder.unrolled.onnx")]
    assert not model.models["encoder"].routes and not runtime.load(tiny_export, "cpu", variant="int8").models["autoencoder"].routes
    counts = {"one": 0, "clean": 0, "unrolled": 0}
    _count_runs(auto.routes[0][2], counts, "one")
    _count_runs(auto, counts, "clean")
    _count_runs(auto.routes[1][2], counts, "unrolled")
    x = rng.uniform(0, 1, (300, 6, 3))
    alone = runtime.load(tiny_export / "autoencoder.onnx", "cpu").reconstruct(x)  # the clean graph for everything
    expected = {"one": 0, "clean": 0, "unrolled": 0}
    for batch, chunk, graphs in [(1, 256, ["one"]), (5, 256, ["clean"]), (UNROLLED_FROM - 1, 256, ["clean"]),
                                 (UNROLLED_FROM, 256, ["unrolled"]), (300, 256, ["unrolled", "clean"]),
                                 (257, 256, ["unrolled", "one"]), (3, 2, ["clean", "one"])]:
        out = model.reconstruct(x[:batch], chunk=chunk)
        for graph in graphs:
            expected[graph] += 1
        assert counts == expected, (batch, chunk)
        np.testing.assert_allclose(out, alone[:batch], atol=1e-6)
    one = model.reconstruct(x[2])
    assert one.shape == (6, 3) and counts["one"] == expected["one"] + 1
    assert float(model.score(x[4]).scores) == pytest.approx(float(model.score(x[:5]).scores[4]), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("variant, file", [("fp32-b1", "autoencoder.b1.onnx"), ("fp32-unrolled", "autoencoder.unrolled.onnx")])
def test_a_batch_graph_alone_runs_any_batch(tiny_export, rng, variant, file):
    x = rng.uniform(0, 1, (7, 6, 3))
    alone = runtime.load(tiny_export / file, "cpu")
    np.testing.assert_allclose(alone.reconstruct(x), runtime.load(tiny_export / "autoencoder.onnx", "cpu").reconstruct(x),
                               atol=1e-6)
    assert alone.models["autoencoder"].one_window == (variant == "fp32-b1")  # that one runs window by window
    loaded = runtime.load(tiny_export, "cpu", variant=variant)
    assert set(loaded.models) == {"autoencoder"} and not loaded.models["autoencoder"].routes
    np.testing.assert_array_equal(loaded.reconstruct(x), alone.reconstruct(x))


def test_an_export_without_batch_graphs_runs_every_batch_on_its_own_graph(export_copy, rng):
    manifest = read_manifest(export_copy).to_body()
    del manifest["variants"]["autoencoder"]["fp32"]["by_batch"]
    write_manifest(export_copy, manifest)
    model = runtime.load(export_copy, "cpu")
    assert model.models["autoencoder"].routes == []
    x = rng.uniform(0, 1, (3, 6, 3))
    np.testing.assert_allclose(model.reconstruct(x[1]), model.reconstruct(x)[1], atol=1e-6)


@pytest.mark.parametrize("file", ["autoencoder.b1.onnx", "autoencoder.unrolled.onnx"])
def test_a_tampered_batch_graph_is_refused(fixed_routes, file):
    path = fixed_routes / file  # a graph the manifest routes batch sizes to
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=file.replace(".", r"\.")):
        runtime.load(fixed_routes, "cpu")


@pytest.mark.parametrize("routes", [[{"batches": [0, 1], "file": "autoencoder.b1.onnx"}],
                                    [{"batches": [5, 2], "file": "autoencoder.unrolled.onnx"}],
                                    [{"batches": "all", "file": "autoencoder.b1.onnx"}],
                                    [{"file": "autoencoder.b1.onnx"}],
                                    [{"batches": [2, None], "file": "autoencoder.b1.onnx"}],
                                    [{"batches": [2, None], "file": "encoder.onnx"}],
                                    [{"batches": [2, None], "file": "missing.onnx"}]])
def test_a_malformed_batch_route_is_refused(export_copy, routes):
    manifest = read_manifest(export_copy).to_body()
    manifest["variants"]["autoencoder"]["fp32"]["by_batch"] = routes
    write_manifest(export_copy, manifest)
    with pytest.raises(IntegrityError):
        runtime.load(export_copy, "cpu")


def test_graphs_that_cannot_serve_a_batch_range_are_refused(tiny_export, tmp_path):
    auto = OnnxModel(tiny_export / "autoencoder.onnx", "cpu")
    with pytest.raises(IntegrityError, match="differ"):
        auto.route(OnnxModel(tiny_export / "encoder.onnx", "cpu"), 2, None)
    with pytest.raises(IntegrityError, match="one-window graph"):
        auto.route(OnnxModel(tiny_export / "autoencoder.b1.onnx", "cpu"), 1, 4)
    proto = onnx.load(str(tiny_export / "autoencoder.onnx"))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(proto, str(tmp_path / "fixed4.onnx"))
    with pytest.raises(IntegrityError, match="fixed at 4"):
        runtime.load(tmp_path / "fixed4.onnx", "cpu")


def test_runs_through_the_public_method_where_the_binding_is_hidden(tiny_export, rng):
    session = ort.InferenceSession(str(tiny_export / "encoder.onnx"), providers=["CPUExecutionProvider"])
    public = types.SimpleNamespace(run=session.run)
    assert _fast_run(public) == session.run
    x = rng.uniform(0, 1, (4, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(_fast_run(session)(["embedding"], {"sequence": x})[0],
                                  session.run(["embedding"], {"sequence": x})[0])


@pytest.mark.parametrize("bias, error", [(1e20, None), (np.inf, "produced non-finite values"),
                                         (np.nan, "produced non-finite values")])
def test_non_finite_outputs_are_an_error_and_huge_finite_ones_are_not(tiny_export, tmp_path, rng, bias, error):
    """Squares of 1e20 overflow float32: the cheap check must fall back to the exact one, not cry wolf."""
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_export / "autoencoder.onnx"))
    tensor = next(t for t in proto.graph.initializer if t.name == "dense/bias")
    tensor.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(tensor).shape, bias, np.float32), tensor.name))
    onnx.save(proto, str(tmp_path / "odd.onnx"))
    model = runtime.load(tmp_path / "odd.onnx", "cpu")
    for x in (rng.uniform(0, 1, (6, 3)), rng.uniform(0, 1, (300, 6, 3))):  # one call, and chunked
        if error is None:
            assert np.all(model.reconstruct(x) > 1e19)
        else:
            with pytest.raises(InferenceError, match=error):
                model.reconstruct(x)


def test_unknown_variant_is_a_usage_error(tiny_export):
    with pytest.raises(UsageError, match="this export has: .*int8"):
        runtime.load(tiny_export, "cpu", variant="int4")
    with pytest.raises(UsageError):
        runtime.load(tiny_export / "encoder.onnx", "cpu", variant="int8")


# ---------------------------------------------------------------- one window over bound buffers


def test_one_window_runs_over_bound_buffers_and_matches_the_plain_run(tiny_export, rng):
    """Batch 1 runs over buffers bound once (the latency path); the result is the plain run's,
    bit for bit, and is the caller's own array, untouched by the next call."""
    model = runtime.load(tiny_export, "cpu")
    for role in ("autoencoder", "encoder"):
        graph = model.models[role].graph_for(1)
        assert graph._bound is not None, role
        x = rng.uniform(0, 1, (2, 1, 6, 3)).astype(np.float32)
        plain = [graph._call(graph._output_lists[0], {graph.input_name: w})[0] for w in x]
        first = model.models[role].run_windows(x[0])
        kept = first.copy()
        second = model.models[role].run_windows(x[1])
        np.testing.assert_array_equal(first, plain[0])
        np.testing.assert_array_equal(second, plain[1])
        np.testing.assert_array_equal(first, kept)  # the second call did not write into the first's result
        first[...] = -1
        np.testing.assert_array_equal(model.models[role].run_windows(x[1]), plain[1])


def test_one_window_calls_from_many_threads_each_get_their_own_result(tiny_export, rng):
    model = runtime.load(tiny_export, "cpu")
    x = rng.uniform(0, 1, (400, 6, 3)).astype(np.float32)
    expected = np.stack([model.reconstruct(w) for w in x])
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = np.stack(list(pool.map(model.reconstruct, x)))
    np.testing.assert_array_equal(got, expected)


def test_a_failed_bound_run_is_reported_by_the_plain_path_without_onnxruntime_noise(tmp_path, capfd):
    """A graph that lies about its output shape fails the bound run inside onnxruntime: the
    caller sees edgeae's one-line error, and onnxruntime's own error log stays quiet."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "transposer.onnx"))
    model = runtime.load(tmp_path / "transposer.onnx", "cpu")
    assert model.models["autoencoder"]._bound is not None
    capfd.readouterr()
    with pytest.raises(IntegrityError, match=r"came out \(1, 3, 4\), expected \(1, 4, 3\)"):
        model.reconstruct(np.zeros((4, 3)))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("window, dtype", [((1, 1, 3), np.float32), ((1, 6, 1), np.float32), ((1,), np.float32),
                                           ((1, 6, 3), np.float64), ((1, 6, 3), np.bool_)])
def test_a_bound_run_never_broadcasts_or_converts_a_window(tiny_export, window, dtype):
    """Part of a window copied into the bound buffer would be repeated to fill it, and another
    type converted: run_windows at batch 1 refuses both, as it does at batch 2."""
    model = runtime.load(tiny_export, "cpu")
    for role in ("autoencoder", "encoder"):
        for count in (1, 2):
            x = np.ones((count, *window[1:]), dtype) if len(window) > 1 else np.ones((count,), dtype)
            with pytest.raises(InferenceError, match="inference failed"):
                model.models[role].run_windows(x)


def test_a_provider_named_twice_is_asked_for_once(tiny_export, recwarn):
    assert providers.resolve_providers(["cpu", "CPU", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    runtime.load(tiny_export, ["cpu", "cpu"])
    assert not [w for w in recwarn if "provider" in str(w.message).lower()]


def test_the_one_window_graph_runs_on_one_thread_without_the_arena(fixed_routes):
    """Batch 1 never splits across threads and its buffers come sooner from malloc; a thread
    count the caller gives is kept, and the batch graphs keep onnxruntime's defaults."""
    tiny_export = fixed_routes  # batch 1 on the one-window graph
    auto = runtime.load(tiny_export, "cpu").models["autoencoder"]
    one = auto.graph_for(1).session.get_session_options()
    assert (one.intra_op_num_threads, one.enable_cpu_mem_arena) == (1, False)
    batch = auto.session.get_session_options()
    assert (batch.intra_op_num_threads, batch.enable_cpu_mem_arena) == (0, True)
    given = runtime.load(tiny_export, "cpu", threads=2).models["autoencoder"].graph_for(1).session.get_session_options()
    assert (given.intra_op_num_threads, given.enable_cpu_mem_arena) == (2, False)


@pytest.mark.parametrize("chunk", [np.uint8(200), np.int8(100), np.int64(7)])
def test_a_numpy_chunk_size_is_taken_as_its_value_without_wrapping(tiny_export, rng, chunk):
    """uint8(200) + 200 wraps to 144 in numpy: every window must still be run, once."""
    model = runtime.load(tiny_export, "cpu")
    x = rng.uniform(0, 1, (300, 6, 3))
    expected = model.score(x).scores
    np.testing.assert_allclose(model.score(x, chunk=chunk).scores, expected, rtol=1e-5)
    assert model.reconstruct(x, chunk=chunk).shape == (300, 6, 3) and model.encode(x, chunk=chunk).shape == (300, 8)


def test_a_threshold_past_floats_range_is_refused(tiny_export, rng):
    model = runtime.load(tiny_export, "cpu")
    for threshold in (10**400, -(10**400)):
        with pytest.raises(UsageError, match="threshold must be a finite number"):
            model.score(rng.uniform(0, 1, (6, 3)), threshold=threshold)
