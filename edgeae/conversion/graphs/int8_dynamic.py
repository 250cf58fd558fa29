"""Dynamic int8 (onnxruntime's DynamicQuantizeLSTM): the fast int8, whose numbers depend on the CPU."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeae.contract.files import atomic_write_bytes
from edgeae.contract.errors import UsageError, require
from edgeae.conversion.graphs.common import Built, Job, set_variant


def _not_preprocessing_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice to pre-process to the root logger; the clean graph needs none."""
    root = logging.getLogger()
    root.addFilter(_not_preprocessing_advice)
    try:
        yield
    finally:
        root.removeFilter(_not_preprocessing_advice)


INT8_DYNAMIC_WEIGHTS = ("per-tensor", "per-channel")  # tried in this order: the first within the tolerance is kept


def to_int8_dynamic(clean, path: Path, weights: str = "per-tensor") -> None:
    """Dynamic int8 quantization of the LSTMs (onnxruntime's DynamicQuantizeLSTM): the fast one.

    Weights are int8 with one scale per tensor or per output channel; activations are
    quantized on the fly, per tensor, so a window's result depends slightly on the other
    windows in its batch. Its numbers depend on the CPU's integer kernels: the seed
    autoencoder, per tensor, 5.3e-3 of range on AVX-512 VNNI but 7.8e-2 on AVX2 without
    VNNI (u8 x s8 pairs summed in saturating 16-bit lanes; per channel 0.22 there;
    reduce_range holds on both at 1.55e-2 of range, past the tolerance). Hence it is built
    only when asked for and proves itself on the golden vectors each time a device loads it.
    The Dense layer (under 1% of the weights) stays float32.
    """
    if weights not in INT8_DYNAMIC_WEIGHTS:
        raise UsageError(f"int8-dynamic weights are quantized {' or '.join(INT8_DYNAMIC_WEIGHTS)}, not {weights!r}")
    onnx = require("onnx", "train")
    quantization = require("onnxruntime.quantization", "train")  # it imports onnx

    with tempfile.TemporaryDirectory(prefix="edgeae-int8-") as tmp:
        out = Path(tmp) / path.name
        with _quiet_quantizer():
            quantization.quantize_dynamic(clean, out, op_types_to_quantize=["LSTM"],
                                          per_channel=weights == "per-channel",
                                          weight_type=quantization.QuantType.QInt8)
        proto = onnx.load(str(out))
    set_variant(proto, "int8-dynamic")
    proto.metadata_props.add(key="edgeae.int8_weights", value=weights)
    atomic_write_bytes(path, proto.SerializeToString())


def within_tolerance(clean, path: Path,
                                   parity_of: Callable[[Path], Any]) -> tuple[str, Any]:
    """Write the int8-dynamic file with the first weight quantization (INT8_DYNAMIC_WEIGHTS order)
    whose parity holds; the last one tried, and its failing parity, when none does."""
    for weights in INT8_DYNAMIC_WEIGHTS:
        to_int8_dynamic(clean, path, weights)
        parity = parity_of(path)
        if parity:
            break
    return weights, parity


def build(job: Job) -> Built | None:
    """The first weight quantization within the tolerance, or the last one tried and its failing parity."""
    onnx = require("onnx", "train")

    weights, parity = within_tolerance(job.clean, job.path, job.parity)
    return Built(onnx.load(str(job.path)), parity, weights)
