"""Fleets with files as users have them: CSV separators sniffed (or --sep), a byte-order mark, and missing
values skipped (windows marked missing, never dropped), refused (the count per column) or interpolated
(short gaps inside a regular stretch only); complete windows keep the numbers of a gap-free run, bit for bit."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from .conftest import import_or_skip  # noqa: E402

import_or_skip("distributed", "dask")  # skipped without the extra, except in CI: there it fails

import dask.dataframe as dd  # noqa: E402
import distributed  # noqa: E402
import pandas as pd  # noqa: E402

from edgeae import fleet  # noqa: E402
from edgeae.cli import main  # noqa: E402
from edgeae.contract.errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError  # noqa: E402
from edgeae.contract.files import read_json  # noqa: E402
from edgeae.fleet import FleetOptions, SampleOptions  # noqa: E402
from edgeae.fleet.missing import fill_gaps  # noqa: E402

from .conftest import EXPORTED  # noqa: E402

FEATURES = [f"f{i}" for i in range(5)]
TIMESTEPS = 10
MACHINES = FleetOptions(by="machine", order="step")
STEPS = {"a": np.arange(300), "b": np.concatenate([np.arange(150), np.arange(161, 311)]), "d": np.arange(0, 400, 2)}
LONG = range(100, 121)  # 21 rows of series a, column f0
HOLES = [("a", 40, "f1"), *(("a", r, "f0") for r in LONG), ("b", 149, "f2"), ("b", 150, "f2"), ("d", 60, "f4"),
         ("d", 61, "f4"), ("d", 62, "f4")]  # b: the rows either side of its gap in steps; d: 3 rows


def _series(name: str, steps: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    values = 0.5 + 0.3 * np.sin(steps[:, None] / 7.0 + rng.uniform(0, 6, 5)) + rng.normal(0, 0.05, (len(steps), 5))
    return pd.DataFrame({"machine": name, "step": steps, **dict(zip(FEATURES, values.T))})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.concat([_series(name, steps, rng) for name, steps in STEPS.items()], ignore_index=True)  # b: a gap


@pytest.fixture(scope="module")
def gappy(frame) -> pd.DataFrame:
    holed = frame.copy()
    for name, row, column in HOLES:
        holed.loc[holed.index[holed.machine == name][row], column] = np.nan
    return holed


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def complete(frame) -> pd.DataFrame:
    """The gap-free run: every window scored (the numbers a gappy run's complete windows must keep)."""
    return fleet.reference_frame(EXPORTED, frame, MACHINES)


def _sorted(result: pd.DataFrame) -> pd.DataFrame:
    return result.sort_values(["machine", "window_start"], ignore_index=True)


def _expected_missing(reference: pd.DataFrame, holes) -> np.ndarray:
    """Per window of `reference`, whether it covers a row in `holes` (series, row of that series, column)."""
    bad = np.zeros(len(reference), bool)
    for name, row, _ in holes:
        step = STEPS[name][row]
        bad |= ((reference.machine == name) & (reference.window_start <= step) & (reference.window_end >= step)).to_numpy()
    return bad


def _check_skip(result: pd.DataFrame, complete: pd.DataFrame, holes=HOLES) -> np.ndarray:
    """Every window is there; those over a hole are missing (score NaN, anomaly NA); the rest bit-identical."""
    result, reference = _sorted(result), _sorted(complete)
    assert len(result) == len(reference) and not result.duplicated(["machine", "window_start"]).any()
    for column in ("machine", "window_start", "window_end"):
        assert np.array_equal(result[column].to_numpy(), reference[column].to_numpy()), column
    missing = _expected_missing(reference, holes)
    assert missing.any() and np.array_equal(result.missing.to_numpy(), missing)
    assert result.score[missing].isna().all() and result.anomaly[missing].isna().all()
    assert np.array_equal(result.score[~missing].to_numpy(), reference.score[~missing].to_numpy())
    assert np.array_equal(result.anomaly[~missing].to_numpy(bool), reference.anomaly[~missing].to_numpy(bool))
    return missing


def test_skip_marks_each_window_over_a_gap_and_keeps_every_other_number(gappy, complete):
    for partitions in (1, 3):
        result = fleet.score_dataset(EXPORTED, dd.from_pandas(gappy, npartitions=partitions), MACHINES).compute()
        _check_skip(result, complete)
    assert str(result.anomaly.dtype) == "boolean" and result.missing.dtype == bool


@pytest.mark.parametrize("sep, given", [(";", None), ("\t", None), ("\t", "tab"), (";", ";")])
def test_csv_with_a_separator_a_bom_and_every_missing_marker(gappy, complete, tmp_path, sep, given):
    markers = ["", "NA", "NaN", "nan", "null", "NULL", "N/A", "n/a", "Null"]
    text = gappy.to_csv(index=False, sep=sep, na_rep="@").splitlines()
    cells = iter(markers * 10)
    lines = [line.replace("@", next(cells)) if "@" in line else line for line in text]  # one marker per gappy line
    halves = np.array_split(np.arange(1, len(lines)), 2)
    for number, rows in enumerate(halves):
        body = "\n".join([lines[0], *(lines[i] for i in rows)]) + "\n"
        (tmp_path / f"part-{number}.csv").write_text("\ufeff" + body, encoding="utf-8")
    options = replace(MACHINES, sep=given)
    result = fleet.score_dataset(EXPORTED, str(tmp_path / "*.csv"), options).compute()
    _check_skip(result, complete)


def test_a_column_of_whole_numbers_with_a_gap_beyond_daskss_sample(tmp_path):
    """Dask infers a CSV's types from its first 256 kB: a gap further on must still read as missing."""
    rows = 6000
    data = pd.DataFrame({"machine": "m", "step": np.arange(rows), **{f: (np.arange(rows) * (i + 1)) % 7
                                                                       for i, f in enumerate(FEATURES)}})
    text = data.to_csv(index=False).splitlines()
    text[5001] = text[5001].rsplit(",", 1)[0] + ",NA"  # row 5000, f4
    (tmp_path / "ints.csv").write_text("\n".join(text) + "\n")
    result = _sorted(fleet.score_dataset(EXPORTED, str(tmp_path / "ints.csv"), MACHINES).compute())
    assert len(result) == rows - TIMESTEPS + 1
    assert result.missing.to_numpy().nonzero()[0].tolist() == list(range(5000 - TIMESTEPS + 1, 5001))


def test_interpolate_fills_short_gaps_inside_a_stretch_only(gappy, frame, complete):
    result = _sorted(fleet.score_dataset(EXPORTED, dd.from_pandas(gappy, npartitions=2),
                                         replace(MACHINES, missing="interpolate")).compute())
    filled = gappy.copy()
    for name, row, column in [("a", 40, "f1"), ("d", 60, "f4")]:  # the runs of 1 and 3 rows
        at = filled.index[filled.machine == name]
        run = [r for r in range(row, row + 3) if np.isnan(filled.loc[at[r], column])]
        before, after = at[run[0] - 1], at[run[-1] + 1]
        filled.loc[at[run], column] = np.interp(run, [run[0] - 1, run[-1] + 1],
                                                filled.loc[[before, after], column].to_numpy())
    expected = _sorted(fleet.reference_frame(EXPORTED, filled, MACHINES))  # gaps left: a's long one, b's at its break
    left = [h for h in HOLES if h[0] == "b" or h[1] in LONG]
    missing = _expected_missing(expected, left)
    assert np.array_equal(result.missing.to_numpy(), missing) and np.array_equal(expected.missing.to_numpy(), missing)
    np.testing.assert_allclose(result.score[~missing], expected.score[~missing], rtol=1e-6)
    assert np.array_equal(result.anomaly[~missing].to_numpy(bool), expected.anomaly[~missing].to_numpy(bool))
    over_filled = _expected_missing(expected, [("a", 40, "f1"), ("d", 61, "f4")])
    assert over_filled.any() and not result.missing[over_filled].any()  # windows over filled rows are scored
    short = _sorted(fleet.score_dataset(EXPORTED, dd.from_pandas(gappy, npartitions=2),
                                        replace(MACHINES, missing="interpolate", max_gap=2)).compute())
    assert np.array_equal(short.missing.to_numpy(), _expected_missing(expected, left + [h for h in HOLES if h[0] == "d"]))


def test_fill_gaps_is_linear_inside_each_stretch():
    values = np.array([[np.nan], [1.0], [np.nan], [np.nan], [4.0], [np.nan], [6.0], [np.nan], [np.nan], [9.0]])
    filled = values.copy()
    assert fill_gaps(filled, [0, 6, 10], 2) == 4  # rows 0 and 5 begin and end the first stretch: left missing
    np.testing.assert_array_equal(filled[:, 0], [np.nan, 1, 2, 3, 4, np.nan, 6, 7, 8, 9])
    again = values.copy()
    assert fill_gaps(again, [0, 10], 1) == 1  # one stretch: row 5 lies inside it; the runs of 2 are too long
    np.testing.assert_array_equal(again[:, 0], [np.nan, 1, np.nan, np.nan, 4, 5, 6, np.nan, np.nan, 9])


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_run_counts_missing_windows_and_refuse_names_every_column(client, gappy, complete, tmp_path):
    source = tmp_path / "gappy.parquet"
    gappy.to_parquet(source, index=False)
    base = ["fleet", "score", EXPORTED, source, "--by", "machine", "--order", "step", "--scheduler",
            client.scheduler.address]
    result = run_cli(*base, "-o", tmp_path / "skip")
    assert result.exit_code == 0, result.output
    written = dd.read_parquet(tmp_path / "skip").compute()
    missing = _check_skip(written, complete)
    record = read_json(tmp_path / "skip" / "manifest.json", "record")
    flagged = int(written.anomaly.sum())
    assert record["windows_missing"] == missing.sum() and record["windows_flagged"] == flagged
    assert record["missing"] == {"policy": "skip", "max_gap": 5, "values": len(HOLES), "interpolated": 0}
    assert (f"{flagged} windows flagged, {missing.sum()} missing (not scored), "
            f"{len(written) - flagged - missing.sum()} normal") in result.output
    assert f"{len(HOLES)} missing values: {missing.sum()} windows hold one" in result.output
    refused = run_cli(*base, "--missing", "refuse", "-o", tmp_path / "refuse")
    assert refused.exit_code == EXIT_DATA and not (tmp_path / "refuse").exists()
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {source}: 27 missing values (f0: 21, f1: 1, f2: 2, f4: 3); "
                     "pass --missing skip or --missing interpolate"]
    filled = run_cli(*base, "--missing", "interpolate", "--max-gap", 3, "-o", tmp_path / "filled", "--json")
    assert filled.exit_code == 0, filled.output
    record = read_json(tmp_path / "filled" / "manifest.json", "record")
    assert record["missing"] == {"policy": "interpolate", "max_gap": 3, "values": len(HOLES), "interpolated": 4}
    assert record["windows_missing"] == int(dd.read_parquet(tmp_path / "filled").compute().missing.sum()) > 0


def test_a_lazy_run_refuses_a_series_with_gaps(gappy):
    with pytest.raises(DataError, match=r"series 'a': 22 missing values \(f0: 21, f1: 1\); pass --missing skip"):
        fleet.reference_frame(EXPORTED, gappy, replace(MACHINES, missing="refuse"))


def test_a_sample_never_draws_a_window_with_a_gap(client, gappy, complete):
    drawn = fleet.sample_windows(dd.from_pandas(gappy, npartitions=2), MACHINES, SampleOptions(TIMESTEPS, share=1.0))
    assert np.isfinite(drawn.windows).all()
    everything = fleet.sample_windows(dd.from_pandas(gappy.fillna(0.5), npartitions=2), MACHINES,
                                      SampleOptions(TIMESTEPS, share=1.0))
    assert len(everything.windows) - len(drawn.windows) == _expected_missing(complete, HOLES).sum()


def test_bad_options_and_a_decimal_comma_are_one_line(client, frame, tmp_path):
    with pytest.raises(UsageError, match="missing must be skip, refuse or interpolate"):
        replace(MACHINES, missing="drop")
    with pytest.raises(UsageError, match="max_gap must be a whole number of rows, at least 0"):
        replace(MACHINES, max_gap=-1)
    with pytest.raises(UsageError, match="sep must be"):
        replace(MACHINES, sep="|")
    comma = tmp_path / "comma.csv"
    frame.head(50).to_csv(comma, sep=";", decimal=",", index=False)
    with pytest.raises(DataError, match=r"column 'f0': '0,\d+' has a decimal comma; edgeae reads a point as the "
                                        r"decimal mark \('0\.\d+'\)"):
        fleet.score_dataset(EXPORTED, str(comma), MACHINES)
    result = run_cli("fleet", "score", EXPORTED, comma, "--by", "machine", "--order", "step", "--missing", "drop",
                     "-o", tmp_path / "o")
    assert result.exit_code == EXIT_USAGE and "'drop' is not one of 'skip', 'refuse', 'interpolate'" in result.stderr


def _csv_parts(frame: pd.DataFrame, folder, header: bool):
    """The frame as two CSV files in `folder`, each with the header line or none."""
    folder.mkdir()
    lines = frame.to_csv(index=False).splitlines()
    for number, rows in enumerate(np.array_split(np.arange(1, len(lines)), 2)):
        (folder / f"part-{number}.csv").write_text("\n".join([lines[0]] * header + [lines[i] for i in rows]) + "\n")
    return folder


def test_a_csv_fleet_without_a_header_scores_as_the_same_files_with_one(client, frame, tmp_path):
    headed, bare = _csv_parts(frame, tmp_path / "headed", True), _csv_parts(frame, tmp_path / "bare", False)
    expected = _sorted(fleet.score_dataset(EXPORTED, str(headed / "*.csv"), replace(MACHINES, time="step")).compute())
    by_position = FleetOptions(by="1", order="2", time="2", header_row=False)  # features: every other column
    for options in (by_position, replace(by_position, columns=("3", "4", "5", "6", "7"))):
        result = fleet.score_dataset(EXPORTED, str(bare / "*.csv"), options).compute().rename(columns={"1": "machine"})
        pd.testing.assert_frame_equal(_sorted(result), expected)
    base = ["fleet", "score", EXPORTED, bare, "--scheduler", client.scheduler.address]
    done = run_cli(*base, "--by", "1", "--order", "2", "--columns", "3,4,5,6,7", "--no-header", "-o", tmp_path / "o")
    assert done.exit_code == 0, done.output
    written = dd.read_parquet(tmp_path / "o").compute().rename(columns={"1": "machine"})
    pd.testing.assert_frame_equal(_sorted(written), expected.drop(columns="window_time"))
    numbered = _csv_parts(frame.assign(machine=frame.machine.map({"a": 1, "b": 2, "d": 3})), tmp_path / "ids", False)
    refused = run_cli(*base[:3], numbered, "--by", "1", "--order", "2", "-o", tmp_path / "no")  # numbers only in row 1
    assert refused.exit_code == EXIT_DATA and not (tmp_path / "no").exists()
    assert [line for line in refused.stderr.splitlines() if line.strip()] == [
        f"error: {(numbered / 'part-0.csv').as_uri()}: row 1 holds numbers, expected a header row naming the "
        "columns (pass --no-header for a file without one)"]


def test_no_header_is_refused_for_parquet_and_for_a_dataframe(frame, tmp_path):
    source = tmp_path / "fleet.parquet"
    frame.to_parquet(source, index=False)
    result = run_cli("fleet", "score", EXPORTED, source, "--by", "1", "--order", "2", "--no-header", "-o", tmp_path / "o")
    assert result.exit_code == EXIT_USAGE and not (tmp_path / "o").exists()
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: {source}: --no-header applies to CSV files; Parquet files name their columns"]
    with pytest.raises(UsageError, match="--no-header applies to CSV files; a DataFrame names its columns"):
        fleet.score_dataset(EXPORTED, dd.from_pandas(frame, npartitions=1), replace(MACHINES, header_row=False))
    with pytest.raises(UsageError, match="header_row must be True or False, got 'no'"):
        replace(MACHINES, header_row="no")
