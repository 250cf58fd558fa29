"""The edge variants of a model, in one table: each row says what the file is, how it is named,
made and checked, and which batch sizes of another variant it serves.

Adding a variant is one row here plus one builder module in conversion/graphs/ (named in graphs.BUILDERS).
Everything else (the files an export publishes, tolerances, manifest entries, the CLI's names, the
variants the runtime self-checks) is read from here. It imports neither onnx nor the builders, so the
runtime reads the same table.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeae.contract.errors import UsageError
from edgeae.contract.layout import (
    GOLDEN_DATA_FILE, GOLDEN_INDEX_FILE, ORT_CONFIG_FILE, PARITY_REPORT_FILE, REFERENCE_FILE, ROLES, TARGETS_FILE,
    detector_file, model_file,
)
from edgeae.contract.parity import Tolerance, fp32_tolerance

DEFAULT_VARIANT = "fp32"
# Measured on the seed model, against the clean graph: the one-window graph is 8% faster at batch 1; the
# unrolled one 7-15% faster from 128 windows per run (so for the runtime's 256-window chunks), even at
# 64 and up to 25% slower below. This is the rule `--fixed-routing` keeps; an export otherwise measures
# which graph serves which sizes on its own machine (measure/routing.py).
UNROLLED_FROM = 128


@dataclass(frozen=True)
class VariantSpec:
    """One variant: name, file suffix, precision, default tolerance against Keras, the manifest
    role of its files, whether a graph builder makes it (False: export itself does), whether it is
    built unless a caller names others, and the batch sizes of another variant it serves
    (variant, first, last)."""

    name: str
    suffix: str
    precision: str
    tolerance: Tolerance
    file_role: str
    built: bool
    default: bool
    serves: tuple[str, int, int | None] | None = None
    about: str = ""
    detector: bool = False  # a detector graph (reconstruction, score, flag) is made from it, named by its precision
    c_code: bool = False  # the C generator writes its precision out for microcontrollers

    @property
    def self_checked(self) -> bool:
        """Whether the runtime runs it on the golden vectors before serving it (see SELF_CHECKED)."""
        return self.precision != "fp32"


FP32 = fp32_tolerance()
# fp32 graphs must match Keras as the export does. fp16 rounds weights and the network's input to 11
# significant bits (2**-11 = 4.9e-4 of a value), and the recurrence amplifies that; int8 rounds each
# weight to 1/254 of its row's largest. Worst errors measured (seed model; the test suite's small
# models): fp16 5.3e-4; 1.3e-3 of range, int8 2.7e-3 of range, int8-dynamic per tensor 4.9e-3;
# 4.2e-3 of range on AVX-512 VNNI. Each bound sits at about twice the worst of them.
SPECS: tuple[VariantSpec, ...] = (
    VariantSpec("plain", ".plain.onnx", "fp32", FP32, "onnx-plain", False, True, about="tf2onnx's own graph"),
    VariantSpec("fp32", ".onnx", "fp32", FP32, "onnx", False, True, about="the clean graph (default)",
                detector=True, c_code=True),
    VariantSpec("fp32-b1", ".b1.onnx", "fp32", FP32, "onnx-b1", True, True, ("fp32", 1, 1),
                about="fp32 for exactly one window per run"),
    VariantSpec("fp32-unrolled", ".unrolled.onnx", "fp32", FP32, "onnx-unrolled", True, True,
                ("fp32", UNROLLED_FROM, None), about="fp32 with the decoder written out, for many windows per run"),
    VariantSpec("portable", ".portable.onnx", "fp32", FP32, "onnx-portable", True, True,
                about="fp32 without the LSTM operator"),
    VariantSpec("fp16", ".fp16.onnx", "fp16", Tolerance(rel_range=3e-3), "onnx-fp16", True, True,
                about="float16 weights and network", detector=True),
    VariantSpec("int8", ".int8.onnx", "int8", Tolerance(rel_range=1e-2), "onnx-int8", True, True,
                about="int8 weights, float compute", detector=True, c_code=True),
    VariantSpec("int8-dynamic", ".int8-dynamic.onnx", "int8", Tolerance(rel_range=1e-2), "onnx-int8-dynamic",
                True, False, about="onnxruntime's dynamic int8: fastest, numbers depend on the CPU"),
    VariantSpec("ort", ".ort", "fp32", FP32, "ort", True, True, about="ORT format"),
)
BY_NAME = {spec.name: spec for spec in SPECS}
VARIANTS = tuple(BY_NAME)
BUILT = tuple(spec.name for spec in SPECS if spec.built)
DEFAULT_BUILT = tuple(spec.name for spec in SPECS if spec.built and spec.default)
# Variants whose numbers can change with the device's kernels: measured, the fp32 graphs gave the same
# figures on AVX2 and AVX-512 (and ARM64) and are not re-checked at load; int8-dynamic's integer kernels
# moved by 15x between two x86 CPUs, and float16 runs on native half-precision kernels where a CPU has them
# (4.7x further from Keras on a Neoverse-N1). Decided by name, not by a field a manifest could leave out.
SELF_CHECKED = tuple(spec.name for spec in SPECS if spec.self_checked)
FP32_TOLERANCE_VARIANTS = tuple(spec.name for spec in SPECS if spec.tolerance == FP32)  # follow --atol/--rtol
DEFAULT_TOLERANCES = {spec.name: spec.tolerance for spec in SPECS}
DETECTOR_PRECISIONS = tuple(spec.precision for spec in SPECS if spec.detector)  # fp32, fp16, int8
C_PRECISIONS = tuple(spec.precision for spec in SPECS if spec.c_code)  # fp32, int8
# Files an export's build writes besides its model files: rebuilt, never carried over, by optimize.
BUILT_FILES = (PARITY_REPORT_FILE, GOLDEN_INDEX_FILE, GOLDEN_DATA_FILE, REFERENCE_FILE, TARGETS_FILE,
               ORT_CONFIG_FILE, *map(detector_file, DETECTOR_PRECISIONS))


def variant_file(role: str, name: str) -> str:
    """The file of `role` in variant `name`: autoencoder.int8.onnx."""
    return model_file(role, BY_NAME[name].suffix)


def batch_graphs(base: str) -> tuple[tuple[str, int, int | None], ...]:
    """(variant, first, last) for each variant that serves some batch sizes of `base`."""
    return tuple((spec.name, *spec.serves[1:]) for spec in SPECS if spec.serves and spec.serves[0] == base)


def serving_files() -> set[str]:
    """The files that exist only to serve some batch sizes of another variant (the one-window and
    unrolled graphs): where a manifest routes to them, timed and checked inside the path they serve."""
    return {variant_file(role, spec.name) for role in ROLES for spec in SPECS if spec.serves}


def check_tolerances(tolerances: object) -> dict[str, Tolerance]:
    """A caller's tolerances: a dict of variant names to Tolerance, refused (exit 2) as a whole otherwise.

    A bare number is refused rather than guessed: it could mean max abs error or a share of the range.
    """
    if tolerances is None:
        return {}
    if not isinstance(tolerances, dict):
        raise UsageError(f"tolerances must be a dict of variant name to Tolerance, got {type(tolerances).__name__}")
    unknown = [repr(name) for name in tolerances if name not in VARIANTS]
    if unknown:
        raise UsageError(f"no variant named {', '.join(sorted(unknown))} (variants: {', '.join(VARIANTS)})")
    for name, value in tolerances.items():
        if not isinstance(value, Tolerance):
            raise UsageError(f"the tolerance of {name!r} must be a Tolerance(abs=..., rel_range=...), got {value!r}")
    return dict(tolerances)


def check_variant_names(names: object) -> tuple[str, ...]:
    """The variants a caller asks to build: None means DEFAULT_BUILT; an unknown name is refused (exit 2)."""
    if names is None:
        return DEFAULT_BUILT
    if isinstance(names, str) or not isinstance(names, (tuple, list, set, frozenset)):
        raise UsageError(f"variants must be a list of names ({', '.join(BUILT)}), got {names!r}")
    unknown = sorted(repr(n) for n in names if n not in BUILT)
    if unknown:
        raise UsageError(f"no variant named {', '.join(unknown)} to build (variants: {', '.join(BUILT)})")
    return tuple(n for n in BUILT if n in names)


def tolerances_for(fp32: Tolerance, overrides: dict[str, Tolerance] | None = None) -> dict[str, Tolerance]:
    """Each variant's tolerance: the table's, the fp32 graphs' at `fp32`, then the caller's own."""
    return {**DEFAULT_TOLERANCES, **{name: fp32 for name in FP32_TOLERANCE_VARIANTS},
            **check_tolerances(overrides)}
