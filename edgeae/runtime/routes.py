"""The export manifest as the runtime reads it: which file holds each variant, which graph runs
which batch sizes, how many windows per call, and what the export proved about each graph.

Every function reads the manifest's typed records (contract/manifest.py), never its raw JSON.
`fixed_batch_routes` gives the fixed batch-routing rule (`by_batch`) the exporter writes (measure/routing.py
measures one instead); `batch_routes` reads the routes the manifest records, whichever wrote them.
"""
from __future__ import annotations

import math
from typing import Any

from edgeae.contract.errors import IntegrityError, UsageError
from edgeae.contract.records import Manifest
from edgeae.contract.variants import DEFAULT_VARIANT

DEFAULT_CHUNK = 256  # windows per session.run where the manifest measured no other (measure/routing.py)
FINITE_PROOF_LIMIT = 1e30  # float32 tops out at 3.4e38: a proven bound below this leaves 8 orders of magnitude


def published_variants(manifest: Manifest, role: str | None = None) -> list[str]:
    """The variants published for `role` (for any role when None); fp32 always is."""
    names = {entry.name for r, entry in manifest.all_variants() if role in (None, r) and entry.published}
    return sorted(names | {DEFAULT_VARIANT})


def file_of_variant(manifest: Manifest, role: str, variant: str) -> str | None:
    """The file holding `role` in `variant`; None where that variant is not made for the role
    (the batch graphs exist for the autoencoder only)."""
    if variant == DEFAULT_VARIANT:
        return manifest.model_file(role)
    entry = manifest.variant(role, variant)
    if entry is None:
        return None
    if not entry.published:
        raise UsageError(f"the {variant!r} variant of the {role} missed its tolerance and was not published; "
                         f"the {role} has: {', '.join(published_variants(manifest, role))}")
    return entry.file


def variant_of_file(manifest: Manifest, role: str, file: str) -> str | None:
    """The variant `file` holds for `role` (the inverse of file_of_variant); None if none names it."""
    for name, entry in manifest.variants_of(role).items():
        if entry.file == file:
            return name
    return DEFAULT_VARIANT if file == file_of_variant(manifest, role, DEFAULT_VARIANT) else None


def proven_finite(manifest: Manifest, role: str, variant: str | None) -> bool:
    """Whether the export's value bound (bounds.py) proves that `role` in `variant` cannot
    overflow: float32 graphs only, with the bound far below float32's largest value."""
    entry = manifest.variant(role, variant)
    precision = entry.precision if entry is not None and entry.precision is not None else (
        "fp32" if variant == DEFAULT_VARIANT else None)
    model = manifest.models.get(role)
    bound = model.value_bound if model is not None else None  # None or a number ≥ 0
    return precision == "fp32" and bound is not None and bound < FINITE_PROOF_LIMIT


def batch_label(first: int, last: int | None) -> str:
    """'batch 1', 'batches 2-31', 'batches 32+'."""
    if first == last:
        return f"batch {first}"
    return f"batches {first}+" if last is None else f"batches {first}-{last}"


def batch_routes(manifest: Manifest, role: str, variant: str) -> list[tuple[int, int | None, str]]:
    """(first, last, file) for each batch range the manifest gives `variant` to another graph
    (read_manifest has checked each range, and that the file is a graph of `role`)."""
    entry = manifest.variant(role, variant)
    if entry is None:
        return []
    return [(route.first, route.last, route.file) for route in entry.routes if route.file != entry.file]


def routed_chunk(manifest: Manifest, role: str, variant: str | None) -> int:
    """The windows per call the export measured for `variant` (measure/routing.py), else DEFAULT_CHUNK
    (read_manifest has checked it is a whole number from 1 to layout.MAX_CHUNK)."""
    entry = manifest.variant(role, variant)
    return (entry.chunk if entry is not None else None) or DEFAULT_CHUNK


def manifest_sizes(manifest: Manifest) -> dict[str, Any]:
    """The window and embedding width an export's manifest promises, as OnnxModel's `window` and
    `units`: every graph loaded from the folder must read and give exactly these."""
    window = manifest.window
    found = {"window.timesteps": window.timesteps, "window.features": window.features,
             "training.config.units": manifest.units}
    missing = [field for field, value in found.items() if value is None]  # read_manifest checked any present
    if missing:
        raise IntegrityError(f"manifest field {missing[0]} is missing")
    return {"window": (window.timesteps, window.features), "units": manifest.units}


def fixed_batch_routes(by_name: dict[str, dict[str, Any]], base: str,
                       graphs: tuple[tuple[str, int, int | None], ...]) -> list[dict[str, Any]]:
    """The manifest's `by_batch` by the fixed rule (measure/routing.py measures it instead): which file runs
    which batch sizes of `base`, its published batch graphs and its own file for every size they
    leave. Empty when none of them was published. batch_routes reads what is written."""
    taken = sorted((first, last, by_name[name]["file"]) for name, first, last in graphs
                   if (by_name.get(name) or {}).get("published"))
    if not taken or base not in by_name:
        return []
    routes, following = [], 1
    for first, last, file in taken:
        if first > following:
            routes.append({"batches": [following, first - 1], "file": by_name[base]["file"]})
        routes.append({"batches": [first, last], "file": file})
        following = math.inf if last is None else last + 1
    if following != math.inf:
        routes.append({"batches": [following, None], "file": by_name[base]["file"]})
    return routes
