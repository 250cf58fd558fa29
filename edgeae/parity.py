"""Numerical parity: compare ONNX outputs with a reference, and say plainly whether it held.

Errors are reported both absolute and relative to the reference output's value range: the
seed's finding is that absolute precision falls as the value range grows while precision
relative to the range does not, so both numbers are needed to judge a result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_ATOL = 1e-5


def check_tolerance(atol: float) -> float:
    """A tolerance must be a positive, finite number: anything else could never pass, or always would."""
    import math

    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol <= 0:
        from .errors import UsageError

        raise UsageError(f"tolerance must be a positive number, got {atol!r}")
    return float(atol)


@dataclass(frozen=True)
class ParityResult:
    """One comparison: a model, a provider, an input set."""

    model: str
    provider: str
    dataset: str
    batch: int
    max_abs: float
    max_rel_range: float
    mean_abs: float
    p50_abs: float
    p99_abs: float
    value_range: float
    tolerance_abs: float
    max_abs_raw: float | None = None

    def __bool__(self) -> bool:
        return self.max_abs <= self.tolerance_abs

    @property
    def passed(self) -> bool:
        return bool(self)

    def line(self) -> str:
        verdict = "ok" if self else "FAIL"
        return (f"{self.model} [{self.provider}] {self.dataset} (batch {self.batch}): max abs {self.max_abs:.2e} "
                f"{'<=' if self else '>'} {self.tolerance_abs:.0e}, rel-to-range {self.max_rel_range:.2e}, "
                f"mean {self.mean_abs:.2e}  {verdict}")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(reference: np.ndarray, actual: np.ndarray, *, model: str, provider: str, dataset: str,
            tolerance_abs: float = DEFAULT_ATOL, scale: np.ndarray | None = None) -> ParityResult:
    """Compare two outputs; with `scale`, errors are measured in the model's own units.

    Raw units can span thousands, where float32 alone cannot resolve 1e-5; the network
    computes in scaled units, so that is where an absolute tolerance means something.
    The raw-unit error is kept alongside (`max_abs_raw`).
    """
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        raise ValueError(f"{model} [{provider}] {dataset}: reference shape {reference.shape} != output shape {actual.shape}")
    raw_err = np.abs(reference - actual)
    max_abs_raw = None
    if scale is not None:
        scale = np.abs(np.asarray(scale, dtype=np.float64))
        max_abs_raw = float(raw_err.max()) if raw_err.size else 0.0
        reference, actual = reference * scale, actual * scale
        raw_err = raw_err * scale
    err = raw_err.ravel()
    if err.size == 0:
        raise ValueError(f"{model} [{provider}] {dataset}: nothing to compare")
    value_range = float(reference.max() - reference.min())
    # A constant reference (e.g. an all-zero relu embedding) has no range: fall back to its magnitude.
    denominator = value_range if value_range > 0 else max(float(np.abs(reference).max()), 1.0)
    max_abs = float(err.max()) if np.isfinite(err).all() else float("inf")
    return ParityResult(
        model=model, provider=provider, dataset=dataset, batch=int(reference.shape[0]),
        max_abs=max_abs, max_rel_range=max_abs / denominator, mean_abs=float(err.mean()),
        p50_abs=float(np.percentile(err, 50)), p99_abs=float(np.percentile(err, 99)),
        value_range=value_range, tolerance_abs=float(tolerance_abs), max_abs_raw=max_abs_raw,
    )


@dataclass(frozen=True)
class ParityReport:
    """Every comparison of a verify run; true only if all of them passed."""

    results: tuple[ParityResult, ...]
    encoder_matches_autoencoder: ParityResult | None = None
    placement: dict = field(default_factory=dict)

    def _all(self) -> list[ParityResult]:
        extra = [self.encoder_matches_autoencoder] if self.encoder_matches_autoencoder is not None else []
        return [*self.results, *extra]

    def __bool__(self) -> bool:
        return bool(self.results) and all(self._all())

    @property
    def passed(self) -> bool:
        return bool(self)

    def failures(self) -> list[str]:
        return [r.line() for r in self._all() if not r]

    def summary(self) -> dict[str, dict]:
        """Worst case per model and provider, the figures a manifest keeps."""
        out: dict[str, dict] = {}
        for r in self.results:
            key = f"{r.model}/{r.provider}"
            cur = out.setdefault(key, {"max_abs": 0.0, "max_rel_range": 0.0, "mean_abs": 0.0, "tolerance_abs": r.tolerance_abs,
                                       "passed": True, "comparisons": 0})
            cur["max_abs"] = max(cur["max_abs"], r.max_abs)
            cur["max_rel_range"] = max(cur["max_rel_range"], r.max_rel_range)
            cur["mean_abs"] = max(cur["mean_abs"], r.mean_abs)
            cur["passed"] = cur["passed"] and r.passed
            cur["comparisons"] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
            "encoder_matches_autoencoder": (self.encoder_matches_autoencoder.to_dict()
                                            if self.encoder_matches_autoencoder is not None else None),
            "placement": self.placement,
        }

    def lines(self) -> list[str]:
        return [r.line() for r in self._all()]
