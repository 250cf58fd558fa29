"""What an ONNX file asks of its surroundings, read from its protobuf wire format with no onnx package:
the operator domains of every node and every tensor stored outside the file (external data).

A tensor can hide anywhere: in the graph's initializers and sparse initializers, in a Constant's or
any node's attributes (one tensor, a list of them, sparse ones), in the subgraphs of If, Loop and Scan,
in local functions and in training graphs. onnxruntime reads external data wherever it is declared, so
a device without onnx must still find every one before a session opens: only files the manifest lists,
with their checksums, may be read.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgeae.contract.errors import IntegrityError
from edgeae.contract.manifest import verify_file
from edgeae.contract.records import Manifest

MAX_DEPTH = 64  # subgraphs nest this deep at most: a crafted file cannot recurse the reader away
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# The message fields that hold messages edgeae must look into (field number: kind), per message kind.
_FIELDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_NODE_DOMAIN = 7
_TENSOR_NAME, _TENSOR_LOCATION = 8, 14


@dataclass
class Scan:
    """Every operator domain the file's nodes use, and (tensor, location) for each tensor kept outside it."""

    domains: set[str] = field(default_factory=set)
    external: list[tuple[str, str]] = field(default_factory=list)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The base-128 number at `at`, and where the next field starts."""
    value, shift = 0, 0
    while at < len(data) and shift < 70:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ValueError("a truncated number")


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message: an int, or the bytes of a length-delimited field."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = data[at:at + size], at + size
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"wire type {wire}")
        if at > len(data):
            raise ValueError("a field runs past the end")
        yield number, wire, value


def _walk(data: bytes, kind: str, scan: Scan, depth: int) -> None:
    """Record the domains and external tensors of one message of `kind` and of every message inside it."""
    if depth > MAX_DEPTH:
        raise ValueError("subgraphs nested too deep")
    name, location, external = "", None, False
    for number, wire, value in _fields(data):
        if kind == "node" and number == _NODE_DOMAIN and wire == 2:
            scan.domains.add(value.decode("utf-8"))
        elif kind == "tensor" and number == _TENSOR_NAME and wire == 2:
            name = value.decode("utf-8", "replace")
        elif kind == "tensor" and number == _TENSOR_LOCATION and wire == 0:
            external = value == EXTERNAL
        elif wire == 2 and number in _FIELDS.get(kind, {}):
            child = _FIELDS[kind][number]
            if child == "entry":
                pair: dict[int, str] = {}
                for key, entry_wire, text in _fields(value):
                    if entry_wire == 2:
                        pair[key] = text.decode("utf-8", "replace")
                if pair.get(1) == "location":
                    location = pair.get(2, "")
            else:
                _walk(value, child, scan, depth + 1)
    if kind == "tensor" and (external or location is not None):
        scan.external.append((name, location or ""))


def scan_model(data: bytes, name: str) -> Scan:
    """Read `data` (an .onnx file's bytes); a file that is not a protobuf message is refused by `name`."""
    scan = Scan()
    try:
        _walk(data, "model", scan, 0)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{name}: not a valid ONNX model") from None
    return scan


def inside(location: str) -> bool:
    """Whether an external-data location names a file in the model's own folder or below it."""
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    return bool(location) and not (posix.is_absolute() or windows.is_absolute() or windows.drive
                                   or ".." in posix.parts or ".." in windows.parts)


def check_external(folder: Path, path: Path, manifest: Manifest) -> frozenset[str]:
    """The external-data files model file `path` (verified already) of an export reads, each refused in one
    line unless it lies inside the folder and the manifest lists it with a checksum the file matches."""
    name, locations = path.name, set()
    if path.suffix != ".onnx":  # the ORT format keeps every tensor inside the file
        return frozenset()
    for tensor, location in scan_model(path.read_bytes(), name).external:
        if not inside(location):
            raise IntegrityError(f"{name}: tensor {tensor!r} reads external data from {location!r}, outside the "
                                 "export folder: refused")
        if location not in manifest.files:
            raise IntegrityError(f"{name}: tensor {tensor!r} reads external data from {location!r}, a file the "
                                 "manifest does not list with a checksum: refused")
        verify_file(folder, location, manifest.files[location])
        locations.add(location)
    return frozenset(locations)
