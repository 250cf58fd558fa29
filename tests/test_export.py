import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeae.contract.errors import UsageError
from edgeae.conversion.convert import export_model


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_graphs_hold_fused_lstm_ops_and_pass_the_checker(tiny_export):
    for name, lstms in (("autoencoder.onnx", 2), ("encoder.onnx", 1)):
        proto = onnx.load(str(tiny_export / name))
        onnx.checker.check_model(proto, full_check=True)
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("LSTM") == lstms
        assert "Loop" not in ops and "Scan" not in ops
        for node in proto.graph.node:
            if node.op_type == "LSTM":
                acts = next(a for a in node.attribute if a.name == "activations").strings
                assert [a.decode() for a in acts] == ["Sigmoid", "Relu", "Relu"]


def test_names_and_dynamic_batch_axis(tiny_export, tiny_config):
    t, f = tiny_config.timesteps, tiny_config.features
    for name, out_name, out_shape in (("autoencoder.onnx", "reconstruction", ["batch", t, f]),
                                      ("encoder.onnx", "embedding", ["batch", tiny_config.units])):
        graph = onnx.load(str(tiny_export / name)).graph
        dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        assert [i.name for i in graph.input] == ["sequence"]
        assert dims(graph.input[0]) == ["batch", t, f]
        assert [o.name for o in graph.output] == [out_name]
        assert dims(graph.output[0]) == out_shape
        assert "unk__" not in str(graph.input) + str(graph.output)


@pytest.mark.parametrize("batch", [1, 300])
def test_exports_accept_batch_1_and_300(tiny_export, tiny_config, batch, rng):
    x = rng.uniform(0, 1, (batch, tiny_config.timesteps, tiny_config.features)).astype(np.float32)
    ae = ort.InferenceSession(str(tiny_export / "autoencoder.onnx"), providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(tiny_export / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert ae.run(None, {"sequence": x})[0].shape == x.shape
    assert enc.run(None, {"sequence": x})[0].shape == (batch, tiny_config.units)


def test_opset_is_selectable(tiny_training):
    from edgeae.conversion.convert import opset_of

    c = tiny_training.config
    proto = export_model(tiny_training.encoder, "encoder", tiny_training.preprocessing, c.timesteps, c.features, opset=15)
    assert opset_of(proto) == 15


@pytest.mark.parametrize("opset", [7, 99])
def test_unsupported_opset_is_refused(tiny_training, opset):
    c = tiny_training.config
    with pytest.raises(UsageError, match="opset"):
        export_model(tiny_training.encoder, "encoder", tiny_training.preprocessing, c.timesteps, c.features, opset=opset)


def test_metadata_describes_the_model(tiny_export):
    meta = {p.key: p.value for p in onnx.load(str(tiny_export / "encoder.onnx")).metadata_props}
    assert meta["edgeae.role"] == "encoder"
    assert "clip_low" in meta["edgeae.preprocessing"]
