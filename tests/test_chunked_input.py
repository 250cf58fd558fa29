"""score, encode and reconstruct read their input in chunks (issue 31, item 4): the same results,
bit for bit, as one whole-file run, whatever the chunk size, stride or missing-value policy."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract.errors import EXIT_DATA
from edgeae.data import chunks
from edgeae.data.chunks import GapFiller, Rows, WindowCutter
from edgeae.data.gaps import fill_gaps
from edgeae.data.series import load_features, with_missing
from edgeae.data.windows import make_windows, window_starts

SMALL = (1, 2, 3, 5, 7)  # rows per chunk: boundaries fall on every row, inside and around each gap


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def holed_csv(tmp_path, rng):
    """60 rows of t, a, b, c: a gap at the start (c), short ones of 1-3 rows, a long one (8 rows of
    a), one at the end (b); times of varying width."""
    values = rng.uniform(0, 1, (60, 3))
    text = [[f"{v:.6f}" for v in row] for row in values]
    holes = {0: [0, 1], 2: [7, 8, 9], 1: [11, 20, 21, 33, 34, 35, 58, 59]}
    holes[0] += list(range(40, 48))
    for col, rows in holes.items():
        for row in rows:
            text[row][col] = "NA"
    text[14][2] = ""
    text[15][0] = "nan"
    times = [f"2024-01-{1 + i // 24:02d} {i % 24}:00" for i in range(60)]
    path = tmp_path / "holed.csv"
    path.write_text("t,a,b,c\n" + "\n".join(",".join([t, *row]) for t, row in zip(times, text)) + "\n")
    return path


@pytest.fixture()
def small_batches(monkeypatch):
    """Every loaded model runs 4 windows per call, so batches are regrouped across chunks."""
    load = runtime.load

    def loaded(*args, **kwargs):
        edge = load(*args, **kwargs)
        for model in edge.models.values():
            model.chunk = 4
        return edge
    monkeypatch.setattr(runtime, "load", loaded)
    return loaded


def whole_file(edge, path, stride, missing, max_gap=5):
    """The reference: the whole series loaded, filled and cut at once, every window scored in one call."""
    series = load_features(path, edge.features, ("a", "b", "c"), None, missing_ok=True)
    filled, _ = with_missing(series, missing, max_gap)
    windows = make_windows(filled.values, edge.timesteps, stride)
    return edge.score(windows), window_starts(len(filled.values), edge.timesteps, stride)


def chunked(monkeypatch, rows, *args):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", rows)
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("stride", [1, 4, 9])
@pytest.mark.parametrize("missing", ["skip", "interpolate"])
def test_score_equals_the_whole_file_run_for_any_chunk_size(tiny_export, holed_csv, monkeypatch, small_batches,
                                                            stride, missing):
    edge = small_batches(tiny_export, "cpu")
    reference, starts = whole_file(edge, holed_csv, stride, missing)
    args = ("score", tiny_export, holed_csv, "--columns", "a,b,c", "--stride", stride, "--missing", missing,
            "--threshold", "0.01", "--provider", "cpu", "--json")
    outputs = []
    for rows in (100_000, *SMALL):
        result = chunked(monkeypatch, rows, *args)
        out = json.loads(result.stdout)
        outputs.append((out, result.stderr))
        scores = np.array([np.nan if s is None else s for s in out["score"]])
        np.testing.assert_array_equal(scores, reference.scores)  # bit for bit: NaN where missing
        assert out["window_start"] == starts.tolist()
        assert out["missing"] == reference.missing.astype(int).tolist()
        parts = np.array([[np.nan if p is None else p for p in out[f"score_{c}"]] for c in "abc"]).T
        np.testing.assert_array_equal(parts, reference.contributions)
    assert all(o == outputs[0] for o in outputs)  # drift, missing-window summary and what stderr says too
    assert (outputs[0][0]["missing_windows"]["interpolated"] > 0) == (missing == "interpolate")


@pytest.mark.parametrize("command", ["score", "encode", "reconstruct"])
@pytest.mark.parametrize("suffix", [".csv", ".npz", ".json"])
def test_every_output_is_the_same_file_for_any_chunk_size(tiny_export, holed_csv, tmp_path, monkeypatch,
                                                          small_batches, command, suffix):
    if suffix == ".npz" and command != "score":
        suffix = ".npy"
    extra = ("--time-column", "t") if command == "score" else ("--columns", "a,b,c")
    files = []
    for rows in (100_000, 3, 7):
        out = tmp_path / f"{rows}{suffix}"
        chunked(monkeypatch, rows, command, tiny_export, holed_csv, "-o", out, "--missing", "interpolate",
                "--stride", 2, *extra)
        files.append(out.read_bytes())
    assert files[1:] == files[:1] * 2


def test_time_columns_and_gaps_in_npz_keep_the_whole_files_types(tiny_export, holed_csv, tmp_path, monkeypatch):
    saved = []
    for rows in (100_000, 2):
        out = tmp_path / f"{rows}.npz"
        chunked(monkeypatch, rows, "score", tiny_export, holed_csv, "--time-column", "t", "-o", out, "--stride", 5)
        with np.load(out) as arrays:
            saved.append({key: arrays[key] for key in arrays.files})
    assert saved[0]["start_time"].dtype == np.dtype("<U16") and saved[0]["start_time"][1] == "2024-01-01 5:00"
    for key, value in saved[0].items():
        assert value.dtype == saved[1][key].dtype
        np.testing.assert_array_equal(value, saved[1][key])


def test_refuse_still_names_every_columns_count_before_anything_is_written(tiny_export, holed_csv, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 4)
    out = tmp_path / "scores.csv"
    result = run("score", tiny_export, holed_csv, "--missing", "refuse", "--columns", "a,b,c", "-o", out)
    assert result.exit_code == EXIT_DATA
    assert "holed.csv: 23 missing values (a: 11, b: 8, c: 4); pass --missing skip" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [holed_csv]


def test_a_bad_cell_in_a_later_chunk_is_refused_with_its_line_and_no_output(tiny_export, tmp_path, monkeypatch,
                                                                           rng):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 4)
    text = [",".join(f"{v:.4f}" for v in row) for row in rng.uniform(0, 1, (50, 3))]
    text[38] = "0.1,oops,0.3"  # line 40: the header is line 1
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n" + "\n".join(text) + "\n")
    out = tmp_path / "scores.csv"
    for target in (out, None):
        result = run("score", tiny_export, path, *(("-o", target) if target else ()))
        assert result.exit_code == EXIT_DATA
        assert result.stderr.strip() == "error: bad.csv: row 40, column 'b': 'oops' is not a number"
        assert result.stdout == "" and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.csv"]  # no staged file left either


def test_a_blank_line_inside_the_data_is_refused_and_trailing_ones_dropped(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 2)
    rows = "\n".join("0.1,0.2,0.3" for _ in range(12))
    path = tmp_path / "blank.csv"
    path.write_text(f"a,b,c\n{rows}\n\n\n")
    assert len(json.loads(run("score", tiny_export, path, "--json").stdout)["score"]) == 12 - 6 + 1
    path.write_text(f"a,b,c\n{rows}\n\n{rows}\n")
    result = run("score", tiny_export, path)
    assert result.exit_code == EXIT_DATA and "blank.csv: row 14 is empty" in result.stderr


def test_a_missing_time_is_named_after_the_values_as_before(tiny_export, holed_csv, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 3)
    lines = holed_csv.read_text().splitlines()
    lines[30] = "," + lines[30].split(",", 1)[1]
    holed_csv.write_text("\n".join(lines) + "\n")
    result = run("score", tiny_export, holed_csv, "--time-column", "t")
    assert result.exit_code == EXIT_DATA and "holed.csv: row 31, column 't': missing time" in result.stderr
    lines[50] = lines[50].rsplit(",", 1)[0] + ",x"
    holed_csv.write_text("\n".join(lines) + "\n")
    assert "row 51" in run("score", tiny_export, holed_csv, "--time-column", "t").stderr  # the value first


def _runs(rng, rows, features):
    """A series with missing runs of every length from 1 to 9, at the start and end too."""
    values = rng.uniform(-1, 1, (rows, features))
    for j in range(features):
        at = 0
        while at < rows:
            length = int(rng.integers(1, 10))
            if rng.random() < 0.4:
                values[at:at + length, j] = np.nan
            at += length + int(rng.integers(0, 6))
    return values


@pytest.mark.parametrize("max_gap", [0, 1, 3, 5])
def test_gap_filler_gives_fill_gaps_values_across_any_chunk_boundary(rng, max_gap):
    for _ in range(20):
        values = _runs(rng, int(rng.integers(1, 80)), 3)
        whole, count = fill_gaps(values, max_gap)
        for size in (1, 2, 3, 4, 7, 11):
            filler = GapFiller(max_gap)
            parts = [filler.push(Rows(s, values[s:s + size])) for s in range(0, len(values), size)]
            parts.append(filler.finish())
            assert [p.start for p in parts if len(p.values)] == sorted({p.start for p in parts if len(p.values)})
            np.testing.assert_array_equal(np.concatenate([p.values for p in parts]), whole)
            assert filler.filled == count


@pytest.mark.parametrize("stride", [1, 2, 3, 6, 7, 20])
def test_window_cutter_cuts_make_windows_windows_for_any_stride(rng, stride):
    values = rng.uniform(0, 1, (47, 2))
    whole = make_windows(values, 6, stride)
    for size in (1, 2, 5, 6, 13, 100):
        cutter = WindowCutter(6, stride)
        batches = [cutter.push(Rows(s, values[s:s + size])) for s in range(0, len(values), size)]
        batches = [b for b in batches if b is not None]
        np.testing.assert_array_equal(np.concatenate([b.windows for b in batches]), whole)
        np.testing.assert_array_equal(np.concatenate([b.starts for b in batches]), window_starts(47, 6, stride))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
def test_an_npy_is_memory_mapped_and_scores_as_the_whole_array(tiny_export, tmp_path, monkeypatch, dtype):
    """A streamed .npy is read through a memory map, a chunk at a time, in its own dtype: the scores are
    those of the whole array loaded and scored at once, bit for bit."""
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 7)
    values = (np.random.default_rng(5).uniform(0, 1, (90, 3)) * (100 if dtype == np.int16 else 1)).astype(dtype)
    path = tmp_path / "series.npy"
    np.save(path, values)
    mapped = load_features(path, 3, missing_ok=True, mapped=True)
    assert isinstance(mapped.values, np.memmap) and mapped.values.dtype == dtype  # not read into memory
    result = run("score", tiny_export, path, "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    got = np.array(json.loads(result.stdout)["score"])
    edge = runtime.load(tiny_export, "cpu")
    expected = edge.score(make_windows(values.astype(np.float64), edge.timesteps, edge.stride)).scores
    assert len(got) == len(expected) == 90 - edge.timesteps + 1
    np.testing.assert_array_equal(got, expected)


def test_an_npy_value_past_float32_is_named_by_its_row_in_any_chunk(tmp_path, monkeypatch):
    from edgeae.data import series as series_module

    monkeypatch.setattr(series_module, "CHECK_ROWS", 16)
    values = np.zeros((100, 3))
    values[77, 2] = 1e300
    path = tmp_path / "big.npy"
    np.save(path, values)
    for mapped in (True, False):
        with pytest.raises(ValueError, match=r"big.npy: row 77, column 2 \(0-based\): 1e\+300 does not fit in float32"):
            load_features(path, 3, mapped=mapped)
    values[77, 2], values[40, 0] = 0, np.inf
    np.save(path, values)
    with pytest.raises(ValueError, match=r"row 40, column 0 \(0-based\): inf is not a finite number"):
        load_features(path, 3, mapped=True)
