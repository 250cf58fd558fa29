"""No window where a crash or an interrupt spoils an export (issue 31, item 6): the lock is taken before any
work, amendments publish whole, what a killed run left is cleaned up and named, an interrupt is never lost,
one that comes after the swap does not turn a finished export into a failure, and a pipeline that cannot
publish keeps its trained model."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.contract import files as artifacts
from edgeae.contract import manifest as manifests
from edgeae.contract.errors import EXIT_OK, EdgeAENotice, IntegrityError, LockedError, UsageError
from edgeae.contract.layout import KERAS_FILE, MANIFEST_FILE, PARITY_INPUTS_FILE, TARGETS_FILE
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.trainer import model as keras_model
from edgeae.trainer import training as trainer


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def strays(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


def test_a_second_export_is_refused_while_the_first_is_still_working(tiny_training, tmp_path, monkeypatch):
    """The first run holds the lock from its first step, not only from the staging: the second is refused
    before it does anything, and the first publishes as if alone."""
    out = tmp_path / "exp"
    working, release = threading.Event(), threading.Event()
    real = publish.calibrated_detector

    def slow_detector(*args, **kwargs):  # the first run, busy before its staging folder exists
        working.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "calibrated_detector", slow_detector)
    first = {}
    options = ExportOptions(providers="cpu", variants=(), measure_routing=False)
    thread = threading.Thread(target=lambda: first.update(path=publish.export(tiny_training, out, options)[0]))
    thread.start()
    try:
        assert working.wait(120)
        assert not list(tmp_path.glob(".exp.staging-*"))  # no staging yet: only the lock protects `out`
        second_reached = []
        monkeypatch.setattr(publish, "verification_providers", lambda *a: second_reached.append(a))
        with pytest.raises(LockedError, match="another edgeae process"):
            publish.export(tiny_training, out, options)
        assert second_reached == []  # refused at its check of the target, before any step of its own
    finally:
        release.set()
        thread.join()
    assert first["path"] == out and (out / MANIFEST_FILE).is_file()


def test_stale_staging_folders_are_removed_by_the_next_run_saying_so(tmp_path):
    target = tmp_path / "exp"
    stale = [tmp_path / ".exp.staging-abcd1234", tmp_path / ".exp.old-zz_90000"]
    others = [tmp_path / ".other.staging-abcd1234",  # another target's: not ours to touch
              tmp_path / ".exp.staging-x.staging-abcd1234"]  # the staging of a target named "exp.staging-x"
    for folder in stale + others:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x" * 1000)
    with pytest.warns(EdgeAENotice, match=r"removed 2 unfinished folder\(s\) beside exp left by a run that was "
                                          r"killed: \.exp\.old-zz_90000, \.exp\.staging-abcd1234"):
        with artifacts.staged_folder(target) as stage:
            (stage / "a").write_text("new")
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in others] == [True, True]
    assert (target / "a").read_text() == "new"


def test_the_cli_names_the_stale_folders_it_removed_in_one_note(tiny_export, tmp_path):
    folder = tmp_path / "exp"
    subprocess.run(["cp", "-r", str(tiny_export), str(folder)], check=True)
    (tmp_path / ".exp.staging-k1ll3d00").mkdir()
    proc = subprocess.run([sys.executable, "-m", "edgeae.cli", "report", str(folder), "--provider", "cpu"],
                          capture_output=True, text=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: removed")]
    assert notes == ["note: removed 1 unfinished folder(s) beside exp left by a run that was killed: "
                     ".exp.staging-k1ll3d00"], proc.stderr
    assert "Warning" not in proc.stderr and strays(folder) == []


def test_an_amendment_that_fails_halfway_leaves_the_export_as_it_was(export_copy, monkeypatch):
    """Dying between a new targets.json and the manifest's reseal used to leave an export that never verified
    again: the amendment now happens in a staging copy that replaces the export whole, or not at all."""
    before = snapshot(export_copy)

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifests, "write_manifest", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with manifests.amend_export(export_copy) as amendment:
            path = amendment.folder / TARGETS_FILE
            artifacts.atomic_write_json(path, {"runtimes": {"files": {}}})
            amendment.add_file(path, "report")
    assert snapshot(export_copy) == before and strays(export_copy) == []
    monkeypatch.undo()
    runtime.load(export_copy, "cpu")  # every file still matches the manifest


def test_an_amendment_publishes_its_files_and_manifest_together(export_copy):
    old_inode = (export_copy / KERAS_FILE).stat().st_ino
    with manifests.amend_export(export_copy) as amendment:
        assert amendment.folder != export_copy  # new files go to the staging copy
        path = amendment.folder / "notes.json"
        artifacts.atomic_write_json(path, {"seen": True})
        amendment.add_file(path, "report")
        assert not (export_copy / "notes.json").exists()  # nothing shows before the swap
    assert json.loads((export_copy / "notes.json").read_text()) == {"seen": True}
    assert "notes.json" in manifests.read_export_manifest(export_copy).files
    assert (export_copy / KERAS_FILE).stat().st_ino == old_inode  # unchanged files are linked, not copied
    assert strays(export_copy) == []
    runtime.load(export_copy, "cpu")


def test_a_killed_amendment_leaves_a_verifying_export_and_the_next_one_cleans_up(export_copy):
    script = ("import sys, time\nfrom pathlib import Path\nfrom edgeae.contract import files, manifest\n"
              "with manifest.amend_export(Path(sys.argv[1])) as a:\n"
              "    files.atomic_write_json(a.folder / 'targets.json', {'runtimes': {}})\n"
              "    print('written', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(export_copy)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.kill()  # kill -9 between the new targets.json and the manifest's reseal
    proc.wait()
    assert len([name for name in strays(export_copy) if ".staging-" in name]) == 1
    runtime.load(export_copy, "cpu")  # the export itself never saw the half-done amendment
    with pytest.warns(EdgeAENotice, match="removed 1 unfinished folder"):
        with manifests.amend_export(export_copy):
            pass
    assert strays(export_copy) == []


def test_a_pipeline_on_a_full_disk_keeps_its_trained_model(tiny_training, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.staging-x" / "a.onnx"))

    monkeypatch.setattr(publish, "build_export", full_disk)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"No space left on device: .*; the trained model is kept in .*out\.training"):
        publish.export_or_keep(tiny_training, out, ExportOptions(providers="cpu", variants=(), measure_routing=False))
    assert not out.exists()
    kept = trainer.load_training(tmp_path / "out.training")
    x = tiny_training.train_windows[:2]
    np.testing.assert_array_equal(kept.autoencoder.predict(x, verbose=0), tiny_training.autoencoder.predict(x, verbose=0))


def test_a_lost_interrupt_ends_training_at_the_next_epoch(tiny_config):
    """A KeyboardInterrupt TensorFlow swallowed leaves only the latch: training stops at the epoch's end."""
    seen = []

    def progress(epoch, logs):
        seen.append(epoch)
        if epoch == 2:
            artifacts.INTERRUPTED.set()  # what the CLI's handler does before its exception is swallowed

    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(tiny_config, progress=progress)
    finally:
        artifacts.INTERRUPTED.clear()
    assert seen == [1, 2]  # epoch 3 ended in the guard, before any display of it


def test_an_interrupt_after_publishing_exits_0_with_the_path(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):  # Ctrl-C lands after the swap, while the summary is being made
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "check_learned", interrupted)
    result = CliRunner().invoke(main, ["train", "--epochs", "2", "--units", "2", "--quiet", "--out", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.strip() == str(out.absolute())
    assert "note: interrupted after" in result.stderr and "it is complete" in result.stderr
    assert (out / MANIFEST_FILE).is_file()


def test_the_handler_lets_a_published_command_finish():
    from edgeae.cli.app import _sigterm_as_interrupt

    with _sigterm_as_interrupt():
        artifacts.PUBLISHED.append(Path("somewhere"))
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the export is in place
        assert artifacts.INTERRUPTED.is_set()
    artifacts.INTERRUPTED.clear()
    artifacts.PUBLISHED.clear()


def test_a_real_sigterm_during_training_publishes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgeae.cli", "train", "--epochs", "3000", "--units", "4",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".run.lock")) and time.monotonic() < deadline:  # the lock: training has begun
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted; nothing was published"
    assert not out.exists() and strays(out) == []


@pytest.mark.parametrize("name", [KERAS_FILE, PARITY_INPUTS_FILE, TARGETS_FILE, "parity.json",
                                  "parity_reference.npz"])
def test_load_checks_every_listed_file_not_only_the_served_graphs(export_copy, name):
    path = export_copy / name
    if not path.exists():
        pytest.fail(f"the tiny export lists no {name}")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{name}: sha256 .* does not match the manifest"):
        runtime.load(export_copy, "cpu")
