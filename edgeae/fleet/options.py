"""What a fleet command is asked to do, checked once where it is built (the CLI, or a caller of
the API) and passed down whole, so that no function carries a command's every flag."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeae.contract.checks import check_threshold
from edgeae.contract.errors import UsageError
from edgeae.contract.variants import DEFAULT_VARIANT
from edgeae.fleet.missing import DEFAULT_MAX_GAP, DEFAULT_MISSING, check_missing_options

SEPARATOR_NAMES = {",": ",", ";": ";", "\t": "\t", "tab": "\t", "\\t": "\t"}  # what --sep accepts, and the separator


def _check_count(name: str, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise UsageError(f"{name} must be a whole number of at least 1, got {value!r}")


@dataclass(frozen=True)
class FleetOptions:
    """Which series, columns and windows of a source a run reads, which model it runs, and where."""

    by: str  # the column naming each series
    order: str  # the column of steps: whole numbers or timestamps
    columns: tuple[str, ...] | None = None  # features [default: the trained ones, else all but by/order/time]
    time: str | None = None  # a column whose value at each window's first row is kept (window_time)
    stride: int | None = None  # steps between windows [default: the manifest's; 1 for a sample]
    variant: str = DEFAULT_VARIANT
    threshold: float | None = None  # score: flag windows above this [default: the manifest's]
    storage_options: dict[str, Any] | None = None  # fsspec's keyword arguments for the source's file system
    scheduler: Any = None  # a Dask scheduler's address, or a Client kept open [default: a local cluster]
    workers: int | None = None  # processes of the local cluster [default: one per core]
    force: bool = False  # replace an existing output
    missing: str = DEFAULT_MISSING  # skip, refuse or interpolate missing values (fleet/missing.py)
    max_gap: int = DEFAULT_MAX_GAP  # interpolate: the longest run of missing rows filled
    sep: str | None = None  # a CSV source's separator: ',', ';' or tab [default: read from the header line]
    header_row: bool = True  # whether a CSV's first line names its columns (else they are "1", "2", ... by position)

    def __post_init__(self) -> None:
        if self.stride is not None:
            _check_count("stride", self.stride)
        check_missing_options(self.missing, self.max_gap)
        if not isinstance(self.header_row, bool):
            raise UsageError(f"header_row must be True or False, got {self.header_row!r}")
        if self.sep is not None:
            if self.sep not in SEPARATOR_NAMES:
                raise UsageError(f"sep must be ',', ';' or tab, got {self.sep!r}")
            object.__setattr__(self, "sep", SEPARATOR_NAMES[self.sep])
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))


@dataclass(frozen=True)
class SampleOptions:
    """How a training sample is drawn: windows of `timesteps`, `per_series` of each series (all of a
    series that has fewer) or a `share` of each series' windows, chosen by `seed` and the series id.
    Small and picklable: the workers get it as it is."""

    timesteps: int
    per_series: int | None = None
    share: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.per_series is None) == (self.share is None):
            raise UsageError("give either per_series (windows per series) or share (a fraction of each series' windows)")
        if self.per_series is not None:
            _check_count("per_series", self.per_series)
        if self.share is not None and not (isinstance(self.share, (int, float)) and 0 < self.share <= 1):
            raise UsageError(f"share must be a fraction in (0, 1], got {self.share!r}")
        _check_count("timesteps", self.timesteps)
