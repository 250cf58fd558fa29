"""A user's own series in: every bad-data case, windowing and split edges, quantile clipping,
and training on a series (validation, early stopping, history kept with the model)."""
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeae.cli import main
from edgeae.data.series import Series, load_labelled, load_labels, load_series
from edgeae.data.windows import (
    Preprocessing, make_windows, split_by_time, window_labels, window_series, window_starts,
)
from edgeae.trainer import training as trainer
from edgeae.contract.errors import EXIT_DATA, DataError, ShapeError, UsageError

# ---------------------------------------------------------------- bad data, one line each

BAD_CSV = {
    "empty file": ("", "the file is empty"),
    "only blank lines": ("\n\n  \n", "the file is empty"),
    "header only": ("a,b\n", "a header row but no data rows"),
    "no header": ("1,2\n3,4\n", "row 1 holds numbers, expected a header row naming the columns (pass --no-header"),
    "missing value": ("a,b\n1,2\n3,\n", "1 missing value (b: 1); fill the gaps first"),
    "non-numeric cell": ("a,b\n1,2\n3,4\n5,x7\n", "row 4, column 'b': 'x7' is not a number"),
    "NaN": ("a,b\n1,2\nnan,4\nNA,N/A\n", "3 missing values (a: 2, b: 1); fill the gaps first"),
    "infinity": ("a,b\n1,2\n3,-inf\n", "row 3, column 'b': '-inf' is not a finite number"),
    "too large for float32": ("a,b\n1,2\n3,1e39\n", "row 3, column 'b': 1e39 does not fit in float32"),
    "short row": ("a,b\n1,2\n3\n", "row 3 has 1 cells, the header has 2"),
    "blank line inside": ("a,b\n1,2\n\n3,4\n", "row 3 is empty (a missing time step?)"),
    "duplicate header name": ("a,a\n1,2\n3,4\n", "column 'a' is used twice"),
    "nameless column": ("a,\n1,2\n3,4\n", "column 2 has no name"),
    "decimal comma": ("a;b\n1,5;2\n", "row 2, column 'a': '1,5' has a decimal comma; edgeae reads a point as the "
                      "decimal mark ('1.5')"),
    "separators that differ": ("a\tb\n1;2\n", "row 2 has 1 cells, the header has 2"),
}


@pytest.mark.parametrize("name", BAD_CSV)
def test_bad_csv_is_one_line_naming_row_and_column(tmp_path, name):
    text, message = BAD_CSV[name]
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        load_series(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith("data.csv: ")
    assert "\n" not in str(caught.value)


def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n\xff\xfe\x00\x01,2\n")
    with pytest.raises(DataError, match="not a text CSV file"):
        load_series(path)


def test_columns_must_exist_and_be_chosen_once(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("time,temp,pressure\n0,1,2\n1,3,4\n")
    with pytest.raises(DataError, match="no column 'humidity'; columns are time, temp, pressure"):
        load_series(path, ("humidity",))
    with pytest.raises(DataError, match="'temp' is used twice"):
        load_series(path, ("temp", "1"))


def test_a_column_picked_by_index_needs_a_name_of_its_own(tmp_path):
    """The model records its columns by name; a name the header repeats could not be found again."""
    path = tmp_path / "data.csv"
    path.write_text("a,b,a\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="the column at index 2 is named 'a', as another column is"):
        load_series(path, ("1", "2"))
    assert load_series(path, ("b",)).columns == ("b",)


def test_csv_quirks_that_are_fine(tmp_path):
    """A byte-order mark, CRLF line ends, quoted numbers, spaces, trailing blank lines,
    and text in columns that are not chosen."""
    path = tmp_path / "data.csv"
    path.write_bytes(b'\xef\xbb\xbftime, temp ,pressure\r\n2024-01-01,"1.5", 2\r\n2024-01-02,3,4e0\r\n\r\n\r\n')
    series = load_series(path, ("temp", "pressure"))
    assert series.columns == ("temp", "pressure")
    np.testing.assert_array_equal(series.values, [[1.5, 2.0], [3.0, 4.0]])
    assert load_series(path, ("2",)).columns == ("pressure",)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_semicolon_and_tab_separated_files_read_as_comma_separated_ones(tmp_path, separator):
    """Spreadsheets write ';' where the comma is the decimal mark, and tab-separated exports are common:
    the separator is read off the header line, a byte-order mark and CRLF line ends included."""
    rows = [["time", "temp", "pressure"], ["2024-01-01", "1.5", "-2e-3"], ["2024-01-02", "3", "4"]]
    comma, other = tmp_path / "comma.csv", tmp_path / "other.csv"
    comma.write_text("\n".join(",".join(row) for row in rows) + "\n")
    other.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(separator.join(row) for row in rows).encode() + b"\r\n")
    want = load_series(comma, ("temp", "pressure"))
    got = load_series(other, ("temp", "pressure"))
    assert got.columns == want.columns == ("temp", "pressure")
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.values, [[1.5, -2e-3], [3.0, 4.0]])


@pytest.mark.parametrize("header, first, second, axis", [
    ("YEAR,sunspots", "1700", "1701", ("YEAR",)),  # a time-like name over strictly increasing numbers
    ("date,co2", "1958-03-29", "1958-04-05", ("date",)),  # dates, whatever the column's name
    ("when,co2", "2026-01-01 00:00:00", "2026-01-01 00:01:00", ("when",)),
    ("time_s,co2", "0.5", "1.0", ("time_s",)),
    ("co2,level", "315.1", "316.2", ()),  # a rising series is not time by its values alone
    ("step,co2", "3", "3", ()),  # a time-like name whose numbers do not increase is a feature
])
def test_a_time_axis_is_never_a_feature_by_default(tmp_path, header, first, second, axis):
    path = tmp_path / "series.csv"
    path.write_text(f"{header}\n{first},1.5\n{second},2.5\n")
    names = tuple(header.split(","))
    series = load_series(path)
    assert series.time_axis == axis
    assert series.columns == tuple(n for n in names if n not in axis)
    assert load_series(path, names[1:]).columns == names[1:] and load_series(path, names[1:]).time_axis == ()
    if axis and first[0].isdigit() and "-" not in first:  # a numeric time axis is a feature where asked for
        assert load_series(path, names).columns == names


def test_training_says_which_column_is_the_time_axis(tmp_path):
    path = tmp_path / "yearly.csv"
    t = np.arange(60)
    path.write_text("YEAR,a,b\n" + "".join(f"{1700 + i},{np.sin(i / 3):.4f},{np.cos(i / 4):.4f}\n" for i in t))
    result = CliRunner().invoke(main, ["train", "--data", str(path), "--timesteps", "4", "--units", "6", "--epochs", "40",
                                       "--learning-rate", "0.05", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "column 'YEAR': the time axis, not feature (name columns with --columns" in result.stdout
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["data"]["columns"] == ["a", "b"] and record["data"]["time_axis"] == ["YEAR"]


BAD_NPY = {
    "empty array": (np.zeros((0, 3)), DataError, "the array is empty"),
    "NaN": (np.array([[1.0, 2.0], [3.0, np.nan]]), DataError, "data.npy: 1 missing value (1: 1); fill the gaps"),
    "NaN in windows": (np.ones((2, 3, 2)) * [[[1, np.inf]]], DataError, "window 0, step 0, column 1 (0-based)"),
    "too many dimensions": (np.zeros((2, 2, 2, 2)), ShapeError, "expected (time, features) or (n, timesteps, features)"),
    "text": (np.array([["a", "b"]]), DataError, "expected numbers, got dtype <U1"),
    "too large for float32": (np.array([[1.0], [1e300]]), DataError, "row 1, column 0 (0-based): 1e+300 does not fit"),
}


@pytest.mark.parametrize("name", BAD_NPY)
def test_bad_npy_is_one_line_naming_where(tmp_path, name):
    array, error, message = BAD_NPY[name]
    path = tmp_path / "data.npy"
    np.save(path, array)
    with pytest.raises(error) as caught:
        load_series(path)
    assert message in str(caught.value)


def test_empty_and_unreadable_npy(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npy: the file is empty"):
        load_series(tmp_path / "empty.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="junk.npy: not a readable .npy array"):
        load_series(tmp_path / "junk.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy"):
        load_series(tmp_path / "objects.npy")


def test_constant_column_is_refused_naming_it():
    values = np.column_stack([np.arange(20.0), np.full(20, 3.0)])
    for scaling in ("none", "minmax", "standard"):
        with pytest.raises(DataError, match="column 'pressure' is constant \\(3\\) in the training data"):
            Preprocessing.fit(values, scaling=scaling, columns=("temp", "pressure"))


def test_quantiles_that_collapse_a_column_are_refused():
    values = np.zeros((100, 1))
    values[0, 0] = 5.0  # one spike; the 1% and 98% quantiles are both 0
    with pytest.raises(DataError, match="column 's': clip quantiles 0.01 and 0.98 .* both 0 .*widen --clip-quantiles"):
        Preprocessing.fit(values, (0.01, 0.98), columns=("s",))


def _series(rows, features=2, source="s.csv"):
    values = np.arange(rows * features, dtype=np.float64).reshape(rows, features)
    return Series(values, tuple(f"c{i}" for i in range(features)), source)


def test_fewer_rows_than_one_window():
    with pytest.raises(DataError, match="s.csv has 9 rows, fewer than one window of 10"):
        window_series(_series(9), timesteps=10, features=2)


def test_window_that_does_not_fit_the_model():
    with pytest.raises(ShapeError, match="s.csv: has 2 feature column\\(s\\), the model expects 5 \\(pass --features 2"):
        window_series(_series(40), timesteps=10, features=5)
    windows = Series(np.zeros((4, 8, 2)), ("0", "1"), "w.npy")
    with pytest.raises(ShapeError, match="w.npy: windows of 8 steps, the model expects 10"):
        window_series(windows, timesteps=10, features=2)


def test_split_too_small_for_a_validation_window():
    with pytest.raises(DataError, match="leaves 45 training and 5 validation rows; each needs at least one window of 6"):
        window_series(_series(50), timesteps=6, features=2, validation_fraction=0.1)
    with pytest.raises(DataError, match="rows with validation fraction 0.01"):
        split_by_time(np.zeros((20, 1)), 0.01, 2)  # rounds to no validation rows: asked for, so refused
    with pytest.raises(DataError, match="2 window\\(s\\) cannot be split"):
        window_series(Series(np.zeros((2, 3, 1)), ("0",), "w.npy"), 3, 1, validation_fraction=0.2)


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,x\n", "row 3, column 'b'"),
    ("a,b\n1,5\n2,5\n3,5\n4,5\n5,5\n6,5\n7,5\n8,5\n9,5\n10,5\n11,5\n12,5\n", "column 'b' is constant"),
    ("a,b\n1,2\n2,3\n", "data.csv has 2 rows, fewer than one window of 4"),
    ("", "data.csv: the file is empty"),
])
@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_cli_bad_data_exits_3_with_one_line_and_writes_nothing(tmp_path, text, message, command):
    data = tmp_path / "data.csv"
    data.write_text(text)
    out = tmp_path / "runs" / "out"
    result = CliRunner().invoke(main, [command, "--data", str(data), "--timesteps", "4", "--features", "2",
                                       "--validation-fraction", "0", "--epochs", "1", "--quiet", "--out", str(out)])
    assert result.exit_code == EXIT_DATA, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data.csv"]  # no folder, no staging, no lock


# ---------------------------------------------------------------- windowing and splits


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 60), timesteps=st.integers(1, 12), stride=st.integers(1, 15), features=st.integers(1, 3))
def test_windows_are_the_rows_they_claim(rows, timesteps, stride, features):
    series = np.random.default_rng(rows).normal(size=(rows, features))
    if rows < timesteps:
        with pytest.raises(DataError):
            make_windows(series, timesteps, stride)
        return
    windows = make_windows(series, timesteps, stride)
    starts = window_starts(rows, timesteps, stride)
    assert len(windows) == len(starts) == (rows - timesteps) // stride + 1
    for window, start in zip(windows, starts):
        np.testing.assert_array_equal(window, series[start:start + timesteps])
    assert starts[-1] + timesteps <= rows < starts[-1] + timesteps + stride  # the uncovered tail is < stride


def test_window_edges():
    series = np.arange(10.0)[:, None]
    assert make_windows(series, 10).shape == (1, 10, 1)  # exactly one window
    assert make_windows(series, 4, stride=100).shape == (1, 4, 1)  # a stride past the end: just the first
    assert make_windows(series, 1).shape == (10, 1, 1)
    with pytest.raises(UsageError):
        make_windows(series, 4, stride=0)


def test_a_window_is_anomalous_when_any_row_is():
    labels = np.zeros(12, dtype=bool)
    labels[6] = True
    flags = window_labels(labels, timesteps=4, stride=2)  # windows start at 0, 2, 4, 6, 8
    np.testing.assert_array_equal(flags, [False, False, True, True, False])


def test_a_missing_label_column_is_named_as_such(tmp_path):
    """Not 'the file has one feature column too many', which is what reading the features first said."""
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="d.csv: no column 'zz'; columns are a, b, label"):
        load_labelled(path, 2, None, None, "zz")


def test_labels_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("v,is_anomaly\n1,0\n2,1\n3,0\n")
    np.testing.assert_array_equal(load_labels(path, "is_anomaly"), [False, True, False])
    path.write_text("v,is_anomaly\n1,0\n2,0.5\n")
    with pytest.raises(DataError, match="row 3, column 'is_anomaly': label 0.5 is not 0 or 1"):
        load_labels(path, "is_anomaly")


@pytest.mark.parametrize("rows, fraction, timesteps, n_val", [(100, 0.2, 10, 20), (100, 0.1, 10, 10), (21, 0.5, 10, 10)])
def test_split_by_time_keeps_order_and_the_edges(rows, fraction, timesteps, n_val):
    series = np.arange(rows, dtype=np.float64)[:, None]
    train, val = split_by_time(series, fraction, timesteps)
    assert len(val) == n_val
    np.testing.assert_array_equal(np.concatenate([train, val]), series)  # nothing lost, nothing reordered
    assert train[-1, 0] < val[0, 0]  # validation is later in time


def test_no_window_straddles_the_split():
    series = Series(np.arange(100.0)[:, None], ("v",), "s.csv")
    w = window_series(series, timesteps=7, features=1, stride=3, validation_fraction=0.3)
    assert w.train.max() < 70 <= w.validation.min()
    assert len(w.train) == (70 - 7) // 3 + 1 and len(w.validation) == (30 - 7) // 3 + 1
    np.testing.assert_array_equal(w.fit_values, np.arange(70.0)[:, None])  # rows of the training part only
    assert w.info == {"source": "s.csv", "columns": ["v"], "rows": 100, "windows": 22, "validation_windows": 8}


def test_ready_made_windows_split_by_order():
    windows = np.arange(10 * 3 * 2, dtype=np.float64).reshape(10, 3, 2)
    w = window_series(Series(windows, ("0", "1"), "w.npy"), timesteps=3, features=2, validation_fraction=0.2)
    np.testing.assert_array_equal(w.train, windows[:8])
    np.testing.assert_array_equal(w.validation, windows[8:])


def test_a_stride_for_ready_made_windows_is_refused_not_ignored():
    windows = Series(np.zeros((10, 3, 2)), ("0", "1"), "w.npy")
    for stride in (1, 3):  # even 1, the series' default: the caller asked for something windows cannot give
        with pytest.raises(UsageError, match="w.npy: a stride applies to a series; this file holds ready-made windows"):
            window_series(windows, timesteps=3, features=2, stride=stride)
    assert len(window_series(Series(np.arange(9.0)[:, None], ("v",), "s.csv"), 3, 1).train) == 7  # None: stride 1


# ---------------------------------------------------------------- quantile clipping and scaling


def test_clip_bounds_are_quantiles_of_the_training_rows_only():
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, size=(500, 2))
    values[450:] += 1000  # a wild validation part must not move the bounds
    w = window_series(Series(values, ("a", "b"), "s.csv"), timesteps=5, features=2, validation_fraction=0.1)
    pre = Preprocessing.fit(w.fit_values, (0.05, 0.95))
    expected_low = np.quantile(values[:450], 0.05, axis=0).astype(np.float32)
    expected_high = np.quantile(values[:450], 0.95, axis=0).astype(np.float32)
    np.testing.assert_array_equal(np.array(pre.clip_low, np.float32), expected_low)
    np.testing.assert_array_equal(np.array(pre.clip_high, np.float32), expected_high)
    assert pre.clip_quantiles == (0.05, 0.95)


def test_clipping_prunes_extremes_to_the_bounds():
    values = np.concatenate([np.linspace(0, 1, 99), [1e6]])[:, None]
    pre = Preprocessing.fit(values, (0.0, 0.98))
    assert pre.clip_high[0] < 1.01
    out = pre.apply(np.array([[[-5.0], [0.5], [1e6]]]))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.5, pre.clip_high[0]], rtol=1e-6)
    full = Preprocessing.fit(values, (0.0, 1.0))
    assert (full.clip_low[0], full.clip_high[0]) == (0.0, 1e6)  # (0, 1): the training minimum and maximum


@pytest.mark.parametrize("quantiles", [(0.5, 0.5), (0.9, 0.1), (-0.1, 0.9), (0.1, 1.5)])
def test_impossible_quantiles(quantiles):
    with pytest.raises(UsageError, match="clip quantiles"):
        Preprocessing.fit(np.arange(10.0)[:, None], quantiles)


def test_scalings_and_their_inverse():
    rng = np.random.default_rng(1)
    values = rng.uniform(-50, 300, size=(400, 3))
    minmax = Preprocessing.fit(values, scaling="minmax")
    scaled = minmax.apply(values[None])[0]
    assert scaled.min() == pytest.approx(0, abs=1e-6) and scaled.max() == pytest.approx(1, abs=1e-6)
    standard = Preprocessing.fit(values, scaling="standard")
    scaled = standard.apply(values[None])[0]
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(scaled.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(standard.invert(scaled), values, rtol=1e-5, atol=1e-4)
    assert Preprocessing.from_dict(json.loads(json.dumps(standard.to_dict()))) == standard


# ---------------------------------------------------------------- training on a series


@pytest.fixture(scope="module")
def series_training(tmp_path_factory):
    """A short noisy two-sensor series, trained with a validation part and early stopping."""
    from edgeae.trainer.model import TrainConfig

    folder = tmp_path_factory.mktemp("series")
    t = np.arange(300)
    rng = np.random.default_rng(7)
    values = np.column_stack([np.sin(t / 5), np.cos(t / 9)]) + rng.normal(0, 0.05, (300, 2))
    path = folder / "sensors.csv"
    path.write_text("time,a,b\n" + "".join(f"{i},{x:.5f},{y:.5f}\n" for i, (x, y) in enumerate(values)))
    config = TrainConfig(timesteps=8, features=2, units=6, epochs=40, learning_rate=0.05, stride=2,
                         validation_fraction=0.25, patience=3, scaling="standard", clip_quantiles=(0.01, 0.99), seed=2)
    return trainer.train(config, path, ("a", "b")), folder


def test_early_stopping_keeps_the_best_weights(series_training):
    from edgeae.trainer.model import predict

    training, _ = series_training
    val_loss = training.history["val_loss"]
    assert len(val_loss) == len(training.history["loss"]) == training.epochs_run
    assert training.best_epoch == int(np.argmin(val_loss)) + 1
    if training.epochs_run < training.config.epochs:  # stopped: exactly `patience` epochs after the best
        assert training.epochs_run - training.best_epoch == training.config.patience
    x = training.preprocessing.apply(training.validation_windows)
    kept = float(np.mean((predict(training.autoencoder, x) - x) ** 2))
    assert kept == pytest.approx(min(val_loss), rel=1e-3)  # the weights are the best epoch's, not the last's


def test_history_and_the_data_record_are_saved_with_the_model(series_training):
    training, folder = series_training
    trainer.save_training(training, folder / "run")
    record = json.loads((folder / "run" / "training.json").read_text())
    assert record["history"]["val_loss"] == training.history["val_loss"]
    level = record["data"].pop("level")
    assert level["level"] in ("keep", "remove") and level["asked"] == training.config.level
    assert record["data"] == {"source": "sensors.csv", "columns": ["a", "b"], "rows": 300,
                              "windows": 109, "validation_windows": 34}
    assert record["best_epoch"] == training.best_epoch
    again = trainer.load_training(folder / "run")
    assert again.history == training.history and again.config == training.config


def test_progress_line_is_closed_when_training_ends(monkeypatch):
    from edgeae.trainer import model

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(model.sys, "stderr", terminal)
    report = model.print_progress(epochs=50)
    report(1, {"loss": 0.5, "val_loss": 0.6})
    report(2, {"loss": 0.4, "val_loss": 0.5})
    report(None, {})  # stopped early at epoch 2 of 50
    text = terminal.getvalue()
    assert text.endswith("\n") and "epoch 2/50  loss 4.000e-01  val_loss 5.000e-01" in text


def test_a_time_column_named_by_the_user_is_the_time_axis_never_a_feature(tmp_path):
    """`--time-column` (TrainConfig.time_column) for a time axis whose name says nothing: 'clock'."""
    data = tmp_path / "s.csv"
    data.write_text("clock,a,b\n" + "".join(f"{7 * i},{np.sin(i / 5):.4f},{np.cos(i / 7):.4f}\n" for i in range(60)))
    assert load_series(data).columns == ("clock", "a", "b")  # not a time word: a feature unless named
    series = load_series(data, time_column="clock")
    assert series.columns == ("a", "b") and series.time_axis == ("clock",)
    config = trainer.config_for(data, time_column="clock", epochs=1, units=2, timesteps=4)
    assert config.features == 2
    training = trainer.train(config, data)
    assert training.data["time_axis"] == ["clock"] and training.data["columns"] == ["a", "b"]
    with pytest.raises(DataError, match="no column 'tick' to take as the time axis"):
        load_series(data, time_column="tick")
    with pytest.raises(UsageError, match="as the time axis and as a feature"):
        load_series(data, ("clock", "a"), time_column="clock")
    with pytest.raises(UsageError, match="--time-column names a column of --data"):
        trainer.config_for(None, time_column="clock")
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    with pytest.raises(UsageError, match="--time-column applies to a CSV file"):
        load_series(tmp_path / "s.npy", time_column="clock")
