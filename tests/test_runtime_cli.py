"""edgeae encode / reconstruct / score: CSV or NPY in, CSV, NPY or JSON out."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract.errors import EXIT_DATA, EXIT_USAGE
from edgeae.trainer import training as trainer


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
    strided = np.asarray(json.loads(result.stdout)["reconstruction"])
    assert strided.shape == (3, 6, 3)
    # Values, against an independent cut: numpy's sliding windows at rows 0, 5, 10 through the runtime API.
    # Both run fp32 graphs of one export on the same float32 windows; the batch routing may pick another fp32
    # graph (one-window, unrolled), each within 7.2e-7 of Keras as recorded, hence 1e-6 as in the test above.
    model = runtime.load(tiny_export, "cpu")
    cut = np.lib.stride_tricks.sliding_window_view(values, 6, axis=0).transpose(0, 2, 1)[::5]
    assert cut.shape == (3, 6, 3)
    np.testing.assert_allclose(strided, model.reconstruct(cut), rtol=0, atol=1e-6)
    windows = np.stack([values[:6], values[6:12]])
    np.save(tmp_path / "w.npy", windows)
    result = run("reconstruct", tiny_export, tmp_path / "w.npy", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    ready = np.asarray(json.loads((tmp_path / "r.json").read_text())["reconstruction"])
    assert ready.shape == (2, 6, 3)
    np.testing.assert_allclose(ready, model.reconstruct(windows), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ready[0], strided[0], rtol=0, atol=1e-6)  # rows 0..5 both ways


def test_score_to_csv_with_flags(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    out = tmp_path / "scores.csv"
    result = run("score", tiny_export, path, "-o", out, "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "score,anomaly,window_start,score_a,score_b,score_c,missing" and len(lines) == 16
    for row, line in enumerate(lines[1:]):
        score, flag, start, *parts, missing = line.split(",")
        assert missing == "0"
        assert float(flag) == float(float(score) > 0.01)
        assert float(start) == row
        assert sum(map(float, parts)) == pytest.approx(float(score), rel=1e-12)


def test_existing_output_is_kept_without_force(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    out = tmp_path / "emb.npy"
    out.write_bytes(b"precious")
    result = run("encode", tiny_export, path, "-o", out)
    assert result.exit_code == EXIT_USAGE and out.read_bytes() == b"precious"
    assert run("encode", tiny_export, path, "-o", out, "--force").exit_code == 0
    assert np.load(out).shape == (15, 8)


@pytest.mark.parametrize("content, code, words", [
    ("a,b\n1,2\n", EXIT_DATA, "the model expects 3"),
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


def one_line(result, code):
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ("train", "--scaling", "bogus"), ("train", "--stride", "0"), ("train", "--epochs", "0"),
    ("score", "MODEL", "DATA", "--stride", "0"), ("score", "MODEL", "DATA", "--stride", "99999999999999999999999"),
    ("bench", "MODEL", "--runs", "2"), ("bench", "MODEL", "--threads", "0"), ("bench", "MODEL", "--batch", "0"),
    ("score",), ("nonsense",),
])
def test_click_usage_errors_are_one_line_too(tiny_export, series_csv, args):
    path, _ = series_csv
    args = [str(tiny_export) if a == "MODEL" else str(path) if a == "DATA" else a for a in args]
    one_line(run(*args), EXIT_USAGE)


def test_score_outputs_keep_every_column(tiny_export, series_csv, tmp_path):
    path, _ = series_csv
    assert "several arrays" in one_line(run("score", tiny_export, path, "-o", tmp_path / "s.npy"), EXIT_USAGE)
    assert not (tmp_path / "s.npy").exists()
    result = run("score", tiny_export, path, "--threshold", "0.01", "-o", tmp_path / "s.npz", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("output", "rows", "arrays")} == {
        "output": str(tmp_path / "s.npz"), "rows": 15,
        "arrays": ["score", "anomaly", "window_start", "score_a", "score_b", "score_c", "missing"]}
    assert set(summary["drift"]["features"]) == {"a", "b", "c"}
    with np.load(tmp_path / "s.npz") as saved:
        assert saved["score"].shape == saved["anomaly"].shape == saved["window_start"].shape == (15,)
    run("score", tiny_export, path, "--threshold", "0.01", "-o", tmp_path / "s.csv")
    first = (tmp_path / "s.csv").read_text().splitlines()[1].split(",")
    assert first[1] in ("0", "1") and first[2] == "0"


@pytest.mark.parametrize("target, words", [("nodir/x.csv", "does not exist"), (".", "is a folder"),
                                           ("out.txt", "must end in")])
def test_bad_output_paths_fail_before_any_work(tiny_export, series_csv, tmp_path, monkeypatch, target, words):
    from edgeae import runtime as rt

    path, _ = series_csv
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rt.EdgeModel, "encode", lambda *a, **k: pytest.fail("ran although the output was unusable"))
    assert words in one_line(run("encode", tiny_export, path, "-o", target), EXIT_USAGE)


def test_nan_threshold_and_bad_chunks_are_refused(tiny_export):
    from edgeae.contract.errors import UsageError

    model = runtime.load(tiny_export, "cpu")
    x = np.zeros((3, 6, 3))
    for bad in (float("nan"), float("inf"), "abc", [1, 2]):
        with pytest.raises(UsageError):
            model.score(x, threshold=bad)
    for chunk in (2.5, "8", 0, True):
        with pytest.raises(UsageError):
            model.encode(x, chunk=chunk)
    np.testing.assert_allclose(model.score(x, chunk=1).scores, model.score(x).scores)


def test_training_folder_and_foreign_files_are_usage_errors(tiny_training, tiny_export, series_csv, tmp_path):
    from edgeae.contract.errors import UsageError

    trainer.save_training(tiny_training, tmp_path / "run")
    with pytest.raises(UsageError, match="training folder; export it first"):
        runtime.load(tmp_path / "run", "cpu")
    path, _ = series_csv
    assert "expected an export folder" in one_line(run("inspect", path), EXIT_USAGE)
    assert "expected a Keras model file (.keras, .h5, .hdf5) or an edgeae training folder" in one_line(
        run("export", path, "--out", tmp_path / "x"), EXIT_USAGE)
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b;c\n1,5;2;3\n")
    assert "'1,5' has a decimal comma" in one_line(run("score", tiny_export, semi), EXIT_DATA)


def test_score_a_single_onnx_file_against_a_csv(tiny_export, series_csv, tmp_path):
    """A lone .onnx file has no manifest: its CSV columns are taken as they come, not from a training record."""
    path, _ = series_csv
    model = tmp_path / "model.onnx"
    model.write_bytes((tiny_export / "autoencoder.onnx").read_bytes())
    assert runtime.load(model, "cpu").manifest is None
    out = tmp_path / "scores.csv"
    result = run("score", model, path, "-o", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("score,") and len(lines) == 16
