"""Golden vectors: the inputs an export was verified on and what each model must answer, readable anywhere.

An app in another language, a microcontroller or a device without numpy must be able to
check itself against the numbers edgeae verified, so they are stored as they are, never
regenerated: `golden.bin` holds raw little-endian float32 arrays back to back, and
`golden.json` says where each one starts (in float32 elements and in bytes), its shape,
and what it is. A C program needs `fread` and the offsets; JavaScript a `Float32Array`
over the file. The same arrays sit in `parity_reference.npz` for numpy users.

Entries:
- `inputs.<set>`: raw windows (n, timesteps, features), in the units the data came in;
- `expected.<role>.keras.<set>`: Keras's output on them (autoencoder: raw units; encoder:
  the embedding), the reference every file is held to;
- `expected.<role>.<variant>.<set>`: a reduced-precision variant's own output on the
  machine that exported it, where it differs from Keras (fp16, int8, int8-dynamic);
- `expected.score.<source>.<set>`: the per-window anomaly score of those reconstructions.

This module needs numpy only: the runtime reads it for its self-check on load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.contract.files import atomic_write_bytes, atomic_write_json, loads_json
from edgeae.contract.manifest import file_entry, verify_file
from edgeae.contract.records import Manifest
from edgeae.contract.errors import IntegrityError
from edgeae.contract.layout import GOLDEN_DATA_FILE as DATA_FILE
from edgeae.contract.layout import GOLDEN_INDEX_FILE as INDEX_FILE
from edgeae.contract.layout import GOLDEN_ROLE, REFERENCE_FILE, REFERENCE_ROLE

FORMAT = "edgeae-golden"
KERAS = "keras"  # the source name of the reference outputs
SCORE = "score"  # the pseudo-role of per-window scores
_FLOAT32_LE = np.dtype("<f4")
SUBSET = 2  # golden windows per input set and kind (flagged, not flagged) the runtime re-runs on load
CLEAR = 1.25  # how far (a factor) a chosen window's score lies from every threshold: variants score a little apart


@dataclass(frozen=True)
class Golden:
    """An export's golden vectors: inputs by set, and expected outputs by role, source and set."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, dict[str, dict[str, np.ndarray]]]

    def reference(self, role: str) -> dict[str, np.ndarray]:
        """Keras's outputs of `role` on every input set."""
        return self.expected[role][KERAS]


def write_golden(stage: Path, inputs: dict[str, np.ndarray],
                 expected: dict[str, dict[str, dict[str, np.ndarray]]]) -> dict[str, dict]:
    """Write golden.bin and golden.json into `stage` (and the same arrays as parity_reference.npz);
    return their manifest entries."""
    arrays: dict[str, np.ndarray] = {f"inputs/{name}": x for name, x in inputs.items()}
    for role, by_source in expected.items():
        for source, by_set in by_source.items():
            arrays.update({f"expected/{role}/{source}/{name}": y for name, y in by_set.items()})
    index: dict[str, Any] = {
        "format": FORMAT, "format_version": 1, "data": DATA_FILE, "dtype": "float32", "byte_order": "little",
        "note": "each entry: `offset` and `count` in float32 elements from the start of the data file "
                "(`byte_offset` in bytes), `shape` row-major; see edgeae/contract/golden.py",
        "inputs": {}, "expected": {},
    }
    blobs, offset = [], 0
    for key, array in arrays.items():
        data = np.ascontiguousarray(array, dtype=_FLOAT32_LE)
        kind, *path = key.split("/")
        node = index[kind]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = {"offset": offset, "byte_offset": offset * 4, "count": int(data.size),
                          "shape": list(data.shape)}
        blobs.append(data.tobytes())
        offset += data.size
    atomic_write_bytes(stage / DATA_FILE, b"".join(blobs))
    atomic_write_json(stage / INDEX_FILE, index)
    np.savez(stage / REFERENCE_FILE, **{key.replace("/", "__"): value for key, value in arrays.items()})
    return {DATA_FILE: file_entry(stage / DATA_FILE, GOLDEN_ROLE), INDEX_FILE: file_entry(stage / INDEX_FILE, GOLDEN_ROLE),
            REFERENCE_FILE: file_entry(stage / REFERENCE_FILE, REFERENCE_ROLE)}


def _entry(data: np.ndarray, where: str, entry: Any) -> np.ndarray:
    """One array of golden.bin, its index entry checked against the file (every field a reader in
    another language may use: offset, byte_offset, count, shape) and its values finite."""
    if (not isinstance(entry, dict) or type(entry.get("offset")) is not int or not isinstance(entry.get("shape"), list)
            or not all(type(d) is int and d >= 0 for d in entry["shape"])):
        raise IntegrityError(f"{INDEX_FILE}: {where} needs a whole offset and a shape of whole numbers")
    count = math.prod(entry["shape"])  # Python ints: a huge shape cannot wrap around
    if entry["offset"] < 0 or entry["offset"] + count > data.size:
        raise IntegrityError(f"{INDEX_FILE}: {where} lies outside {DATA_FILE} ({data.size} float32 values)")
    if entry.get("count", count) != count or entry.get("byte_offset", 4 * entry["offset"]) != 4 * entry["offset"]:
        raise IntegrityError(f"{INDEX_FILE}: {where}: count and byte_offset must agree with shape and offset")
    array = data[entry["offset"]:entry["offset"] + count].reshape(entry["shape"])
    if not np.isfinite(array).all():
        raise IntegrityError(f"{DATA_FILE}: {where} holds NaN or inf")
    return array.astype(np.float32)


def read_golden(folder: Path, manifest: Manifest) -> Golden:
    """The golden vectors of a published export, each file checked against the manifest first."""
    files = manifest.files
    if INDEX_FILE not in files or DATA_FILE not in files:
        raise IntegrityError(f"{folder} holds no golden vectors ({INDEX_FILE}, {DATA_FILE}); "
                             "export it again with this edgeae")
    index = loads_json(verify_file(folder, INDEX_FILE, files[INDEX_FILE]).read_bytes(), INDEX_FILE)
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("data") != DATA_FILE:
        raise IntegrityError(f"{INDEX_FILE}: not an edgeae golden index for {DATA_FILE}")
    layout = {key: index.get(key) for key in ("format_version", "dtype", "byte_order")}
    if layout != {"format_version": 1, "dtype": "float32", "byte_order": "little"}:
        raise IntegrityError(f"{INDEX_FILE}: format_version 1, little-endian float32 expected, got {layout}")
    raw = verify_file(folder, DATA_FILE, files[DATA_FILE]).read_bytes()
    if len(raw) % 4:
        raise IntegrityError(f"{DATA_FILE}: {len(raw)} bytes is not a whole number of float32 values")
    data = np.frombuffer(raw, dtype=_FLOAT32_LE)
    inputs_index, expected_index = index.get("inputs"), index.get("expected")
    if not isinstance(inputs_index, dict) or not inputs_index or not isinstance(expected_index, dict):
        raise IntegrityError(f"{INDEX_FILE}: no inputs or expected outputs")
    inputs = {name: _entry(data, f"inputs.{name}", entry) for name, entry in inputs_index.items()}
    expected: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for role, by_source in expected_index.items():
        if not isinstance(by_source, dict):
            raise IntegrityError(f"{INDEX_FILE}: expected.{role} is not an object")
        for source, by_set in by_source.items():
            if not isinstance(by_set, dict) or set(by_set) != set(inputs):
                raise IntegrityError(f"{INDEX_FILE}: expected.{role}.{source} must give one output for each "
                                     f"input set ({', '.join(inputs)})")
            expected.setdefault(role, {})[source] = {
                name: _entry(data, f"expected.{role}.{source}.{name}", entry) for name, entry in by_set.items()}
    _check_shapes(inputs, expected, manifest)
    return Golden(inputs, expected)


def _check_shapes(inputs: dict[str, np.ndarray], expected: dict[str, dict[str, dict[str, np.ndarray]]],
                  manifest: Manifest) -> None:
    """Inputs must be this export's windows and every output the shape its model gives them,
    so an output that differs later is the model's fault, not the reference's."""
    window, units = manifest.window, manifest.units
    for name, x in inputs.items():
        if x.ndim != 3 or x.shape[1:] != (window.timesteps, window.features):
            raise IntegrityError(f"{INDEX_FILE}: inputs.{name} are {x.shape}, not windows of this export "
                                 f"(n, {window.timesteps}, {window.features})")
    for role, by_source in expected.items():
        for source, by_set in by_source.items():
            for name, y in by_set.items():
                n = len(inputs[name])
                shape = {"autoencoder": inputs[name].shape, "encoder": (n, units), SCORE: (n,)}.get(role)
                if y.shape != shape:
                    raise IntegrityError(f"{INDEX_FILE}: the {role} output ({source}) on the {name} inputs is "
                                         f"{y.shape}, this export's model gives {shape}: not this export's reference")
    for role in ("autoencoder", "encoder"):
        if KERAS not in expected.get(role, {}):
            raise IntegrityError(f"{INDEX_FILE}: no Keras output of the {role}")


def choose_subset(scores: dict[str, np.ndarray], thresholds: list[float]) -> dict[str, dict[str, list[int]]]:
    """The golden windows the runtime re-runs on load, by input set: the `SUBSET` flagged windows scored
    nearest above every threshold and the unflagged ones nearest below it, each `CLEAR` times clear of it,
    and which of them the export's thresholds flagged; a threshold moved past them shows on load."""
    low, high = min(thresholds), max(thresholds)
    out = {}
    for name, score in scores.items():
        order = np.argsort(score, kind="stable")
        above = [int(i) for i in order if score[i] > CLEAR * high][:SUBSET]
        below = [int(i) for i in order if score[i] * CLEAR < low][-SUBSET:]
        out[name] = {"windows": sorted(above + below), "flagged": sorted(above)}
    return out


def subset(inputs: dict[str, np.ndarray], manifest: Manifest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The windows of each golden set the runtime re-runs on load (by set), and which of them the export's
    thresholds flagged (None where the export recorded no flags: made before they were, or without a
    threshold; then the first `SUBSET` windows of each set, whose outputs are still checked)."""
    chosen = manifest.detector.golden if manifest.detector else None
    if chosen is None:
        return {name: np.arange(min(SUBSET, len(x))) for name, x in inputs.items()}, None
    windows, flagged = {}, {}
    for name, entry in chosen.items():
        if name not in inputs:
            raise IntegrityError(f"manifest field detector.golden.{name}: no such golden input set "
                                 f"({', '.join(inputs)})")
        index = np.asarray(entry["windows"], dtype=np.int64)
        if ((index.size and index.max() >= len(inputs[name])) or np.any(np.diff(index) <= 0)
                or not set(entry["flagged"]) <= set(entry["windows"])):
            raise IntegrityError(f"manifest field detector.golden.{name}: windows must rise within the golden "
                                 f"{name!r} set, and the flagged ones be among them")
        windows[name], flagged[name] = index, np.isin(index, np.asarray(entry["flagged"], dtype=np.int64))
    return windows, flagged


def check_thresholds(manifest: Manifest, inputs: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> None:
    """Refuse a manifest whose thresholds (the model's, each variant's, each detector graph's) flag other
    golden windows than the export recorded, given Keras's `scores` of the golden `inputs` by set: the
    chosen windows lie well clear of the export's thresholds, so only an edited threshold differs."""
    detector = manifest.detector
    chosen, flagged = subset(inputs, manifest)
    if detector is None or flagged is None:
        return
    thresholds = {"detector.threshold": detector.threshold,
                  **{f"detector.variants.{n}.threshold": t for n, t in detector.variant_thresholds.items()},
                  **{f"detector.graphs.{n}.threshold": g.threshold for n, g in detector.graphs.items()}}
    for field, threshold in thresholds.items():
        for name, index in chosen.items():
            got = scores[name][index] > threshold
            if not np.array_equal(got, flagged[name]):
                raise IntegrityError(f"manifest field {field} ({threshold:.6g}) flags {int(got.sum())} of the "
                                     f"{len(got)} golden {name!r} windows checked, where the export flagged "
                                     f"{int(flagged[name].sum())}: not the threshold this export verified")
