"""Artifacts exist whole and verified or not at all; every failure exits cleanly."""
import contextlib
import errno
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.runtime.session import OnnxModel
from edgeae.contract import files as artifacts
from edgeae.contract import manifest as manifests
from edgeae.exporter import build, publish
from edgeae.exporter.options import ExportOptions
from edgeae.verifier import verification
from edgeae.cli import main
from edgeae.trainer import training as trainer
from edgeae.contract.errors import (
    EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_USAGE, ExportExistsError, IntegrityError, LockedError, ParityError, UsageError,
)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_untouched(folder, before):
    assert snapshot(folder) == before
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


@pytest.fixture()
def existing(export_copy):
    return export_copy, snapshot(export_copy)


def test_existing_export_is_kept_without_force(tiny_training, existing):
    folder, before = existing
    with pytest.raises(ExportExistsError, match="--force"):
        publish.export(tiny_training, folder, ExportOptions(providers="cpu", variants=()))
    assert_untouched(folder, before)


def test_force_replaces_the_whole_folder(tiny_training, existing):
    folder, _ = existing
    (folder / "stray.txt").write_text("from an older export")  # listed: the old export's own file
    manifest = manifests.read_manifest(folder).to_body()
    manifest["files"]["stray.txt"] = manifests.file_entry(folder / "stray.txt", "report")
    manifests.write_manifest(folder, manifest)
    publish.export(tiny_training, folder, ExportOptions(providers="cpu", force=True, variants=()))
    assert not (folder / "stray.txt").exists()
    manifest = manifests.read_manifest(folder)
    manifests.verify_files(folder, manifest)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_failed_parity_publishes_nothing(tiny_training, existing):
    folder, before = existing
    with pytest.raises(ParityError, match="nothing published"):
        publish.export(tiny_training, folder, ExportOptions(providers="cpu", atol=1e-15, rtol=1e-15, force=True))
    assert_untouched(folder, before)


def test_interrupt_mid_export_keeps_the_old_export(tiny_training, existing, monkeypatch):
    folder, before = existing

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "verify_models", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish.export(tiny_training, folder, ExportOptions(providers="cpu", force=True, variants=()))
    assert_untouched(folder, before)


def test_full_disk_while_writing_the_manifest(tiny_training, existing, monkeypatch):
    folder, before = existing

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publish, "write_manifest", no_space)
    with pytest.raises(OSError) as caught:
        publish.export(tiny_training, folder, ExportOptions(providers="cpu", force=True, variants=()))
    assert caught.value.errno == errno.ENOSPC  # the full disk itself, passed on, not a later failure
    assert_untouched(folder, before)


def test_full_disk_in_an_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as caught:
        artifacts.atomic_write_json(target, {"new": 1})
    assert caught.value.errno == errno.ENOSPC  # the full disk itself, passed on, not a later failure
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_unwritable_target_is_a_usage_error(tiny_training, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UsageError, match="cannot write"):
        publish.export(tiny_training, tmp_path / "out", ExportOptions(providers="cpu", variants=()))
    assert list(tmp_path.iterdir()) == []


def test_target_under_a_file_is_a_usage_error(tiny_training, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        publish.export(tiny_training, tmp_path / "file" / "out", ExportOptions(providers="cpu"))
    with pytest.raises(UsageError, match="not a folder"):
        publish.export(tiny_training, tmp_path / "file", ExportOptions(providers="cpu", force=True))
    assert (tmp_path / "file").read_text() == "x"


def test_second_writer_fails_on_the_lock(tiny_training, existing):
    folder, before = existing
    with held_elsewhere(folder):  # the thread that holds a lock may take it again; any other may not
        with pytest.raises(LockedError, match="another edgeae process"):
            publish.export(tiny_training, folder, ExportOptions(providers="cpu", force=True, variants=()))
        # and from another process, through the CLI
        proc = subprocess.run([sys.executable, "-m", "edgeae.cli", "pipeline", "--epochs", "1", "--units", "2",
                               "--quiet", "--force", "--out", str(folder)], capture_output=True, text=True)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert "another edgeae process" in proc.stderr and "Traceback" not in proc.stderr
    assert_untouched(folder, before)


@contextlib.contextmanager
def held_elsewhere(folder):
    """`folder`'s lock held by another thread for the block (as another run would hold it)."""
    taken, done = threading.Event(), threading.Event()

    def hold():
        with artifacts.folder_lock(folder):
            taken.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()


def test_interrupt_exit_code_and_debug_traceback(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(publish, "train", interrupted)
    result = CliRunner().invoke(main, ["pipeline", "--quiet", "--out", str(tmp_path / "x")])
    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr.strip() == "error: interrupted; nothing was published"
    result = CliRunner().invoke(main, ["--debug", "pipeline", "--quiet", "--out", str(tmp_path / "x")])
    assert result.exit_code == EXIT_INTERRUPTED and "Traceback" in result.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- safe loading


def test_keras_model_with_a_lambda_layer_is_refused(tmp_path):
    import keras

    from edgeae.trainer import model

    inputs = keras.Input((4, 2))
    x = keras.layers.Lambda(lambda t: t * 2, name="encoder")(inputs)
    unsafe = keras.Model(inputs, x)
    unsafe.save(str(tmp_path / "model.keras"))
    with pytest.raises(IntegrityError, match="model.keras"):
        model.load(tmp_path / "model.keras")


def test_export_refuses_an_unsafe_training_folder(tmp_path, tiny_export):
    """A tampered model.keras in a training folder: refused by checksum, then by safe mode."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_export, run)
    (run / "model.keras").write_bytes(b"PK\x03\x04 definitely not a keras archive")
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_INTEGRITY and "model.keras" in result.stderr
    manifest = manifests.read_manifest(run).to_body()
    manifest["files"]["model.keras"] = manifests.file_entry(run / "model.keras", "keras")
    manifests.write_manifest(run, manifest)
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_INTEGRITY and "model.keras" in result.stderr
    assert not (tmp_path / "out").exists()


def _tiny_onnx(tmp_path, name, domain="", external=None):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    if external:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1])
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=external)
    node = helper.make_node("Mul", ["sequence", "w"], ["out"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("sequence", TensorProto.FLOAT, ["batch", 2, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2, 2])], [weight])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_external_data_outside_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.float32(3).tobytes())
    (tmp_path / "models").mkdir()
    path = _tiny_onnx(tmp_path / "models", "m.onnx", external="../secret.bin")
    with pytest.raises(IntegrityError, match="external data"):
        runtime.load(path, "cpu")


def test_foreign_operator_domain_is_refused(tmp_path):
    path = _tiny_onnx(tmp_path, "m.onnx", domain="com.example.evil")
    with pytest.raises(IntegrityError, match="com.example.evil"):
        runtime.load(path, "cpu")
    ok = _tiny_onnx(tmp_path, "ok.onnx")
    assert OnnxModel(ok, "cpu").run(np.ones((2, 2))).tolist() == [[2, 2], [2, 2]]


# ---------------------------------------------------------------- determinism


def test_same_seed_same_weights_same_onnx_outputs(tiny_config, tiny_training, tiny_export, tmp_path):
    again = trainer.train(tiny_config)
    for a, b in zip(tiny_training.autoencoder.get_weights(), again.autoencoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    publish.export(again, tmp_path / "again", ExportOptions(providers="cpu"))
    x = np.random.default_rng(0).uniform(0, 1, (50, 6, 3))
    first, second = runtime.load(tiny_export, "cpu"), runtime.load(tmp_path / "again", "cpu")
    np.testing.assert_array_equal(first.reconstruct(x), second.reconstruct(x))
    np.testing.assert_array_equal(first.encode(x), second.encode(x))


def test_pipeline_refuses_a_bad_target_before_training(tiny_config, tmp_path, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the target could never be written")

    monkeypatch.setattr(publish, "train", must_not_train)
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportExistsError):
        publish.run_pipeline(tiny_config, tmp_path / "taken")
    with pytest.raises(UsageError, match="not a folder"):
        publish.run_pipeline(tiny_config, tmp_path / "file" / "out")
    with held_elsewhere(tmp_path / "busy"):
        with pytest.raises(LockedError):
            publish.run_pipeline(tiny_config, tmp_path / "busy")
    with pytest.raises(UsageError, match="tolerance"):
        publish.run_pipeline(tiny_config, tmp_path / "new", options=ExportOptions(atol=-1.0))


@pytest.mark.parametrize("bound", [0.0, -1e-5, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["atol", "rtol"])
def test_impossible_tolerances_are_usage_errors(tiny_export, tiny_config, tmp_path, name, bound):
    with pytest.raises(UsageError, match="tolerance"):
        verification.verify(tiny_export, providers="cpu", **{name: bound})
    with pytest.raises(UsageError, match="tolerance"):
        publish.run_pipeline(tiny_config, tmp_path / "new", options=ExportOptions(**{name: bound}))


def test_real_ctrl_c_during_export_keeps_the_old_export(existing):
    """A real SIGINT to a running `edgeae pipeline --force`, sent while it writes its staging folder."""
    import signal
    import time

    folder, before = existing
    proc = subprocess.Popen([sys.executable, "-m", "edgeae.cli", "pipeline", "--epochs", "2", "--units", "4",
                             "--timesteps", "6", "--features", "3", "--quiet", "--force", "--provider", "cpu",
                             "--out", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{folder.name}.staging-") for p in folder.parent.iterdir()):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted; nothing was published"
    assert_untouched(folder, before)


def test_force_never_replaces_a_folder_of_other_files(tiny_training, tmp_path, monkeypatch):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("precious")
    for call in (lambda: publish.export(tiny_training, mine, ExportOptions(providers="cpu", force=True)),
                 lambda: trainer.save_training(tiny_training, mine, force=True),
                 lambda: artifacts.check_target(mine, force=True)):
        with pytest.raises(UsageError, match="not an edgeae folder"):
            call()
    assert (mine / "chapter1.txt").read_text() == "precious"
    monkeypatch.chdir(mine)
    with pytest.raises(UsageError, match="current folder"):
        artifacts.check_target(mine, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    trainer.save_training(tiny_training, empty, force=True)
    assert (empty / "manifest.json").is_file()


def test_fallback_swap_puts_the_old_export_back(tmp_path, monkeypatch):
    """Where renameat2 cannot exchange, a failed second rename must not lose the old export."""
    target, stage = tmp_path / "export", tmp_path / "stage"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    stage.mkdir()
    (stage / "manifest.json").write_text("new")
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def failing(src, dst):
        if str(src) == str(stage):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    # A failed swap is a ReplaceError (a UsageError, exit 2, and an OSError), one line naming target and cause.
    with pytest.raises(artifacts.ReplaceError, match=f"^cannot replace {re.escape(str(target))}: No space left on device$") as caught:
        artifacts.publish_folder(stage, target)
    assert caught.value.exit_code == EXIT_USAGE and isinstance(caught.value, OSError)
    assert (target / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "stage"]


def test_an_interrupt_swallowed_where_it_landed_still_publishes_nothing(tiny_training, tmp_path):
    """TensorFlow can swallow the KeyboardInterrupt of a Ctrl-C (a weakref callback prints it and goes on):
    the latch the CLI's handler sets stops the swap all the same, and the staging folder goes."""
    folder = tmp_path / "out"
    artifacts.INTERRUPTED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            publish.export(tiny_training, folder, ExportOptions(providers="cpu", variants=(), measure_routing=False))
    finally:
        artifacts.INTERRUPTED.clear()
    assert list(tmp_path.iterdir()) == []
    # cleared: publishes
    publish.export(tiny_training, folder, ExportOptions(providers="cpu", variants=(), measure_routing=False))
    assert (folder / "manifest.json").is_file()


def test_the_cli_latches_sigint_and_sigterm_and_restores_the_handlers():
    import signal

    from edgeae.cli.app import _sigterm_as_interrupt

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    artifacts.INTERRUPTED.set()  # left from an earlier command: cleared when the next one starts
    for sig in (signal.SIGINT, signal.SIGTERM):
        with _sigterm_as_interrupt():
            assert not artifacts.INTERRUPTED.is_set()
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(sig)
            assert artifacts.INTERRUPTED.is_set()
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    artifacts.INTERRUPTED.clear()
