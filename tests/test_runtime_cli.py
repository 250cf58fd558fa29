"""edgeae encode / reconstruct / score: CSV or NPY in, CSV, NPY or JSON out."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.errors import EXIT_DATA, EXIT_USAGE


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def series_csv(tmp_path, rng):
    values = rng.uniform(0, 1, (20, 3))
    path = tmp_path / "series.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in values) + "\n")
    return path, np.round(values, 6)


def test_encode_a_csv_series_to_npy(tiny_export, series_csv, tmp_path):
    path, values = series_csv
    out = tmp_path / "emb.npy"
    result = run("encode", tiny_export, path, "-o", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    embeddings = np.load(out)
    windows = np.lib.stride_tricks.sliding_window_view(values, 6, axis=0).transpose(0, 2, 1)
    assert embeddings.shape == (15, 8)
    np.testing.assert_allclose(embeddings, runtime.load(tiny_export, "cpu").encode(windows), atol=1e-6)


def test_stride_and_ready_made_windows(tiny_export, series_csv, tmp_path):
    path, values = series_csv
    result = run("reconstruct", tiny_export, path, "--stride", "5", "--json", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert np.asarray(json.loads(result.stdout)["reconstruction"]).shape == (3, 6, 3)
    windows = np.stack([values[:6], values[6:12]])
    np.save(tmp_path / "w.npy", windows)
    result = run("reconstruct", tiny_export, tmp_path / "w.npy", "-o", tmp_path / "r.json")
    assert np.asarray(json.loads((tmp_path / "r.json").read_text())["reconstruction"]).shape == (2, 6, 3)


def test_score_to_csv_with_flags(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    out = tmp_path / "scores.csv"
    result = run("score", tiny_export, path, "-o", out, "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "score,anomaly,window_start" and len(lines) == 16
    for row, line in enumerate(lines[1:]):
        score, flag, start = line.split(",")
        assert float(flag) == float(float(score) > 0.01)
        assert float(start) == row


def test_existing_output_is_kept_without_force(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    out = tmp_path / "emb.npy"
    out.write_bytes(b"precious")
    result = run("encode", tiny_export, path, "-o", out)
    assert result.exit_code == EXIT_USAGE and out.read_bytes() == b"precious"
    assert run("encode", tiny_export, path, "-o", out, "--force").exit_code == 0
    assert np.load(out).shape == (15, 8)


@pytest.mark.parametrize("content, code, words", [
    ("a,b\n1,2\n" * 1, EXIT_DATA, "expects 3 features"),
    ("a,b,c\n1,2,3\n", EXIT_DATA, "fewer than one window"),
    ("", EXIT_DATA, "empty"),
])
def test_unusable_data_is_refused(tiny_export, tmp_path, content, code, words):
    path = tmp_path / "d.csv"
    path.write_text(content)
    result = run("score", tiny_export, path)
    assert result.exit_code == code, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_output_format(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    result = run("encode", tiny_export, path, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == EXIT_USAGE and not (tmp_path / "out.xlsx").exists()
