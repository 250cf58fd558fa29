"""Signed exports: a signature over every file of an export folder, made with a private key when it is
published and checked with the trusted public key where it is loaded.

The manifest's checksums only show a file changed by accident: anyone who can write the folder can
reseal it. The signature is the OpenSSF model-signing format (`pip install 'edgeae[signing]'`): a
Sigstore bundle (DSSE envelope, in-toto statement listing each file's sha256) in `model.sig`,
signed with an EC P-256 (or P-384/P-521) PEM key, no network and no Sigstore service involved; its
own `model_signing verify key` command checks an edgeae export. It covers every file in the folder,
the manifest included, and itself only (`model.sig` is never listed in the manifest).

model-signing and cryptography are imported only when a key is given: a device that loads without
a key needs numpy and onnxruntime alone.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from edgeae.contract.errors import MissingDependencyError, SignatureError, UsageError, install_hint, notice, require
from edgeae.contract.files import as_path, atomic_write_bytes
from edgeae.contract.layout import SIGNATURE_FILE

EXTRA = "signing"
TRUSTED_KEY_ENV = "EDGEAE_TRUSTED_KEY"
QUIET_ENV = "EDGEAE_QUIET_UNSIGNED"  # set (not 0): no note for an unsigned export, where that is known and meant
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # those model-signing's key signer accepts
MAX_KEY_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 16 * 1024 * 1024
_noted_unsigned: list[bool] = []  # the unsigned notice, once per process


# ---------------------------------------------------------------- keys


def _need(*modules: str) -> tuple[Any, ...]:
    """The signing extra's modules (imported on first use), or one line saying what to install (exit 7)."""
    try:
        return tuple(require(module, EXTRA) for module in modules)
    except MissingDependencyError as exc:
        cause = exc.__cause__ or exc
        raise MissingDependencyError(f"signed exports need model-signing and cryptography: {install_hint(EXTRA)} "
                                     f"({cause})") from cause


def _crypto() -> tuple[Any, Any]:
    """cryptography's serialization and EC modules."""
    return _need("cryptography.hazmat.primitives.serialization", "cryptography.hazmat.primitives.asymmetric.ec")


def _model_signing() -> tuple[Any, ...]:
    """model-signing's signing, verifying and hashing modules."""
    return _need("model_signing.signing", "model_signing.verifying", "model_signing.hashing")


def _key_text(key: Any, what: str) -> tuple[bytes, str]:
    """A PEM key's bytes, given as the bytes themselves or a file name, and how to name it in a message."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key), what
    path = as_path(key, what)
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise UsageError(f"{what} {path} is {path.stat().st_size} bytes, not a PEM key")
    return path.read_bytes(), f"{what} {path}"


def _check_curve(key: Any, ec: Any, shown: str) -> None:
    curve = getattr(getattr(key, "curve", None), "name", None)
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) or curve not in CURVES:
        kind = f"an EC {curve} key" if curve else f"a {type(key).__name__.lstrip('_')}"
        raise UsageError(f"{shown} is {kind}; signed exports use EC P-256 keys (P-384 and P-521 also work): "
                         "edgeae keygen PRIVATE.pem PUBLIC.pem makes a pair")


def public_key_pem(key: Any) -> bytes:
    """The trusted public key (PEM bytes or a PEM file), checked: an EC key of a curve model-signing accepts."""
    serialization, ec = _crypto()
    data, shown = _key_text(key, "trusted key")
    try:
        public = serialization.load_pem_public_key(data)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, UnsupportedAlgorithm: every one means "not a key"
        hint = "; that is a private key: give its public half" if b"PRIVATE KEY" in data else ""
        raise UsageError(f"{shown} is not a PEM public key{hint}") from None
    _check_curve(public, ec, shown)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_private_key(key: Any) -> Path:
    """The signing key's file, checked before any work: an unencrypted PEM EC private key."""
    serialization, ec = _crypto()
    data, shown = _key_text(as_path(key, "signing key"), "signing key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{shown} is encrypted; give an unencrypted key (keep it on the signing machine only)") from None
    except Exception:  # noqa: BLE001 - ValueError, UnsupportedAlgorithm: not a key
        hint = "; that is a public key: signing needs the private one" if b"PUBLIC KEY" in data else ""
        raise UsageError(f"{shown} is not a PEM private key{hint}") from None
    _check_curve(private, ec, shown)
    return Path(key)


def check_sign_key(key: Any) -> Path | None:
    """An export's signing key (None: unsigned), checked before minutes of work rather than after."""
    return None if key is None else check_private_key(key)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, whole or not at all: a temporary file beside it, linked into place
    (a link never replaces an existing file, even one that appeared meanwhile)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite a key (choose another name or move it away)") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def generate_keys(private_path: Any, public_path: Any) -> tuple[Path, Path]:
    """A new EC P-256 key pair as PEM files (the private one readable by its owner only); existing files are
    never overwritten: either both are written or neither."""
    serialization, ec = _crypto()
    private_path, public_path = as_path(private_path, "private key file"), as_path(public_path, "public key file")
    if private_path.absolute() == public_path.absolute():
        raise UsageError("the private and public key files must differ")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} exists; refusing to overwrite a key (choose another name or move it away)")
        if not path.parent.is_dir():
            raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    key = ec.generate_private_key(ec.SECP256R1())
    _write_new(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    try:
        _write_new(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    except BaseException:
        private_path.unlink()  # ours, written a moment ago: no half pair is left
        raise
    return private_path, public_path


# ---------------------------------------------------------------- signing


def sign_folder(folder: Path, key: Any) -> Path:
    """Sign every file of `folder` (the manifest included) with the PEM private key file `key`; the signature
    replaces `model.sig` atomically, so a failure keeps the old one. The caller holds the folder's lock or
    owns the folder (a staging folder)."""
    key = check_private_key(key)
    signing, _, hashing = _model_signing()
    folder = Path(folder)
    config = hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    with tempfile.TemporaryDirectory(prefix="edgeae-sign-") as tmp:  # made outside: the folder is being hashed
        made = Path(tmp) / SIGNATURE_FILE
        try:
            signing.Config().set_hashing_config(config).use_elliptic_key_signer(private_key=key).sign(folder, made)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot sign {folder}: {_first_line(exc)}") from None
        atomic_write_bytes(folder / SIGNATURE_FILE, made.read_bytes())
    return folder / SIGNATURE_FILE


def after_reseal(folder: Path, key: Any = None, signed_before: bool | None = None, shown: Path | None = None) -> None:
    """After a manifest was rewritten: sign the folder again with `key`, or else remove the signature the new
    manifest no longer matches, saying so in one line (`signed_before`: whether the export being replaced was
    signed, for a folder rebuilt in staging; `shown`: the export's name where `folder` is its staging copy)."""
    folder = Path(folder)
    signature = folder / SIGNATURE_FILE
    if key is not None:
        sign_folder(folder, key)
        return
    had = signature.exists() or signature.is_symlink()
    if had:
        signature.unlink()
    if had or signed_before:
        name = shown or folder
        notice(f"{name}: its signature was removed, since the manifest changed; sign it again: "
               f"edgeae sign {name} --key PRIVATE.pem")


# ---------------------------------------------------------------- verifying


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def _mismatch(exc: BaseException) -> str:
    """model-signing's reason, named by file and without its digests' bytes."""
    text = str(exc)
    changed = re.findall(r"Hash mismatch for '([^']+)'", text)
    parts = [f"changed since signing: {', '.join(changed)}"] if changed else []
    for label, pattern in (("added since signing", r"Extra files found in model '[^']*': ([^\"\]]+)"),
                           ("missing since signing", r"Missing files in model '[^']*': ([^\"\]]+)")):
        found = re.search(pattern, text)
        if found:
            parts.append(f"{label}: {found.group(1).strip(chr(39))}")
    if "Key mismatch" in text:
        parts.append("it was signed with another key than the trusted one")
    return "; ".join(parts) or _first_line(exc)


def trusted_key_of(trusted_key: Any = None) -> Any:
    """The key given, else $EDGEAE_TRUSTED_KEY (a PEM file), else None."""
    if trusted_key is not None:
        return trusted_key
    return os.environ.get(TRUSTED_KEY_ENV) or None


def note_unsigned(folder: Any, trusted_key: Any = None) -> None:
    """After an export loaded without a key: say once per process, on stderr (an EdgeAENotice), that it is
    unsigned, unless $EDGEAE_QUIET_UNSIGNED is set (to anything but 0)."""
    signature = Path(folder) / SIGNATURE_FILE
    quiet = os.environ.get(QUIET_ENV, "") not in ("", "0")
    if trusted_key_of(trusted_key) is not None or quiet or _noted_unsigned or not Path(folder).is_dir():
        return
    if not (signature.exists() or signature.is_symlink()):
        _noted_unsigned.append(True)
        notice(f"{folder} is not signed: anyone who can write it can change it unseen (give a trusted key, "
               f"--trusted-key or ${TRUSTED_KEY_ENV}, to require a signature)")


def check_signature(folder: Any, trusted_key: Any = None) -> bool:
    """Before an export is loaded: with a trusted key (given, or $EDGEAE_TRUSTED_KEY), refuse in one line
    (SignatureError, exit 4) an export that is unsigned or whose signature does not match its files or the
    key. True: checked and valid; False: no key was given (note_unsigned says so once the export has loaded)."""
    folder = Path(folder)
    key = trusted_key_of(trusted_key)
    signature = folder / SIGNATURE_FILE
    if not folder.exists():
        return False  # the loader names a missing path
    if key is None:
        return False
    pem = public_key_pem(key)
    _, verifying, _ = _model_signing()
    if folder.is_file():
        raise SignatureError(f"{folder} is a single model file, which carries no signature, and a trusted key is "
                             "set: give the signed export folder")
    if signature.is_symlink() or not signature.is_file():
        raise SignatureError(f"{folder} is not signed and a trusted key is set: refusing it "
                             f"(sign it where it is made: edgeae sign {folder} --key PRIVATE.pem)")
    if signature.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{signature} is implausibly large ({signature.stat().st_size} bytes): not a signature")
    with tempfile.TemporaryDirectory(prefix="edgeae-verify-") as tmp:
        public = Path(tmp) / "trusted.pem"
        public.write_bytes(pem)
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=public).verify(folder, signature)
        except Exception as exc:  # noqa: BLE001 - a signature that fails to verify in any way is refused
            raise SignatureError(f"{folder}: the signature does not match: {_mismatch(exc)}") from None
    return True
