"""The manifest sections a build decides (files, models, parity, variants, targets, detector), and
the variants section read back from a published export for the terminal.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeae.contract import progress
from edgeae.contract.files import read_json
from edgeae.contract.golden import choose_subset
from edgeae.contract.layout import PARITY_REPORT_FILE, TARGETS_FILE
from edgeae.contract.manifest import read_manifest
from edgeae.contract.records import thawed
from edgeae.contract.parity import Tolerance
from edgeae.contract.variants import VARIANTS
from edgeae.detection.threshold import set_threshold, variant_thresholds
from edgeae.exporter.build import BuiltExport
from edgeae.exporter.detector import detector_graphs
from edgeae.exporter.variants import skipped_lines, variant_line
from edgeae.runtime.scoring import reconstruction_error
from edgeae.trainer.training import Training
from edgeae.verifier.target_report import target_lines


def manifest_sections(built: BuiltExport, fp32: Tolerance, providers: list[str], detector: dict[str, Any] | None,
                      stage: Path, training: Training) -> dict[str, Any]:
    """The manifest sections a build decides: files, models, parity, variants, targets, each
    variant's own anomaly threshold, and the detector graphs made with them."""
    section = built.variants.section()
    out = {
        "files": built.files, "models": built.models, "variants": section, "skipped": built.variants.skipped,
        "targets": TARGETS_FILE,
        "parity": {"passed": built.report.passed, "tolerance_abs": fp32.abs, "tolerance_rel_range": fp32.rel_range,
                   "providers": providers,
                   "summary": built.report.summary(),
                   "encoder_matches_autoencoder_max_abs": built.report.encoder_matches_autoencoder.max_abs,
                   "report": PARITY_REPORT_FILE},
    }
    if detector:
        with progress.stage("thresholds and detector graphs"):
            detector = {**detector, "variants": variant_thresholds(stage, section["autoencoder"], training,
                                                                   detector["quantile"])}
            if isinstance(detector.get("chosen"), dict):  # a user's threshold holds for every precision
                detector = set_threshold(detector, detector["threshold"], detector["chosen"]["source"])
            files, detector["graphs"] = detector_graphs(stage, built, detector, training, providers)
            detector["golden"] = _golden_windows(built, detector, training)
        out["files"] = {**built.files, **files}
        out["detector"] = detector
    return out


def _golden_windows(built: BuiltExport, detector: dict[str, Any], training: Training) -> dict[str, Any]:
    """The golden windows the runtime re-runs on load and which of them the thresholds flagged, chosen on
    Keras's scores (golden.choose_subset): the record that a threshold edited later contradicts."""
    scale = training.preprocessing.arrays()["scale"]
    scores = {name: reconstruction_error(x, built.references["autoencoder"][name], scale)
              for name, x in built.inputs.items()}
    return choose_subset(scores, [detector["threshold"], *(v["threshold"] for v in detector["variants"].values())])


def folder_variants(folder: Path) -> dict[str, Any]:
    """The manifest's variants section of a published export (empty for one made without them)."""
    return {role: {name: thawed(entry.details) for name, entry in by_name.items()}
            for role, by_name in read_manifest(Path(folder)).variants.items()}


def folder_lines(folder: Path, targets: bool = True) -> list[str]:
    """The variants (and, unless `targets` is False, the target report) of a published export."""
    manifest = read_manifest(Path(folder))
    lines = [variant_line(role, name, thawed(by_name[name].details)) for role, by_name in manifest.variants.items()
             for name in VARIANTS if name in by_name]
    if not lines:
        return []
    head = ["variants (parity against Keras on verify's inputs):", *lines, *skipped_lines(thawed(manifest.skipped))]
    if manifest.scores_note:
        head.append(f"note: {manifest.scores_note}")
    if not manifest.targets:
        return head
    if not targets:
        return [*head, f"target report (providers per node, mobile checks): {Path(folder) / manifest.targets}"
                       " (edgeae optimize prints it)"]
    return [*head, *target_lines(read_json(Path(folder) / manifest.targets, "target report"))]
