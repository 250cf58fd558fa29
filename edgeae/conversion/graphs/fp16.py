"""float16: weights and network in half precision, the preprocessing and the interface in float32."""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import FIXED_PREFIXES, Built, Job, NotApplicable, initializers_by_name, set_variant, save


def to_float16(clean):
    """Weights and network in float16; the preprocessing, inputs and outputs stay float32.

    Raw values can exceed float16's range (65504) and clipping bounds need their precision,
    so only the tensors between the preprocessing and the postprocessing are converted, with
    one Cast at each end. Callers keep feeding and receiving float32.
    """
    onnx = require("onnx", "train")
    TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

    loops = [n.name for n in clean.graph.node if n.op_type in ("Loop", "Scan")]
    if loops:
        raise NotApplicable(f"{loops[0]} is a Loop (tf2onnx's writing of a GRU or of recurrent dropout): its body "
                            "reads the tensors fp16 would halve, as float32")
    proto = onnx.ModelProto()
    proto.CopyFrom(clean)
    graph = proto.graph
    inits = initializers_by_name(graph)
    core = [n for n in graph.node if not n.name.startswith(FIXED_PREFIXES)]
    half = {out for n in core for out in n.output}
    outputs = {o.name for o in graph.output}
    renamed = {name: f"{name}/fp16" for name in half & outputs}
    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[(name, to)] = f"{name}/{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[(name, to)]], name=f"cast/{casts[(name, to)]}", to=to))
        return casts[(name, to)]

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        is_core = not node.name.startswith(FIXED_PREFIXES)
        new_inputs = []
        for name in node.input:
            if name in inits:
                if is_core and inits[name].data_type == TensorProto.FLOAT:
                    inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), name))
            elif name and is_core and name not in half:
                name = cast(name, TensorProto.FLOAT16)
            elif name in half and not is_core:
                name = cast(renamed.get(name, name), TensorProto.FLOAT)
            new_inputs.append(renamed.get(name, name) if is_core else name)
        node.input[:] = new_inputs
        node.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(node)
    for name, inner in renamed.items():
        nodes.append(helper.make_node("Cast", [inner], [name], name=f"cast/{name}", to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    set_variant(proto, "fp16")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def build(job: Job) -> Built | None:
    return save(job, to_float16(job.clean), "fp16 does not apply")
