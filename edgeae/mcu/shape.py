"""Which exports `edgeae c` writes C for, and, for the others, why not in the user's own terms.

The C is written for the seed's shape: one LSTM encoder, a RepeatVector, one LSTM decoder and a
Dense head. `edgeae export MODEL.keras` exports more (stacked, GRU and Bidirectional layers,
issue 18); for those the C generator refuses before it reads a weight, naming the export's own
layers as the manifest records them (training.data.model.layers) and what to do instead. An
export that records no layers (one edgeae trained, or an older one) is judged from its ONNX
graph's recurrent nodes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeae.contract.errors import UnsupportedModelError
from edgeae.contract.records import Manifest
from edgeae.exporter.user_model import PASSIVE

SHAPE = "edgeae c writes C for one LSTM encoder and one LSTM decoder (the seed's shape)"
ADVICE = "export a model of that shape, or run this one with onnxruntime"
_ARTICLE = {"LSTM": "an LSTM", "GRU": "a GRU"}


def _recurrent(kind: str) -> bool:
    return kind in ("LSTM", "GRU") or kind.startswith("Bidirectional")


def _words(kind: str) -> str:
    """A recorded layer kind as prose: "Bidirectional(GRU)" -> "Bidirectional GRU"."""
    return kind.replace("(", " ").replace(")", "")


def _describe(part: str, layers: list[tuple[str, str]]) -> str:
    """`part` ("encoder", "decoder") and its recurrent layers (name, kind), as a clause: "encoder is a GRU ('g')"."""
    named = ", ".join(f"'{name}'" for name, _ in layers)
    if not layers:
        return f"{part} has no recurrent layer"
    kinds = {kind for _, kind in layers}
    if len(layers) == 1:
        kind = layers[0][1]
        return f"{part} is {_ARTICLE.get(kind, 'a ' + _words(kind))} ({named})"
    if len(kinds) == 1:
        return f"{part} is {len(layers)} stacked {_words(layers[0][1])}s ({named})"
    described = ", ".join(f"{_words(kind)} '{name}'" for name, kind in layers)
    return f"{part} is {len(layers)} stacked layers ({described})"


def layer_refusal(layers: list[tuple[str, str]]) -> str | None:
    """Why the recorded layers (name, kind) in order are not the seed's shape, one line; None if they are."""
    kept = [(name, kind) for name, kind in layers if kind not in ("InputLayer", *PASSIVE)]
    kinds = [kind for _, kind in kept]
    if "RepeatVector" in kinds:
        repeat = kinds.index("RepeatVector")
        parts = {"encoder": kept[:repeat], "decoder": kept[repeat + 1:]}
    else:
        parts = {"encoder": kept, "decoder": []}
    reasons = []
    for part, members in parts.items():
        recurrent = [(name, kind) for name, kind in members if _recurrent(kind)]
        if [kind for _, kind in recurrent] != ["LSTM"]:
            reasons.append(_describe(part, recurrent))
    if not reasons:
        return None
    return f"{SHAPE}; this export's {' and its '.join(reasons)}: {ADVICE}"


def check_shape(manifest: Manifest) -> None:
    """Refuse, in one line naming its layers, an export whose recorded model is not the seed's shape."""
    record = manifest.training.data.get("model") if manifest.training is not None else None
    layers = record.get("layers") if isinstance(record, Mapping) else None
    if not layers:
        return  # edgeae's own model (the seed's shape), or an export that does not record its layers
    reason = layer_refusal([(str(layer.get("name")), str(layer.get("kind"))) for layer in layers])
    if reason is not None:
        raise UnsupportedModelError(reason)


def graph_refusal(graph: Any) -> str:
    """Why an ONNX graph without the seed's two named LSTMs gets no C: its recurrent nodes, counted."""
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN", "Loop", "Scan"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    found = ", ".join(f"{n} {op}" + ("s" if n > 1 else "") for op, n in sorted(counts.items())) or "no recurrent node"
    loops = " (GRU or other recurrent layers written as loops)" if "Loop" in counts or "Scan" in counts else ""
    return (f"{SHAPE}: an LSTM named encoder/LSTM, another named decoder/LSTM and a Dense head; this export's graph "
            f"holds {found}{loops}: {ADVICE}")
