"""`edgeae sign`: sign an export that is already published (contract/signing.py makes and checks signatures)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeae.contract.files import as_path, folder_lock
from edgeae.contract.manifest import read_export_manifest, verify_files
from edgeae.contract.signing import check_private_key, sign_folder


def sign_export(folder: Any, key: Any) -> Path:
    """Sign a published export with the PEM private key file `key`, under its lock, its files checked against its
    manifest first (a folder that was tampered with is refused, not blessed). The signature replaces `model.sig`
    atomically: on any failure the old one, if any, stays."""
    folder = as_path(folder, "export folder")
    check_private_key(key)
    with folder_lock(folder):
        verify_files(folder, read_export_manifest(folder))
        return sign_folder(folder, key)
