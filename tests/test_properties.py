"""Property-based and fault tests: whatever a caller or a broken disk throws at edgeae, the
answer is a correct result or a clear edgeae error, never a crash or a silently wrong number."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeae import runtime
from edgeae.data.series import load_csv
from edgeae.data.windows import Preprocessing, make_windows
from edgeae.contract.errors import DataError, EdgeAEError, IntegrityError, ShapeError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@FAST
@given(series=hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 4)), elements=finite),
       timesteps=st.integers(1, 12), stride=st.integers(1, 5))
def test_windowing(series, timesteps, stride):
    if len(series) < timesteps:
        with pytest.raises(DataError, match="fewer than one window"):
            make_windows(series, timesteps, stride)
        return
    windows = make_windows(series, timesteps, stride)
    assert windows.shape == ((len(series) - timesteps) // stride + 1, timesteps, series.shape[1])
    for i in (0, len(windows) - 1):
        np.testing.assert_array_equal(windows[i], series[i * stride:i * stride + timesteps])
    assert windows.flags.c_contiguous


@FAST
@given(values=hnp.arrays(np.float64, st.tuples(st.integers(2, 60), st.integers(1, 4)), elements=finite),
       low_q=st.floats(0, 0.4), high_q=st.floats(0.6, 1), scaling=st.sampled_from(["none", "minmax", "standard"]))
def test_scaling_learns_bounds_at_the_quantiles(values, low_q, high_q, scaling):
    try:
        pre = Preprocessing.fit(values, (low_q, high_q), scaling)
    except DataError as exc:
        assert "constant" in str(exc) or "zero range" in str(exc)
        return
    low, high = np.array(pre.clip_low), np.array(pre.clip_high)
    np.testing.assert_allclose(low, np.quantile(values, low_q, axis=0).astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(high, np.quantile(values, high_q, axis=0).astype(np.float32), rtol=1e-6, atol=1e-6)
    wild = np.concatenate([values, values * 1e3, -values * 1e3])
    scaled = pre.apply(wild)
    assert np.isfinite(scaled).all()
    if scaling == "minmax":
        assert scaled.min() >= -1e-5 and scaled.max() <= 1 + 1e-5
    clipped = np.clip(wild, low, high).astype(np.float32)
    np.testing.assert_allclose(pre.invert(scaled), clipped, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(clipped).max()))


@FAST
@given(values=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 4)),
                         elements=st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False)))
def test_csv_round_trip(values, tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "s.csv"
    header = [f"c{i}" for i in range(values.shape[1])]
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in values) + "\n")
    series = load_csv(path)
    np.testing.assert_array_equal(series.values, values)
    assert series.columns == tuple(header)


@FAST
@given(cell=st.sampled_from(["abc", "inf", "-inf", "1,2", "0x10", "none", "1.2.3"]), row=st.integers(0, 4),
       col=st.integers(0, 2))  # an empty cell, NA, NaN are missing values: tests/test_missing.py
def test_csv_bad_cell_is_named_by_row_and_column(cell, row, col, tmp_path_factory):
    grid = [["1.5"] * 3 for _ in range(5)]
    grid[row][col] = cell
    path = tmp_path_factory.mktemp("csv") / "bad.csv"
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c"])
        writer.writerows(grid)
    with pytest.raises(DataError) as info:
        load_csv(path)
    message = str(info.value)
    assert f"row {row + 2}" in message and f"'{'abc'[col]}'" in message


@pytest.fixture(scope="module")
def tiny_runtime(tiny_export):
    return runtime.load(tiny_export, "cpu")


dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, ">f8", "<f4",
                          np.bool_, np.complex64])
shapes = st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 5)),
                   st.tuples(st.integers(0, 8), st.integers(0, 5)),
                   st.tuples(st.integers(0, 30)), st.tuples(), st.tuples(*[st.integers(1, 2)] * 4))


@FAST
@given(data=st.data(), dtype=dtypes, shape=shapes, order=st.sampled_from(["C", "F"]))
def test_runtime_accepts_or_refuses_clearly(tiny_runtime, data, dtype, shape, order):
    x = data.draw(hnp.arrays(dtype, shape))
    x = np.asarray(x, order=order)
    try:
        out = tiny_runtime.encode(x)
    except (DataError, ShapeError) as exc:
        assert "\n" not in str(exc)
        return
    # accepted: it must have been a real-valued (6, 3) window or batch of them, with no infinity;
    # a window holding a missing value (NaN) gets a NaN row, every other one a finite embedding
    assert np.dtype(dtype).kind in "iuf"
    assert x.shape[-2:] == (6, 3) and x.ndim in (2, 3)
    values = np.asarray(x, dtype=np.float32)
    assert not np.isinf(values).any()
    assert out.shape == ((8,) if x.ndim == 2 else (x.shape[0], 8))
    gaps = np.isnan(values).any(axis=(-2, -1))
    assert np.array_equal(np.isnan(out).all(axis=-1), gaps) and np.isfinite(out[~gaps]).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["autoencoder.onnx", "encoder.onnx", "manifest.json"]))
def test_corruption_at_random_offsets_is_refused(tiny_export, tmp_path_factory, data, name):
    import shutil

    folder = tmp_path_factory.mktemp("corrupt") / "export"
    shutil.copytree(tiny_export, folder)
    path = folder / name
    blob = bytearray(path.read_bytes())
    mode = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if mode == "flip":
        offset = data.draw(st.integers(0, len(blob) - 1))
        blob[offset] ^= data.draw(st.integers(1, 255))
    elif mode == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    else:
        blob += data.draw(st.binary(min_size=1, max_size=64))
    path.write_bytes(bytes(blob))
    if name == "manifest.json" and _same_json(bytes(blob), (tiny_export / name).read_bytes()):
        runtime.load(folder, "cpu")  # only insignificant whitespace changed: still the same manifest
        return
    with pytest.raises(IntegrityError):
        runtime.load(folder, "cpu")


def _same_json(a: bytes, b: bytes) -> bool:
    import json

    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_corrupt_single_onnx_never_crashes(tiny_export, data, tmp_path_factory):
    """Without a manifest there is no checksum: a damaged file must still load cleanly or be refused."""
    blob = bytearray((tiny_export / "encoder.onnx").read_bytes())
    for _ in range(data.draw(st.integers(1, 5))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(1, len(blob) - 1)):]
    path = tmp_path_factory.mktemp("single") / "encoder.onnx"
    path.write_bytes(bytes(blob))
    try:
        model = runtime.load(path, "cpu")
    except EdgeAEError:
        return
    try:
        out = model.models[next(iter(model.models))].run(np.zeros((2, model.timesteps, model.features)))
    except EdgeAEError:
        return
    assume(out is not None)
    assert np.isfinite(out).all()
