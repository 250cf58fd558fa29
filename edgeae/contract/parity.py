"""Numerical parity: compare ONNX outputs with a reference, and say plainly whether it held.

Errors are reported both absolute and relative to the reference output's value range: the
seed's finding is that absolute precision falls as the value range grows while precision
relative to the range does not, so both numbers are needed to judge a result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeae.contract.errors import IntegrityError, UsageError

# fp32 parity: an error passes within the larger of an absolute floor (in the model's own, scaled
# units) and a share of the reference output's value range. float32 rounding grows with the values
# and with the number of recurrent steps; a wrong graph (gate order, activation) misses by tenths of
# the range. See docs/explanation/parity.md for the measurements behind these two numbers.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


class MismatchError(IntegrityError, ValueError):
    """An output does not have its reference's shape: the file is not the model the reference came from."""


def check_tolerance(atol: float) -> float:
    """A tolerance must be a positive, finite number: anything else could never pass, or always would."""
    try:  # an int too large for a float is no tolerance either
        value = float(atol) if isinstance(atol, (int, float)) and not isinstance(atol, bool) else math.nan
    except OverflowError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"tolerance must be a positive number, got {atol!r}")
    return value


@dataclass(frozen=True)
class Tolerance:
    """A parity bound: max abs error, max error relative to the output's value range, or both; with
    both, an error passes within the larger of the two (an absolute floor under a relative bound)."""

    abs: float | None = None
    rel_range: float | None = None

    def __post_init__(self) -> None:
        if self.abs is None and self.rel_range is None:
            raise UsageError("a tolerance needs an absolute or a relative-to-range bound")
        for name in ("abs", "rel_range"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_tolerance(getattr(self, name)))

    @classmethod
    def from_manifest(cls, value: object, where: str) -> Tolerance:
        """The tolerance an export recorded, refused (exit 4, naming the field) unless it is one."""
        try:
            if isinstance(value, dict) and set(value) <= {"abs", "rel_range"}:
                return cls(**value)
        except UsageError:
            pass
        raise IntegrityError(f"manifest field {where} must be an object of abs and rel_range, each a positive "
                             f"number or null, not both null; got {value!r}")

    def describe(self) -> str:
        parts = ([f"max abs {self.abs:.0e}"] if self.abs is not None else []) + (
            [f"{self.rel_range:.0e} of range"] if self.rel_range is not None else [])
        return " or ".join(parts) + (", whichever is larger" if len(parts) == 2 else "")

    def to_dict(self) -> dict[str, float | None]:
        return {"abs": self.abs, "rel_range": self.rel_range}


def fp32_tolerance(atol: float | None = DEFAULT_ATOL, rtol: float | None = DEFAULT_RTOL) -> Tolerance:
    """The bound fp32 graphs are held to: `atol` (model units) or `rtol` of the output's range,
    whichever is larger; None leaves that bound out."""
    return Tolerance(atol, rtol)


def recorded_tolerance(parity: dict, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The fp32 tolerance an export's manifest `parity` section recorded, with `atol`/`rtol` (when
    given) in place of the recorded ones. An export from before the relative bound has none."""
    recorded = Tolerance.from_manifest({"abs": parity.get("tolerance_abs"), "rel_range": parity.get("tolerance_rel_range")},
                                       "parity.tolerance_abs/tolerance_rel_range")
    return Tolerance(recorded.abs if atol is None else atol, recorded.rel_range if rtol is None else rtol)


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
    tolerance_abs: float | None  # None: bounded relative to the range only
    max_abs_raw: float | None = None
    tolerance_rel_range: float | None = None  # fp16 and int8: a bound relative to the value range

    @property
    def within_abs(self) -> bool:
        return self.tolerance_abs is None or self.max_abs <= self.tolerance_abs

    @property
    def within_rel_range(self) -> bool:
        return self.tolerance_rel_range is None or self.max_rel_range <= self.tolerance_rel_range

    def __bool__(self) -> bool:
        if self.tolerance_abs is not None and self.tolerance_rel_range is not None:
            return self.max_abs <= self.tolerance_abs or self.max_rel_range <= self.tolerance_rel_range
        return self.within_abs and self.within_rel_range

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.tolerance_abs, self.tolerance_rel_range)

    def line(self) -> str:
        def bound(within: bool, tolerance: float | None) -> str:
            return "" if tolerance is None else f" {'<=' if within else '>'} {tolerance:.0e}"

        if self.tolerance_abs is not None and self.tolerance_rel_range is not None:
            return (f"{self.model} [{self.provider}] {self.dataset} (batch {self.batch}): max abs {self.max_abs:.2e} "
                    f"= {self.max_rel_range:.2e} of range, allowed {self.tolerance.describe()}; mean "
                    f"{self.mean_abs:.2e}  {'ok' if self else 'FAIL'}")
        return (f"{self.model} [{self.provider}] {self.dataset} (batch {self.batch}): max abs {self.max_abs:.2e}"
                f"{bound(self.within_abs, self.tolerance_abs)}, rel-to-range {self.max_rel_range:.2e}"
                f"{bound(self.within_rel_range, self.tolerance_rel_range)}, mean {self.mean_abs:.2e}  "
                f"{'ok' if self else 'FAIL'}")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(reference: np.ndarray, actual: np.ndarray, *, model: str, provider: str, dataset: str,
            tolerance: Tolerance = Tolerance(DEFAULT_ATOL), scale: np.ndarray | None = None,
            source: str | None = None) -> ParityResult:
    """Compare two outputs; with `scale`, errors are measured in the model's own units.

    Raw units can span thousands, where float32 alone cannot resolve 1e-5; the network
    computes in scaled units, so that is where an absolute tolerance means something.
    The raw-unit error is kept alongside (`max_abs_raw`). The result passes within both
    bounds of `tolerance`. An output of another shape than its reference cannot come from the
    reference's model: that is a MismatchError naming `source` (the file), not a figure.
    """
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        raise MismatchError(f"{source or model} gives shape {actual.shape}, the reference {reference.shape}: "
                            "not this export's model")
    raw_err = np.abs(reference - actual)
    max_abs_raw = None
    if scale is not None:
        scale = np.abs(np.asarray(scale, dtype=np.float64))
        max_abs_raw = float(raw_err.max()) if raw_err.size else 0.0
        reference, actual = reference * scale, actual * scale
        raw_err = raw_err * scale
    err = raw_err.ravel()
    if err.size == 0:
        raise MismatchError(f"{model} [{provider}] {dataset}: empty output and reference, nothing to compare")
    value_range = float(reference.max() - reference.min())
    # A constant reference (e.g. an all-zero relu embedding) has no range: fall back to its magnitude.
    denominator = value_range if value_range > 0 else max(float(np.abs(reference).max()), 1.0)
    max_abs = float(err.max()) if np.isfinite(err).all() else float("inf")
    return ParityResult(
        model=model, provider=provider, dataset=dataset, batch=int(reference.shape[0]),
        max_abs=max_abs, max_rel_range=max_abs / denominator, mean_abs=float(err.mean()),
        p50_abs=float(np.percentile(err, 50)), p99_abs=float(np.percentile(err, 99)),
        value_range=value_range, tolerance_abs=tolerance.abs, max_abs_raw=max_abs_raw,
        tolerance_rel_range=tolerance.rel_range,
    )


def _worst(results: tuple[ParityResult, ...]) -> dict[str, dict]:
    """Worst case per model and provider over the input sets."""
    out: dict[str, dict] = {}
    for r in results:
        key = f"{r.model}/{r.provider}"
        cur = out.setdefault(key, {"max_abs": 0.0, "max_rel_range": 0.0, "mean_abs": 0.0, "tolerance_abs": r.tolerance_abs,
                                   **({"tolerance_rel_range": r.tolerance_rel_range}
                                      if r.tolerance_rel_range is not None else {}),
                                   "passed": True, "comparisons": 0})
        cur["max_abs"] = max(cur["max_abs"], r.max_abs)
        cur["max_rel_range"] = max(cur["max_rel_range"], r.max_rel_range)
        cur["mean_abs"] = max(cur["mean_abs"], r.mean_abs)
        cur["passed"] = cur["passed"] and r.passed
        cur["comparisons"] += 1
    return out


@dataclass(frozen=True)
class ParityReport:
    """Every comparison of a verify run; true only if all of them passed.

    `results` are the default fp32 graphs and the batch graphs the runtime routes to, held to
    one absolute tolerance; `variants` every other published file (plain, fp16, int8, ORT
    format), each held to the tolerance its export recorded for it.
    """

    results: tuple[ParityResult, ...]
    encoder_matches_autoencoder: ParityResult | None = None
    placement: dict = field(default_factory=dict)
    variants: tuple[ParityResult, ...] = ()
    detectors: tuple[ParityResult, ...] = ()  # the detector graphs' reconstructions against Keras
    disagreements: tuple[str, ...] = ()  # detector graphs whose score or flag differ from the runtime's

    def _all(self) -> list[ParityResult]:
        extra = [self.encoder_matches_autoencoder] if self.encoder_matches_autoencoder is not None else []
        return [*self.results, *extra, *self.variants, *self.detectors]

    def __bool__(self) -> bool:
        return bool(self.results) and all(self._all()) and not self.disagreements

    @property
    def passed(self) -> bool:
        return bool(self)

    def failures(self) -> list[str]:
        return [r.line() for r in self._all() if not r] + list(self.disagreements)

    def summary(self) -> dict[str, dict]:
        """Worst case per default graph and provider, the figures a manifest keeps."""
        return _worst(self.results)

    def variant_summary(self) -> dict[str, dict]:
        """Worst case per variant and provider."""
        return _worst(self.variants)

    def variant_lines(self, detectors: bool = False) -> list[str]:
        """One terminal line per variant (or detector graph) and provider: its worst figures against its own tolerance."""
        lines = []
        for key, s in _worst(self.detectors if detectors else self.variants).items():
            allowed = Tolerance(s["tolerance_abs"], s.get("tolerance_rel_range")).describe()
            lines.append(f"  {key}: max abs {s['max_abs']:.2e}, {s['max_rel_range']:.2e} of range (allowed {allowed}) "
                         f"over {s['comparisons']} input sets  {'ok' if s['passed'] else 'FAIL'}")
        return lines

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
            "encoder_matches_autoencoder": (self.encoder_matches_autoencoder.to_dict()
                                            if self.encoder_matches_autoencoder is not None else None),
            "placement": self.placement,
            "variant_summary": self.variant_summary(),
            "variants": [r.to_dict() for r in self.variants],
            "detectors": [r.to_dict() for r in self.detectors],
            "disagreements": list(self.disagreements),
        }

    def lines(self) -> list[str]:
        """Every comparison, one line each."""
        return [r.line() for r in self._all()]

    def summary_lines(self) -> list[str]:
        """The worst case per model and provider, the encoder check, every variant against its own
        tolerance and where the nodes ran: what a terminal shows after a parity run."""
        lines = ["parity " + ("passed" if self else "FAILED") + ":"]
        for key, s in self.summary().items():
            allowed = Tolerance(s["tolerance_abs"], s.get("tolerance_rel_range")).describe()
            lines.append(f"  {key}: max abs {s['max_abs']:.2e}, rel-to-range {s['max_rel_range']:.2e} (allowed "
                         f"{allowed}), mean abs {s['mean_abs']:.2e} over {s['comparisons']} input sets  "
                         f"{'ok' if s['passed'] else 'FAIL'}")
        if self.encoder_matches_autoencoder is not None:
            lines.append(f"  encoder == autoencoder's internal encoding: max abs {self.encoder_matches_autoencoder.max_abs:.2e}")
        variants = self.variant_lines()
        if variants:
            lines += ["  variants, each against the tolerance its export recorded:", *("  " + v for v in variants)]
        detectors = self.variant_lines(detectors=True)
        if detectors:
            lines += ["  detector graphs (score and flag also against the runtime's own):", *("  " + v for v in detectors)]
        lines += [f"  DISAGREES: {line}" for line in self.disagreements]
        for key, counts in self.placement.items():
            lines.append(f"  nodes of {key}: " + ", ".join(f"{n} on {p}" for p, n in counts.items()))
        return lines
