"""The manifest's schema: every field edgeae reads, with the type and range it must have.

The checksum proves a manifest is the one written, not that the tool (or version) that wrote it
wrote what this one reads: every field is checked here once, before manifest.py makes records of
it, so no reader guards against a wrong type. A refusal names the field.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from edgeae.contract.errors import IntegrityError
from edgeae.contract.layout import MANIFEST_FILE, MAX_CHUNK, ROLES

Check = Callable[[str, Any], None]


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
                          "scaling": _text, "level": _text}, required=("clip_low", "clip_high", "offset", "scale"))
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
                                           required=("source", "calibrated_threshold")),
                         "golden": _map_of(_record({"windows": _list_of(_whole(0)), "flagged": _list_of(_whole(0))},
                                                   required=("windows", "flagged")))},
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


