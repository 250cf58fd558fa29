"""The manifest on disk: read, unsealed and schema-checked into records (records.py); written and sealed.

The files' hashes protect the models; the seal (a checksum of the manifest's own canonical JSON)
protects what the manifest tells the runtime. This module and schema.py are the only code that
touches a manifest's raw JSON: readers get records, writers hand `write_manifest` a plain body.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edgeae.contract.errors import IntegrityError, UsageError
from edgeae.contract.files import (
    MANIFEST_FORMAT, MANIFEST_VERSION, atomic_write_json, finite_json, folder_lock, member_path, read_json, staged_copy,
    sha256_file,
)
from edgeae.contract.layout import MANIFEST_FILE
from edgeae.contract.records import FileEntry, Manifest
from edgeae.contract.schema import check_manifest_schema
from edgeae.contract.signing import after_reseal, check_sign_key


def file_entry(path: Path, role: str) -> dict:
    """A manifest `files` entry for a file just written: its sha256, size and role."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "role": role}


def _manifest_checksum(body: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True,
                           separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write the manifest (last, atomically), sealed with a checksum of its own content.

    The files' hashes protect the models; the seal protects what the manifest itself
    tells the runtime (preprocessing, threshold), so an edited manifest is refused too.
    """
    body = finite_json({"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
                    **{k: v for k, v in manifest.items() if k not in ("format", "format_version", "checksum")}})
    body["checksum"] = _manifest_checksum(body)
    path = Path(folder) / MANIFEST_FILE
    atomic_write_json(path, body)
    return path


def read_manifest(folder: Path) -> Manifest:
    """Read, unseal and schema-check a folder's manifest: what it returns is safe to index."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"{folder} is a file; expected an edgeae folder (a training run or an export)")
    if not folder.is_dir():
        raise UsageError(f"folder not found: {folder}")
    path = member_path(folder, MANIFEST_FILE)
    if not path.exists():  # a folder edgeae never wrote (or the wrong one given): the user's mistake
        models = sorted(p.name for p in folder.iterdir() if p.suffix in (".keras", ".h5") and p.is_file())
        hint = (f"; to export your own model, give the file: edgeae export {folder / models[0]}" if models else
                " (give a training run or an export: edgeae train / edgeae export make them)")
        raise UsageError(f"{folder} is not an edgeae folder: it has no {MANIFEST_FILE}{hint}")
    manifest = read_json(path, "manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{path} is not an edgeae manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise IntegrityError(
            f"manifest format_version {manifest.get('format_version')!r} is not supported "
            f"(this edgeae reads {MANIFEST_VERSION})"
        )
    if "checksum" not in manifest:
        raise IntegrityError(f"{path} has no checksum; re-export it with this edgeae")
    if manifest.get("checksum") != _manifest_checksum(manifest):
        raise IntegrityError(f"{path} was modified after it was written (checksum mismatch)")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise IntegrityError("manifest lists no files")
    check_manifest_schema(manifest)
    return Manifest.of(manifest)


def read_export_manifest(folder: Path) -> Manifest:
    """The checked manifest of an export folder; a training folder has no ONNX graphs yet."""
    manifest = read_manifest(folder)
    if manifest.kind == "training":
        raise UsageError(f"{folder} is a training folder; export it first: edgeae export {folder}")
    if manifest.kind != "export":
        raise UsageError(f"{folder} is not an export folder (run edgeae export on it first)")
    return manifest


def verify_file(folder: Path, name: str, entry: FileEntry | Mapping[str, Any] | None) -> Path:
    """Check one listed file's size and sha256 before anything parses it (entry None: not listed)."""
    path = member_path(Path(folder), name)
    if isinstance(entry, Mapping):  # an entry a writer just made (file_entry), before any manifest holds it
        entry = FileEntry.of(entry) if isinstance(entry.get("sha256"), str) else None
    if not isinstance(entry, FileEntry):
        raise IntegrityError(f"manifest entry for {name} has no sha256")
    if not path.is_file():
        raise IntegrityError(f"{name} is listed in the manifest but missing from {folder}")
    size = path.stat().st_size
    if entry.bytes is not None and size != entry.bytes:
        raise IntegrityError(f"{name}: size {size} bytes, manifest says {entry.bytes} (truncated or replaced?)")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise IntegrityError(f"{name}: sha256 {actual[:12]}… does not match the manifest's {entry.sha256[:12]}… (tampered or corrupt)")
    return path


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check every listed file (verify_file): a whole export, before serving or verifying it."""
    for name, entry in manifest.files.items():
        verify_file(folder, name, entry)


class Amendment:
    """A published export being added to (amend_export): its records to read, and the changes to seal in."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.body = manifest.to_body()

    def add_file(self, path: Path, role: str) -> None:
        """List a file just written atomically into the export (a plot, a target report)."""
        self.body["files"][path.name] = file_entry(path, role)

    def set_routes(self, role: str, variant: str, routes: list[dict[str, Any]], chunk: int,
                   measured: dict[str, Any]) -> None:
        """Replace the batch routes and chunk of one variant, and the measurement that chose them."""
        set_routes(self.body, role, variant, routes, chunk, measured)


def set_routes(body: dict[str, Any], role: str, variant: str, routes: list[dict[str, Any]], chunk: int,
               measured: dict[str, Any]) -> None:
    """In a manifest body being written: one variant's batch routes, its chunk, and the measurement behind them."""
    body["variants"][role][variant].update(by_batch=routes, chunk=chunk, routing=measured)


@contextlib.contextmanager
def amend_export(folder: Path, write: bool = True, sign_key: Any = None) -> Iterator[Amendment]:
    """A published export to add to: locked, every file checked, its records given; the caller writes each
    new file atomically into the folder and lists it on the amendment, and the manifest is resealed last.
    With `write` False the export is only read (checked, unlocked, left as it is).

    Written, the amendment's `folder` is a staging copy of the export (files.staged_copy): new files go
    there and it replaces the export whole, manifest resealed, so a crash or Ctrl-C halfway through never
    leaves a file its manifest does not vouch for. A signed export is signed again with `sign_key` (a PEM
    private key file), or else loses the signature the new manifest breaks, with a notice (contract/signing.py)."""
    check_sign_key(sign_key if write else None)
    with folder_lock(folder) if write else contextlib.nullcontext():
        manifest = read_export_manifest(folder)
        verify_files(folder, manifest)
        if not write:
            yield Amendment(folder, manifest)
            return
        with staged_copy(folder) as stage:
            amendment = Amendment(stage, manifest)
            yield amendment
            write_manifest(stage, amendment.body)
            after_reseal(stage, sign_key, shown=folder)

