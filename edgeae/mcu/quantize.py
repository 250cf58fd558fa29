"""The full-integer network of `edgeae c --precision int8`: how it is quantized, and a numpy model of
the C that gives its numbers bit for bit.

Scheme (issue 29, item 1):
- weights: int8 codes, symmetric, one scale per gate row (the encoder's input and recurrent rows
  share one scale per row, so one int32 sum and one requantization per row and step);
- activations: int16. The encoder's (clipped, scaled) input and its hidden state share one scale, so
  one sum runs over both; the decoder's hidden state has its own; each LSTM's cell state its own.
  Scales come from the maxima a float run reaches on the calibration windows (the export's own
  training and validation windows and windows drawn inside the clip bounds: every input the clipped
  network can see), with headroom; anything beyond saturates;
- int32 accumulation (int8 x int16 products over at most a few hundred columns cannot overflow);
- requantization, then int16 saturation: value * m / 2^shift, m < 2^16 (one m per row, one shift per
  matrix), as the high word of a 32 x 32 -> 64-bit product (value * (m << 15), SMULL on a Cortex-M3/M4)
  shifted right by shift - 17 more, rounded half up; where value and m are small enough (value int16,
  m < 2^15), in 32 bits: (value * m + 2^(shift-1)) >> shift; gate pre-activations in Q4.11 (sigmoid
  gates, tanh), a relu cell's candidate on the cell's own scale;
- sigmoid: a 257-entry Q15 table over [0, 16] with linear interpolation (sigma(-x) = 1 - sigma(x)),
  tanh(x) = 2 sigma(2x) - 1; gates in Q15.
- the decoder's input is the same embedding at every step: its projection (plus bias) is made once;
- the Dense head sums in int32 and leaves in float32 (one multiply-add per output), as do the input's
  clip and scaling: 50 float operations a window each way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeae.contract.errors import UnsupportedModelError

Q_GATE = 11  # gate pre-activations: Q4.11
ONE = 1 << 15  # gates and tanh: Q15
HEADROOM = 1.25
INT16 = 32767
_TABLE_STEP = 7  # table step 1/16 in Q4.11: 2^7 units
SIGMOID_TABLE = np.minimum(np.round(ONE / (1.0 + np.exp(-np.arange(257) / 16.0))), INT16).astype(np.int64)


WIDE_K = 15  # wide requantization: the multiplier goes into the 32-bit product as m << 15


@dataclass(frozen=True)
class Requant:
    """value * real ~= value * mult / 2^shift (one mult per row or one in all).

    Wide (any int32 value, mult < 2^16, real < 1/4): hi = (value * (mult << 15)) >> 32, then
    (hi + 2^(s-1)) >> s with s = shift - 17 >= 1. Narrow (int16 value, mult < 2^15):
    (value * mult + 2^(shift-1)) >> shift in 32 bits."""

    mult: np.ndarray  # int64
    shift: int
    narrow: bool = False

    @classmethod
    def of(cls, real: np.ndarray | float, narrow: bool = False) -> Requant:
        real = np.atleast_1d(np.asarray(real, np.float64))
        top = float(real.max())
        if not top > 0 or not np.isfinite(top):
            raise UnsupportedModelError(f"a requantization factor {top!r} is not a positive number")
        bits = 15 if narrow else 16
        shift = int(np.floor(np.log2((1 << bits) - 1) - np.log2(top)))
        if shift < (1 if narrow else 18) or shift > (30 if narrow else 60):
            raise UnsupportedModelError(f"a requantization factor {top:.3g} is out of the integer build's range")
        mult = np.round(real * 2.0 ** shift).astype(np.int64)
        return cls(np.minimum(mult, (1 << bits) - 1), shift, narrow)

    @property
    def small_shift(self) -> int:
        """s of the wide form: the shift after taking the product's high word."""
        return self.shift - 32 + WIDE_K

    def apply(self, value: np.ndarray) -> np.ndarray:
        value = value.astype(np.int64)
        if self.narrow:
            return (value * self.mult + (1 << (self.shift - 1))) >> self.shift
        high = (value * (self.mult << WIDE_K)) >> 32
        return (high + (1 << (self.small_shift - 1))) >> self.small_shift


def sat16(value: np.ndarray) -> np.ndarray:
    return np.clip(value, -32768, INT16)


def sigmoid_q(x: np.ndarray) -> np.ndarray:
    """Q4.11 (int) -> Q15 sigmoid, as the C's table lookup."""
    a = np.minimum(np.abs(x.astype(np.int64)), INT16)
    idx, frac = a >> _TABLE_STEP, a & ((1 << _TABLE_STEP) - 1)
    low = SIGMOID_TABLE[idx]
    v = low + (((SIGMOID_TABLE[idx + 1] - low) * frac + (1 << (_TABLE_STEP - 1))) >> _TABLE_STEP)
    return np.where(x < 0, ONE - v, v)


def tanh_q(x: np.ndarray) -> np.ndarray:
    """Q4.11 -> Q15 tanh = 2 sigmoid(2x) - 1."""
    return 2 * sigmoid_q(sat16(2 * x.astype(np.int64))) - ONE


@dataclass(frozen=True)
class QLstm:
    """One integer LSTM: int8 gate rows (i, o, f, c per unit, ONNX order) with their requantization to
    the pre-activation, int16 bias there, and the cell/hidden conversions."""

    codes: np.ndarray  # (4U, columns) int8
    to_pre: Requant  # per row: int32 sum -> pre-activation
    bias: np.ndarray  # (4U,) int16, in the pre-activation's units
    relu: bool  # cell and output activation relu (else tanh)
    cell_scale: float
    hidden_scale: float
    candidate: Requant | None  # tanh: Q15 -> cell scale
    cell_to_q11: Requant | None  # tanh: cell scale -> Q4.11
    to_hidden: Requant  # Q15 gate * activation(cell) -> hidden scale

    def step(self, pre: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch, 4U) pre-activations, cell state -> new cell state and hidden state (int16 values)."""
        units = cell.shape[1]
        g = pre.reshape(pre.shape[0], units, 4)
        i, o, f = (sigmoid_q(g[:, :, k]) for k in range(3))
        if self.relu:
            cand = np.maximum(g[:, :, 3], 0)
        else:
            cand = sat16(self.candidate.apply(tanh_q(g[:, :, 3])))
        cell = sat16((f * cell + i * cand + (1 << 14)) >> 15)
        if self.relu:
            out = o * np.maximum(cell, 0)
        else:
            out = o * tanh_q(sat16(self.cell_to_q11.apply(cell)))
        return cell, sat16(self.to_hidden.apply(out))


@dataclass(frozen=True)
class QNetwork:
    encoder: QLstm  # columns: inputs (padded to even) then hidden
    decoder_w: np.ndarray  # (4U, U) int8: the embedding's rows
    decoder_w_pre: Requant
    decoder: QLstm  # columns: hidden
    dense: np.ndarray  # (U, features) int8
    dense_scale: np.ndarray  # (features,) float32: hidden scale x column scale
    dense_bias: np.ndarray  # (features,) float32
    input_scale: float  # the encoder's input and hidden scale
    padded_inputs: int
    embedding_order: np.ndarray  # the encoder's hidden unit i is the embedding's unit embedding_order[i]

    @property
    def weight_count(self) -> int:
        return self.encoder.codes.size + self.decoder_w.size + self.decoder.codes.size + self.dense.size


def _rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and one scale per row."""
    top = np.abs(matrix).max(axis=1)
    scale = np.where(top > 0, top / 127.0, 1.0)
    return np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8), scale


def _interleave(matrix: np.ndarray, units: int) -> np.ndarray:
    """(4U, ...) rows in ONNX's gate blocks i..., o..., f..., c... -> unit by unit: u0 i o f c, u1 i o f c, ..."""
    return matrix.reshape(4, units, *matrix.shape[1:]).swapaxes(0, 1).reshape(matrix.shape)


def _float_lstm(w: np.ndarray, r: np.ndarray, b: np.ndarray, relu: bool, xs: list[np.ndarray]):
    """A float64 run: per step, the pre-activations, cell and hidden states (for calibration)."""
    act = (lambda v: np.maximum(v, 0.0)) if relu else np.tanh
    units = r.shape[1]
    h = np.zeros((xs[0].shape[0], units))
    c = np.zeros_like(h)
    trace = []
    for x in xs:
        pre = x @ w.T + h @ r.T + b
        i, o, f = (1 / (1 + np.exp(-pre[:, k * units:(k + 1) * units])) for k in range(3))
        cand = pre[:, 3 * units:]
        c = f * c + i * act(cand)
        h = o * act(c)
        trace.append((cand, c, h))
    return trace


def _activation_kind(lstm) -> bool:
    gate, cell, out = lstm.activations
    if gate != "Sigmoid" or cell != out or cell not in ("Relu", "Tanh"):
        raise UnsupportedModelError(f"the integer C implements LSTMs with sigmoid gates and relu or tanh cells; this "
                                    f"one has {gate}, {cell}, {out}: use --precision fp32 or int8-weights")
    return cell == "Relu"


def _scale(top: float) -> float:
    return max(top, 1e-6) * HEADROOM / INT16


def _qlstm(codes: np.ndarray, row_scale: np.ndarray, in_scale: float, b: np.ndarray, relu: bool, cell_scale: float,
           hidden_scale: float) -> QLstm:
    units = codes.shape[0] // 4
    pre_scale = np.full(4 * units, 2.0 ** -Q_GATE)
    if relu:
        pre_scale[3 * units:] = cell_scale
    bias = sat16(np.round(b / pre_scale)).astype(np.int64)
    to_pre = Requant.of(in_scale * row_scale / pre_scale)
    inter = _interleave
    return QLstm(inter(codes, units), Requant(inter(to_pre.mult, units), to_pre.shift), inter(bias, units), relu,
                 cell_scale, hidden_scale,
                 None if relu else Requant.of(2.0 ** -15 / cell_scale, narrow=True),
                 None if relu else Requant.of(cell_scale * 2.0 ** Q_GATE, narrow=True),
                 Requant.of((cell_scale if relu else 2.0 ** -15) * 2.0 ** -15 / hidden_scale))


def preprocess(windows: np.ndarray, pre) -> np.ndarray:
    """The float32 input the C quantizes: level removed, clipped, offset and scaled, as the C computes it."""
    x = np.asarray(windows, np.float32)
    if pre.level == "remove":
        x = x - np.mean(x.astype(np.float64), axis=1, keepdims=True).astype(np.float32)
    x = np.maximum(np.minimum(x, np.asarray(pre.clip_high, np.float32)), np.asarray(pre.clip_low, np.float32))
    identity = all(o == 0 for o in pre.offset) and all(s == 1 for s in pre.scale)
    if not identity:
        x = (x - np.asarray(pre.offset, np.float32)) * np.asarray(pre.scale, np.float32)
    return x.astype(np.float32)


def calibration_windows(pre, given: list[np.ndarray], timesteps: int, count: int = 256) -> np.ndarray:
    """The export's own windows and `count` drawn uniformly inside the clip bounds (fixed seed), plus the
    bounds themselves: after the clip, every input the network can see lies in that box."""
    low, high = np.asarray(pre.clip_low, np.float64), np.asarray(pre.clip_high, np.float64)
    rng = np.random.default_rng(29)
    drawn = low + (high - low) * rng.random((count, timesteps, low.size))
    corners = np.stack([np.broadcast_to(low, (timesteps, low.size)), np.broadcast_to(high, (timesteps, low.size))])
    parts = [w.reshape(-1, timesteps, low.size) for w in given if w.size] + [drawn, corners]
    return np.concatenate(parts).astype(np.float32)


def quantize(network, pre, calibration: np.ndarray) -> QNetwork:
    """The integer network of `network` (c_code.Network, float weights), scales from `calibration` windows."""
    enc, dec = network.encoder, network.decoder
    if not isinstance(enc.w, np.ndarray) or not isinstance(dec.w, np.ndarray):
        raise UnsupportedModelError("the integer C is made from float32 weights (the export's clean graph)")
    relu = _activation_kind(enc)
    if _activation_kind(dec) != relu:
        raise UnsupportedModelError("the encoder and decoder LSTMs use different activations; the C shares one set")
    units, features = network.units, network.features
    steps = calibration.shape[1]
    x = preprocess(calibration, pre).astype(np.float64)
    enc_trace = _float_lstm(enc.w, enc.r, enc.b, relu, [x[:, t] for t in range(steps)])
    embedding = enc_trace[-1][2]
    dec_trace = _float_lstm(dec.w, dec.r, dec.b, relu, [embedding] * steps)

    def top(trace, k):
        return float(max(np.abs(step[k]).max() for step in trace))

    # Units reordered by how often they are non-zero on the calibration windows, so that the units which
    # are mostly zero share pairs and the sums skip those pairs whole (same network, other order).
    order_e, order_d = (np.argsort(np.mean([step[2] != 0 for step in trace], axis=(0, 1)), kind="stable")
                        for trace in (enc_trace, dec_trace))

    def rows(m: np.ndarray, order: np.ndarray) -> np.ndarray:
        return m.reshape(4, units, *m.shape[1:])[:, order].reshape(m.shape)

    enc = type(enc)(rows(enc.w, order_e), rows(enc.r, order_e)[:, order_e], rows(enc.b, order_e), enc.activations)
    dec = type(dec)(rows(dec.w, order_d)[:, order_e], rows(dec.r, order_d)[:, order_d], rows(dec.b, order_d),
                    dec.activations)
    padded = features + features % 2
    w_enc = np.concatenate([np.pad(enc.w, ((0, 0), (0, padded - features))), enc.r], axis=1)
    codes, row_scale = _rows(w_enc)
    in_scale = _scale(max(float(np.abs(x).max()), top(enc_trace, 2)))  # the input and hidden state share it
    enc_cell = _scale(max(top(enc_trace, 1), top(enc_trace, 0) if relu else 0.0))
    encoder = _qlstm(codes, row_scale, in_scale, enc.b, relu, enc_cell, in_scale)
    dec_codes, dec_scale = _rows(dec.r)
    dec_cell = _scale(max(top(dec_trace, 1), top(dec_trace, 0) if relu else 0.0))
    dec_hidden = _scale(top(dec_trace, 2))
    decoder = _qlstm(dec_codes, dec_scale, dec_hidden, dec.b, relu, dec_cell, dec_hidden)
    wd_codes, wd_scale = _rows(dec.w)
    pre_scale = np.full(4 * units, 2.0 ** -Q_GATE)
    if relu:
        pre_scale[3 * units:] = decoder.cell_scale
    wd_pre = Requant.of(in_scale * wd_scale / pre_scale)
    kernel = network.dense_kernel[order_d]
    dense_top = np.abs(kernel).max(axis=0)
    dense_col = np.where(dense_top > 0, dense_top / 127.0, 1.0)
    dense = np.clip(np.round(kernel / dense_col), -127, 127).astype(np.int8)
    return QNetwork(encoder, _interleave(wd_codes, units), Requant(_interleave(wd_pre.mult, units), wd_pre.shift),
                    decoder, dense, (decoder.hidden_scale * dense_col).astype(np.float32),
                    np.asarray(network.dense_bias, np.float32), in_scale, padded, order_e)


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """float32 -> int16 as the C does it: x * (1/scale) in float32, rounded half away from zero, saturated."""
    t = x.astype(np.float32) * np.float32(1.0 / scale)
    t = t + np.where(t >= 0, np.float32(0.5), np.float32(-0.5)).astype(np.float32)
    return sat16(np.clip(t, -40000.0, 40000.0).astype(np.int64))  # C: clamp in float, then convert (trunc)


def run(q: QNetwork, windows: np.ndarray, pre) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction (raw units, float32) and embedding (float32) the C gives, bit for bit."""
    windows = np.asarray(windows, np.float32)
    batch, steps, features = windows.shape
    units = q.dense.shape[0]
    x = quantize_input(preprocess(windows, pre), q.input_scale)
    x = np.pad(x, ((0, 0), (0, 0), (0, q.padded_inputs - features)))
    h = np.zeros((batch, units), np.int64)
    c = np.zeros_like(h)
    enc = q.encoder
    for t in range(steps):
        acc = np.concatenate([x[:, t], h], axis=1) @ enc.codes.T.astype(np.int64)
        c, h = enc.step(sat16(enc.to_pre.apply(acc) + enc.bias), c)
    embedding = np.empty((batch, units), np.float32)
    embedding[:, q.embedding_order] = (h.astype(np.float32) * np.float32(enc.hidden_scale)).astype(np.float32)
    projection = sat16(q.decoder_w_pre.apply(h @ q.decoder_w.T.astype(np.int64)) + q.decoder.bias)
    dec = q.decoder
    hd = np.zeros_like(h)
    c = np.zeros_like(h)
    out = np.empty((batch, steps, features), np.float32)
    for t in range(steps):
        c, hd = dec.step(sat16(dec.to_pre.apply(hd @ dec.codes.T.astype(np.int64)) + projection), c)
        y = (hd @ q.dense.astype(np.int64)).astype(np.float32) * q.dense_scale + q.dense_bias
        out[:, t] = postprocess(y.astype(np.float32), windows, pre)
    return out, embedding


def postprocess(y: np.ndarray, windows: np.ndarray, pre) -> np.ndarray:
    identity = all(o == 0 for o in pre.offset) and all(s == 1 for s in pre.scale)
    if not identity:
        y = y / np.asarray(pre.scale, np.float32) + np.asarray(pre.offset, np.float32)
    if pre.level == "remove":
        y = y + np.mean(windows.astype(np.float64), axis=1).astype(np.float32)
    return y.astype(np.float32)
