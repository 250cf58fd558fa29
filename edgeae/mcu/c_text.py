"""Text helpers both C builds share (c_code.py: float and int8-weights; int8_c.py: full integer):
C literals that read back bit for bit, template filling, and the per-window level code."""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeae.contract.errors import IntegrityError

# An export that removes each window's level (data/windows.py Preprocessing): its mean per feature, summed
# in double and rounded once to float, as the graph computes it; added back to the reconstruction.
LEVEL_CODE = """    for (f = 0; f < EDGEAE_FEATURES; f++) {
        double sum = 0.0;
        for (t = 0; t < EDGEAE_TIMESTEPS; t++)
            sum += window[t * EDGEAE_FEATURES + f];
        work->level[f] = (float)(sum / EDGEAE_TIMESTEPS);
    }"""


def floats(values: np.ndarray) -> str:
    """float32 values as C literals that read back bit for bit (shortest round-trip form)."""
    flat = np.asarray(values, np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise IntegrityError("a weight or golden value is NaN or inf; refusing to write it as C")
    return ",".join(str(v) + "f" for v in flat)  # str of a numpy float32: its shortest round-trip form


def doubles(values: Any) -> str:
    return ",".join(repr(float(v)) for v in np.asarray(values, np.float64).reshape(-1))


def ints(values: Any) -> str:
    return ",".join(str(int(v)) for v in np.asarray(values).reshape(-1))


def fill(template: str, values: dict[str, Any]) -> str:
    """`template` with each @NAME@ replaced; a placeholder left over is a bug, refused."""
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    if "@" in template:
        left = template[template.index("@"):][:40]
        raise AssertionError(f"unfilled C template placeholder near {left!r}")
    return template


def scaling_arrays(pre: Any) -> str:
    """The offset/scale arrays of the input (where not the identity) and the score's scale."""
    score = f"static const double score_scale[EDGEAE_FEATURES] = {{{doubles(pre.scale)}}};"
    if is_identity(pre):
        return score
    return (f"static const float offset[EDGEAE_FEATURES] = {{{floats(np.array(pre.offset))}}};\n"
            f"static const float scale[EDGEAE_FEATURES] = {{{floats(np.array(pre.scale))}}};\n{score}")


def is_identity(pre: Any) -> bool:
    return all(o == 0 for o in pre.offset) and all(s == 1 for s in pre.scale)
