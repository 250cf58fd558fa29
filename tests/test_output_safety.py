"""Nothing the user had is overwritten or silently ignored: outputs, pictures, columns, labels, signals."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgeae.cli import run as run_commands
from edgeae.verifier import plots
from edgeae.contract.manifest import read_manifest, write_manifest
from edgeae.cli import describe_failure
from edgeae.contract.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE
from edgeae.trainer import training as trainer

from .test_cli import one_line_error, run

BENCH = ["--runs", "3", "--warmup", "0", "--batch", "2", "--no-cold-start", "--role", "encoder"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def no_bench(monkeypatch):
    """A refusal must come before any timing starts."""
    monkeypatch.setattr(run_commands, "run_bench", lambda *a, **k: pytest.fail("benchmarked although the output was refused"))


@pytest.fixture()
def labelled_csv(tmp_path):
    """A series for the tiny model (3 features) with a 0/1 label column."""
    t = np.arange(40)
    rows = np.column_stack([t / 40, np.sin(t / 5), np.cos(t / 7), (t >= 20) & (t < 24)])
    path = tmp_path / "labelled.csv"
    path.write_text("a,b,c,label\n" + "".join(f"{a},{b},{c},{int(f)}\n" for a, b, c, f in rows))
    return path


# ---------------------------------------------------------------- bench --output


def test_bench_keeps_an_existing_output_without_force(tiny_export, tmp_path, no_bench):
    keep = tmp_path / "keep.json"
    keep.write_text("precious")
    result = run("bench", tiny_export, *BENCH, "-o", keep)
    one_line_error(result, EXIT_USAGE)
    assert "exists; pass --force" in result.stderr and keep.read_text() == "precious"


def test_bench_output_must_be_json(tiny_export, tmp_path, no_bench):
    keep = tmp_path / "keep.csv"
    keep.write_text("precious")
    assert ".json" in run("bench", tiny_export, *BENCH, "-o", keep, "--force").stderr
    assert keep.read_text() == "precious"
    one_line_error(run("bench", tiny_export, *BENCH, "-o", tmp_path / "new.txt"), EXIT_USAGE)
    assert not (tmp_path / "new.txt").exists()


def test_bench_force_replaces_the_output_with_the_report(tiny_export, tmp_path):
    keep = tmp_path / "keep.json"
    keep.write_text("old")
    result = run("bench", tiny_export, *BENCH, "-o", keep, "--force")
    assert result.exit_code == 0, result.stderr
    assert json.loads(keep.read_text())["batches"] == [2]


def test_outputs_never_land_on_what_the_command_reads_even_with_force(export_copy, tmp_path, no_bench):
    """-o onto the export's manifest, a new file inside the export, or the data file itself:
    each refused before any work, with --force too, and every byte kept."""
    data = tmp_path / "windows.npy"
    np.save(data, np.zeros((2, 6, 3)))
    kept = {path: path.read_bytes() for path in [data, *export_copy.iterdir()]}
    for command in ("score", "encode"):
        for target in (export_copy / "manifest.json", export_copy / "scores.csv", data,
                       export_copy / ".." / export_copy.name / "parity_inputs.npz"):
            result = run(command, export_copy, data, "-o", target, "--force", "--provider", "cpu")
            one_line_error(result, EXIT_USAGE)
            assert "this command reads; write the result elsewhere" in result.stderr
    one_line_error(run("bench", export_copy, *BENCH, "-o", export_copy / "bench.json", "--force"), EXIT_USAGE)
    assert {path: path.read_bytes() for path in [data, *export_copy.iterdir()]} == kept


def test_bench_batch_has_an_upper_bound(tiny_export, no_bench):
    result = run("bench", tiny_export, *BENCH, "--batch", "1000000000")
    one_line_error(result, EXIT_USAGE)
    assert "--batch" in result.stderr


def test_out_of_memory_is_a_runtime_error_naming_no_option(tiny_export, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(run_commands, "run_bench", exhausted)
    result = run("bench", tiny_export, *BENCH)
    one_line_error(result, EXIT_RUNTIME)
    assert "out of memory" in result.stderr and "--chunk" not in result.stderr
    assert describe_failure(MemoryError())[0] == EXIT_RUNTIME


# ---------------------------------------------------------------- report pictures


def test_report_keeps_the_users_pngs_without_force(tiny_export, tmp_path):
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "parity.png").write_text("mine")  # the last one written: nothing may be written before the refusal
    result = run("report", tiny_export, "--out", out)
    one_line_error(result, EXIT_USAGE)
    assert "parity.png" in result.stderr and "--force" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["parity.png"]
    assert (out / "parity.png").read_text() == "mine"
    assert run("report", tiny_export, "--out", out, "--force").exit_code == 0
    for name in plots.PLOT_FILES.values():
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_report_keeps_a_foreign_png_in_the_export_but_redraws_its_own(export_copy):
    before = (export_copy / "manifest.json").read_bytes()
    (export_copy / "scores.png").write_text("mine")
    one_line_error(run("report", export_copy), EXIT_USAGE)
    assert (export_copy / "scores.png").read_text() == "mine"
    assert (export_copy / "manifest.json").read_bytes() == before
    assert not (export_copy / "loss.png").exists()
    (export_copy / "scores.png").unlink()
    assert run("report", export_copy).exit_code == 0
    # --out naming the export itself is the export: its manifest keeps listing what is on disk
    assert run("report", export_copy, "--out", export_copy).exit_code == 0
    assert run("inspect", export_copy, "--provider", "cpu").exit_code == 0


def test_report_labels_need_data(tiny_export, tmp_path):
    result = run("report", tiny_export, "--labels", "label", "--out", tmp_path / "p")
    one_line_error(result, EXIT_USAGE)
    assert "--data" in result.stderr and not (tmp_path / "p").exists()


# ---------------------------------------------------------------- columns and labels


@pytest.mark.parametrize("columns", [",", "", " ", "a,,b", "a,"])
def test_empty_column_lists_and_names_are_refused(tiny_export, labelled_csv, columns):
    result = run("score", tiny_export, labelled_csv, "--columns", columns)
    one_line_error(result, EXIT_USAGE)
    assert "--columns" in result.stderr


def test_train_refuses_empty_columns_before_training(labelled_csv, tmp_path):
    one_line_error(run("train", "--data", labelled_csv, "--columns", ",", "--quiet", "--out", tmp_path / "r"),
                   EXIT_USAGE)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("columns, labels", [("a,b,label", "label"), ("a,b,3", "label"), ("a,b,label", "3")])
def test_evaluate_refuses_the_label_as_a_feature(tiny_export, labelled_csv, columns, labels):
    result = run("evaluate", tiny_export, labelled_csv, "--columns", columns, "--labels", labels)
    one_line_error(result, EXIT_USAGE)
    assert "'label'" in result.stderr


def test_evaluate_refuses_a_label_the_model_was_trained_on(export_copy, labelled_csv):
    manifest = read_manifest(export_copy).to_body()
    manifest["training"]["data"] = {"source": "train.csv", "columns": ["a", "b", "label"]}
    write_manifest(export_copy, manifest)
    one_line_error(run("evaluate", export_copy, labelled_csv, "--labels", "label"), EXIT_USAGE)
    result = run("evaluate", export_copy, labelled_csv, "--columns", "a,b,c", "--labels", "label", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["windows"] == 35


# ---------------------------------------------------------------- export over its own training folder


def test_export_never_replaces_its_training_folder(tiny_training, tmp_path, monkeypatch):

    training = tmp_path / "run"
    trainer.save_training(tiny_training, training)
    before = {p.name: p.read_bytes() for p in training.iterdir()}
    for out in (training, tmp_path):
        result = run("export", training, "--out", out, "--force", "--provider", "cpu")
        one_line_error(result, EXIT_USAGE)
        assert "training folder" in result.stderr
    assert {p.name: p.read_bytes() for p in training.iterdir()} == before


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """A real SIGTERM to `edgeae pipeline`, sent while it writes its staging folder."""
    out = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "edgeae.cli", "pipeline", "--epochs", "2", "--units", "4",
                             "--timesteps", "6", "--features", "3", "--quiet", "--provider", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    staged = False
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".exp.staging-") for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGTERM)
            staged = True
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert staged, stderr
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted; nothing was published"
    assert list(tmp_path.iterdir()) == []  # no export, no staging folder, no lock


def test_the_cli_restores_the_callers_sigterm_handler(tiny_export):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert run("inspect", tiny_export, "--provider", "cpu").exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_report_refuses_the_label_as_a_feature(tiny_export, labelled_csv, tmp_path):
    result = run("report", tiny_export, "--data", labelled_csv, "--columns", "a,b,label", "--labels", "label",
                 "--out", tmp_path / "p")
    one_line_error(result, EXIT_USAGE)
    assert "'label'" in result.stderr and not (tmp_path / "p").exists()
