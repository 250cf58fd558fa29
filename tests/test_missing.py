"""Missing values (issue 28): read as NaN, refused with every column's count, skipped or interpolated
in training, and in scoring reported as missing windows (neither flagged nor normal), never dropped."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.cli.render import missing_lines
from edgeae.contract.errors import EXIT_DATA, DataError, UsageError
from edgeae.data.gaps import MAX_INTERPOLATED_GAP, fill_gaps
from edgeae.data.series import Series, load_series, with_missing
from edgeae.data.windows import make_windows, window_series
from edgeae.runtime.streaming import StreamScorer

from .conftest import EXPORTED

CO2 = Path(__file__).parent / "data" / "co2_mauna_loa_weekly.csv"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, code=EXIT_DATA) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- reading


def test_the_co2_file_loads_with_its_59_missing_values_counted():
    series = load_series(CO2, missing_ok=True)
    assert series.columns == ("co2",) and series.time_axis == ("date",)
    assert series.missing == {"co2": 59} and int(np.isnan(series.values).sum()) == 59
    with pytest.raises(DataError, match=r"^co2_mauna_loa_weekly.csv: 59 missing values \(co2: 59\); fill the gaps"):
        load_series(CO2)  # a caller that does not say what to do with gaps gets the count, not NaN


def test_every_missing_mark_is_nan_and_bad_cells_keep_their_messages(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,c\n1,2,3\n,NA,nan\nNaN, null ,NULL\nN/A,n/a,na\n4,5,6\n")
    series = load_series(path, missing_ok=True)
    assert np.isnan(series.values[1:4]).all() and series.missing == {"a": 3, "b": 3, "c": 3}
    np.testing.assert_array_equal(series.values[[0, 4]], [[1, 2, 3], [4, 5, 6]])
    for cell, words in [("inf", "'inf' is not a finite number"), ("x7", "'x7' is not a number"),
                        ("1e39", "1e39 does not fit in float32"), ("none", "'none' is not a number")]:
        path.write_text(f"a,b\n1,2\n3,{cell}\n")
        with pytest.raises(DataError, match=f"row 3, column 'b': {words}"):
            load_series(path, missing_ok=True)
    path.write_text("a;b\n1,5;2\n")
    with pytest.raises(DataError, match="has a decimal comma"):
        load_series(path, missing_ok=True)


def test_a_blank_line_is_a_missing_value_in_a_one_column_file_only(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("co2\n1\n\n3\n")
    np.testing.assert_array_equal(load_series(path, missing_ok=True).values[:, 0], [1, np.nan, 3])
    path.write_text("a,b\n1,2\n\n3,4\n")
    with pytest.raises(DataError, match="row 3 is empty"):
        load_series(path, missing_ok=True)


def test_nan_in_an_npy_is_missing_and_infinity_is_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, np.nan]]))
    assert load_series(tmp_path / "s.npy", missing_ok=True).missing == {"0": 1, "1": 2}
    np.save(tmp_path / "s.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(DataError, match=r"row 0, column 1 \(0-based\): inf is not a finite number"):
        load_series(tmp_path / "s.npy", missing_ok=True)


# ---------------------------------------------------------------- policies


def test_refuse_names_every_column_with_its_count(tmp_path):
    path = tmp_path / "co2.csv"
    path.write_text("a,b,c\n1,,3\n2,3,\n3,4,\n4,5,6\n5,NA,7\n6,7,8\n")
    series = load_series(path, missing_ok=True)
    with pytest.raises(DataError) as caught:
        window_series(series, 2, 3, missing="refuse")
    assert str(caught.value) == "co2.csv: 4 missing values (b: 2, c: 2); pass --missing skip or --missing interpolate"
    line = one_error_line(run("train", "--data", path, "--missing", "refuse", "--timesteps", "2", "--epochs", "1",
                              "--quiet", "--out", tmp_path / "run"))
    assert "co2.csv: 4 missing values (b: 2, c: 2); pass --missing skip or --missing interpolate" in line
    assert not (tmp_path / "run").exists()


def test_interpolation_fills_gaps_up_to_the_limit_and_leaves_the_rest():
    column = np.arange(30, dtype=float)
    gaps = {"start": [0, 1], "one": [4], "at limit": list(range(8, 8 + MAX_INTERPOLATED_GAP)),
            "too long": list(range(15, 16 + MAX_INTERPOLATED_GAP)), "end": [28, 29]}
    holed = column.copy()
    for rows in gaps.values():
        holed[rows] = np.nan
    values = np.stack([holed, holed * 2], axis=1)
    filled, count = fill_gaps(values, MAX_INTERPOLATED_GAP)
    assert count == 2 * (1 + MAX_INTERPOLATED_GAP)
    inside = gaps["one"] + gaps["at limit"]
    np.testing.assert_allclose(filled[inside], np.stack([column, column * 2], axis=1)[inside])  # on the line
    left = gaps["start"] + gaps["too long"] + gaps["end"]
    assert np.isnan(filled[left]).all() and not np.isnan(np.delete(filled, left, axis=0)).any()
    assert fill_gaps(values, 0)[1] == 0 and np.isnan(values).sum() == len(left + inside) * 2  # the input is kept


def test_the_co2_gaps_up_to_five_weeks_are_filled_and_the_outages_left():
    series = load_series(CO2, missing_ok=True)
    filled, count = with_missing(series, "interpolate", MAX_INTERPOLATED_GAP)
    assert count == 33 and filled.missing == {"co2": 26}  # runs of 8 and 18 weeks stay
    assert with_missing(series, "skip", MAX_INTERPOLATED_GAP) == (series, 0)
    with pytest.raises(UsageError, match="missing must be one of refuse, skip, interpolate"):
        with_missing(series, "drop", 5)


@pytest.mark.parametrize("missing", ["skip", "interpolate"])
def test_training_leaves_out_each_window_holding_a_gap_and_records_it(missing):
    series = load_series(CO2, missing_ok=True)
    windows = window_series(series, 8, 1, stride=4, validation_fraction=0.2, missing=missing)
    assert np.isfinite(windows.train).all() and np.isfinite(windows.validation).all()
    assert np.isfinite(windows.fit_values).all()
    values = with_missing(series, missing, MAX_INTERPOLATED_GAP)[0].values
    rows = len(values) - round(len(values) * 0.2)
    cut = [make_windows(part, 8, 4) for part in (values[:rows], values[rows:])]
    holding = sum(int(np.isnan(w).any(axis=(1, 2)).sum()) for w in cut)
    assert len(windows.train) + len(windows.validation) + holding == sum(map(len, cut))
    assert windows.info["missing"] == {"policy": missing, "max_gap": MAX_INTERPOLATED_GAP, "values": 59,
                                       "columns": {"co2": 59}, "interpolated": 33 if missing == "interpolate" else 0,
                                       "windows_left_out": holding}
    [line] = missing_lines({"data": windows.info})
    assert line.startswith("missing values: 59 (co2: 59); ") and f"{holding} window(s) holding a gap left out" in line
    assert ("33 interpolated (gaps of up to 5 rows)" in line) == (missing == "interpolate")


def test_a_series_whose_every_training_window_has_a_gap_is_refused():
    values = np.arange(20, dtype=float)[:, None]
    values[::3] = np.nan
    with pytest.raises(DataError, match="every training window holds a missing value"):
        window_series(Series(values, ("a",), "s.csv"), 4, 1, missing="skip")


def test_the_co2_file_trains_with_default_flags_and_says_what_it_did_with_the_gaps(tmp_path):
    result = run("train", "--data", CO2, "--timesteps", "8", "--units", "8", "--epochs", "30", "--stride", "4",
                 "--learning-rate", "0.01", "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("missing values")]
    assert line.startswith("missing values: 59 (co2: 59); 33 interpolated (gaps of up to 5 rows), ")
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["config"]["missing"] == "interpolate" and record["config"]["max_gap"] == MAX_INTERPOLATED_GAP
    assert record["data"]["missing"]["interpolated"] == 33 and record["data"]["missing"]["windows_left_out"] > 0


# ---------------------------------------------------------------- scoring


@pytest.fixture()
def gappy(tiny_export, rng):
    """The tiny export, 12 windows of its shape, and the same with a gap in windows 3 and 7."""
    edge = runtime.load(tiny_export, "cpu")
    windows = rng.uniform(0, 1, (12, edge.timesteps, edge.features)).astype(np.float32)
    holed = windows.copy()
    holed[3, 2, 1] = np.nan
    holed[7, :, :] = np.nan
    return edge, windows, holed


def test_score_marks_windows_with_a_gap_missing_and_leaves_the_others_as_they_were(gappy):
    edge, windows, holed = gappy
    gap = np.isin(np.arange(12), [3, 7])
    before, after = edge.score(windows, chunk=1, threshold=0.0), edge.score(holed, chunk=1, threshold=0.0)
    np.testing.assert_array_equal(after.missing, gap)
    assert np.isnan(after.scores[gap]).all() and np.isnan(after.contributions[gap]).all()
    assert not after.flags[gap].any() and after.flags[~gap].all()  # threshold 0 flags every scored window
    np.testing.assert_array_equal(after.scores[~gap], before.scores[~gap])
    np.testing.assert_array_equal(after.contributions[~gap], before.contributions[~gap])
    assert not before.missing.any()
    batch = edge.score(holed)  # the default chunk: the complete windows are scored as a batch of their own
    np.testing.assert_allclose(batch.scores[~gap], edge.score(windows[~gap]).scores, rtol=0)
    as_json = after.to_dict()
    assert as_json["missing"] == 2 and as_json["scores"][3] is None and as_json["flags"][7] is None
    assert as_json["flags"][0] is True and json.loads(json.dumps(as_json)) == as_json
    one = edge.score(holed[3])
    assert one.missing.shape == () and bool(one.missing) and np.isnan(one.scores) and not one.flags


def test_encode_and_reconstruct_give_nan_rows_for_windows_with_a_gap(gappy):
    edge, windows, holed = gappy
    gap = np.isin(np.arange(12), [3, 7])
    for method in (edge.encode, edge.reconstruct):
        got, want = method(holed), method(windows[~gap])
        assert np.isnan(got[gap]).all() and np.isfinite(got[~gap]).all()
        np.testing.assert_array_equal(got[~gap], want)
        assert np.isnan(method(holed[7])).all()


def test_scoring_still_refuses_infinity_and_wrong_shapes(gappy):
    edge, windows, _ = gappy
    bad = windows.copy()
    bad[1, 0, 0] = np.inf
    with pytest.raises(DataError, match="inf.* at window 1, step 0, feature 0 is not finite"):
        edge.score(bad)
    with pytest.raises(DataError, match="does not fit in float32"):
        edge.encode(np.where(np.isnan(bad), 0, 1e39))
    with pytest.raises(DataError, match="expected"):
        edge.score(windows[:, :, :2])


@pytest.fixture()
def gappy_csv(tmp_path, rng):
    """20 rows of a, b, c with a single-row gap (row 5, 0-based) and a 7-row one (rows 12-18)."""
    values = rng.uniform(0, 1, (20, 3))
    text = [[f"{v:.6f}" for v in row] for row in values]
    text[5][1] = ""
    for row in range(12, 19):
        text[row][2] = "NA"
    path = tmp_path / "gappy.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(row) for row in text) + "\n")
    return path


def test_cli_score_reports_the_missing_windows_in_json_text_and_output(tiny_export, gappy_csv, tmp_path):
    result = run("score", tiny_export, gappy_csv, "--threshold", "0", "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    gap = [start for start in range(15) if start <= 5 < start + 6 or start + 5 >= 12]  # windows of 6 rows
    assert [i for i, m in enumerate(out["missing"]) if m] == gap and len(out["score"]) == 15
    assert all(out["score"][i] is None and out["anomaly"][i] is None for i in gap)
    assert all(out["anomaly"][i] == 1 for i in range(15) if i not in gap)
    record = out["missing_windows"]
    assert record["count"] == len(gap) and record["index"] == gap and record["window_start"] == gap
    assert record["values"] == 8 and record["columns"] == {"b": 1, "c": 7} and record["policy"] == "skip"
    assert f"missing values: 8 (b: 1, c: 7); {len(gap)} of 15 windows hold one: not scored, marked missing " \
           "(windows starting at rows 0-5, 7-14)" in result.stderr
    csv_out = tmp_path / "scores.csv"
    result = run("score", tiny_export, gappy_csv, "--threshold", "0", "-o", csv_out, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["missing_windows"]["count"] == len(gap)
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "score,anomaly,window_start,score_a,score_b,score_c,missing" and len(lines) == 16
    for i, line in enumerate(lines[1:]):
        score, flag, start, *parts, missing = line.split(",")
        assert int(start) == i and missing == str(int(i in gap))
        assert (score == flag == "" and parts == ["", "", ""]) if i in gap else (float(score) > 0 and flag == "1")


def test_cli_score_missing_policies(tiny_export, gappy_csv):
    line = one_error_line(run("score", tiny_export, gappy_csv, "--missing", "refuse"))
    assert "gappy.csv: 8 missing values (b: 1, c: 7); pass --missing skip or --missing interpolate" in line
    result = run("score", tiny_export, gappy_csv, "--missing", "interpolate", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["missing_windows"]
    assert record["interpolated"] == 1 and record["index"] == list(range(7, 15))  # the 7-row gap stays
    assert "1 interpolated (gaps of up to 5 rows)" in result.stderr
    result = run("score", tiny_export, gappy_csv, "--missing", "interpolate", "--max-gap", "7", "--json")
    assert json.loads(result.stdout)["missing_windows"]["count"] == 0
    assert "8 interpolated (gaps of up to 7 rows); no window holds one" in result.stderr


def test_cli_encode_and_reconstruct_mark_missing_windows(tiny_export, gappy_csv, tmp_path):
    result = run("encode", tiny_export, gappy_csv, "-o", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["missing"][:6] == [1] * 6 and saved["missing"][6] == 0 and saved["embedding"][0] == [None] * 8
    assert "not encoded, marked missing" in result.stderr
    result = run("reconstruct", tiny_export, gappy_csv, "-o", tmp_path / "r.npy")
    reconstruction = np.load(tmp_path / "r.npy")
    assert np.isnan(reconstruction[:6]).all() and np.isfinite(reconstruction[6]).all()


def test_a_stream_reports_a_window_with_a_gap_as_missing():
    model = runtime.load(EXPORTED, "cpu")
    rng = np.random.default_rng(4)
    series = rng.uniform(0, 1, (30, model.features)).astype(np.float32)
    series[14, 2] = np.nan
    results = StreamScorer(model, threshold=0.0).push(series)
    assert [r.start for r in results] == list(range(21))
    gap = [r for r in results if r.missing]
    assert [r.start for r in gap] == list(range(5, 15))  # every window of 10 rows holding row 14
    assert all(r.anomaly is None and np.isnan(r.score) and np.isnan(r.contributions).all() for r in gap)
    batch = model.score(make_windows(series, model.timesteps), chunk=1, threshold=0.0)
    for r in results:
        if not r.missing:
            assert r.score == batch.scores[r.start] and r.anomaly is True


# ---------------------------------------------------------------- header-less files


def test_a_header_less_csv_names_its_columns_by_position(tmp_path, tiny_export):
    values = np.round(np.random.default_rng(2).uniform(0, 1, (20, 4)), 6)
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in values) + "\n"
    (tmp_path / "bare.csv").write_text(body)
    (tmp_path / "named.csv").write_text("w,a,b,c\n" + body)
    bare = load_series(tmp_path / "bare.csv", header_row=False)
    assert bare.columns == ("1", "2", "3", "4")
    np.testing.assert_array_equal(bare.values, values)
    picked = load_series(tmp_path / "bare.csv", ("2", "4"), header_row=False)
    assert picked.columns == ("2", "4")
    np.testing.assert_array_equal(picked.values, values[:, [1, 3]])
    scored = [json.loads(run("score", tiny_export, *args, "--json").stdout)["score"] for args in (
        (tmp_path / "bare.csv", "--no-header", "--columns", "2,3,4"), (tmp_path / "named.csv", "--columns", "a,b,c"))]
    assert scored[0] == scored[1]
    line = one_error_line(run("score", tiny_export, tmp_path / "bare.csv", "--columns", "2,3,4"))
    assert "bare.csv: row 1 holds numbers, expected a header row naming the columns (pass --no-header" in line
    line = one_error_line(run("train", "--data", tmp_path / "bare.csv", "--epochs", "1", "--quiet",
                              "--out", tmp_path / "run"))
    assert "(pass --no-header for a file without one)" in line


def test_no_header_trains_and_the_model_knows_its_columns_by_position(tmp_path):
    rows = np.arange(40)
    (tmp_path / "bare.csv").write_text("".join(f"{np.sin(i / 3):.4f};{np.cos(i / 4):.4f}\n" for i in rows))
    result = run("train", "--data", tmp_path / "bare.csv", "--no-header", "--timesteps", "4", "--units", "4",
                 "--epochs", "40", "--learning-rate", "0.05", "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["data"]["columns"] == ["1", "2"] and record["config"]["header_row"] is False
    np.save(tmp_path / "s.npy", np.zeros((3, 2)))
    with pytest.raises(UsageError, match="--no-header applies to a CSV file"):
        load_series(tmp_path / "s.npy", header_row=False)
