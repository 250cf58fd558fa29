"""Every tensor checked: external data anywhere in a graph is refused in one line unless the manifest lists
its file with a checksum, and a graph whose real output shape differs from its declared one is refused by
inspect and verify as by the runtime."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract.errors import EXIT_INTEGRITY, IntegrityError
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.contract.onnx_scan import scan_model


def external(name: str, location: str) -> TensorProto:
    """A float32 scalar tensor stored in `location`, as onnx writes external data."""
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def reseal(folder, *names: str) -> None:
    manifest = read_manifest(folder).to_body()
    for name in names:
        role = manifest["files"].get(name, {}).get("role", "model")
        manifest["files"][name] = file_entry(folder / name, role)
    write_manifest(folder, manifest)


def add_constant(folder, location: str) -> None:
    """autoencoder.onnx with its output plus a Constant node whose value lies in `location` (0.0), resealed."""
    model = onnx.load(str(folder / "autoencoder.onnx"))
    graph = model.graph
    last = graph.node[-1]
    out = graph.output[0].name
    index = list(last.output).index(out)
    last.output[index] = "before"
    graph.node.extend([helper.make_node("Constant", [], ["hidden"], value=external("hidden", location)),
                       helper.make_node("Add", ["before", "hidden"], [out])])
    onnx.save(model, str(folder / "autoencoder.onnx"))
    reseal(folder, "autoencoder.onnx")


def one_line(result) -> bool:
    return result.exit_code == EXIT_INTEGRITY and len(result.stderr.strip().splitlines()) == 1


def test_a_constant_reading_an_unlisted_file_is_refused_and_a_listed_one_is_served(export_copy):
    (export_copy / "x.bin").write_bytes(np.float32(0).tobytes())
    add_constant(export_copy, "x.bin")
    with pytest.raises(IntegrityError, match=r"autoencoder.onnx: tensor 'hidden' reads external data from 'x.bin', "
                                             "a file the manifest does not list with a checksum"):
        runtime.load(export_copy, "cpu")
    result = CliRunner().invoke(main, ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"])
    assert one_line(result) and "'x.bin'" in result.stderr, result.output
    reseal(export_copy, "x.bin")
    runtime.load(export_copy, "cpu")
    (export_copy / "x.bin").write_bytes(np.float32(7e6).tobytes())  # changed after sealing
    with pytest.raises(IntegrityError, match="x.bin: sha256"):
        runtime.load(export_copy, "cpu")


@pytest.mark.parametrize("location", ["/etc/passwd", "../x.bin", "sub/../../x.bin", "C:\\x.bin"])
def test_external_data_outside_the_folder_is_refused_in_one_line(export_copy, location):
    add_constant(export_copy, location)
    with pytest.raises(IntegrityError, match="outside the export folder"):
        runtime.load(export_copy, "cpu")
    for command in (["verify", str(export_copy), "--provider", "cpu", "--against", "stored"],
                    ["inspect", str(export_copy), "--provider", "cpu"]):
        result = CliRunner().invoke(main, command)
        assert one_line(result) and "outside the" in result.stderr, result.output


def test_a_lone_model_file_with_external_data_is_refused(export_copy):
    add_constant(export_copy, "x.bin")
    (export_copy / "x.bin").write_bytes(np.float32(0).tobytes())
    with pytest.raises(IntegrityError, match="a file no manifest lists with a checksum"):
        runtime.load(export_copy / "autoencoder.onnx", "cpu")


def test_external_data_is_found_wherever_a_tensor_can_sit():
    """Initializers, sparse initializers, node attributes (one tensor, lists, sparse), subgraphs of If
    and Loop, local functions: each one's location is found, without the onnx package's loader."""
    sparse = helper.make_sparse_tensor(external("s_values", "f.sparse"), external("s_indices", "f.indices"), [4])
    then = helper.make_graph([helper.make_node("Constant", [], ["t"], value=external("in_then", "f.then"))], "then",
                             [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [])])
    body = helper.make_graph([], "body", [], [], initializer=[external("in_loop", "f.loop")])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then),
             helper.make_node("Loop", ["", "c"], [], body=body),
             helper.make_node("Constant", [], ["k"], sparse_value=sparse),
             helper.make_node("Custom", [], ["z"], domain="my.ops", tensors=[external("listed", "f.list")])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              initializer=[external("init", "f.init")])
    model = helper.make_model(graph)
    model.functions.append(helper.make_function("local", "f", [], ["w"], [helper.make_node(
        "Constant", [], ["w"], value=external("in_function", "f.function"))], [helper.make_opsetid("", 17)]))
    scan = scan_model(model.SerializeToString(), "m.onnx")
    assert sorted(scan.external) == sorted([
        ("init", "f.init"), ("in_then", "f.then"), ("in_then", "f.then"), ("in_loop", "f.loop"),
        ("s_values", "f.sparse"), ("s_indices", "f.indices"), ("listed", "f.list"), ("in_function", "f.function")])
    assert scan.domains == {"my.ops"}  # the default domain is the field left out


def test_a_file_that_is_no_protobuf_is_refused_in_one_line():
    with pytest.raises(IntegrityError, match="m.onnx: not a valid ONNX model"):
        scan_model(b"\x0f\xff\xff", "m.onnx")


def lie_about_the_output(folder) -> None:
    """autoencoder.onnx giving one timestep less than its declared (batch, timesteps, features), resealed."""
    model = onnx.load(str(folder / "autoencoder.onnx"))
    graph = model.graph
    out = graph.output[0].name
    last = graph.node[-1]
    last.output[list(last.output).index(out)] = "full"
    int64 = lambda name, v: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [v]))
    graph.node.extend([int64("start", 0), int64("one", 1), int64("axis", 1),
                       helper.make_node("Shape", [graph.input[0].name], ["steps"], start=1, end=2),
                       helper.make_node("Sub", ["steps", "one"], ["stop"]),  # unknown until run: declared shape stays
                       helper.make_node("Slice", ["full", "start", "stop", "axis"], [out])])
    onnx.save(model, str(folder / "autoencoder.onnx"))
    reseal(folder, "autoencoder.onnx")


def test_a_graph_whose_real_output_shape_is_not_its_declared_one_is_refused_everywhere(export_copy):
    lie_about_the_output(export_copy)
    with pytest.raises(IntegrityError, match=r"autoencoder.onnx: output '\w+' came out \(\d+, 5, 3\), expected"):
        runtime.load(export_copy, "cpu")
    for command in (["inspect", str(export_copy), "--provider", "cpu"],
                    ["inspect", str(export_copy), "--provider", "cpu", "--no-self-check"],
                    ["verify", str(export_copy), "--provider", "cpu", "--against", "stored"]):
        result = CliRunner().invoke(main, command)
        assert one_line(result) and "came out" in result.stderr, (command, result.output)
