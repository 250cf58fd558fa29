"""The CLI end to end on a tiny model, and its error contract: one line, the right exit code."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.contract.errors import EXIT_CLOSED_PIPE, EXIT_DATA, EXIT_INTEGRITY, EXIT_PARITY, EXIT_RUNTIME, EXIT_USAGE
from edgeae.contract.variants import UNROLLED_FROM
from edgeae.trainer import training as trainer

TINY = ["--epochs", "3", "--units", "4", "--timesteps", "4", "--features", "2", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


def test_version_and_help():
    assert run("--version").output.startswith("edgeae, version")
    for command in ("train", "export", "verify", "pipeline", "encode", "reconstruct", "score", "inspect",
                    "optimize", "bench", "evaluate", "demo", "report"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


def test_train_export_verify_end_to_end(tmp_path):
    result = run("train", *TINY, "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parameters"] == 4 * 4 * (2 + 4 + 1) + 4 * 4 * (4 + 4 + 1) + 4 * 2 + 2
    result = run("export", tmp_path / "run", "--out", tmp_path / "exp", "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["passed"]
    assert {p.name for p in (tmp_path / "exp").iterdir()} >= {"autoencoder.onnx", "encoder.onnx", "model.keras", "manifest.json", "parity.json"}
    result = run("verify", tmp_path / "exp", "--provider", "cpu")
    assert result.exit_code == 0 and "parity passed" in result.output


def test_pipeline_writes_a_complete_export(tmp_path):
    out = tmp_path / "exp"
    result = run("pipeline", *TINY, "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["config"]["epochs"] == 3
    assert manifest["parity"]["passed"]
    # a second run without --force keeps the first export
    before = (out / "manifest.json").read_bytes()
    one_line_error(run("pipeline", *TINY, "--out", out), EXIT_USAGE)
    assert (out / "manifest.json").read_bytes() == before


def test_verify_exits_non_zero_naming_model_and_provider(tiny_export):
    result = run("verify", tiny_export, "--provider", "cpu", "--atol", "1e-12", "--rtol", "1e-12")
    one_line_error(result, EXIT_PARITY)
    assert "autoencoder [cpu]" in result.stderr
    assert "allowed max abs 1e-12 or 1e-12 of range" in result.stderr


@pytest.mark.parametrize("args, code", [
    (("verify", "no/such/folder"), EXIT_USAGE),
    (("export", "no/such/run"), EXIT_USAGE),
    (("train", "--units", "0", "--quiet"), EXIT_USAGE),
    (("train", "--epochs", "-3", "--quiet"), EXIT_USAGE),
    (("train", "--timesteps", "100000000", "--quiet"), EXIT_USAGE),
    (("train", "--data", "missing.csv", "--quiet"), EXIT_USAGE),
    (("inspect", "exported", "--provider", "tpu"), EXIT_USAGE),  # not a provider name at all
])
def test_bad_input_gives_one_line_and_a_code(args, code):
    one_line_error(run(*args), code)


def test_cuda_requested_where_there_is_none(tiny_export):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    result = run("inspect", tiny_export, "--provider", "cuda")
    one_line_error(result, EXIT_RUNTIME)
    assert "CUDAExecutionProvider requested; available:" in result.stderr


def test_wrong_data_is_bad_data(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    result = run("train", "--data", bad, "--quiet", "--out", tmp_path / "o")
    one_line_error(result, EXIT_DATA)
    assert "row 3" in result.stderr and "'b'" in result.stderr


def test_train_refuses_a_stride_for_ready_made_windows(tmp_path):
    """--stride cuts a series; a windows file has none to cut, so the option is refused, not ignored."""
    windows = tmp_path / "windows.npy"
    np.save(windows, np.random.default_rng(0).uniform(0, 1, (20, 4, 2)))
    result = run("train", "--data", windows, "--timesteps", "4", "--stride", "3", "--quiet", "--out", tmp_path / "o")
    one_line_error(result, EXIT_USAGE)
    assert "windows.npy: a stride applies to a series; this file holds ready-made windows" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, message", [
    (("--stride", "3"), "the seed data is one ready-made window: a stride applies to a series"),
    (("--validation-fraction", "0.3"), "the seed data is one ready-made window: a validation fraction applies"),
    (("--patience", "3"), "patience 3 stops on the validation loss, and there is no validation part"),
])
def test_settings_the_seed_data_would_ignore_are_refused(tmp_path, option, message):
    """The seed data is one window: a stride, a hold-out or early stopping could only be ignored."""
    result = run("train", *option, "--epochs", "1", "--quiet", "--out", tmp_path / "o")
    one_line_error(result, EXIT_USAGE)
    assert message in result.stderr and not (tmp_path / "o").exists()


def test_tampered_export_is_refused(export_copy):
    path = export_copy / "encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run("inspect", export_copy, "--provider", "cpu")
    one_line_error(result, EXIT_INTEGRITY)
    assert "encoder.onnx" in result.stderr


def test_bare_command_shows_its_help_not_an_error():
    result = CliRunner().invoke(main, [])
    assert "Commands:" in result.output and "pipeline" in result.output
    assert "error:" not in result.output


def test_inspect_shows_the_batch_graphs_and_where_they_ran(fixed_routes):
    tiny_export = fixed_routes
    result = run("inspect", tiny_export, "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    assert set(models) == {"autoencoder", "encoder", "autoencoder (batch 1)", f"autoencoder (batches {UNROLLED_FROM}+)"}
    single, unrolled = models["autoencoder (batch 1)"], models[f"autoencoder (batches {UNROLLED_FROM}+)"]
    assert single["file"] == "autoencoder.b1.onnx" and single["batch"] == 1 and models["autoencoder"]["batch"] == "any"
    assert sum(single["placement_summary"].values()) == 11
    assert unrolled["file"] == "autoencoder.unrolled.onnx" and unrolled["batch"] == "any"
    assert all(m["proven_finite"] for m in models.values())
    int8 = run("inspect", tiny_export, "--provider", "cpu", "--variant", "int8")
    assert int8.output.count("checked for inf/NaN on every call") == 2 and "proven finite" not in int8.output


def test_an_npy_model_reads_the_columns_it_was_trained_on(tmp_path):
    """Trained on columns 1,0 of an .npy, scored on the same file without --columns: the manifest's
    columns are applied (as a CSV's names are), not the file's order."""
    from edgeae.exporter import publish
    from edgeae.exporter.options import ExportOptions
    from edgeae.trainer.model import TrainConfig

    series = tmp_path / "s.npy"
    rng = np.random.default_rng(1)
    np.save(series, np.stack([rng.normal(size=40), 5 * rng.normal(size=40)], 1))
    config = TrainConfig(timesteps=4, features=2, units=4, epochs=3, validation_fraction=0.2, scaling="standard")
    publish.export(trainer.train(config, series, ("1", "0")), tmp_path / "exp",  # noise: nothing to learn
                   ExportOptions(providers="cpu", variants=(), accept_unlearned=True, min_calibration_windows=5))
    scores = {}
    for label, extra in (("manifest's", ()), ("given", ("--columns", "1,0"))):
        result = run("score", tmp_path / "exp", series, *extra, "--json", "--provider", "cpu")
        assert result.exit_code == 0, result.output
        scores[label] = json.loads(result.stdout)["score"]
    assert scores["manifest's"] == scores["given"]
    # The model's columns named in another order are put back in its order (issue 19), never scored swapped.
    swapped = json.loads(run("score", tmp_path / "exp", series, "--columns", "0,1", "--json").stdout)["score"]
    assert swapped == scores["given"]
    # An independent path: the runtime API on windows numpy cuts (stride 1) from the columns in the trained
    # order, 1 then 0. Same graphs and float32 input, so equal to float64 precision; the file's own order,
    # 0 then 1, scores otherwise, so the CLI runs cannot agree with this by scoring the file as it lies.
    from numpy.lib.stride_tricks import sliding_window_view

    from edgeae import runtime

    values = np.load(series).astype(np.float32)
    model = runtime.load(tmp_path / "exp", "cpu")
    trained, as_stored = (sliding_window_view(values[:, order], 4, axis=0).transpose(0, 2, 1) for order in ([1, 0], [0, 1]))
    np.testing.assert_allclose(scores["manifest's"], model.score(trained).scores, rtol=1e-12, atol=0)
    assert np.abs(np.asarray(scores["manifest's"]) - model.score(as_stored).scores).max() > 1e-3


@pytest.mark.parametrize("args", [("--data", "DATA", "--columns", "²"), ("--columns", "a")])
def test_columns_that_cannot_be_used_are_refused(tmp_path, args):
    """'²' passes str.isdigit but not int(); --columns with the seed data would be ignored."""
    data = tmp_path / "s.csv"
    data.write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(20)))
    result = run("train", *[str(data) if a == "DATA" else a for a in args], "--timesteps", "4", "--quiet",
                 "--out", tmp_path / "o")
    one_line_error(result, EXIT_DATA if "DATA" in args else EXIT_USAGE)
    assert not (tmp_path / "o").exists()


def test_a_folder_edgeae_never_wrote_is_a_usage_error_for_every_command(tmp_path):
    """`edgeae score somefolder data.csv` with the wrong folder is the user's mistake (exit 2),
    not an integrity failure, whichever command reads it."""
    empty = tmp_path / "not-an-export"
    empty.mkdir()
    data = tmp_path / "d.csv"
    data.write_text("a,b,c\n" + "1,2,3\n" * 12)
    for args in (("score", empty, data), ("encode", empty, data), ("reconstruct", empty, data), ("inspect", empty),
                 ("report", empty, "--out", tmp_path / "plots"), ("verify", empty), ("optimize", empty),
                 ("export", empty, "--out", tmp_path / "e"), ("targets", empty),
                 ("evaluate", empty, data, "--labels", "c"), ("bench", empty, "--no-cold-start")):
        result = run(*args)
        one_line_error(result, EXIT_USAGE)
        assert "is not an edgeae folder: it has no manifest.json" in result.stderr, (args, result.stderr)


def test_a_reader_that_closes_stdout_ends_the_command_quietly(tiny_export):
    """`edgeae inspect ... | head -1`: the reader leaves before the output is written; the command
    ends with the shell's code for that (141), without a traceback or an "internal error"."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeae.cli", "inspect", str(tiny_export), "--provider", "cpu"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == EXIT_CLOSED_PIPE, proc.stderr
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_a_folder_holding_only_a_keras_model_points_at_the_file(tmp_path):
    """A user who saved model.keras into a folder and gave the folder: told to give the file."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"PK")
    result = run("verify", folder)
    one_line_error(result, EXIT_USAGE)
    assert f"to export your own model, give the file: edgeae export {folder / 'model.keras'}" in result.stderr
