"""The web page (node/web/) in a real headless Chromium: the seed export and a CSV, scored with onnxruntime-web,
against the Python runtime; the screenshot is left in test-output/web_page.png to look at."""
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from edgeae import runtime
from edgeae.data.series import load_features
from edgeae.data.windows import cut_windows

from .conftest import EXPORTED, REPO

NODE = REPO / "node"
SCREENSHOT = REPO / "test-output" / "web_page.png"


@contextlib.contextmanager
def file_server():
    """A local static file server over node/ (the page and onnxruntime-web's files), on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=NODE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/web/index.html"
    finally:
        server.terminate()
        server.wait()


def page(url, csv, variant="fp32", screenshot=SCREENSHOT):
    chromium = shutil.which("chromium")
    if chromium is None or not (NODE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("Debian's chromium and `npm ci --prefix node` are needed (.ci/run installs them)")
    screenshot.parent.mkdir(exist_ok=True)
    proc = subprocess.run(["node", "web/check_page.mjs", url, str(EXPORTED), str(csv), variant, str(screenshot)],
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
