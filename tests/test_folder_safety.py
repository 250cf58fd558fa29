"""Replacing a folder never takes the user's files with it, never leaves strays, works for any
valid name; results never vanish into a closed stdout; errors stay on one line."""
import errno
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgeae.contract import files as artifacts
from edgeae.contract import manifest as manifests
from edgeae.exporter import publish as publisher
from edgeae.contract.errors import EXIT_USAGE, LockedError, UsageError
from edgeae.trainer import training as trainer

from .test_cli import one_line_error, run


def names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def no_export(monkeypatch):
    """A refusal must come before any model is loaded or exported."""
    monkeypatch.setattr(trainer, "load_training", lambda *a, **k: pytest.fail("worked although refused"))
    monkeypatch.setattr(publisher, "export", lambda *a, **k: pytest.fail("worked although refused"))


@pytest.fixture()
def user_files(export_copy):
    """An export a user put a note and a folder of their own into."""
    (export_copy / "notes.txt").write_text("mine")
    (export_copy / "mydata").mkdir()
    (export_copy / "mydata" / "x.csv").write_text("1")
    return export_copy


# ---------------------------------------------------------------- files the manifest does not list


@pytest.mark.parametrize("command", [("optimize", "{folder}", "--provider", "cpu"),
                                     ("export", "{training}", "--out", "{folder}", "--force", "--provider", "cpu")])
def test_replacing_an_export_keeps_files_its_manifest_does_not_list(command, user_files, tiny_export, no_export):
    before = names(user_files)
    args = [a.format(folder=user_files, training=tiny_export) for a in command]
    result = run(*args)
    one_line_error(result, EXIT_USAGE)
    assert "it holds files its manifest does not list (mydata, notes.txt); move them out first" in result.stderr
    assert names(user_files) == before and (user_files / "mydata" / "x.csv").read_text() == "1"
    assert names(user_files.parent) == ["export"]


def test_unlisted_files_are_named_a_few_at_a_time_and_a_listed_name_that_is_a_folder_counts(export_copy):
    for name in ("a", "b", "c", "d"):
        (export_copy / name).write_text("mine")
    with pytest.raises(UsageError, match=r"\(a, b, c and 1 more\)"):
        artifacts.check_target(export_copy, force=True)
    for name in ("a", "b", "c", "d"):
        (export_copy / name).unlink()
    artifacts.check_target(export_copy, force=True)  # only what the manifest lists: replaceable
    (export_copy / "parity.json").unlink()
    (export_copy / "parity.json").mkdir()
    with pytest.raises(UsageError, match=r"does not list \(parity.json\)"):
        artifacts.check_target(export_copy, force=True)


def test_a_training_folder_with_user_files_is_not_replaced(tiny_training, tmp_path):
    run_dir = tmp_path / "run"
    trainer.save_training(tiny_training, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"does not list \(notes.txt\)"):
        trainer.save_training(tiny_training, run_dir, force=True)
    assert (run_dir / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- a failed publish


def failing(code):
    """An exchange that fails as renameat2 does on a mount point (EBUSY) or a read-only one (EROFS)."""
    def exchange(a, b):
        raise OSError(code, os.strerror(code), str(b))
    return exchange


def publish(target, content="new"):
    with artifacts.staged_folder(target, force=True) as stage:
        manifests.write_manifest(stage, {"kind": "training", "files": {}, "note": content})


@pytest.fixture()
def old_folder(tmp_path):
    target = tmp_path / "exp"
    publish(target, "old")
    return target, (target / "manifest.json").read_bytes()


def test_a_busy_target_is_kept_with_no_strays(old_folder, monkeypatch):
    """A bind mount (read-only or not) cannot be renamed: renameat2 says EBUSY."""
    target, before = old_folder
    monkeypatch.setattr(artifacts, "_exchange", failing(errno.EBUSY))
    with pytest.raises(UsageError, match=r"cannot replace .*exp: Device or resource busy \(a mount point"):
        publish(target)
    assert (target / "manifest.json").read_bytes() == before
    assert names(target.parent) == ["exp"]


def test_the_fallback_swap_leaves_no_old_folder_when_the_target_cannot_move(old_folder, monkeypatch):
    target, before = old_folder
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(target):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="cannot replace"):
        publish(target)
    assert (target / "manifest.json").read_bytes() == before
    assert names(target.parent) == ["exp"]


def test_a_failed_publish_through_the_cli_is_one_line_and_exit_2(export_copy, tiny_export, monkeypatch):
    before = sorted((p.name, p.read_bytes()) for p in export_copy.iterdir())
    monkeypatch.setattr(artifacts, "_exchange", failing(errno.EROFS))
    result = run("export", tiny_export, "--out", export_copy, "--force", "--provider", "cpu")
    one_line_error(result, EXIT_USAGE)
    assert "cannot replace" in result.stderr and "Read-only file system" in result.stderr
    assert sorted((p.name, p.read_bytes()) for p in export_copy.iterdir()) == before
    assert names(export_copy.parent) == ["export"]


# ---------------------------------------------------------------- long names


def test_staging_lock_and_temporary_names_fit_beside_any_valid_name(tmp_path, tiny_export):
    for name in ("e" * 255, "ü" * 127):  # 255 bytes, and a name whose cut would split a character
        target = tmp_path / name
        publish(target, "old")
        publish(target, "new")  # staging, exchange and lock beside a 255-byte name
        assert artifacts.read_json(target / "manifest.json", "manifest")["note"] == "new"
        artifacts.atomic_write_bytes(tmp_path / name[:-1], b"data")
        assert (tmp_path / name[:-1]).read_bytes() == b"data"
    assert names(tmp_path) == sorted(["e" * 255, "e" * 254, "ü" * 127, "ü" * 126])
    out = tmp_path / ("a" * 251 + ".csv")
    series = tmp_path / "w.npy"
    np.save(series, np.zeros((2, 6, 3), np.float32))
    result = run("score", tiny_export, series, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("score")


def test_the_lock_of_a_long_name_is_one_per_target(tmp_path):
    first, second = tmp_path / ("x" * 250 + "1"), tmp_path / ("x" * 250 + "2")
    refused = []

    def take(target):  # from another thread: the holding thread itself may take its lock again
        try:
            with artifacts.folder_lock(target):
                pass
        except LockedError:
            refused.append(target)

    with artifacts.folder_lock(first):
        for target in (first, second):  # second: same start, another target: not locked out
            other = threading.Thread(target=take, args=(target,))
            other.start()
            other.join()
    assert refused == [first]
    assert names(tmp_path) == []


# ---------------------------------------------------------------- a closed stdout


def with_stdout_closed(*argv):
    """Run edgeae with file descriptor 1 closed, as `>&-` does: Python's sys.stdout is None."""
    return subprocess.run([sys.executable, "-m", "edgeae.cli", *map(str, argv)], check=False, stderr=subprocess.PIPE,
                          text=True, preexec_fn=lambda: os.close(1), timeout=120)


@pytest.mark.parametrize("args", [("score", "{export}", "{data}"), ("inspect", "{export}", "--json"),
                                  ("verify", "{export}", "--json", "--against", "stored", "--provider", "cpu")])
def test_a_result_for_a_closed_stdout_is_an_error(args, tiny_export, tmp_path):
    data = tmp_path / "w.npy"
    np.save(data, np.zeros((2, 6, 3), np.float32))
    proc = with_stdout_closed(*(a.format(export=tiny_export, data=data) for a in args))
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip() == "error: cannot write the result: standard output is closed"


def test_a_result_written_to_a_file_needs_no_stdout(tiny_export, tmp_path):
    data, out = tmp_path / "w.npy", tmp_path / "s.csv"
    np.save(data, np.zeros((2, 6, 3), np.float32))
    proc = with_stdout_closed("score", tiny_export, data, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3


# ---------------------------------------------------------------- errors on one line


def test_control_characters_in_names_do_not_break_the_error_line(tiny_export, tmp_path):
    result = run("score", tmp_path / "ex p\nü", tmp_path / "s er\nü.csv", "-o", tmp_path / "o ut\nü.csv")
    one_line_error(result, EXIT_USAGE)
    assert "ex p\\nü" in result.stderr
    result = run("score", tiny_export, "nonexist\r\x1b[2Jx\tz.csv")
    one_line_error(result, EXIT_USAGE)
    assert "nonexist\\r\\x1b[2Jx\\tz.csv" in result.stderr
    one_line_error(run("score", tiny_export, "x.csv", "--stride", "a\nb"), EXIT_USAGE)  # click's own message


# ---------------------------------------------------------------- bench and score options


def test_a_repeated_batch_is_benchmarked_once(tiny_export):
    result = run("bench", tiny_export, "--batch", "2", "--batch", "8", "--batch", "2", "--no-cold-start",
                 "--runs", "3", "--warmup", "0", "--role", "encoder", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batches"] == [2, 8]


def test_stride_is_refused_for_ready_made_windows(tiny_export, tmp_path):
    windows = tmp_path / "w.npy"
    np.save(windows, np.zeros((3, 6, 3), np.float32))
    result = run("score", tiny_export, windows, "--stride", "2")
    one_line_error(result, EXIT_USAGE)
    assert "w.npy: a stride applies to a series; this file holds ready-made windows" in result.stderr
    assert run("score", tiny_export, windows).exit_code == 0  # the manifest's stride is no explicit one
