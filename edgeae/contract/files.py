"""Files on disk: checksums, atomic writes, staged export folders, locks and the manifest.

An export folder either exists whole and verified or not at all: it is built in a staging
folder beside the target and swapped into place in one step, with the manifest written
last, so a manifest's presence means the set is complete.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from edgeae.contract.errors import ExportExistsError, IntegrityError, LockedError, UsageError
from edgeae.contract.layout import MANIFEST_FILE, MAX_CHUNK, ROLES

MANIFEST_FORMAT = "edgeae-manifest"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_path(value: Any, what: str) -> Path:
    """A caller's file or folder name as a Path; anything else is refused by name, not left to
    fail deep inside with a TypeError."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        shown = repr(value) if value is None or isinstance(value, (str, bool, int, float)) else f"a {type(value).__name__}"
        raise UsageError(f"{what} must be a file or folder name (str or os.PathLike), got {shown}")
    return Path(value)


def check_output_file(path: Path) -> Path:
    """An output file's folder must exist and the path must be neither a folder nor a symbolic
    link (the atomic write would replace the link itself, even a dangling one that no
    existence check sees): checked before any work."""
    path = Path(path)
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link; give the real file")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


SHORT_NAME_BYTES = 64


def _short_name(name: str) -> str:
    """`name`, or for a long one its start plus a hash of the whole: the temporary, staging, old
    and lock names built from it must stay under the 255-byte limit for any valid `name`, and
    still differ between targets (the lock's must be the same for every run on one target)."""
    raw = os.fsencode(name)
    if len(raw) <= SHORT_NAME_BYTES:
        return name
    head = raw[:SHORT_NAME_BYTES - 11].decode("utf-8", "ignore")  # drops a character cut in two
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:10]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short_name(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make a shared export unreadable
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _finite(value: Any) -> Any:
    """Refuse NaN/inf in JSON we write: other tools cannot read them back."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to write non-finite number {value!r} to JSON")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps_json(obj: Any) -> str:
    return json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning every way it can be broken into one IntegrityError."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{what} not found: {path} (not an edgeae folder, or the file is missing)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{what} is implausibly large ({path.stat().st_size} bytes): {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{what} is not valid JSON: {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} must be a JSON object: {path}")
    return obj


# ---------------------------------------------------------------- locks and staging


@contextlib.contextmanager
def folder_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on `target` (a lock file beside it)."""
    import fcntl

    lock_path = target.parent / f".{_short_name(target.name)}.lock"
    while True:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{target} is being written by another edgeae process (lock {lock_path.name})"
                ) from None
            raise
        # The file may have been unlinked by the previous holder between open and flock.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


class ReplaceError(UsageError, OSError):
    """The finished folder could not be moved into place; what was at the target is kept."""


_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)  # kernel or file system without RENAME_EXCHANGE


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system or file
    system cannot, OSError where it could but failed (a busy mount point, a read-only one)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(b))


def _move_into_place(stage: Path, target: Path) -> Path | None:
    """Rename `stage` to `target`; return the folder now holding the previous export (None if
    there was none). On failure `target` is as it was and no folder is left beside it (unless
    even putting the previous export back fails: then the old folder keeps it)."""
    if not target.exists():
        os.rename(stage, target)
        return None
    if _exchange(stage, target):
        return stage
    old = Path(tempfile.mkdtemp(prefix=f".{_short_name(target.name)}.old-", dir=target.parent))
    moved = False
    try:
        os.rename(target, old / target.name)
        moved = True
        os.rename(stage, target)
    except BaseException:
        if moved:
            os.rename(old / target.name, target)  # put the previous export back before giving up
        with contextlib.suppress(OSError):
            old.rmdir()
        raise
    return old


def publish_folder(stage: Path, target: Path) -> None:
    """Move a finished staging folder onto `target`, replacing an old one atomically."""
    replacing = target.exists()
    try:
        old = _move_into_place(stage, target)
    except OSError as exc:
        hint = " (a mount point or read-only?)" if exc.errno == errno.EBUSY else ""
        raise ReplaceError(f"cannot {'replace' if replacing else 'create'} {target}: "
                           f"{exc.strerror or exc}{hint}") from exc
    if old is not None:
        shutil.rmtree(old)
    _fsync_dir(target.parent)


def _check_not_symlink(target: Path) -> None:
    """Refuse a target folder that is a symbolic link: publishing swaps the link itself away
    (the user's link gone, the old export stranded) instead of replacing what it points to."""
    if target.is_symlink():
        raise UsageError(f"{target} is a symbolic link; give the real folder")


def _unlisted(folder: Path, manifest: dict) -> list[str]:
    """Entries of an edgeae folder that its manifest does not list: the user's, not ours to delete."""
    files = manifest.get("files")
    listed = {MANIFEST_FILE, *(files if isinstance(files, dict) else ())}
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name not in listed or e.is_dir(follow_symlinks=False))


def _check_replaceable(target: Path) -> None:
    """--force (and optimize) replace an edgeae folder holding only what its manifest lists, or an
    empty one, never a folder of someone else's files nor files a user put into an export."""
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"refusing to replace {target}: it is the current folder or contains it")
    if not any(target.iterdir()):
        return
    try:  # a linked manifest proves nothing about this folder's own files
        manifest = json.loads(_safe_member(target, MANIFEST_FILE).read_text(encoding="utf-8"))
    except (IntegrityError, OSError, UnicodeDecodeError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UsageError(f"refusing to replace {target}: it is not an edgeae folder (no edgeae manifest.json); "
                         "choose another --out or empty it yourself")
    unlisted = _unlisted(target, manifest)
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        raise UsageError(f"refusing to replace {target}: it holds files its manifest does not list ({shown}); "
                         "move them out first")


def check_target(target: Path, force: bool = False) -> None:
    """Refuse early a target that staged_folder would refuse at the end of a long run."""
    target = Path(target).absolute()
    _check_not_symlink(target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder")
    if target.exists() and not force:
        raise ExportExistsError(f"{target} exists; pass --force to replace it")
    if target.exists():
        _check_replaceable(target)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create {target}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {parent}: {exc.strerror}") from None
    with folder_lock(target) if target.parent.exists() else contextlib.nullcontext():
        pass


# Set by the CLI's SIGINT/SIGTERM handler. Its KeyboardInterrupt can be swallowed where it lands (inside a
# TensorFlow weakref callback it is only printed as "Exception ignored"), so the swap checks the latch too:
# once an interrupt came, nothing is published, whatever the interpreter was running when it came.
INTERRUPTED = threading.Event()


def refuse_if_interrupted() -> None:
    """Raise KeyboardInterrupt when an interrupt has arrived since the command began."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def staged_folder(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; publish it to `target` only if the block succeeds.

    On any failure (an exception, Ctrl-C, a full disk) the staging folder is removed and
    whatever was at `target` before stays exactly as it was.
    """
    target = Path(target).absolute()
    _check_not_symlink(target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {target.parent}: {exc.strerror}") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {target.parent}: permission denied")
    with folder_lock(target):
        if target.exists() and not force:
            raise ExportExistsError(f"{target} exists; pass --force to replace it")
        if target.exists():
            _check_replaceable(target)
        stage = Path(tempfile.mkdtemp(prefix=f".{_short_name(target.name)}.staging-", dir=target.parent))
        try:
            os.chmod(stage, 0o777 & ~_umask())
            yield stage
            refuse_if_interrupted()  # the last moment before the swap
            publish_folder(stage, target)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


# ---------------------------------------------------------------- manifest


def _safe_member(folder: Path, name: Any) -> Path:
    """A manifest may only name plain files inside its own folder."""
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
        raise IntegrityError(f"manifest names a file outside its folder: {name!r}")
    path = folder / name
    if path.is_symlink():
        raise IntegrityError(f"{name} is a symbolic link; refusing to follow it")
    return path


def file_entry(path: Path, role: str) -> dict:
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
    body = _finite({"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
                    **{k: v for k, v in manifest.items() if k not in ("format", "format_version", "checksum")}})
    body["checksum"] = _manifest_checksum(body)
    path = Path(folder) / MANIFEST_FILE
    atomic_write_json(path, body)
    return path


def read_manifest(folder: Path) -> dict:
    """Read, unseal and schema-check a folder's manifest: what it returns is safe to index."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"{folder} is a file; expected an edgeae folder (a training run or an export)")
    if not folder.is_dir():
        raise UsageError(f"folder not found: {folder}")
    path = _safe_member(folder, MANIFEST_FILE)
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
    return manifest


# ---------------------------------------------------------------- manifest schema
#
# The checksum proves a manifest is the one written, not that the tool (or version) that
# wrote it wrote what this one reads: every field edgeae reads is checked here once, so
# each reader can index it without guarding against a wrong type.

Check = Callable[[str, Any], None]


def read_export_manifest(folder: Path) -> dict:
    """The checked manifest of an export folder; a training folder has no ONNX graphs yet."""
    manifest = read_manifest(folder)
    if manifest.get("kind") == "training":
        raise UsageError(f"{folder} is a training folder; export it first: edgeae export {folder}")
    if manifest.get("kind") != "export":
        raise UsageError(f"{folder} is not an export folder (run edgeae export on it first)")
    return manifest


def _refuse(path: str, expected: str, value: Any) -> NoReturn:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    file, _, field = path.partition(":")  # "training.json:history" names a field of another file
    raise IntegrityError(f"{file} field {field} must be {expected}, got {shown}" if field
                         else f"manifest field {path} must be {expected}, got {shown}")


def _member(path: str, key: str) -> str:
    """`detector.threshold`; `files['model.keras']` where the key itself has a dot."""
    return f"{path}[{key!r}]" if "." in key else f"{path}.{key}" if path and not path.endswith(":") else path + key


def _text(path: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        _refuse(path, "a non-empty string", value)


def _flag(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        _refuse(path, "true or false", value)


def _sha256(path: str, value: Any) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        _refuse(path, "64 lowercase hex digits", value)


def _whole(minimum: int, maximum: int | None = None) -> Check:
    def check(path: str, value: Any) -> None:
        if type(value) is not int or value < minimum or (maximum is not None and value > maximum):  # true is no count
            _refuse(path, f"a whole number ≥ {minimum}" + (f" and ≤ {maximum}" if maximum is not None else ""), value)
    return check


def _real(low: float, high: float = math.inf, above: bool = False) -> Check:
    """A finite JSON number in [low, high] ((low, high] when `above`); true and false are not numbers."""
    expected = ("a finite number" + (f" {'>' if above else '≥'} {low:g}" if low > -math.inf else "")
                + (f" and ≤ {high:g}" if high < math.inf else ""))

    def check(path: str, value: Any) -> None:
        try:
            number = float(value) if type(value) in (int, float) else math.nan
        except OverflowError:  # an integer beyond float: readers would fail converting it
            number = math.nan
        if not (math.isfinite(number) and low <= number <= high) or (above and number == low):
            _refuse(path, expected, value)
    return check


def _nullable(check: Check) -> Check:
    def nullable(path: str, value: Any) -> None:
        if value is not None:
            check(path, value)
    return nullable


def _one_of(*allowed: str) -> Check:
    def check(path: str, value: Any) -> None:
        if value not in allowed:
            _refuse(path, " or ".join(repr(a) for a in allowed), value)
    return check


def _list_of(item: Check) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, list):
            _refuse(path, "a list", value)
        for index, element in enumerate(value):
            item(f"{path}[{index}]", element)
    return check


def _map_of(item: Check) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, dict):
            _refuse(path, "an object", value)
        for key, element in value.items():
            item(_member(path, key), element)
    return check


def _record(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose listed fields, where present, pass their checks; other fields are not read."""
    def check(path: str, value: Any) -> None:
        if not isinstance(value, dict):
            _refuse(path, "an object", value)
        for key in required:
            if key not in value:
                raise IntegrityError(f"manifest field {_member(path, key)} is missing")
        for key, field in fields.items():
            if key in value:
                field(_member(path, key), value[key])
    return check


def _batches(path: str, value: Any) -> None:
    """[first, last]: the batch sizes a route serves, `last` null for no limit."""
    if (not isinstance(value, list) or len(value) != 2 or type(value[0]) is not int or value[0] < 1
            or not (value[1] is None or (type(value[1]) is int and value[1] >= value[0]))):
        _refuse(path, "[first, last] batch sizes with 1 ≤ first ≤ last (last null for no limit)", value)


_FINITE = _real(-math.inf)
_VECTOR = _list_of(_FINITE)
_PREPROCESSING = _record({"clip_low": _VECTOR, "clip_high": _VECTOR, "offset": _VECTOR,
                          "scale": _list_of(_real(0, above=True)), "clip_quantiles": _list_of(_real(0, 1)),
                          "scaling": _text}, required=("clip_low", "clip_high", "offset", "scale"))
_VARIANT = _record({"file": _text, "published": _flag, "precision": _text, "chunk": _whole(1, MAX_CHUNK),
                    "by_batch": _list_of(_record({"batches": _batches, "file": _text}, required=("batches", "file")))},
                   required=("file", "published"))
_THRESHOLD = _real(0)
_TRAINING = _record({
    "config": _record({"seed": _whole(0), "stride": _nullable(_whole(1)), **{name: _whole(1) for name in (
        "timesteps", "features", "units", "epochs", "batch_size")}}, required=("seed",)),
    "data": _record({"source": _text, "columns": _list_of(_text)}),
    "preprocessing": _PREPROCESSING,
    "history": _map_of(_VECTOR), "epochs_run": _whole(0), "best_epoch": _whole(0), "final_loss": _FINITE},
    required=("config",))
_MANIFEST = _record({
    "kind": _one_of("training", "export"),
    "edgeae_version": _text,
    "created": _text,
    "opset": _whole(1),
    "targets": _text,
    "files": _map_of(_record({"sha256": _sha256, "bytes": _whole(0), "role": _text}, required=("sha256",))),
    "models": _record({role: _record({"file": _text, "value_bound": _nullable(_real(0))}, required=("file",))
                       for role in ROLES}),
    "window": _record({"timesteps": _whole(1), "features": _whole(1), "stride": _whole(1)}),
    "preprocessing": _PREPROCESSING,
    "training": _TRAINING,
    "detector": _record({"threshold": _THRESHOLD, "quantile": _real(0, 1, above=True), "windows": _whole(0),
                         "flagged": _whole(0), "calibrated_on": _text,
                         "variants": _map_of(_record({"threshold": _THRESHOLD, "flagged": _whole(0)},
                                                     required=("threshold",))),
                         "graphs": _map_of(_record({"file": _text, "threshold": _THRESHOLD},
                                                   required=("file", "threshold"))),
                         "chosen": _record({"by": _text, "source": _text, "calibrated_threshold": _THRESHOLD},
                                           required=("source", "calibrated_threshold"))},
                        required=("threshold",)),
    "variants": _map_of(_map_of(_VARIANT)),
    "skipped": _map_of(_map_of(_text)),  # role -> variant -> why it does not apply (a model edgeae did not train)
    "scores": _text,  # why scores carry no threshold (a model given without calibration data)
    "parity": _record({"passed": _flag, "tolerance_abs": _nullable(_real(0, above=True)),
                       "tolerance_rel_range": _nullable(_real(0, above=True))}),
    "versions": _map_of(_nullable(_text)),
})
_EXPORT = _record({}, required=("models", "window", "preprocessing", "training"))


def check_training_record(record: Any, source: str) -> None:
    """Refuse, naming the field, a training record (training.json, or a manifest's `training`)
    whose fields have the wrong type or range."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise IntegrityError(f"{source}: the training record has no config")
    _TRAINING(f"{source}:" if source != MANIFEST_FILE else "training", record)


def check_manifest_schema(manifest: dict) -> None:
    """Refuse, naming the field, a manifest whose fields have the wrong type, range or shape."""
    _MANIFEST("", manifest)
    if manifest.get("kind") == "export":
        _EXPORT("", manifest)
    pre = manifest.get("preprocessing")
    if pre is not None and len({len(pre[k]) for k in ("clip_low", "clip_high", "offset", "scale")}) != 1:
        raise IntegrityError("manifest field preprocessing has clip_low, clip_high, offset and scale "
                             "of different lengths")
    for role, by_name in (manifest.get("variants") or {}).items():
        own = {entry["file"] for entry in by_name.values()}  # a route hands batches to a graph of its own role
        for name, entry in by_name.items():
            for index, route in enumerate(entry.get("by_batch", ())):
                if route["file"] not in own:
                    _refuse(_member(f"variants.{role}", name) + f".by_batch[{index}].file",
                            f"the file of one of the {role} variants", route["file"])


def verify_file(folder: Path, name: str, entry: Any) -> Path:
    """Check one listed file's size and sha256 before anything parses it."""
    path = _safe_member(Path(folder), name)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise IntegrityError(f"manifest entry for {name} has no sha256")
    if not path.is_file():
        raise IntegrityError(f"{name} is listed in the manifest but missing from {folder}")
    size = path.stat().st_size
    if entry.get("bytes") is not None and size != entry["bytes"]:
        raise IntegrityError(f"{name}: size {size} bytes, manifest says {entry['bytes']} (truncated or replaced?)")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise IntegrityError(f"{name}: sha256 {actual[:12]}… does not match the manifest's {entry['sha256'][:12]}… (tampered or corrupt)")
    return path


def verify_files(folder: Path, manifest: dict) -> None:
    for name, entry in manifest["files"].items():
        verify_file(folder, name, entry)
