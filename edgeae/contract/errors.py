"""One exception family for edgeae; each kind carries the exit code the CLI returns.

The exit-code table lives here and only here, so the CLI, the docs and the tests agree.
"""
from __future__ import annotations

import warnings

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_INTEGRITY = 4
EXIT_RUNTIME = 5
EXIT_PARITY = 6
EXIT_DEPENDENCY = 7
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program whose reader went away

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug; rerun with --debug)",
    EXIT_USAGE: "usage (bad option, missing file, export exists, folder locked, cannot write)",
    EXIT_DATA: "bad data (shape, type, non-finite or unusable values)",
    EXIT_INTEGRITY: "integrity or security (checksum mismatch, corrupt or unsafe file)",
    EXIT_RUNTIME: "runtime or provider (provider missing, inference failed, out of memory)",
    EXIT_PARITY: "parity (ONNX differs from Keras beyond the tolerance)",
    EXIT_DEPENDENCY: "missing optional dependency (install the extra it names)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM; nothing published)",
    EXIT_CLOSED_PIPE: "stdout closed by its reader (e.g. `| head`); the output was cut short, quietly",
}


class EdgeAEError(Exception):
    """Base of every error edgeae raises on purpose; its message is one line for the user."""

    exit_code = EXIT_INTERNAL


class UsageError(EdgeAEError):
    exit_code = EXIT_USAGE


class ExportExistsError(UsageError, FileExistsError):
    """The target export folder exists and the caller did not ask to replace it."""


class LockedError(UsageError):
    """Another edgeae process is writing the same export folder."""


class UnsupportedModelError(UsageError, ValueError):
    """A model outside what edgeae can export, prove or generate C for, named by its layer or graph part;
    refused rather than approximated."""


class DataError(EdgeAEError, ValueError):
    exit_code = EXIT_DATA


class LearningError(DataError):
    """Training ran but the model learned nothing worth exporting (its run is kept for a look)."""


class ShapeError(DataError):
    """An array has the wrong rank, window length or feature count."""


class IntegrityError(EdgeAEError):
    """A file is missing, corrupt, tampered with or unsafe to load."""

    exit_code = EXIT_INTEGRITY


class SignatureError(IntegrityError):
    """A trusted key is set and the export is unsigned, or its signature does not match its files or that key."""


class ProviderError(EdgeAEError, RuntimeError):
    """An execution provider was requested that this onnxruntime cannot give."""

    exit_code = EXIT_RUNTIME


class InferenceError(EdgeAEError, RuntimeError):
    exit_code = EXIT_RUNTIME


class ParityError(EdgeAEError):
    """ONNX outputs differ from the Keras reference beyond the tolerance."""

    exit_code = EXIT_PARITY


class MissingDependencyError(EdgeAEError, ImportError):
    exit_code = EXIT_DEPENDENCY


class EdgeAENotice(UserWarning):
    """Something a user should know that is not an error (a stale folder removed, an unsigned export):
    the CLI prints it as one `note:` line on stderr; a program sees a warning it can filter."""


def notice(message: str) -> None:
    """Tell the user once (per message and place, Python's default warning filter) on stderr."""
    warnings.warn(message, EdgeAENotice, stacklevel=3)


def install_hint(extra: str) -> str:
    """How to install an extra while edgeae is installed from a checkout or a wheel, not an index."""
    return f"pip install 'edgeae[{extra}]' (from a checkout: pip install '.[{extra}]')"


def require(module: str, extra: str):
    """Import an optional heavy module, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed: {install_hint(extra)} ({exc})"
        ) from exc
