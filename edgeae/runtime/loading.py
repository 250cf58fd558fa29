"""Load what an export published: every file checked against its manifest first, a
reduced-precision variant run on the export's golden vectors before it is served.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeae.contract.errors import IntegrityError, ParityError, UsageError
from edgeae.contract.golden import CLEAR, read_golden, subset
from edgeae.contract.layout import ROLES
from edgeae.contract.manifest import read_export_manifest, verify_file, verify_files
from edgeae.contract.onnx_scan import check_external
from edgeae.contract.records import EMPTY, Manifest, thawed
from edgeae.contract.signing import check_signature, note_unsigned
from edgeae.contract.parity import ParityResult, Tolerance, compare, recorded_tolerance
from edgeae.contract.variants import DEFAULT_VARIANT, SELF_CHECKED
from edgeae.runtime.providers import check_threads, resolve_providers
from edgeae.runtime.routes import (
    batch_routes, file_of_variant, manifest_sizes, proven_finite, published_variants, routed_chunk,
)
from edgeae.runtime.scoring import EdgeModel, reconstruction_error
from edgeae.runtime.session import OnnxModel


class SelfCheckError(ParityError):
    """A graph gives other numbers on this device than its export verified: it is not served."""


def _reference_tolerance(manifest: Manifest, role: str, variant: str) -> Tolerance:
    """The bound a served graph of `variant` keeps from Keras: the variant's recorded one, fp32's
    (the manifest's parity section) for the full-precision graphs."""
    entry = manifest.variant(role, variant)
    if variant in SELF_CHECKED or (entry is not None and entry.recorded_tolerance is not None):
        return entry.tolerance if entry else Tolerance.from_manifest(None, f"variants.{role}.{variant}.tolerance")
    return recorded_tolerance(thawed(manifest.parity.details))


def _refuse(graph: OnnxModel, variant: str, result: ParityResult, tolerance: Tolerance, recorded: float | None) -> None:
    """Raise for a graph that misses Keras: a reduced-precision kernel of this device (SelfCheckError), or,
    for a full-precision graph, which holds on every CPU, a model that is not the one exported."""
    where = f"by {result.max_abs:.2e} ({result.max_rel_range:.2e} of range) on the golden {result.dataset!r} windows"
    if variant in SELF_CHECKED:
        raise SelfCheckError(
            f"self-check: {graph.name} misses Keras on this device {where}; allowed {tolerance.describe()}"
            + (f", {recorded:.2e} of range where it was exported" if recorded else "")
            + "; use another variant (fp32 holds on every CPU), or skip the check: self_check=False / "
            "--no-self-check")
    raise IntegrityError(f"self-check: {graph.name} misses the Keras outputs stored at export {where}; allowed "
                         f"{tolerance.describe()}: not the model this export verified")


def run_self_check(path: Path, manifest: Manifest, edge: EdgeModel, variant: str) -> None:
    """Run every served graph (routes included) on the export's golden windows before it is served: its
    outputs must keep their variant's bound from Keras's, and the scores the served threshold's flags
    where the export recorded them, so a resealed threshold or a swapped model is refused, not served.

    A reduced-precision variant runs every golden window (its bound is of each set's range); full
    precision only the few chosen at export (golden.subset), a few milliseconds on load.
    """
    golden = read_golden(path, manifest)
    chosen, flagged = subset(golden.inputs, manifest)
    runs = ({name: np.arange(len(x)) for name, x in golden.inputs.items()} if variant in SELF_CHECKED
            else {name: index for name, index in chosen.items() if len(index)})
    x = {name: golden.inputs[name][index] for name, index in runs.items()}
    batch = np.concatenate(list(x.values()))
    ends = np.cumsum([len(v) for v in x.values()])[:-1]
    scale = np.asarray((manifest.preprocessing or EMPTY).get("scale", 1.0), np.float32)
    for role, model in edge.models.items():
        tolerance = _reference_tolerance(manifest, role, variant)
        entry = manifest.variant(role, variant)
        for graph in (model, *(other for *_, other in model.routes)):
            outputs = dict(zip(x, np.split(graph.run_windows(batch), ends)))
            for name, out in outputs.items():
                result = compare(golden.reference(role)[name][runs[name]], out, model=role, provider="device",
                                 dataset=name, tolerance=tolerance, scale=scale if role == "autoencoder" else None,
                                 source=graph.name)
                if not result:
                    _refuse(graph, variant, result, tolerance, entry.exported_rel_range if entry else None)
            if role == "autoencoder" and edge.threshold is not None and flagged is not None:
                _check_flags(graph, edge, chosen, flagged, {name: (x[name], out) for name, out in outputs.items()},
                             runs)


def _check_flags(graph: OnnxModel, edge: EdgeModel, chosen: dict[str, np.ndarray], flagged: dict[str, np.ndarray],
                 results: dict[str, tuple[np.ndarray, np.ndarray]], ran: dict[str, np.ndarray]) -> None:
    """Refuse a threshold that flags other golden windows than the export's thresholds did: each chosen
    window was scored clear of them (golden.choose_subset), so only a moved threshold or model differs.
    A window this graph scores within the same margin of the threshold is left out: a reduced-precision
    kernel, within its bound, may put it on either side."""
    for name, (windows, reconstruction) in results.items():
        at = np.searchsorted(ran[name], chosen[name])  # the chosen windows among those run
        scores = reconstruction_error(windows[at], reconstruction[at], edge.scale)
        got = scores > edge.threshold
        clear = (scores > CLEAR * edge.threshold) | (scores * CLEAR < edge.threshold)
        if not np.array_equal(got[clear], flagged[name][clear]):
            raise IntegrityError(
                f"self-check: with threshold {edge.threshold:.6g}, {graph.name} flags {int(got.sum())} of the "
                f"{len(got)} golden {name!r} windows checked, where the export flagged {int(flagged[name].sum())}: "
                "the threshold or the model is not what this export verified")


def _load_folder(path: Path, manifest: Manifest, providers: str | Sequence[str], threads: int | None,
                 variant: str, check: bool = True) -> EdgeModel:
    """The models of an export folder as its (checked) manifest describes them. Every listed file is
    verified first, served or not (the Keras model, reports, golden and parity arrays): a folder whose
    manifest vouches for a file that is not what it was exported with is not the export."""
    verify_files(path, manifest)
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
        models[role] = OnnxModel(source, providers, threads, name=name, role=role, **sizes,
                                 external=check_external(path, source, manifest))
        for first, last, file in batch_routes(manifest, role, variant):
            route = verify_file(path, file, manifest.files.get(file))
            models[role].route(OnnxModel(route, providers, threads, name=file, role=role, **sizes,
                                         external=check_external(path, route, manifest)), first, last)
        models[role].chunk = routed_chunk(manifest, role, variant)
        models[role].set_proven_finite(proven_finite(manifest, role, variant))
    if not models and unpublished:
        raise next(iter(unpublished.values()))
    if not models and variant != DEFAULT_VARIANT:
        raise UsageError(f"no published {variant!r} variant; this export has: {', '.join(published_variants(manifest))}")
    if not models:
        raise IntegrityError(f"{path}: the manifest lists no autoencoder or encoder")
    edge = EdgeModel(models, manifest, path, variant, unpublished)
    if check:
        run_self_check(path, manifest, edge, variant)
    return edge


def load(path: str | Path, providers: str | Sequence[str] = "auto", threads: int | None = None,
         variant: str = DEFAULT_VARIANT, self_check: bool = True, trusted_key: str | Path | bytes | None = None
         ) -> EdgeModel:
    """Load an export folder (every file checked against the manifest first) or one .onnx/.ort file.

    `variant` picks among what the export published: "fp32" (the default clean graph),
    "fp16", "int8", "int8-dynamic", "ort" or "plain" (tf2onnx's own graph). fp32 hands some
    batch sizes to the equivalent graphs its manifest entry names (`by_batch`, measured at export),
    in runs of the `chunk` measured there; "fp32-b1" and "fp32-unrolled" load one of
    those alone. A reduced-precision variant (fp16, int8, int8-dynamic) is first run on the
    export's golden vectors and refused (SelfCheckError) where this device's kernels miss its
    recorded tolerance; `self_check=False` skips that.

    `trusted_key` (a PEM EC public key: its file or bytes; default $EDGEAE_TRUSTED_KEY) makes the export's
    signature required: an unsigned export, or one whose signature does not match its files or the key, is
    refused (SignatureError, exit 4) before any file is read; without a key an unsigned export loads, noted
    once per process (contract/signing.py; the key check needs `pip install 'edgeae[signing]'`).
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
    check_signature(path, trusted_key)  # with a key: the signature holds, or nothing is read
    if path.is_dir():
        manifest = read_export_manifest(path)
        try:
            edge = _load_folder(path, manifest, providers, threads, variant, self_check)
        except IntegrityError:
            # `export --force` swaps a new folder in at once: a file read after the old manifest
            # may be the new one. Only a manifest that changed meanwhile earns one more try.
            again = read_export_manifest(path)
            if again.checksum == manifest.checksum:
                raise
            edge = _load_folder(path, again, providers, threads, variant, self_check)
        note_unsigned(path, trusted_key)  # once it loaded: a bad export gets its one error line alone
        return edge
    if variant != DEFAULT_VARIANT:
        raise UsageError("variant applies to an export folder; a single file is loaded as it is")
    if not path.exists():
        raise UsageError(f"no such model file or folder: {path}")
    if path.suffix.lower() not in (".onnx", ".ort"):
        raise UsageError(f"{path.name}: expected an export folder, an .onnx or an .ort file")
    model = OnnxModel(path, providers, threads)
    return EdgeModel({model.role: model})
