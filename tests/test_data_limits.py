"""Data at the edges of what float32, memory and the file system allow: each case is one
clear line and the right exit code, never a traceback, a numpy warning or a wrong number."""
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.data import series as data
from edgeae.cli import main
from edgeae.data.series import FLOAT32_MAX, load_series
from edgeae.data.windows import Preprocessing
from edgeae.contract.errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError

# A numpy RuntimeWarning (overflow, invalid value) fails these tests instead of passing unseen.
pytestmark = pytest.mark.filterwarnings("error")


def _csv(path, columns, rows):
    path.write_text(",".join(columns) + "\n" + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows))
    return path


def _cli(args):
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.exit_code, lines


def _train_cli(tmp_path, path, *extra):
    """`edgeae train` on a file; returns (exit code, stderr lines), and checks nothing was written."""
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, lines = _cli(["train", "--data", str(path), "--timesteps", "4", "--units", "3", "--epochs", "3",
                        "--quiet", "--out", str(tmp_path / "out"), *extra])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no folder, no staging, no lock
    return code, lines


# ---------------------------------------------------------------- values float32 cannot carry


@pytest.mark.parametrize("scaling", ["minmax", "standard"])
def test_a_range_too_narrow_to_scale_is_refused_without_warnings(scaling):
    values = np.column_stack([np.arange(30.0), np.where(np.arange(30) % 2, 1e-40, 0.0)])
    with pytest.raises(DataError, match=r"column 'b': its training range \(0 to 1e-40\) is too narrow to scale"):
        Preprocessing.fit(values, scaling=scaling, columns=("a", "b"))


def test_a_range_that_rounds_away_in_float32_is_refused():
    values = np.column_stack([np.arange(30.0), np.where(np.arange(30) % 2, 1e-320, 0.0)])
    with pytest.raises(DataError, match=r"column 'b': .* rounds to zero range in float32"):
        Preprocessing.fit(values, columns=("a", "b"))


@pytest.mark.parametrize("scaling", ["minmax", "standard"])
def test_a_range_too_wide_to_scale_is_refused(scaling):
    values = np.where(np.arange(30) % 2, 3e38, -3e38)[:, None]
    with pytest.raises(DataError, match=r"column 'v': its training range \(-3e\+38 to 3e\+38\) is too wide"):
        Preprocessing.fit(values, scaling=scaling, columns=("v",))


def test_unscaled_values_beyond_the_training_limit_are_refused_and_scaling_fixes_it():
    values = np.column_stack([np.sin(np.arange(40.0)), np.arange(40.0) * 3e18])
    with pytest.raises(DataError, match=r"column 'b': values as large as 1.17e\+20 would reach the model.*"
                                        "use --scaling standard"):
        Preprocessing.fit(values, columns=("a", "b"))
    standard = Preprocessing.fit(values, scaling="standard", columns=("a", "b"))
    assert np.abs(standard.apply(values)).max() < 2
    Preprocessing.fit(values / 1000, columns=("a", "b"))  # 1.17e20 is beyond the limit, 1.17e17 is not


@pytest.mark.parametrize("rows, scaling, message", [
    ([[np.sin(i), (i % 7) * 1.5e19] for i in range(40)], "none", "column 'b': values as large as 9e+19"),
    ([[np.sin(i), (-1) ** i * 3e38] for i in range(40)], "none", "column 'b': values as large as 3e+38"),
    ([[np.sin(i), (-1) ** i * 3e38] for i in range(40)], "standard", "column 'b': its training range"),
    ([[np.sin(i), (-1) ** i * 3e38] for i in range(40)], "minmax", "column 'b': its training range"),
    ([[np.sin(i), (i % 2) * 1e-40] for i in range(40)], "minmax", "column 'b': its training range (0 to 1e-40)"),
    ([[np.sin(i), (i % 2) * 1e-40] for i in range(40)], "standard", "column 'b': its training range (0 to 1e-40)"),
])
def test_cli_refuses_values_float32_cannot_train_on_in_one_line(tmp_path, rows, scaling, message):
    path = _csv(tmp_path / "d.csv", ["a", "b"], rows)
    code, lines = _train_cli(tmp_path, path, "--scaling", scaling)
    assert code == EXIT_DATA and len(lines) == 1 and message in lines[0], lines


def test_parity_inputs_near_the_float32_limit_stay_finite():
    from edgeae.verifier.verification import parity_inputs

    pre = Preprocessing((-3e38,), (3e38,), (0.0,), (1.0,))
    inputs = parity_inputs(np.zeros((2, 4, 1)), pre, seed=1)
    assert all(np.isfinite(x).all() for x in inputs.values())
    assert np.abs(inputs["outside_range"]).max() > 3e38  # still beyond the training range, up to float32's end


# ---------------------------------------------------------------- training that diverges


def _windows():
    return np.sin(np.arange(20 * 4 * 2).reshape(20, 4, 2) / 3)


def test_a_diverging_loss_stops_training_with_a_data_error():
    from edgeae.trainer.model import TrainConfig, train

    config = TrainConfig(timesteps=4, features=2, units=8, epochs=50, learning_rate=9.0)
    epochs_run = []  # train's progress call, once after each epoch that ran
    with pytest.raises(DataError, match=r"training diverged \(loss became nan at epoch (\d+)\): .*learning rate \(9\)") \
            as caught:
        train(config, _windows(), progress=lambda epoch, logs: epoch is not None and epochs_run.append(epoch))
    # Stopped at the first bad epoch, not after all 50: the epochs that ran end at the one the error names.
    bad = int(re.search(r"at epoch (\d+)", str(caught.value)).group(1))
    assert epochs_run == list(range(1, bad + 1)) and bad < config.epochs


def test_weights_that_diverge_in_the_last_update_are_caught():
    """One batch per epoch: epoch 3's loss is computed before its update turns the weights non-finite."""
    from edgeae.trainer.model import TrainConfig, train

    config = TrainConfig(timesteps=4, features=2, units=8, epochs=3, learning_rate=9.0)
    with pytest.raises(DataError, match=r"training diverged \(the weights became non-finite at epoch 3\)"):
        train(config, _windows())


def test_cli_divergence_exits_3_and_saves_nothing(tmp_path):
    path = _csv(tmp_path / "d.csv", ["a", "b"], [[np.sin(i / 5), np.cos(i / 3)] for i in range(80)])
    code, lines = _train_cli(tmp_path, path, "--units", "8", "--epochs", "5", "--learning-rate", "9",
                             "--activation", "relu", "--scaling", "none")  # unbounded units, as the API test's
    assert code == EXIT_DATA and len(lines) == 1 and "training diverged (loss became nan" in lines[0], lines


def test_reconstructions_that_overflow_once_unscaled_are_refused(tmp_path):
    """Min-max over a range ending at -3.4e38: a reconstruction slightly below 0 unscales to -inf."""
    low = -FLOAT32_MAX
    rows = [[np.sin(i / 5), float(np.float32(low + 8.4e37 * (0.5 + 0.5 * np.sin(i / 3))))] for i in range(80)]
    path = _csv(tmp_path / "d.csv", ["a", "b"], rows)
    code, lines = _train_cli(tmp_path, path, "--units", "8", "--epochs", "1", "--scaling", "minmax")
    assert code == EXIT_DATA and len(lines) == 1 and "reconstructions of the training data overflow" in lines[0], lines


# ---------------------------------------------------------------- files


def _bomb(path, shape, data_bytes):
    """A valid .npy header claiming `shape` of float64, followed by `data_bytes` bytes."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * data_bytes)
    return path


def test_npy_header_claiming_more_than_the_file_holds(tmp_path):
    path = _bomb(tmp_path / "bomb.npy", (10**10, 5), 400)
    assert path.stat().st_size == 528
    with pytest.raises(DataError, match=r"bomb.npy: the header claims shape \(10000000000, 5\), 50000000000 values "
                                        r"\(400000000000 bytes\), but the file holds only 400 bytes"):
        load_series(path)
    code, lines = _train_cli(tmp_path, path)
    assert code == EXIT_DATA and len(lines) == 1 and "claims shape" in lines[0], lines


def test_npy_with_bytes_beyond_its_shape(tmp_path):
    path = tmp_path / "long.npy"
    np.save(path, np.arange(6.0).reshape(3, 2))
    with open(path, "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(DataError, match=r"claims shape \(3, 2\), 6 values \(48 bytes\), but the file holds 56 bytes"):
        load_series(path)


def test_npy_too_large_for_memory(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.save(path, np.arange(60, dtype=np.float32).reshape(20, 3))
    load_series(path)
    monkeypatch.setattr(data, "_memory_bytes", lambda: 400)  # 240 bytes of float32 plus a 480-byte float64 copy
    with pytest.raises(DataError, match="big.npy: 60 values are too many to load: they need 0.0 GB"):
        load_series(path)
    monkeypatch.setattr(data, "_memory_bytes", lambda: 10**12)

    def refuse(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(data.np, "load", refuse)  # the machine has the memory, but not free
    with pytest.raises(DataError, match=r"big.npy: shape \(20, 3\) is too large to load"):
        load_series(path)


def test_npy_format_version_3_is_refused_before_reading(tmp_path):
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000,), }".ljust(117) + b"\n"
    path = tmp_path / "v3.npy"
    path.write_bytes(b"\x93NUMPY\x03\x00" + len(header).to_bytes(4, "little") + header)
    with pytest.raises(DataError, match="v3.npy: not a readable .npy array: format version 3.0 holds no plain numbers"):
        load_series(path)


def test_a_path_that_is_not_a_regular_file(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(UsageError, match="data file is not a regular file: .*folder.csv"):
        load_series(folder)
    with pytest.raises(UsageError, match="data file not found"):
        load_series(tmp_path / "missing.csv")
    code, lines = _cli(["train", "--data", str(folder), "--out", str(tmp_path / "out")])
    assert code == EXIT_USAGE and lines == [f"error: data file is not a regular file: {folder}"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_not_read(tmp_path):
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    with pytest.raises(UsageError, match="is not a regular file"):
        load_series(pipe)  # would block forever if opened


# ---------------------------------------------------------------- CSV cells and headers


@pytest.mark.parametrize("cell", ["1_000", "\u0661\u0662", "\uff11"])
def test_numbers_python_accepts_but_a_data_file_does_not_mean(tmp_path, cell):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b\n1,2\n3,{cell}\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"d.csv: row 3, column 'b': '{cell}' is not a number"):
        load_series(path)


def test_a_very_wide_header_is_read_in_linear_time_and_named_briefly(tmp_path):
    n = 60_000  # the quadratic lookup took about 45 s for this many
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join(["1"] * n) + "\n")
    assert load_series(path).values.shape == (1, n)
    # Linear, counted rather than timed: header names that count their comparisons, the last 200 looked up.
    # A dict lookup compares a name about once (three lookups per name asked for), whatever the width; a list
    # search compares it with every column before it, about 20,000 times per name here: 10 per name separates them.
    compared = [0]

    class Name(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            compared[0] += 1
            return str.__eq__(self, other)

    header = [Name(f"c{i}") for i in range(20_000)]
    wanted = tuple(f"c{i}" for i in range(19_800, 20_000))
    assert data._select_columns(header, wanted, "wide.csv") == list(range(19_800, 20_000))
    assert 0 < compared[0] <= 10 * len(wanted)
    with pytest.raises(DataError) as caught:
        load_series(path, ("zzz",))
    message = str(caught.value)
    assert message == f"wide.csv: no column 'zzz'; columns are {', '.join(f'c{i}' for i in range(10))}, ... " \
                      f"({n} in all)"

