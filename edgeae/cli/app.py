"""The `edgeae` command group: one error line and one exit-code table for every command.

No logic lives in the CLI beyond parsing options and printing; heavy imports (TensorFlow,
tf2onnx) happen inside the library functions the training commands call, so the runtime
commands (encode, reconstruct, score, inspect) start without them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from edgeae.contract import versions
from edgeae.contract.files import INTERRUPTED, PUBLISHED
from edgeae.contract.errors import (
    EXIT_CLOSED_PIPE, EXIT_CODES, EXIT_INTEGRITY, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE,
    EdgeAEError, EdgeAENotice,
)


DEFAULT_EXPORT = Path("exported")


DEFAULT_TRAINING = Path("runs/train")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a service stop, a CI timeout) takes Ctrl-C's path, exit 130, and both are latched.

    Python's default SIGTERM kills the process on the spot, leaving staging folders and
    locks behind; raising KeyboardInterrupt lets their context managers clean up. Either
    signal also sets contract.files.INTERRUPTED, which the publishing swap checks: a
    KeyboardInterrupt swallowed where it landed cannot let a run publish. Only the main
    thread may set handlers, and the previous ones are restored, so a program that calls
    the CLI in-process keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        INTERRUPTED.set()
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        if not PUBLISHED:  # once the export is in place, the command finishes what it prints and exits 0
            raise KeyboardInterrupt

    INTERRUPTED.clear()  # this command's own interrupts and exports only
    PUBLISHED.clear()
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def _notices_as_lines() -> Iterator[None]:
    """Library notices (contract.errors.notice) reach the terminal as one `note:` line each on stderr,
    not as Python's two-line warning with a file name; other warnings are shown as they were."""
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *where: Any, **kw: Any) -> None:
        if issubclass(category, EdgeAENotice):
            click.echo(f"note: {one_line(str(message))}", err=True)
        else:
            shown(message, category, *where, **kw)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class EdgeGroup(click.Group):
    """Turns every failure into one line on stderr and its documented exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's own usage errors (bad option, missing argument) become one `error:` line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with _sigterm_as_interrupt(), _notices_as_lines():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
                if sys.stdout is not None:  # None: started with stdout closed (`>&-`)
                    sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        except BrokenPipeError:
            _quiet_closed_stdout()
            code = EXIT_CLOSED_PIPE
        except click.ClickException as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                click.echo(exc.format_message(), err=True)  # a bare `edgeae` shows its help, as ever
            else:
                print_error(f"{exc.format_message()} (see --help)")
            code = exc.exit_code
        except click.exceptions.Abort:
            print_error("interrupted; nothing was published")
            code = EXIT_INTERRUPTED
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # before click's own handler, which would exit 1
            _quiet_closed_stdout()
            ctx.exit(EXIT_CLOSED_PIPE)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + a code
            if isinstance(exc, SystemExit):
                raise
            if isinstance(exc, KeyboardInterrupt) and PUBLISHED:  # it came between the swap and the handler's check
                click.echo(f"note: interrupted after {one_line(str(PUBLISHED[-1]))} was published; it is complete",
                           err=True)
                click.echo(one_line(str(PUBLISHED[-1])))
                ctx.exit(EXIT_OK)
            code, message = describe_failure(exc)
            if ctx.params.get("debug"):
                traceback.print_exception(exc)
            print_error(message)
            ctx.exit(code)


def _quiet_closed_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into the closed pipe (`| head`)
    neither fails nor prints a warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (an embedding program's): nothing to flush
        pass


def one_line(text: str) -> str:
    """`text` with control characters, line and paragraph separators and lone surrogates (from
    undecodable file names) escaped: a path holding a newline must not split an error in two."""
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") else ch for ch in text)


def _show_version(ctx: click.Context, _: click.Parameter, on: bool) -> None:
    """`--version`: a device must be able to say which edgeae, onnxruntime and numpy it runs."""
    if on and not ctx.resilient_parsing:
        click.echo(versions.version_text())
        ctx.exit()


def print_error(message: str) -> None:
    """The only place an error reaches the user: one `error:` line on stderr."""
    click.echo(f"error: {one_line(message)}", err=True)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for any exception (the only such table)."""
    if isinstance(exc, EdgeAEError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; nothing was published"
    if isinstance(exc, MemoryError):
        return EXIT_RUNTIME, "out of memory: the input or batch is too large for this machine"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return EXIT_USAGE, f"{exc.strerror or exc}{where}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc).__name__ == "DecodeError" and type(exc).__module__.startswith("google.protobuf"):
        # an ONNX file (a protobuf) that does not parse, met by a library before edgeae's own checks
        return EXIT_INTEGRITY, f"corrupt or truncated model file: {first}"
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {first} (rerun with --debug)"


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: " + "; ".join(f"{k} {v.split(' (')[0]}" for k, v in EXIT_CODES.items()))
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version of edgeae and of what it runs on (onnxruntime, numpy, TensorFlow...), then exit.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def main(debug: bool) -> None:
    """Train a Keras LSTM sequence autoencoder, export it to ONNX, prove parity, run it on the edge.

    \b
    Example:
      edgeae pipeline --out exported --force
      edgeae score exported readings.csv --output scores.csv
    """
