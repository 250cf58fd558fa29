"""Every input checked before onnxruntime sees it: real numbers, the window's shape, finite in float32.

Each way a caller can get an input wrong fails here with a one-line error naming what was
expected and what came, never deep inside onnxruntime. Scoring takes windows with missing values
(NaN, windows_and_gaps) and runs the model on the complete ones only: no NaN reaches onnxruntime.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeae.contract.checks import is_whole
from edgeae.contract.errors import DataError, ShapeError, UsageError


def all_finite(array: np.ndarray) -> bool:
    """Whether every value is finite: one sum of squares (a BLAS call, 0.5 µs for a window) is
    finite exactly when every value is, barring squares past float32's range; only a sum that
    is not pays for the exact element-wise check."""
    return math.isfinite(np.vdot(array, array)) or bool(np.isfinite(array).all())


def real_array(x: Any, expected: str) -> np.ndarray:
    """`x` as a numpy array of real numbers (any shape), or the one-line error that says why not:
    text, a dict, None, masked values, ragged or non-numeric input, booleans or complex numbers."""
    if isinstance(x, (str, bytes, dict, set)) or x is None:
        raise DataError(f"expected {expected}, got {type(x).__name__}")
    if np.ma.isMaskedArray(x) and np.ma.getmaskarray(x).any():
        raise DataError("input has masked (missing) values")
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"expected {expected}; could not read one: {exc}") from None
    if array.dtype == object:
        raise ShapeError(f"expected {expected}; could not read one: ragged or non-numeric input")
    if array.dtype.kind not in "iuf":
        raise DataError(f"expected real numbers, got dtype {array.dtype}")
    return array


def as_windows(x: Any, timesteps: int, features: int) -> tuple[np.ndarray, bool]:
    """Check raw input and return (float32 C-contiguous (n, timesteps, features), was_single).

    Every way a caller can get this wrong ends here, with expected and actual named,
    before onnxruntime is called.
    """
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim in (2, 3) and x.shape[-2:] == (timesteps, features):
        # The common call, and the one a single window's latency pays for; what fails here
        # goes on to the checks below, which name the bad value.
        windows = np.ascontiguousarray(x if x.ndim == 3 else x[None])
        if all_finite(windows):
            return windows, x.ndim == 2
    return _checked_windows(x, timesteps, features, missing_ok=False)


def windows_and_gaps(x: Any, timesteps: int, features: int) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """as_windows, with NaN taken as a missing value rather than refused (infinity still is): the
    windows, was_single, and an (n,) bool mask of the windows holding a missing value (None when
    none does, the common case, found by as_windows' one sum)."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim in (2, 3) and x.shape[-2:] == (timesteps, features):
        windows = np.ascontiguousarray(x if x.ndim == 3 else x[None])
        if all_finite(windows):
            return windows, x.ndim == 2, None
    windows, single = _checked_windows(x, timesteps, features, missing_ok=True)
    gaps = np.isnan(windows).any(axis=(1, 2))
    return windows, single, gaps if gaps.any() else None


def _checked_windows(x: Any, timesteps: int, features: int, missing_ok: bool) -> tuple[np.ndarray, bool]:
    """as_windows' checks, one by one, naming what is wrong; NaN passes where `missing_ok`."""
    expected = f"(batch, {timesteps}, {features}) or ({timesteps}, {features})"
    array = real_array(x, f"a numeric array {expected}")
    if array.ndim not in (2, 3):
        raise ShapeError(f"expected {expected}, got {tuple(array.shape)}")
    single = array.ndim == 2
    if single:
        array = array[None]
    if array.shape[1:] != (timesteps, features):
        raise ShapeError(f"expected {expected}, got {tuple(array.shape[1 if single else 0:])}")
    if array.dtype == np.float32:  # the common case: no conversion can overflow
        converted = np.ascontiguousarray(array)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(converted)
    if missing_ok:
        bad &= ~np.isnan(converted)
    if bad.any():
        n, t, f = (int(i) for i in np.argwhere(bad)[0])
        original = array[n, t, f]
        reason = "does not fit in float32" if np.isfinite(original) else "is not finite"
        where = f"step {t}, feature {f}" if single else f"window {n}, step {t}, feature {f}"
        raise DataError(f"input value {original!r} at {where} {reason}")
    return converted, single


def check_chunk(chunk: Any) -> int:
    """A chunk size as a Python int: a numpy uint8 of 200 would wrap around in the chunk arithmetic."""
    if not is_whole(chunk, 1):
        raise UsageError(f"chunk size must be a whole number of at least 1, got {chunk!r}")
    return int(chunk)


def shape_text(shape: Sequence[Any]) -> str:
    """A declared shape as people write it: (batch, 10, 5), an unknown dimension as ?."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
