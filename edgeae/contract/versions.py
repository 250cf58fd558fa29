"""Which software is installed, and how it compares with what made an export.

A device has to say which edgeae and onnxruntime it runs (`edgeae --version`), and an
export records the versions that made it; an onnxruntime older than the exporting one may
lack an operator or kernel the files use, so `inspect` warns. Versions are read from the
installed distributions' metadata, never by importing them: asking costs milliseconds and
never loads TensorFlow.
"""
from __future__ import annotations

import platform
import re
from importlib import metadata

# The one place the version is written: pyproject.toml reads it from here (setuptools' `attr`),
# so the wheel's metadata, `importlib.metadata.version("edgeae")` and `edgeae --version` agree.
__version__ = "0.2.0"

RUNTIME_DISTRIBUTIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "click")
TRAINING_DISTRIBUTIONS = ("tensorflow", "keras", "tf2onnx", "onnx")


def installed(distributions: tuple[str, ...]) -> dict[str, str | None]:
    """Each distribution's installed version, None where it is not installed."""
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """edgeae, Python and every runtime/training distribution installed here (plus `extra`), by name."""
    found = installed(RUNTIME_DISTRIBUTIONS + TRAINING_DISTRIBUTIONS + extra)
    return {"edgeae": __version__, "python": platform.python_version(),
            **{name: v for name, v in found.items() if v is not None}}


def version_text() -> str:
    """`edgeae --version`: edgeae's version, then what it runs on, one `name version` per line."""
    found = environment()
    lines = [f"edgeae, version {__version__}"]
    lines += [f"  {name} {found[name]}" for name in ("python", *RUNTIME_DISTRIBUTIONS, *TRAINING_DISTRIBUTIONS)
              if name in found]
    missing = [name for name in TRAINING_DISTRIBUTIONS if name not in found]
    if missing:
        lines.append(f"  not installed: {', '.join(missing)} (training and export: pip install 'edgeae[train]')")
    return "\n".join(lines)


def release(text: str) -> tuple[int, ...]:
    """The numeric release of a version string ("1.32.0" -> (1, 32, 0); "2.21.0rc1" -> (2, 21, 0)),
    () where it has none. Enough to order the versions pip installs, without `packaging` on a device."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")
    if match is None:
        return ()
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 1.32 == 1.32.0
        parts.pop()
    return tuple(parts)


def against_export(exported: dict[str, str | None]) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """The export's versions beside the installed ones, and one warning per runtime here that is older
    than the one that exported (and checked) the files."""
    here = environment()
    names = sorted(set(exported) | {"edgeae", "onnxruntime", "numpy"})
    table = {name: {"export": exported.get(name), "installed": here.get(name)} for name in names}
    warnings = []
    made_with, running = _onnxruntime(exported), _onnxruntime(here)
    if made_with and running and release(running) and release(running) < release(made_with):
        warnings.append(f"onnxruntime {running} is older than the {made_with} that exported and verified these files: "
                        "an operator or kernel may be missing or differ (pip install -U onnxruntime)")
    return table, warnings


def _onnxruntime(versions: dict[str, str | None]) -> str | None:
    """The onnxruntime version of a version table: the CPU or the GPU build (one import name, never both)."""
    return versions.get("onnxruntime") or versions.get("onnxruntime-gpu")
