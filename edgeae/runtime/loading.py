"""Load what an export published: every file checked against its manifest first, a
reduced-precision variant run on the export's golden vectors before it is served.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeae.contract.errors import IntegrityError, ParityError, UsageError
from edgeae.contract.golden import read_golden
from edgeae.contract.layout import ROLES
from edgeae.contract.manifest import read_export_manifest, verify_file
from edgeae.contract.records import EMPTY, Manifest
from edgeae.contract.parity import Tolerance, compare
from edgeae.contract.variants import DEFAULT_VARIANT, SELF_CHECKED
from edgeae.runtime.providers import check_threads, resolve_providers
from edgeae.runtime.routes import (
    batch_routes, file_of_variant, manifest_sizes, proven_finite, published_variants, routed_chunk,
)
from edgeae.runtime.scoring import EdgeModel
from edgeae.runtime.session import OnnxModel


class SelfCheckError(ParityError):
    """A graph gives other numbers on this device than its export verified: it is not served."""


def run_self_check(path: Path, manifest: Manifest, models: dict[str, OnnxModel], variant: str) -> None:
    """Run each loaded graph of a reduced-precision variant on the export's golden vectors and refuse
    it, naming the error and the recorded tolerance, when this device misses that tolerance."""
    if variant not in SELF_CHECKED:
        return
    golden = read_golden(path, manifest)
    scale = np.asarray((manifest.preprocessing or EMPTY).get("scale", 1.0), np.float32)
    for role in models:
        entry = manifest.variant(role, variant)
        tolerance = entry.tolerance if entry else Tolerance.from_manifest(None, f"variants.{role}.{variant}.tolerance")
        results = [compare(golden.reference(role)[dataset], models[role].run_windows(x), model=role, provider="device",
                           dataset=dataset, tolerance=tolerance, scale=scale if role == "autoencoder" else None,
                           source=models[role].name)
                   for dataset, x in golden.inputs.items()]
        failed = [r for r in results if not r]
        if failed:
            worst = max(failed, key=lambda r: r.max_rel_range)
            recorded = entry.exported_rel_range
            raise SelfCheckError(
                f"self-check: {models[role].name} misses Keras on this device by {worst.max_abs:.2e} "
                f"({worst.max_rel_range:.2e} of range) on the golden {worst.dataset!r} windows; allowed "
                f"{tolerance.describe()}" + (f", {recorded:.2e} of range where it was exported" if recorded else "")
                + "; use another variant (fp32 holds on every CPU), or skip the check: self_check=False / "
                "--no-self-check")


def _load_folder(path: Path, manifest: Manifest, providers: str | Sequence[str], threads: int | None,
                 variant: str, check: bool = True) -> EdgeModel:
    """The models of an export folder as its (checked) manifest describes them, each file verified."""
    models, unpublished = {}, {}
    for role in ROLES:
        try:
            name = file_of_variant(manifest, role, variant)
        except UsageError as exc:  # the other role's file of this variant may still be used
            unpublished[role] = exc
            continue
        if not name:
            continue
        source = verify_file(path, name, manifest.files.get(name))  # before the sizes: a bad entry is named first
        sizes = manifest_sizes(manifest)
        models[role] = OnnxModel(source, providers, threads, name=name, role=role, **sizes)
        for first, last, file in batch_routes(manifest, role, variant):
            models[role].route(OnnxModel(verify_file(path, file, manifest.files.get(file)), providers, threads,
                                         name=file, role=role, **sizes), first, last)
        models[role].chunk = routed_chunk(manifest, role, variant)
        models[role].set_proven_finite(proven_finite(manifest, role, variant))
    if not models and unpublished:
        raise next(iter(unpublished.values()))
    if not models and variant != DEFAULT_VARIANT:
        raise UsageError(f"no published {variant!r} variant; this export has: {', '.join(published_variants(manifest))}")
    if not models:
        raise IntegrityError(f"{path}: the manifest lists no autoencoder or encoder")
    if check:
        run_self_check(path, manifest, models, variant)
    return EdgeModel(models, manifest, path, variant, unpublished)


def load(path: str | Path, providers: str | Sequence[str] = "auto", threads: int | None = None,
         variant: str = DEFAULT_VARIANT, self_check: bool = True) -> EdgeModel:
    """Load an export folder (every file checked against the manifest first) or one .onnx/.ort file.

    `variant` picks among what the export published: "fp32" (the default clean graph),
    "fp16", "int8", "int8-dynamic", "ort" or "plain" (tf2onnx's own graph). fp32 hands some
    batch sizes to the equivalent graphs its manifest entry names (`by_batch`, measured at export),
    in runs of the `chunk` measured there; "fp32-b1" and "fp32-unrolled" load one of
    those alone. A reduced-precision variant (fp16, int8, int8-dynamic) is first run on the
    export's golden vectors and refused (SelfCheckError) where this device's kernels miss its
    recorded tolerance; `self_check=False` skips that.
    """
    if not isinstance(path, (str, os.PathLike)) or path == "":
        raise UsageError(f"model path must be a folder or file name (str or os.PathLike), got {path!r}")
    if not isinstance(variant, str):
        raise UsageError(f"variant must be a name such as 'fp32' or 'int8', got {variant!r}")
    if not isinstance(self_check, bool):
        raise UsageError(f"self_check must be True or False, got {self_check!r}")
    resolve_providers(providers)  # an impossible request fails before any file is read
    check_threads(threads)
    path = Path(path)
    if path.is_dir():
        manifest = read_export_manifest(path)
        try:
            return _load_folder(path, manifest, providers, threads, variant, self_check)
        except IntegrityError:
            # `export --force` swaps a new folder in at once: a file read after the old manifest
            # may be the new one. Only a manifest that changed meanwhile earns one more try.
            again = read_export_manifest(path)
            if again.checksum == manifest.checksum:
                raise
            return _load_folder(path, again, providers, threads, variant, self_check)
    if variant != DEFAULT_VARIANT:
        raise UsageError("variant applies to an export folder; a single file is loaded as it is")
    if not path.exists():
        raise UsageError(f"no such model file or folder: {path}")
    if path.suffix.lower() not in (".onnx", ".ort"):
        raise UsageError(f"{path.name}: expected an export folder, an .onnx or an .ort file")
    model = OnnxModel(path, providers, threads)
    return EdgeModel({model.role: model})
