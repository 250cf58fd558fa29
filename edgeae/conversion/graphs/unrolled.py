"""The unrolled graph: the clean autoencoder with its decoder written out, for many windows per run."""
from __future__ import annotations

import numpy as np

from edgeae.contract.errors import require
from edgeae.conversion.graphs.common import Built, Job, clean_autoencoder, decoder_steps, graph_from, step_activations, save


# Graphs a variant hands some batch sizes to, as (graph, first, last batch size; None: no limit). Measured
# int8 has neither a one-window nor an unrolled graph: quantized, the one-window rewrite measured no
# faster and would double the int8 files' size. Where the unrolled graph pays: variants.UNROLLED_FROM.


def unrolled_graph(clean, role: str):
    """The clean autoencoder with its decoder written out step by step: for batches of many windows.

    The fused decoder LSTM multiplies the same encoding by its input weights at every step
    (it cannot know its input repeats); here that projection is made once, one Gemm per gate,
    and each step is one Gemm per gate on the previous hidden state with the projection as
    its bias, which onnxruntime fuses with the gate's activation. That saves a third of the
    autoencoder's arithmetic, which pays from about 128 windows per run (UNROLLED_FROM), where
    the extra nodes cost less than the work saved. The encoder stays a fused LSTM: its input is narrow.
    The output comes out batch-major, so no Transpose is needed. Returns None for the encoder
    and for LSTM settings this writing does not cover (clip, input_forget, other activations).
    """
    if role != "autoencoder":
        return None
    c = clean_autoencoder(clean, role)  # first: it makes sure onnx is there
    onnx = require("onnx", "train")
    helper = onnx.helper

    acts = step_activations(c.decoder_attrs)
    if acts is None:
        return None
    by_name = c.nodes
    constants = {"axes/0": np.array([0], np.int64)}
    nodes = [*c.fixed_pre, by_name["encoder/time_major"], by_name["encoder/LSTM"],
             helper.make_node("Squeeze", ["encoder/h", "axes/0"], ["encoder/h2"], name="encoder/embedding")]
    decoder, weights = decoder_steps(c, "encoder/h2", acts)
    return graph_from(clean, nodes + decoder + c.fixed_post, {**constants, **weights}, "fp32-unrolled")


def build(job: Job) -> Built | None:
    return save(job, unrolled_graph(job.clean, job.role),
                "made for the autoencoder only, and for LSTM settings a written-out step covers (no clip, input_forget, other activations)")
