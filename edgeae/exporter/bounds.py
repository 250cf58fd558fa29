"""A static bound on every value a clean edgeae graph can compute, for any input at all.

The graph clips its input to the training range before anything else, so the network only
ever sees a bounded box; from the weights alone, interval arithmetic then bounds every gate
pre-activation, cell state, hidden state and output. A bound far below float32's largest
value proves the graph cannot overflow, so it cannot produce inf or NaN either (both need an
inf or a NaN to start from), and the runtime can skip its per-call output check for the
float32 graphs of that model (1.6 µs of a 55 µs single-window call here). The proof is made
once at export, stored in the manifest beside the files it covers, and the runtime trusts it
only for a folder whose files match the manifest's hashes.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeae.contract.errors import require

SUPPORTED_ACTIVATIONS = {"sigmoid", "tanh", "relu"}  # Keras's LSTM defaults and the seed's relu


def _largest(*values: Any) -> float:
    """The largest of these magnitudes; inf where any is NaN (0·inf on the way), so that a
    broken analysis never passes for a bound."""
    flat = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in values])
    return math.inf if np.isnan(flat).any() else float(flat.max())


def _activation_bound(name: str, magnitude: np.ndarray) -> np.ndarray:
    """The largest |activation(v)| over |v| <= magnitude."""
    if name == "relu":
        return magnitude
    return np.minimum(magnitude, 1.0) if name == "tanh" else np.ones_like(magnitude)


def _lstm_bound(node, arrays: dict[str, np.ndarray], input_bound: np.ndarray, steps: int) -> tuple[np.ndarray, float] | None:
    """Per-unit bound on |h| after `steps` steps, and the largest bound met on the way; None
    for an LSTM this analysis does not cover.

    With every gate in [0, 1]: |c_t| <= |c_t-1| + |g_t| and |h_t| <= h(|c_t|), where each
    pre-activation is at most |W|·|x| + |R|·|h_t-1| + |Wb| + |Rb|, and so is every partial
    sum of it, in any order onnxruntime adds them.
    """
    helper = require("onnx", "train").helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    names = [a.decode().lower() if isinstance(a, bytes) else str(a).lower()
             for a in attrs.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"])]
    if (len(names) != 3 or names[0] != "sigmoid" or not set(names) <= SUPPORTED_ACTIVATIONS
            or attrs.get("direction", b"forward") not in (b"forward", "forward")
            or any(len(node.input) > i and node.input[i] for i in (4, 5, 6, 7))):  # sequence_lens, states, peepholes
        return None
    weights, recurrence = (arrays.get(node.input[i]) for i in (1, 2))
    if weights is None or recurrence is None:
        return None
    units = recurrence.shape[-1]
    w, r = np.abs(weights[0].astype(np.float64)), np.abs(recurrence[0].astype(np.float64))
    bias = arrays.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    b = np.zeros(4 * units) if bias is None else np.abs(bias[0, :4 * units]) + np.abs(bias[0, 4 * units:])
    clip = attrs.get("clip")
    _, cell_act, hidden_act = names
    h, c, peak = np.zeros(units), np.zeros(units), 0.0
    from_input = w @ input_bound + b  # the same at every step: the input's bound does not change
    for _ in range(steps):
        pre = from_input + r @ h
        if clip is not None:
            pre = np.minimum(pre, float(clip))
        c = c + _activation_bound(cell_act, pre[3 * units:])  # gate order i, o, f, c
        h = _activation_bound(hidden_act, c)
        peak = _largest(peak, pre, c)
    return h, peak


def value_bound(clean) -> float | None:
    """The largest magnitude any value of this clean graph can take, for any input; None where
    the graph is not one this analysis covers (then nothing is proved and nothing skipped)."""
    numpy_helper = require("onnx", "train").numpy_helper
    graph = clean.graph
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    timesteps = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    low, high = arrays.get("preprocess/clip_low"), arrays.get("preprocess/clip_high")
    if low is None or high is None or "preprocess/min" not in nodes or "preprocess/max" not in nodes or timesteps < 1:
        return None  # without the clip the input, and so every value, is unbounded
    if "preprocess/level" in nodes:
        return None  # the window's level, taken from the raw input, is unbounded and added back to the output
    ends = np.stack([low, high])  # whatever the input, the clip leaves each feature between these
    peak = _largest(np.abs(ends))
    if "preprocess/sub" in nodes:
        ends = ends - arrays["preprocess/offset"]
        peak = _largest(peak, np.abs(ends))
        ends = ends * arrays["preprocess/scale"]
    x = np.abs(ends).max(axis=0)
    peak = _largest(peak, x)
    encoder = _lstm_bound(nodes["encoder/LSTM"], arrays, x, timesteps) if "encoder/LSTM" in nodes else None
    if encoder is None:
        return None
    h, inner = encoder
    peak = _largest(peak, inner, h)
    if "decoder/LSTM" in nodes:
        decoder = _lstm_bound(nodes["decoder/LSTM"], arrays, h, timesteps)
        if decoder is None or "dense/kernel" not in arrays:
            return None
        h, inner = decoder
        out = np.abs(arrays["dense/kernel"]).T @ h + np.abs(arrays.get("dense/bias", 0.0))
        peak = _largest(peak, inner, out)
        if "postprocess/div" in nodes:
            out = out / np.abs(arrays["postprocess/scale"])
            peak = _largest(peak, out, out + np.abs(arrays["postprocess/offset"]))
    return peak if math.isfinite(peak) else None


def bound_entry(clean) -> dict[str, Any]:
    """The manifest `models` fields that carry the proof."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing analysis ends as None, not as a warning
        return {"value_bound": value_bound(clean)}
