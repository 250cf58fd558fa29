"""Files on disk: checksums, atomic writes, staged export folders and locks.

An export folder either exists whole and verified or not at all: it is built in a staging
folder beside the target and swapped into place in one step, with the manifest written
last, so a manifest's presence means the set is complete.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgeae.contract.errors import ExportExistsError, IntegrityError, LockedError, UsageError, notice
from edgeae.contract.layout import MANIFEST_FILE, SIGNATURE_FILE

MANIFEST_FORMAT = "edgeae-manifest"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# What edgeae's JSON (its manifests, records, a Keras config.json) can hold: edgeae's own files nest
# under 10 deep and a Keras config under 30; the longest integer a real file holds is a 64-bit seed
# (20 digits). Past these a file is hostile, and is refused before Python's parser recurses or
# meets its 4,300-digit integer limit, each of which would end in a raw RecursionError/ValueError.
MAX_JSON_DEPTH = 200
MAX_JSON_INT_DIGITS = 64
_JSON_STRING_OR_OTHER = re.compile(r'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+|"')


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


def open_staged(path: Path, text: bool = False) -> tuple[IO[Any], str]:
    """A hidden temporary file beside `path` to fill, then publish_staged (or discard_staged): readers
    see the old file or the new one, never a torn one, even when it is written piece by piece."""
    path = check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short_name(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make a shared file unreadable
        return (os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")), tmp
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def discard_staged(handle: IO[Any], tmp: str) -> None:
    """Drop a staged file: the target keeps its old content (or stays absent)."""
    handle.close()
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def publish_staged(handle: IO[Any], tmp: str, path: Path) -> None:
    """Make a staged file `path`, durably (flushed, synced, renamed, its folder synced)."""
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, path)
    except BaseException:
        discard_staged(handle, tmp)
        raise
    _fsync_dir(Path(tmp).parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    handle, tmp = open_staged(path)
    try:
        handle.write(data)
    except BaseException:
        discard_staged(handle, tmp)
        raise
    publish_staged(handle, tmp, path)


def finite_json(value: Any) -> Any:
    """Refuse NaN/inf in JSON we write: other tools cannot read them back."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to write non-finite number {value!r} to JSON")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_json(obj: Any) -> str:
    return json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))


def _json_depth(text: str) -> int:
    """How deep a JSON text's arrays and objects nest, counted without parsing (strings skipped)."""
    brackets = _JSON_STRING_OR_OTHER.sub("", text)
    return max(itertools.accumulate(1 if ch in "[{" else -1 for ch in brackets), default=0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer of {len(text.lstrip('-'))} digits")
    return int(text)


def loads_json(text: str | bytes, what: str) -> Any:
    """Parse JSON that may be hostile: NaN, Infinity, out-of-range floats, huge integers and deep
    nesting (none of which edgeae writes) are refused as one IntegrityError, never a raw
    ValueError or RecursionError from Python's parser."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IntegrityError(f"{what} is not valid JSON: {exc}") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise IntegrityError(f"{what} is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(f"{what} is not valid JSON: {first}") from None


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning every way it can be broken into one IntegrityError."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{what} not found: {path} (not an edgeae folder, or the file is missing)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{what} is implausibly large ({path.stat().st_size} bytes): {path}")
    obj = loads_json(path.read_bytes(), f"{what} {path}")
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} must be a JSON object: {path}")
    return obj


# ---------------------------------------------------------------- locks and staging


# Locks this process holds, by lock file and thread: a command takes its target's lock before any work
# (training, loading), and the publishing step inside it takes the same lock again without a conflict.
_HELD: dict[tuple[str, int], int] = {}


@contextlib.contextmanager
def folder_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on `target` (a lock file beside it); the thread holding it
    may take it again (nested), any other process or thread is refused at once (LockedError)."""
    import fcntl

    lock_path = Path(target).absolute().parent / f".{_short_name(Path(target).name)}.lock"
    key = (str(lock_path), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
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
    _HELD[key] = 1
    try:
        remove_stale(Path(target).absolute())
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def remove_stale(target: Path) -> None:
    """Remove the staging and swap folders a killed run left beside `target`, saying so; called holding
    its lock, so no live run owns them (every writer of `target` holds that lock while they exist)."""
    ours = re.compile(re.escape(f".{_short_name(target.name)}.") + r"(staging|old)-[a-z0-9_]{8}")  # mkdtemp's
    stale = []
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        stale = sorted(e.name for e in entries if ours.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
    for name in stale:
        shutil.rmtree(target.parent / name, ignore_errors=True)
    if stale:
        notice(f"removed {len(stale)} unfinished folder(s) beside {target.name} left by a run that was killed: "
               + ", ".join(stale))


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
    listed = {MANIFEST_FILE, SIGNATURE_FILE, *(files if isinstance(files, dict) else ())}
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
        manifest = loads_json(member_path(target, MANIFEST_FILE).read_bytes(), "manifest")
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
    with target_lock(target):
        pass


def target_lock(target: Path) -> contextlib.AbstractContextManager[None]:
    """folder_lock for a target whose folder may not exist yet (then there is nothing to lock beside it):
    a command takes it before its first step, so a second run on the same target is refused at once."""
    target = Path(target).absolute()
    return folder_lock(target) if target.parent.is_dir() else contextlib.nullcontext()


# Set by the CLI's SIGINT/SIGTERM handler. Its KeyboardInterrupt can be swallowed where it lands (inside a
# TensorFlow weakref callback it is only printed as "Exception ignored"), so the swap checks the latch too:
# once an interrupt came, nothing is published, whatever the interpreter was running when it came.
INTERRUPTED = threading.Event()
# The folders this process published: an interrupt after the swap does not undo them (the CLI exits 0).
PUBLISHED: list[Path] = []


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
        PUBLISHED.append(target)


@contextlib.contextmanager
def staged_copy(folder: Path) -> Iterator[Path]:
    """A staging copy of the published `folder` (hard links: its files are only ever replaced, never written
    in place), swapped in whole if the block succeeds: an amendment is as atomic as the export itself."""
    folder = Path(folder).absolute()
    with folder_lock(folder):
        stage = Path(tempfile.mkdtemp(prefix=f".{_short_name(folder.name)}.staging-", dir=folder.parent))
        try:
            try:
                shutil.copytree(folder, stage, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
            except OSError:  # a file system without hard links: start again with copies (never over a link)
                shutil.rmtree(stage)
                shutil.copytree(folder, stage, symlinks=True)
            yield stage
            refuse_if_interrupted()
            publish_folder(stage, folder)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        PUBLISHED.append(folder)


# ---------------------------------------------------------------- manifest


def member_path(folder: Path, name: Any) -> Path:
    """A manifest may only name plain files inside its own folder."""
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
        raise IntegrityError(f"manifest names a file outside its folder: {name!r}")
    path = folder / name
    if path.is_symlink():
        raise IntegrityError(f"{name} is a symbolic link; refusing to follow it")
    return path
