"""Summaries a person reads: what `score` found (windows, flagged, the worst ones and the features
behind them) and what an export published and did not, and why.

The score summary is built chunk by chunk as score streams its input, holding only counts and the
few worst windows, so it costs no memory whatever the input's length.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeae.contract.parity import Tolerance
from edgeae.contract.variants import VARIANTS
from edgeae.exporter.sections import folder_variants
from edgeae.contract.manifest import read_manifest
from edgeae.contract.records import thawed

WORST = 5  # windows listed
DRIVERS = 3  # features named per window


def _filled(values: Any) -> np.ndarray:
    """A payload column as float64, a masked entry (a window not scored) NaN."""
    return np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)


class ScoreSummary:
    """score's result for a person: how many windows, how many flagged, the WORST highest-scoring
    windows with where they start and the features that make up most of their score. Windows of a
    series that overlap one listed (starting fewer than `timesteps` rows apart) are the same event
    seen again: only the highest of them is listed."""

    def __init__(self, features: tuple[str, ...], threshold: float | None, source: str, timesteps: int) -> None:
        self.features, self.threshold, self.source, self.timesteps = tuple(features), threshold, source, timesteps
        self.windows = self.flagged = self.missing = 0
        self.worst: list[dict[str, Any]] = []  # highest score first, at most WORST, none overlapping another

    def add(self, payload: dict[str, np.ndarray]) -> None:
        """One chunk of score's columns (run._score_payload), in window order."""
        scores = _filled(payload["score"])
        first, count = self.windows, len(scores)
        self.windows += count
        self.missing += int(np.asarray(payload["missing"]).sum())
        flags = np.ma.filled(np.ma.asarray(payload["anomaly"]), 0).astype(bool) if "anomaly" in payload else None
        if flags is not None:
            self.flagged += int(flags.sum())
        scored = np.flatnonzero(~np.isnan(scores))
        for i in scored[np.argsort(-scores[scored], kind="stable")]:
            if len(self.worst) == WORST and scores[i] <= self.worst[-1]["score"]:
                break  # nothing further down this chunk can be listed
            start = int(payload["window_start"][i]) if "window_start" in payload else None
            if start is not None:
                overlap = [w for w in self.worst if abs(w["start"] - start) < self.timesteps]
                if any(w["score"] >= scores[i] for w in overlap):
                    continue
                self.worst = [w for w in self.worst if w not in overlap]
            parts = {name: float(_filled(payload[f"score_{name}"])[i]) for name in self.features}
            self.worst.append({
                "window": first + int(i), "score": float(scores[i]), "start": start,
                "time": str(payload["start_time"][i]) if "start_time" in payload else None,
                "flagged": bool(flags[i]) if flags is not None else None, "parts": parts})
            self.worst = sorted(self.worst, key=lambda w: (-w["score"], w["window"]))[:WORST]

    def _where(self, w: dict[str, Any]) -> str:
        if w["time"] is not None:
            return f"{w['time']} (window_start {w['start']})"
        if w["start"] is not None:
            return f"window_start {w['start']}"
        return f"window {w['window']}"

    def _drivers(self, w: dict[str, Any]) -> str:
        total = sum(v for v in w["parts"].values() if v > 0)
        if not total:
            return "no reconstruction error"
        ranked = sorted(w["parts"].items(), key=lambda item: -item[1])[:DRIVERS]
        return ", ".join(f"{name} {100 * v / total:.0f}%" for k, (name, v) in enumerate(ranked)
                         if k == 0 or v >= 0.005 * total)

    def show(self, output: Path | None) -> None:
        """The summary on stdout; not at all where stdout is closed and the table went to `output`."""
        if sys.stdout is not None:
            for line in self.lines(output):
                click.echo(line)

    def lines(self, output: Path | None) -> list[str]:
        scored = self.windows - self.missing
        not_scored = f"; {self.missing} not scored (missing values)" if self.missing else ""
        if self.threshold is None:
            verdict = "no anomaly threshold (scores are in the model's units), nothing flagged"
        else:
            share = f" ({100 * self.flagged / scored:.1f}%)" if scored else ""
            verdict = f"{self.flagged} flagged{share} above the threshold {self.threshold:.4g}"
        out = [f"scored {scored} of {self.windows} windows of {self.source}: {verdict}{not_scored}"]
        if self.worst:
            out.append(f"highest-scoring window{'s' if len(self.worst) > 1 else ''} (the highest of any that overlap; "
                       "the features that make up most of the score):")
            width = max(len(self._where(w)) for w in self.worst)
            for w in self.worst:
                times = f" ({w['score'] / self.threshold:.1f}x threshold)" if self.threshold else ""
                flag = "  FLAGGED" if w["flagged"] else ""
                out.append(f"  {self._where(w):<{width}}  score {w['score']:.4g}{times}{flag}  {self._drivers(w)}")
        if output is None:
            out.append("every window's score and score_<feature> columns: --output scores.csv (or --json)")
        return out


class NoTable:
    """Where score's full table goes when no one asked for it (no --output, no --json): nowhere;
    the summary alone is printed. ResultStream's interface."""

    def __enter__(self) -> NoTable:
        return self

    def __exit__(self, *failure: Any) -> None:
        pass

    def add(self, payload: dict[str, np.ndarray]) -> None:
        pass

    def drop(self, key: str) -> None:
        pass

    def close(self, info: dict[str, Any], dtypes: dict[str, str] | None = None) -> None:
        pass


def _bound_use(entry: dict[str, Any], where: str) -> float | None:
    """The share of its tolerance a variant's largest error uses (1.0: at the bound)."""
    p, tol = entry["parity"], Tolerance.from_manifest(entry.get("tolerance"), where)
    shares = [p["max_abs"] / tol.abs if tol.abs else None, p["max_rel_range"] / tol.rel_range if tol.rel_range else None]
    shares = [s for s in shares if s is not None]
    return min(shares) if shares else None


def export_summary_lines(folder: Path) -> list[str]:
    """One block at the end of an export: which variants were published (with the share of its error
    bound each uses), which were not and why, and which did not apply to the model."""
    variants = folder_variants(folder)
    skipped = thawed(read_manifest(Path(folder)).skipped)
    published: dict[str, list[str]] = {}
    refused: list[str] = []
    for role, by_name in variants.items():
        for name in (n for n in VARIANTS if n in by_name):
            entry = by_name[name]
            if entry["published"]:
                use = _bound_use(entry, f"variants.{role}.{name}.tolerance")
                published.setdefault(role, []).append(name if use is None else f"{name} ({100 * use:.0f}%)")
            else:
                why = "; ".join(entry["parity"].get("failures", [])[:2]) or "outside its tolerance"
                refused.append(f"  NOT published  {role}/{name}: {why}")
    count = sum(map(len, published.values()))
    not_built = [f"{role}/{name}" for role, by_name in skipped.items() for name in by_name]
    head = (f"summary: {count} variant{'s' if count != 1 else ''} published, {len(refused)} not published"
            + (f", {len(not_built)} not built" if not_built else ""))
    lines = [head, *(f"  published      {role}: {', '.join(names)}" for role, names in published.items())]
    if published:
        lines.append("                 (the share of its error bound against Keras each one uses)")
    lines += refused
    if not_built:
        lines.append(f"  not built      {', '.join(not_built)}: they do not apply to this model (reasons above)")
    return lines
