"""Progress on a terminal (issue 30): the long commands draw their stages on stderr when it is a
terminal, with elapsed time and an estimate; a pipe, --json and --quiet get nothing extra."""
from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.cli import progress as shown
from edgeae.contract import progress
from edgeae.exporter import publish
from edgeae.measure import routing

DRAWN = ("elapsed, ", " left]")  # what every bar with a known total shows


def on_terminal(tmp_path, *args, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """`edgeae ARGS` in a child process whose stderr is a pseudo-terminal (stdout a file): exit code,
    stdout, and every byte written to the terminal."""
    master, slave = pty.openpty()
    stdout = tmp_path / "stdout.txt"
    with open(stdout, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "edgeae", *map(str, args)], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=slave, env={**os.environ, **(env or {})})
    os.close(slave)
    drawn, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                drawn.append(data)
            elif child.poll() is not None:
                break
        code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if child.poll() is None:
            child.kill()
        os.close(master)
    return code, stdout.read_text(), b"".join(drawn).decode("utf-8", "replace")


def in_pipe(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeae", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def final_lines(terminal: str) -> list[str]:
    """What a terminal shows once the run is over: each line's last rewrite."""
    return [line.split("\r")[-1] for line in terminal.replace("\r\n", "\n").split("\n") if line.split("\r")[-1]]


@pytest.fixture()
def readings(tmp_path):
    """A CSV for the tiny export (3 features, windows of 6), with a time column and one spike in 'b'."""
    rng = np.random.default_rng(7)
    values = rng.uniform(0.2, 0.4, (120, 3))
    values[70:73, 1] += 5.0
    path = tmp_path / "readings.csv"
    path.write_text("t,a,b,c\n" + "\n".join(f"2026-01-01 {i // 60:02d}:{i % 60:02d}," + ",".join(f"{v:.5f}" for v in row)
                                            for i, row in enumerate(values)) + "\n")
    return path


def test_score_draws_a_bar_on_a_terminal_and_nothing_in_a_pipe_with_json_or_quiet(tiny_export, readings, tmp_path):
    args = ("score", tiny_export, readings, "--time-column", "t", "--provider", "cpu")
    code, stdout, terminal = on_terminal(tmp_path, *args)
    assert code == 0, terminal
    bar = [line for line in final_lines(terminal) if line.startswith("score readings.csv:")]
    assert bar and all(word in bar[-1] for word in DRAWN) and "115/115 windows" in bar[-1], terminal
    assert stdout.startswith("scored 115 of 115 windows of readings.csv")

    piped = in_pipe(*args)
    assert piped.returncode == 0 and piped.stdout == stdout  # the same summary
    assert "\r" not in piped.stderr and not any(word in piped.stderr for word in DRAWN)

    code, stdout, terminal = on_terminal(tmp_path, *args, "--json")
    assert code == 0 and len(json.loads(stdout)["score"]) == 115  # --json: stdout is JSON alone
    assert not any(word in terminal for word in DRAWN), terminal

    code, stdout, terminal = on_terminal(tmp_path, *args, "--quiet")
    assert code == 0 and stdout.startswith("scored 115 of 115")
    assert not any(word in terminal for word in DRAWN), terminal


def test_targets_counts_its_files_on_a_terminal(export_copy, tmp_path):
    # onnxruntime-web with no node folder: 'not installed' at once, every file still counted
    env = {"EDGEAE_NODE_DIR": str(tmp_path / "no-node")}
    code, stdout, terminal = on_terminal(tmp_path, "targets", export_copy, "--runtime", "onnxruntime-web", env=env)
    assert code == 0, terminal
    bar = [line for line in final_lines(terminal) if line.startswith("targets:")]
    assert bar and "100%" in bar[-1] and "files" in bar[-1] and all(word in bar[-1] for word in DRAWN), terminal
    assert stdout.startswith("measured on")
    piped = in_pipe("targets", export_copy, "--runtime", "onnxruntime-web", "--json", env=env)
    assert piped.returncode == 0 and json.loads(piped.stdout)["files"]
    assert "\r" not in piped.stderr and not any(word in piped.stderr for word in DRAWN)


def test_pipeline_names_each_stage_on_a_terminal_and_ends_with_the_export_summary(tmp_path):
    code, stdout, terminal = on_terminal(
        tmp_path, "pipeline", "--epochs", "4", "--units", "4", "--timesteps", "6", "--features", "3", "--provider",
        "cpu", "--fixed-routing", "--accept-unlearned", "--build", "fp16", "--out", tmp_path / "out")
    assert code == 0, terminal
    lines = final_lines(terminal)
    train = [line for line in lines if line.startswith("train:")]
    assert train and "4/4 epochs" in train[-1] and all(word in train[-1] for word in DRAWN), terminal
    for stage in ("load TensorFlow", "convert autoencoder (tf2onnx)", "convert encoder (tf2onnx)",
                  "verify (parity against Keras)", "variants:", "thresholds and detector graphs"):
        assert any(line.startswith(stage) and "elapsed" in line for line in lines), (stage, lines)
    assert "loss" in terminal  # the bar's note while training runs
    summary = stdout[stdout.index("\nsummary: "):].splitlines()[1:]
    assert summary[0].startswith("summary: ") and "published" in summary[0]
    assert any(line.strip().startswith("published      autoencoder: ") and "fp16 (" in line for line in summary)


def test_a_pipe_gets_the_epoch_lines_with_time_and_json_gets_nothing(tmp_path):
    """CliRunner's stderr is no terminal: what a pipe or a log file gets."""
    base = ["train", "--epochs", "10", "--units", "4", "--timesteps", "6", "--features", "3"]
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"epoch {e}/10" for e in range(1, 11)]
    assert "elapsed, about" in lines[4] and lines[-1].endswith(" elapsed)") and "\r" not in result.stderr
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["epochs_run"] == 10
    assert result.stderr == ""
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "c"), "--quiet"])
    assert result.exit_code == 0 and result.stderr == ""


def test_routing_reports_each_role_as_a_stage_of_its_batch_sizes(export_copy, monkeypatch):
    real = routing.measure
    monkeypatch.setattr(routing, "measure", lambda folder, manifest, role, graphs, base: real(
        folder, manifest, role, graphs, base, budget_s=0.001))
    heard = Recorder()
    with progress.reporting(heard):
        publish.rewrite_routing(export_copy)
    assert heard.stages == [("routing autoencoder", len(routing.PROBES), len(routing.PROBES)),
                            ("routing encoder", len(routing.PROBES), len(routing.PROBES))]
    assert progress.current() is not heard  # the reporter before is back


class Recorder(progress.Reporter):
    """Every stage the library reported: (name, total, units advanced)."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int | None, int]] = []

    def start(self, name, total=None, unit="step"):
        recorder, index = self, len(self.stages)
        self.stages.append((name, total, 0))

        class Counted(progress.Step):
            def advance(self, n=1, note=None):
                name, total, done = recorder.stages[index]
                recorder.stages[index] = (name, total, done + n)

        return Counted()


def test_the_library_is_silent_by_default_and_counts_only_the_items_done():
    assert type(progress.current()) is progress.Reporter
    assert list(progress.each([1, 2, 3], "nothing heard")) == [1, 2, 3]
    heard = Recorder()
    with progress.reporting(heard), pytest.raises(ValueError):
        for item in progress.each(["a", "b"], "work", "items"):
            raise ValueError(item)
    assert heard.stages == [("work", 2, 0)]


def test_without_tqdm_the_bar_is_drawn_by_hand(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # a device's install: no tqdm
    terminal = io.StringIO()
    reporter = shown.TerminalProgress(terminal)
    step = reporter.start("convert", 4, "files")
    inner = reporter.start("load TensorFlow")  # a stage within a stage: the running bar's note, not a second bar
    inner.close()
    for _ in step.over(range(4), note=lambda i: f"file {i}"):
        pass
    reporter.close()
    drawn = terminal.getvalue().split("\r")
    assert isinstance(step.bar, shown.PlainBar)
    assert any(", load TensorFlow" in line for line in drawn)
    assert drawn[-1].startswith("convert: 100% 4/4 files [00:00 elapsed, 00:00 left]") and drawn[-1].endswith("\n")


def test_the_epoch_lines_measure_the_time_left_from_the_first_epoch_on():
    log = io.StringIO()
    lines = shown.EpochLines(20, log)
    lines.start -= 9  # TensorFlow took 9 s to load before the first epoch
    for epoch in range(1, 21):
        lines(epoch, {"loss": 0.5 / epoch})
    lines(None, {})
    written = log.getvalue().splitlines()
    assert len(written) == 10 and written[0].startswith("epoch 2/20  loss 2.500e-01  (00:09 elapsed, about 00:00 left)")
    assert written[-1] == "epoch 20/20  loss 2.500e-02  (00:09 elapsed)"
    assert shown.clock(3725) == "1:02:05" and shown.clock(65) == "01:05"


def test_the_runtime_and_the_cli_import_no_progress_library():
    code = "import sys, edgeae.runtime, edgeae.cli; print('tqdm' in sys.modules, 'rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False False"
