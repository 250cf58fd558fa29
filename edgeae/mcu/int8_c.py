"""The full-integer C build (`edgeae c --precision int8`): the export's float32 weights quantized
(quantize.py) and written out as int8/int16/int32 C, with the same API and golden program as the float build.

The threshold is the export's int8 detector graph's (its int8 precision's own calibration); the golden
program holds the integer network to the int8 tolerance against Keras and to Keras's flags, with no more
disagreements than the integer network itself (its numpy model, quantize.run) gives on those windows.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgeae.contract.errors import IntegrityError
from edgeae.contract.golden import SCORE, Golden
from edgeae.contract.layout import PARITY_INPUTS_FILE
from edgeae.contract.manifest import verify_file
from edgeae.contract.versions import __version__
from edgeae.data.windows import Preprocessing
from edgeae.mcu import int8_templates, quantize as q8, stream_c, templates as c_templates
from edgeae.mcu.c_text import LEVEL_CODE, fill, floats, ints, is_identity, scaling_arrays

WORK_START, WORK_END = "/* Working memory", "} edgeae_work;\n"


def pack(codes: np.ndarray, units: int, columns: int) -> np.ndarray:
    """(4U rows unit by unit, C columns) int8 -> the C's blocks: [block of 8 rows][column pair][row pair][4 bytes]
    w[r][k], w[r+1][k], w[r][k+1], w[r+1][k+1]; rows padded to whole blocks, columns to `columns` (even)."""
    padded = units + units % 2
    full = np.zeros((4 * padded, columns), np.int8)
    full[:codes.shape[0], :codes.shape[1]] = codes
    blocks = full.reshape(padded // 2, 4, 2, columns // 2, 2)  # block, row pair, r, pair, k
    return blocks.transpose(0, 3, 1, 4, 2).reshape(-1)


def _rows_padded(values: np.ndarray, units: int, fill_value: int) -> np.ndarray:
    padded = units + units % 2
    return np.concatenate([values, np.full(4 * (padded - units), fill_value, values.dtype)])


def _matrix(name: str, codes: np.ndarray, requant: q8.Requant, units: int, columns: int) -> tuple[str, int]:
    packed = pack(codes, units, columns)
    mult = _rows_padded(requant.mult, units, 1)
    text = (f"static const int8_t {name}_w[{packed.size}] = {{{ints(packed)}}};\n"
            f"static const uint16_t {name}_mult[{mult.size}] = {{{ints(mult)}}};\n"
            f"static const edgeae_matrix {name}_matrix = "
            f"{{{name}_w, {name}_mult, {requant.small_shift}, {columns // 2}}};")
    return text, packed.size + 2 * mult.size


def _consts(layer: q8.QLstm) -> str:
    values = [int(layer.to_hidden.mult[0]) << q8.WIDE_K, layer.to_hidden.small_shift]
    if not layer.relu:
        values += [v for r in (layer.candidate, layer.cell_to_q11) for v in (int(r.mult[0]), r.shift)]
    return ints(values + [1] * (6 - len(values)))


def work_bytes(units: int, features: int) -> int:
    """sizeof(edgeae_work) of the integer build: int16 arrays, then the float level (4-byte aligned)."""
    padded, inputs = units + units % 2, features + features % 2
    int16s = 4 * padded + (inputs + padded) + 2 * padded
    return (2 * int16s + 3) // 4 * 4 + 8 * ((inputs + padded) // 2 + 1) + 4 * features


def render(q: q8.QNetwork, pre: Preprocessing, timesteps: int, threshold: float, source: str,
           stride: int = 1) -> tuple[str, str, int, int]:
    """edgeae_model.h and edgeae_model.c of the integer network; with the weights' and the work area's bytes."""
    units, features = q.dense.shape
    padded, inputs = units + units % 2, q.padded_inputs
    enc_codes = np.concatenate([q.encoder.codes[:, :inputs], np.pad(q.encoder.codes[:, inputs:],
                                                                      ((0, 0), (0, padded - units)))], axis=1)
    arrays, weight_bytes = [], 0
    for name, codes, requant, columns in (("encoder", enc_codes, q.encoder.to_pre, inputs + padded),
                                          ("projection", q.decoder_w, q.decoder_w_pre, padded),
                                          ("decoder", q.decoder.codes, q.decoder.to_pre, padded)):
        text, size = _matrix(name, codes, requant, units, columns)
        arrays.append(text)
        weight_bytes += size
    for name, bias in (("encoder_bias", q.encoder.bias), ("decoder_bias", q.decoder.bias)):
        values = _rows_padded(bias, units, 0)
        arrays.append(f"static const int16_t {name}[{values.size}] = {{{ints(values)}}};")
        weight_bytes += 2 * values.size
    dense = np.zeros((padded, features), np.int8)
    dense[:units] = q.dense
    arrays.append(f"static const int8_t dense_kernel[{dense.size}] = {{{ints(dense)}}};")
    arrays.append(f"static const float dense_scale[{features}] = {{{floats(q.dense_scale)}}};")
    arrays.append(f"static const float dense_bias[{features}] = {{{floats(q.dense_bias)}}};")
    weight_bytes += dense.size + 8 * features + 2 * len(q8.SIGMOID_TABLE) + 2 * units
    identity, levelled, scaling = is_identity(pre), pre.level == "remove", scaling_arrays(pre)
    work = work_bytes(units, features)
    stream_header, stream_code = stream_c.stream_api(stride, timesteps * features, work)
    note = ("full integer: int8 weights (one scale per gate row), int16 state, int32 sums, fixed-point\n"
            " * requantization, scales calibrated on the export's windows; within the int8 tolerance of Keras.")
    common = {"MODEL": "LSTM autoencoder", "VERSION": __version__, "SOURCE": source, "PRECISION": "int8",
              "TIMESTEPS": timesteps, "FEATURES": features, "UNITS": units, "PADDED_UNITS": padded,
              "MAX_COLUMNS": max(features, units), "WORK_BYTES": work, "STACK_HINT": "200 bytes",
              "THRESHOLD": repr(float(threshold)),
              "THRESHOLD_NOTE": "calibrated on the int8 variant's own scores, as the ONNX int8 detector's",
              "SCALING_NOTE": "" if identity else ", then offset and scaled", "PRECISION_NOTE": note,
              "EXTRA_LIBM": "", "STREAM_API": stream_header}
    header = fill(c_templates.HEADER, common)
    start, end = header.index(WORK_START), header.index(WORK_END) + len(WORK_END)
    defines = (f"#define EDGEAE_PADDED_INPUTS {inputs} /* features rounded up to whole pairs */\n"
               f"#define EDGEAE_STATE_COLUMNS {inputs + padded}\n#define EDGEAE_MAX_PAIRS {(inputs + padded) // 2}\n\n")
    header = header[:start] + defines + fill(int8_templates.WORK, {"WORK_BYTES": work}) + header[end:]
    relu = q.encoder.relu
    source_text = fill(int8_templates.SOURCE, {
        **common, "WEIGHTS": "\n".join(arrays), "SIGMOID_TABLE": ints(q8.SIGMOID_TABLE),
        "EMBEDDING_UNIT": ints(q.embedding_order),
        "CLIP_LOW": floats(np.array(pre.clip_low)), "CLIP_HIGH": floats(np.array(pre.clip_high)),
        "SCALING_ARRAYS": scaling, "STREAM_CODE": stream_code, "TANH": "" if relu else int8_templates.TANH,
        "CANDIDATE": "g[3] > 0 ? g[3] : 0" if relu else "saturate(narrow(tanh_q(g[3]), consts[2], consts[3]))",
        "CELL_OUT": "(cell > 0 ? cell : 0)" if relu else "tanh_q(saturate(narrow(cell, consts[4], consts[5])))",
        "ENC_CONSTS": _consts(q.encoder), "DEC_CONSTS": _consts(q.decoder),
        "INPUT_INVERSE": floats(np.array([1.0 / q.input_scale])),
        "HIDDEN_SCALE": floats(np.array([q.encoder.hidden_scale])),
        "PREPROCESS": "x" if identity else "(x - offset[f]) * scale[f]",
        "POSTPROCESS": ("y" if identity else "y / scale[f] + offset[f]") + (" + work->level[f]" if levelled else ""),
        "LEVEL": LEVEL_CODE if levelled else "",
        "INPUT": "window[t * EDGEAE_FEATURES + f]" + (" - work->level[f]" if levelled else ""),
    })
    return header, source_text, weight_bytes, work


def calibration(export_dir: Any, manifest: Any, pre: Preprocessing) -> np.ndarray:
    """The export's own training and validation windows (checked against the manifest) and the clip box."""
    given: list[np.ndarray] = []
    if PARITY_INPUTS_FILE in manifest.files:
        path = verify_file(export_dir, PARITY_INPUTS_FILE, manifest.files[PARITY_INPUTS_FILE])
        with np.load(path) as saved:
            given = [np.asarray(saved[k], np.float32) for k in ("training", "validation") if k in saved.files]
    if any(not np.isfinite(g).all() for g in given):
        given = [g[np.isfinite(g).all(axis=(1, 2))] for g in given]  # windows with gaps are never scored
    return q8.calibration_windows(pre, given, manifest.window.timesteps)


def own_scores(q: q8.QNetwork, golden: Golden, pre: Preprocessing) -> dict[str, np.ndarray]:
    """The integer network's scores on each golden set, as the C computes them (score in double)."""
    scale = np.asarray(pre.scale, np.float64)
    scores = {}
    for name, windows in golden.inputs.items():
        reconstruction, _ = q8.run(q, windows, pre)
        gap = (windows.astype(np.float64) - reconstruction.astype(np.float64)) * scale
        scores[name] = np.mean(gap * gap, axis=(1, 2))
    return scores


def trim(golden: Golden, per_set: int) -> Golden:
    """The first `per_set` windows of each golden set (a board too small for them all)."""
    inputs = {n: w[:per_set] for n, w in golden.inputs.items()}
    expected = {role: {source: {n: a[:per_set] for n, a in sets.items()} for source, sets in by.items()}
                for role, by in golden.expected.items()}
    return replace(golden, inputs=inputs, expected=expected)


def check_golden(golden: Golden) -> None:
    if SCORE not in golden.expected:
        raise IntegrityError("the export's golden vectors hold no scores; export it again with this edgeae")


def quantized(network: Any, export_dir: Any, manifest: Any, pre: Preprocessing) -> q8.QNetwork:
    return q8.quantize(network, pre, calibration(export_dir, manifest, pre))
