"""Progress on stderr for a person at a terminal: the library's stages (contract/progress.py) drawn as
bars with elapsed time and an estimate of the time left, and training's epochs with their loss.

Shown only when stderr is a terminal, and never with --quiet or --json: a pipe, a log file and a
program reading JSON get exactly what they got before (training's epoch lines every 10% in a log,
now with elapsed time and an estimate). tqdm draws the bars where it is installed (the workstation
extras bring it); a device's minimal install draws the same line itself. tqdm is imported when a
bar is first drawn, never by the runtime.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, TextIO

import click

from edgeae.contract import progress
from edgeae.contract.progress import Reporter, Step

FALLBACK_SIZE = (100, 24)  # columns, lines
TICK_S = 1.0  # how often a running stage's elapsed time is redrawn between its own updates
# {postfix} is tqdm's: ", <note>" where a note is set
KNOWN = "{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, {remaining} left]{postfix}"
COUNTED = "{desc}: {n_fmt} {unit} [{elapsed} elapsed]{postfix}"
SINGLE = "{desc} [{elapsed} elapsed]{postfix}"


def clock(seconds: float) -> str:
    """Seconds as tqdm writes them: 05:07, or 1:02:03 past an hour."""
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"


class PlainBar:
    """The bar where tqdm is not installed: one line on `stream`, rewritten in place."""

    def __init__(self, stream: TextIO, name: str, total: int | None, unit: str, initial: int = 0) -> None:
        self.stream, self.name, self.total, self.unit = stream, name, total, unit
        self.n, self.initial, self.postfix, self.start = initial, initial, "", time.monotonic()
        self.refresh()

    def text(self) -> str:
        elapsed = time.monotonic() - self.start
        note = f", {self.postfix}" if self.postfix else ""
        if self.total:
            done = self.n - self.initial
            left = clock(elapsed / done * (self.total - self.n)) if done else "?"
            return (f"{self.name}: {100 * self.n // self.total:3d}% {self.n}/{self.total} {self.unit} "
                    f"[{clock(elapsed)} elapsed, {left} left]{note}")
        if self.unit != "step":
            return f"{self.name}: {self.n} {self.unit} [{clock(elapsed)} elapsed]{note}"
        return f"{self.name} [{clock(elapsed)} elapsed]{note}"

    def set_postfix_str(self, note: str, refresh: bool = True) -> None:
        self.postfix = note

    def update(self, n: int) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        self.stream.write("\r" + self.text() + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        self.refresh()
        self.stream.write("\n")
        self.stream.flush()


def new_bar(stream: TextIO, name: str, total: int | None, unit: str, initial: int = 0) -> Any:
    """A tqdm bar on `stream`, or a PlainBar without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainBar(stream, name, total, unit, initial)
    form = KNOWN if total else SINGLE if unit == "step" else COUNTED
    # a terminal that does not say its size (a bare pty, a serial console): tqdm would hide every bar
    sized = min(_size(stream)) > 0
    return tqdm(total=total or None, desc=name, unit=unit, file=stream, leave=True, dynamic_ncols=sized,
                ncols=None if sized else FALLBACK_SIZE[0], nrows=None if sized else FALLBACK_SIZE[1],
                mininterval=0.2, bar_format=form, initial=initial)


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's columns and lines, (0, 0) where it does not say."""
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        return (0, 0)


class TerminalStep(Step):
    """One stage's bar."""

    def __init__(self, owner: TerminalProgress, bar: Any) -> None:
        self.owner, self.bar = owner, bar

    def advance(self, n: int = 1, note: str | None = None) -> None:
        with self.owner.lock:
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            if n:
                self.bar.update(n)
            else:
                self.bar.refresh()

    def settle(self) -> None:
        with self.owner.lock:
            if self.bar.total and self.bar.n != self.bar.total:
                self.bar.total = self.bar.n

    def close(self) -> None:
        with self.owner.lock:
            if self in self.owner.running:
                self.owner.running.remove(self)
                self.bar.set_postfix_str("", refresh=False)
                self.bar.close()


class InnerStep(Step):
    """A stage begun while another runs (TensorFlow loading while a model loads): said as the
    running bar's note, `name` and its count, rather than as a second bar that would break the lines."""

    def __init__(self, outer: TerminalStep, name: str, total: int | None) -> None:
        self.outer, self.name, self.total, self.n = outer, name, total, 0
        self.before = outer.bar.postfix or ""
        self.advance(0)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.n += n
        count = f" {self.n}/{self.total}" if self.total else ""
        self.outer.advance(0, f"{self.name}{count}" + (f" ({note})" if note else ""))

    def close(self) -> None:
        self.outer.advance(0, self.before)


class TerminalProgress(Reporter):
    """Draws every stage on `stream` (a terminal) and redraws the running ones every TICK_S, so a
    long step with no update of its own still shows its elapsed time growing."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.RLock()
        self.running: list[TerminalStep] = []
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None

    def start(self, name: str, total: int | None = None, unit: str = "step", initial: int = 0) -> Step:
        """Reporter.start; `initial` units were done before the bar opened (not counted in its rate)."""
        with self.lock:
            if self.running:
                return InnerStep(self.running[-1], name, total)
            step = TerminalStep(self, new_bar(self.stream, name, total, unit, initial))
            self.running.append(step)
            if self.ticker is None:
                self.ticker = threading.Thread(target=self._tick, name="edgeae-progress", daemon=True)
                self.ticker.start()
            return step

    def _tick(self) -> None:
        while not self.stopped.wait(TICK_S):
            with self.lock:
                for step in self.running:
                    step.bar.refresh()

    def close(self) -> None:
        """End every stage still drawn (a command that failed mid-stage) and stop redrawing."""
        self.stopped.set()
        with self.lock:
            for step in list(self.running):
                step.close()


def on_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


@contextlib.contextmanager
def terminal_progress(silent: bool) -> Iterator[TerminalProgress | None]:
    """Draw the library's stages on stderr for the block, where stderr is a terminal and not `silent`."""
    if silent or not on_terminal(sys.stderr):
        yield None
        return
    sys.stderr.flush()
    # the bars draw on their own descriptor of the terminal: TensorFlow's import points fd 2 at
    # /dev/null for seconds (trainer.model._quiet_native_stderr), and the bars must go on meanwhile
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", encoding=sys.stderr.encoding or "utf-8", errors="replace")
    reporter = TerminalProgress(stream)
    try:
        with progress.reporting(reporter):
            yield reporter
    finally:
        reporter.close()
        stream.close()


QUIET = "edgeae.quiet"  # ctx.meta's record of quiet_option


def _silent(ctx: click.Context | None) -> bool:
    """--quiet or --json given to the command running now."""
    if ctx is None:
        return False
    return bool(ctx.params.get("quiet") or ctx.params.get("as_json") or ctx.meta.get(QUIET))


def shows_progress(command: Callable[..., Any]) -> Callable[..., Any]:
    """A click command's callback, run with its stages drawn on a terminal (unless --quiet or --json).
    Put it right above the `def`, under the click decorators."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with terminal_progress(_silent(click.get_current_context(silent=True))):
            return command(*args, **kwargs)
    return run


def _remember_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[QUIET] = value
    return value


# kept out of the command's arguments: a command gains --quiet without a new parameter
quiet_option = click.option("--quiet", is_flag=True, expose_value=False, callback=_remember_quiet,
                            help="No progress on stderr (shown only when stderr is a terminal, never with --json).")


SAMPLE_BYTES = 1 << 16


def estimated_rows(path: Path, header_row: bool) -> int | None:
    """About how many data rows a CSV holds: counted in a small file, else its size over the mean
    length of its first lines (None where it cannot be read)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
    except OSError:
        return None
    lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") or not sample else 1)
    if size > len(sample) and lines:
        lines = round(size / (len(sample) / lines))
    return max(0, lines - int(header_row))


def reported(batches: Iterable[Any], name: str, total: int | None) -> Iterator[Any]:
    """`batches` of windows, counted into a stage `name` of about `total` windows (None: not known)."""
    with progress.stage(name, total, "windows") as step:
        for batch in batches:
            yield batch
            step.advance(len(batch))
        if isinstance(step, TerminalStep):
            step.settle()  # the total was an estimate; the count is the truth


def losses(logs: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3e}" for k, v in logs.items())


class EpochBar:
    """Training's progress on a terminal: a bar of epochs with the last losses and the time left."""

    def __init__(self, reporter: TerminalProgress, epochs: int) -> None:
        self.reporter, self.epochs = reporter, epochs
        self.step: Step | None = None
        self.done = 0

    def __call__(self, epoch: int | None, logs: dict[str, float]) -> None:
        if epoch is None:  # training ended, early stopping perhaps before the last epoch
            if self.step is not None:
                self.step.close()
            return
        if self.step is None:  # opened after the first epoch, whose time holds the graph's compilation
            self.step = self.reporter.start("train", self.epochs, "epochs", initial=epoch)
            self.step.advance(0, losses(logs))
        else:
            self.step.advance(epoch - self.done, losses(logs))
        self.done = epoch


class EpochLines:
    """Training's progress in a log: a line every 10% of the epochs (and the last), with the time
    taken so far and an estimate of the time left."""

    def __init__(self, epochs: int, stream: TextIO | None = None) -> None:
        self.epochs, self.every, self.start = epochs, max(1, epochs // 10), time.monotonic()
        self.stream = stream
        self.first: tuple[int, float] | None = None  # the first epoch reported and when: the rate is measured after it

    def __call__(self, epoch: int | None, logs: dict[str, float]) -> None:
        if epoch is None:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (epoch, now)
        if epoch % self.every and epoch != self.epochs:
            return
        elapsed, (first, then) = now - self.start, self.first
        left = ""
        if first < epoch < self.epochs:
            left = f", about {clock((now - then) / (epoch - first) * (self.epochs - epoch))} left"
        stream = self.stream or sys.stderr
        stream.write(f"epoch {epoch}/{self.epochs}  {losses(logs)}  ({clock(elapsed)} elapsed{left})\n")
        stream.flush()


def epoch_progress(quiet: bool, epochs: int) -> Callable[[int | None, dict[str, float]], None] | None:
    """What training reports each epoch to (trainer.train's `progress`): a bar on a terminal, lines
    in a log, nothing with --quiet or --json."""
    if quiet or _silent(click.get_current_context(silent=True)):
        return None
    reporter = progress.current()
    if isinstance(reporter, TerminalProgress):
        return EpochBar(reporter, epochs)
    return EpochLines(epochs)
