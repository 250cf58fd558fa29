"""Which onnxruntime execution providers a model runs on, and with how many threads.

onnxruntime only warns and falls back to the CPU when a provider is missing; edgeae refuses
instead, so the names a caller asks for are checked here before any session is made.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from edgeae.contract.checks import is_whole
from edgeae.contract.errors import ProviderError, UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Every provider onnxruntime knows (installed or not), by its full name or short ("cpu", "cuda", "tensorrt").
KNOWN_PROVIDERS = {key: name for name in ort.get_all_providers()
                   for key in (name.lower(), name.lower().removesuffix("executionprovider"))}
MAX_THREADS = 1024


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Turn "auto" / "cpu" / "cuda" (or full provider names) into onnxruntime's list.

    onnxruntime only warns and runs on the CPU when CUDA is missing; edgeae refuses instead
    when CUDA was asked for explicitly. CUDA always keeps the CPU behind it, since the CUDA
    provider hands some nodes (relu LSTMs) back to the CPU.
    """
    available = available_providers()
    if isinstance(providers, str) and providers.strip().lower() == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    requested = [providers] if isinstance(providers, str) else providers
    if not isinstance(requested, (list, tuple)) or not all(isinstance(p, str) for p in requested):
        raise UsageError(f"providers must be a name or a list of names (auto, cpu, cuda), got {providers!r}")
    if not requested:
        raise ProviderError("no execution provider requested")
    names = []
    for given in requested:
        name = KNOWN_PROVIDERS.get(given.strip().lower())
        if name is None:
            shorts = sorted({key for key in KNOWN_PROVIDERS if not key.endswith("executionprovider")} - {"cpu", "cuda"})
            raise UsageError(f"unknown execution provider {given!r}: expected auto, cpu, cuda, or another that "
                             f"onnxruntime knows ({', '.join(shorts)}, or its full name)")
        if name not in names:  # a provider named twice is asked for once
            names.append(name)
    for name in names:
        if name not in available:
            raise ProviderError(f"{name} requested; available: {', '.join(available)}")
    if CPU not in names:
        names.append(CPU)
    return names


def check_threads(threads: Any) -> None:
    """None (onnxruntime's default) or a plausible thread count: 0, 1.5 or True would otherwise
    be taken silently, a huge number fail deep inside onnxruntime's bindings."""
    if threads is not None and not is_whole(threads, 1, MAX_THREADS):
        raise UsageError(f"threads must be a whole number from 1 to {MAX_THREADS} (or None for the default), "
                         f"got {threads!r}")
