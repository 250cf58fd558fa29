"""The Node.js example app (node/score_csv.mjs, onnxruntime-node) against the Python runtime on the same CSV."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from edgeae import runtime
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.contract.errors import DataError
from edgeae.data.series import load_csv, load_features
from edgeae.data.windows import cut_windows, make_windows

from .conftest import REPO

APP = REPO / "node" / "score_csv.mjs"


def node_app(*args):
    if shutil.which("node") is None or not (REPO / "node" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("Node.js and `npm ci --prefix node` are needed (.ci/run installs them)")
    return subprocess.run(["node", str(APP), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def series_csv(tmp_path, rng):
    t = np.arange(240)
    values = np.stack([0.5 + 0.4 * np.sin(t / 5 + k) for k in range(3)], axis=1) + rng.normal(0, 0.05, (240, 3))
    values[100:104, 1] += 3.0  # a fault
    path = tmp_path / "series.csv"
    path.write_text("x,y,z\n" + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in values))
    return path


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_the_node_app_gives_the_python_runtimes_scores_and_flags(tiny_export, series_csv, variant):
    result = node_app(tiny_export, series_csv, "--variant", variant, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    edge = runtime.load(tiny_export, "cpu", variant=variant)
    windows, starts = cut_windows(load_features(series_csv, edge.features), edge.timesteps, None, 1)
    expected = edge.score(windows)
    assert out["window_start"] == starts.tolist()
    np.testing.assert_allclose(out["score"], expected.scores, rtol=1e-6)
    assert out["anomaly"] == expected.flags.tolist() and any(out["anomaly"])  # the fault is flagged
    assert {g["set"] for g in out["golden"]} == {"training", "single", "in_range", "outside_range"}


@pytest.mark.parametrize("content, message", [
    ("x,y,z\n0.1,0.2\n" * 1, "row 2 has 2 cells, the header has 3"),
    ("x,y,z\n0.1,abc,0.3\n", "row 2, column 'y': 'abc' is not a number"),
    ("x,y,z\n0.1,inf,0.3\n", "row 2, column 'y': 'inf' is not a finite number"),
    ("x;y;z\n0,1;0,2;0,3\n", "row 2, column 'x': '0,1' has a decimal comma; edgeae reads a point as the decimal "
                            "mark ('0.1')"),
    ("x,y,z\n" + "0.1,,0.3\n" * 6, "6 missing values (y: 6); pass --missing skip or --missing interpolate"),
    ("x,y,z\n0.1,0.2,0.3\n\n0.1,0.2,0.3\n", "row 3 is empty (a missing time step?)"),  # ',,' is 3 missing values
    ("x,y\n0.1,0.2\n", "2 feature column(s), the model expects 3"),
    ("x,y,z\n" + "0.1,0.2,0.3\n" * 3, "has 3 rows, fewer than one window of 6"),
    ("", "the file is empty"),
])
def test_bad_data_gets_the_python_runtimes_message_and_exit_3(tiny_export, tmp_path, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    result = node_app(tiny_export, data, *(["--missing", "refuse"] if "missing values" in message else []))
    assert result.returncode == 3 and message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_an_export_this_runtime_misses_is_refused_by_its_golden_check(export_copy, series_csv):
    manifest = read_manifest(export_copy).to_body()
    manifest["variants"]["autoencoder"]["fp32"]["tolerance"] = {"abs": 1e-12, "rel_range": None}
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv)
    assert result.returncode == 6 and "golden check: detector.onnx misses Keras here by" in result.stderr
    assert "allowed max abs 1e-12" in result.stderr and result.stdout == ""


def test_missing_detector_graph_and_folder_are_one_line(export_copy, series_csv, tmp_path):
    manifest = read_manifest(export_copy).to_body()
    del manifest["detector"]["graphs"]["int8"]
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv, "--variant", "int8")
    assert result.returncode == 4 and "no int8 detector graph (it has: fp32, fp16)" in result.stderr.replace("fp16, fp32", "fp32, fp16")
    result = node_app(tmp_path / "nowhere", series_csv)
    assert result.returncode == 2 and "manifest.json: not found" in result.stderr
    (export_copy / "golden.bin").write_bytes(b"\0" * 6)
    manifest["files"]["golden.bin"] = file_entry(export_copy / "golden.bin", "golden")
    write_manifest(export_copy, manifest)
    result = node_app(export_copy, series_csv)
    assert result.returncode == 4 and "golden.bin: not a whole number of float32 values" in result.stderr


# ---------------------------------------------------------------- files as users have them: separators, BOM, gaps

GAPS = {("y", 50): "", ("x", 150): "NA", ("z", 10): "null"}  # a single empty cell, a long gap (below), a null
LONG_GAP = range(150, 171)  # 21 rows of column x


def _cells(series_csv):
    """The fixture's cells as text (header, rows), exactly as written: what both runtimes read."""
    header, *rows = series_csv.read_text().splitlines()
    return header.split(","), [row.split(",") for row in rows]


def _write(path, header, rows, sep=",", bom=False):
    text = sep.join(header) + "\n" + "".join(sep.join(row) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _with_gaps(header, rows, gaps):
    """A copy of `rows` with each (column, row) in `gaps` replaced by its missing marker."""
    rows = [list(row) for row in rows]
    for (column, row), marker in gaps.items():
        rows[row][header.index(column)] = marker
    return rows


def _python_scores(export, values, variant="fp32"):
    """The Python runtime's scores and flags of every window of a (time, features) array."""
    edge = runtime.load(export, "cpu", variant=variant)
    return edge.score(make_windows(np.asarray(values, dtype=np.float64), edge.timesteps))


def _touching(rows, timesteps, bad_rows):
    """Per window start (stride 1), whether the window holds one of `bad_rows`."""
    bad = np.zeros(rows, bool)
    bad[list(bad_rows)] = True
    return np.array([bad[s:s + timesteps].any() for s in range(rows - timesteps + 1)])


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_separator_a_bom_and_gaps_leave_complete_windows_as_python_scores_them(tiny_export, series_csv, tmp_path,
                                                                                  sep):
    header, rows = _cells(series_csv)
    gaps = {**GAPS, **{("x", r): ["NaN", "N/A", "NA", "n/a", "NULL", "Nan"][r % 6] for r in LONG_GAP}}
    data = _write(tmp_path / "gappy.csv", header, _with_gaps(header, rows, gaps), sep=sep, bom=True)
    result = node_app(tiny_export, data, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = _python_scores(tiny_export, [[float(c) for c in row] for row in rows])
    missing = _touching(len(rows), 6, [50, 10, *LONG_GAP])
    assert out["missing"] == missing.tolist() and out["window_start"] == list(range(len(rows) - 5))
    assert all(out["score"][i] is None and out["anomaly"][i] is None for i in np.flatnonzero(missing))
    complete = np.flatnonzero(~missing)
    np.testing.assert_allclose([out["score"][i] for i in complete], expected.scores[complete], rtol=1e-6)
    assert [out["anomaly"][i] for i in complete] == expected.flags[complete].tolist()
    flagged = int(expected.flags[complete].sum())
    assert out["summary"] == {"windows": len(missing), "flagged": flagged, "missing": int(missing.sum()),
                              "normal": len(complete) - flagged, "missing_values": 23, "interpolated_values": 0}
    as_csv = node_app(tiny_export, data)  # the CSV form: a row per window, the summary on stderr
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "window_start,score,anomaly,missing" and lines[1 + 10] == "10,,,1"
    assert lines[1].endswith(",0") and len(lines) == 1 + len(missing)
    assert as_csv.stderr == (f"{len(missing)} windows: {flagged} flagged, {len(complete) - flagged} normal, "
                             f"{int(missing.sum())} missing (23 missing values, 0 interpolated)\n")


def test_refuse_names_every_column_with_its_count(tiny_export, series_csv, tmp_path):
    header, rows = _cells(series_csv)
    gaps = {**GAPS, **{("x", r): "" for r in LONG_GAP}}
    data = _write(tmp_path / "gappy.csv", header, _with_gaps(header, rows, gaps))
    result = node_app(tiny_export, data, "--missing", "refuse")
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr == ("error: gappy.csv: 23 missing values (x: 21, y: 1, z: 1); "
                             "pass --missing skip or --missing interpolate\n")


@pytest.mark.parametrize("max_gap", [5, 4])
def test_interpolate_fills_only_short_gaps_inside_a_column(tiny_export, series_csv, tmp_path, max_gap):
    header, rows = _cells(series_csv)
    short = {("y", 50): "", **{("z", r): "NA" for r in range(80, 85)}}  # 1 row, and 5 rows (the default limit)
    kept = {("z", 0): "", ("y", len(rows) - 1): "nan", **{("x", r): "null" for r in LONG_GAP}}  # ends, too long
    data = _write(tmp_path / "gappy.csv", header, _with_gaps(header, rows, {**short, **kept}))
    result = node_app(tiny_export, data, "--missing", "interpolate", "--max-gap", max_gap, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    values = np.array([[float(c) for c in row] for row in rows])
    filled = values.copy()
    for column, gap in (("y", [50]), ("z", range(80, 85))):
        j, before, after = header.index(column), gap[0] - 1, gap[-1] + 1
        filled[list(gap), j] = np.interp(list(gap), [before, after], values[[before, after], j])
    expected = _python_scores(tiny_export, filled)
    unfilled = [0, len(rows) - 1, *LONG_GAP, *([] if max_gap == 5 else range(80, 85))]
    missing = _touching(len(rows), 6, unfilled)
    assert out["missing"] == missing.tolist()
    complete = np.flatnonzero(~missing)
    assert not missing[_touching(len(rows), 6, [50])].any()  # every window over the filled row is scored
    np.testing.assert_allclose([out["score"][i] for i in complete], expected.scores[complete], rtol=1e-6)
    assert [out["anomaly"][i] for i in complete] == expected.flags[complete].tolist()
    assert out["summary"]["interpolated_values"] == (6 if max_gap == 5 else 1)
    assert out["summary"]["missing_values"] == 29 and out["summary"]["missing"] == int(missing.sum())


@pytest.mark.parametrize("args, message", [
    (["--missing", "drop"], "--missing must be skip, refuse or interpolate; got 'drop'"),
    (["--max-gap", "-1"], "--max-gap must be a whole number of rows, at least 0, got '-1'"),
    (["--max-gap", "two"], "--max-gap must be a whole number of rows, at least 0, got 'two'"),
    (["--gaps"], "no option --gaps"),
    (["--columns", ","], "--columns ',' names no column; give comma-separated names or indices, or leave it out"),
    (["--columns", "x,,z"], "--columns 'x,,z' has an empty column name; separate names with single commas"),
])
def test_bad_options_are_one_line_and_exit_2(tiny_export, series_csv, args, message):
    result = node_app(tiny_export, series_csv, *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_the_library_reads_the_real_gappy_co2_file():
    """The weekly Mauna Loa CO2 file as published (59 empty cells): refused with the count, else kept as gaps."""
    data = REPO / "tests" / "data" / "co2_mauna_loa_weekly.csv"
    if not data.is_file():
        pytest.skip("tests/data/co2_mauna_loa_weekly.csv is not in this checkout")
    code = ("import { parseCsv } from './edgeae.mjs'; import { readFileSync } from 'node:fs';"
            "const text = readFileSync(process.argv[1], 'utf8');"
            "const s = parseCsv(text, ['co2'], 'co2.csv');"
            "console.log(JSON.stringify([s.rows, s.missingValues, s.values.filter(Number.isNaN).length]));"
            "try { parseCsv(text, ['co2'], 'co2.csv', { missing: 'refuse' }); } catch (e) { console.log(e.message); }")
    done = subprocess.run(["node", "--input-type=module", "-e", code, str(data)], cwd=REPO / "node",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    counts, refused = done.stdout.splitlines()
    rows = len(data.read_text().splitlines()) - 1
    assert json.loads(counts) == [rows, 59, 59]
    assert refused == "co2.csv: 59 missing values (co2: 59); pass --missing skip or --missing interpolate"


# ---------------------------------------------------------------- files without a header row: --no-header, --columns


def _numbers(result):
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return {key: out[key] for key in ("window_start", "score", "anomaly", "missing", "summary")}


def test_a_headerless_csv_scores_as_the_same_file_with_its_header(tiny_export, series_csv, tmp_path):
    bare = tmp_path / "bare.csv"
    bare.write_text(series_csv.read_text().split("\n", 1)[1])  # the same rows, no header line
    headed = _numbers(node_app(tiny_export, series_csv, "--json"))
    assert _numbers(node_app(tiny_export, bare, "--no-header", "--json")) == headed
    _, rows = _cells(series_csv)
    expected = _python_scores(tiny_export, [[float(c) for c in row] for row in rows])
    np.testing.assert_allclose(headed["score"], expected.scores, rtol=1e-6)
    as_csv = node_app(tiny_export, bare, "--no-header")
    assert as_csv.returncode == 0 and as_csv.stdout == node_app(tiny_export, series_csv).stdout


def test_a_first_line_of_numbers_is_refused_with_the_hint_the_python_cli_gives(tiny_export, series_csv, tmp_path):
    bare = tmp_path / "bare.csv"
    bare.write_text(series_csv.read_text().split("\n", 1)[1])
    result = node_app(tiny_export, bare)
    message = ("bare.csv: row 1 holds numbers, expected a header row naming the columns "
               "(pass --no-header for a file without one)")
    assert result.returncode == 3 and result.stdout == "" and result.stderr == f"error: {message}\n"
    with pytest.raises(DataError) as python_side:
        load_csv(bare)
    assert str(python_side.value) == message  # the same words as `edgeae score`


def test_no_header_columns_pick_by_position(export_copy, series_csv, tmp_path):
    header, rows = _cells(series_csv)
    wide = [[str(i), row[0], row[1], "7.5", row[2]] for i, row in enumerate(rows)]  # step, x, y, a constant, z
    bare = _write(tmp_path / "wide.csv", ["step", *header[:2], "c", header[2]], wide)
    bare.write_text(bare.read_text().split("\n", 1)[1])
    headed = _numbers(node_app(export_copy, series_csv, "--json"))
    assert _numbers(node_app(export_copy, bare, "--no-header", "--columns", "2,3,5", "--json")) == headed
    result = node_app(export_copy, bare, "--no-header")  # every column: one too many for the model
    assert result.returncode == 3 and "wide.csv: 5 feature column(s), the model expects 3" in result.stderr
    result = node_app(export_copy, bare, "--no-header", "--columns", "x,y,z")  # no names without a header
    assert result.returncode == 3 and "wide.csv: no column 'x' (columns: 1, 2, 3, 4, 5)" in result.stderr
    # with a model trained on named columns: its names are found in a headed file, never in a bare one
    manifest = read_manifest(export_copy).to_body()
    manifest["training"]["data"]["columns"] = header
    write_manifest(export_copy, manifest)
    assert _numbers(node_app(export_copy, bare, "--no-header", "--columns", "2,3,5", "--json")) == headed
    reordered = _write(tmp_path / "zyx.csv", header[::-1], [row[::-1] for row in rows])
    assert _numbers(node_app(export_copy, reordered, "--json")) == headed  # found by name
    assert _numbers(node_app(export_copy, reordered, "--columns", "z,x,y", "--json")) == headed  # the model's order
    result = node_app(export_copy, reordered, "--columns", "y,z")
    assert result.returncode == 3 and ("zyx.csv: column 'y' would be the model's feature 1, but it was trained as "
                                       "feature 2; the model reads x, y, z in that order") in result.stderr
