"""One graph rewrite or conversion per module, each made from the clean fp32 graph by `build(job)`."""
from __future__ import annotations

from collections.abc import Callable

from edgeae.conversion.graphs import batch1
from edgeae.conversion.graphs import fp16
from edgeae.conversion.graphs import int8
from edgeae.conversion.graphs import int8_dynamic
from edgeae.conversion.graphs import ort_format
from edgeae.conversion.graphs import portable
from edgeae.conversion.graphs import unrolled
from edgeae.conversion.graphs.common import Built, Job

# The builder of each variant that a builder makes (variants.SPECS, `built`): the only place a variant's
# name meets its code, so the table itself stays importable without onnx.
BUILDERS: dict[str, Callable[[Job], Built | None]] = {
    "fp32-b1": batch1.build,
    "fp32-unrolled": unrolled.build,
    "portable": portable.build,
    "fp16": fp16.build,
    "int8": int8.build,
    "int8-dynamic": int8_dynamic.build,
    "ort": ort_format.build,
}
