"""The web page (node/web/) in a real headless Chromium: the seed export and a CSV, scored with onnxruntime-web,
against the Python runtime; the screenshot is left in test-output/web_page.png to look at."""
import contextlib
import json
import shutil
import subprocess

import numpy as np
import pytest

from edgeae import runtime
from edgeae.data.series import load_features
from edgeae.data.windows import cut_windows, make_windows

from .conftest import EXPORTED, REPO, serve_folder

NODE = REPO / "node"
SCREENSHOT = REPO / "test-output" / "web_page.png"


@contextlib.contextmanager
def file_server():
    """A local static file server over node/ (the page and onnxruntime-web's files): the page's address."""
    with serve_folder(NODE) as base:
        yield f"{base}/web/index.html"


def page(url, csv, variant="fp32", screenshot=SCREENSHOT, missing="skip", max_gap=5, header=True):
    chromium = shutil.which("chromium")
    if chromium is None or not (NODE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("Debian's chromium and `npm ci --prefix node` are needed (.ci/run installs them)")
    screenshot.parent.mkdir(exist_ok=True)
    proc = subprocess.run(["node", "web/check_page.mjs", url, str(EXPORTED), str(csv), variant, str(screenshot),
                           missing, str(max_gap), "" if header else "no-header"],
                          cwd=NODE, capture_output=True, text=True, timeout=180, env={"EDGEAE_CHROMIUM": chromium,
                                                                                      "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture()
def seed_like_csv(tmp_path):
    """The seed's rows (the window the model learned), then drifting and spiking rows it never saw."""
    rows = np.arange(50, dtype=np.float64).reshape(10, 5) / 50
    drift = rows + np.linspace(0, 0.3, 10)[:, None]
    spike = rows.copy()
    spike[4, 2] = 3.0
    values = np.concatenate([rows, rows, drift, spike, rows])
    path = tmp_path / "readings.csv"
    path.write_text("a,b,c,d,e\n" + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in values))
    return path


def test_the_page_scores_the_seed_export_as_the_python_runtime_does(seed_like_csv):
    with file_server() as url:
        shown = page(url, seed_like_csv)
    assert "error" not in shown, shown
    edge = runtime.load(EXPORTED, "cpu")
    windows, starts = cut_windows(load_features(seed_like_csv, edge.features), edge.timesteps, None, 1)
    expected = edge.score(windows)
    assert shown["window_start"] == starts.tolist() and shown["threshold"] == edge.threshold
    np.testing.assert_allclose(shown["score"], expected.scores, rtol=1e-6)
    assert shown["anomaly"] == expected.flags.tolist()
    assert not shown["anomaly"][0] and shown["anomaly"][0] == shown["anomaly"][10] and any(shown["anomaly"])
    assert "golden vectors checked (4 sets" in shown["summary"]
    assert SCREENSHOT.stat().st_size > 20_000 and SCREENSHOT.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot of the page: {SCREENSHOT}")


def test_the_page_shows_bad_data_as_the_python_runtime_words_it(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,e\n" + "0.1,0.2,0.3,0.4,0.5\n" * 12 + "0.1,oops,0.3,0.4,0.5\n")
    with file_server() as url:
        shown = page(url, bad, screenshot=tmp_path / "bad.png")
    assert shown["error"] == "bad.csv: row 14, column 'b': 'oops' is not a number"
    assert shown["shown"] == f"error: {shown['error']}" and "window_start" not in shown


def test_the_page_reads_a_file_without_a_header_when_ticked_and_refuses_it_when_not(seed_like_csv, tmp_path):
    bare = tmp_path / "bare.csv"
    bare.write_text(seed_like_csv.read_text().split("\n", 1)[1])
    with file_server() as url:
        headed = page(url, seed_like_csv, screenshot=tmp_path / "headed.png")
        ticked = page(url, bare, screenshot=tmp_path / "ticked.png", header=False)
        refused = page(url, bare, screenshot=tmp_path / "refused.png")
    assert "error" not in ticked, ticked
    assert all(ticked[key] == headed[key] for key in ("window_start", "score", "anomaly", "missing"))
    assert refused["error"] == ("bare.csv: row 1 holds numbers, expected a header row naming the columns "
                                "(tick 'no header row' for a file without one)")


# ---------------------------------------------------------------- files as users have them: separators, BOM, gaps

LONG_GAP = range(30, 38)  # 8 rows of column a: longer than the default 5


@pytest.fixture()
def gappy_csv(seed_like_csv, tmp_path):
    """The seed-like readings with ';' between cells and a byte-order mark; one empty cell (row 12, column b)
    and a long gap marked NA (rows 30-37, column a)."""
    header, *rows = seed_like_csv.read_text().splitlines()
    cells = [row.split(",") for row in rows]
    cells[12][1] = ""
    for r in LONG_GAP:
        cells[r][0] = "NA"
    path = tmp_path / "gappy.csv"
    path.write_text("\ufeff" + "\n".join(";".join(row) for row in [header.split(","), *cells]) + "\n", encoding="utf-8")
    return path, np.array([[float(c) for c in row.split(",")] for row in rows])


def _over(rows, timesteps, bad):
    marks = np.zeros(rows, bool)
    marks[list(bad)] = True
    return np.array([marks[s:s + timesteps].any() for s in range(rows - timesteps + 1)])


@pytest.mark.parametrize("missing", ["skip", "interpolate"])
def test_the_page_reads_a_semicolon_file_with_gaps_and_shows_missing_windows(gappy_csv, tmp_path, missing):
    path, values = gappy_csv
    with file_server() as url:
        shown = page(url, path, screenshot=tmp_path / "gappy.png", missing=missing)
    assert "error" not in shown, shown
    edge = runtime.load(EXPORTED, "cpu")
    if missing == "interpolate":
        values = values.copy()
        values[12, 1] = np.interp(12, [11, 13], values[[11, 13], 1])
    expected = edge.score(make_windows(values, edge.timesteps))
    gaps = _over(len(values), edge.timesteps, [*LONG_GAP, *([12] if missing == "skip" else [])])
    assert shown["missing"] == gaps.tolist() and shown["window_start"] == list(range(len(gaps)))
    assert all(shown["score"][i] is None and shown["anomaly"][i] is None for i in np.flatnonzero(gaps))
    whole = np.flatnonzero(~gaps)
    np.testing.assert_allclose([shown["score"][i] for i in whole], expected.scores[whole], rtol=1e-6)
    assert [shown["anomaly"][i] for i in whole] == expected.flags[whole].tolist()
    flagged = int(expected.flags[whole].sum())
    assert shown["counts"] == {"windows": len(gaps), "flagged": flagged, "normal": len(whole) - flagged,
                               "missing": int(gaps.sum())}
    filled = ", 1 interpolated" if missing == "interpolate" else ""
    assert (f"{len(gaps)} windows, {flagged} above the threshold" in shown["summary"]
            and f"{len(whole) - flagged} normal, {int(gaps.sum())} missing (9 missing values{filled});" in shown["summary"])


def test_the_page_refuses_gaps_when_asked_naming_each_column(gappy_csv, tmp_path):
    with file_server() as url:
        shown = page(url, gappy_csv[0], screenshot=tmp_path / "refused.png", missing="refuse")
    assert shown["error"] == "gappy.csv: 9 missing values (a: 8, b: 1); choose skip or interpolate under Missing values"
    assert shown["shown"] == f"error: {shown['error']}" and "window_start" not in shown


def test_the_page_names_a_decimal_comma(tmp_path):
    bad = tmp_path / "comma.csv"
    bad.write_text("a\tb\tc\td\te\n" + "0,1\t0,2\t0,3\t0,4\t0,5\n" * 12)
    with file_server() as url:
        shown = page(url, bad, screenshot=tmp_path / "comma.png")
    assert shown["error"] == ("comma.csv: row 2, column 'a': '0,1' has a decimal comma; edgeae reads a point as the "
                              "decimal mark ('0.1')")
