"""Progress of long steps: the one interface library code reports through, rendered by whoever listens.

Library code (export, routing, targets, scoring) says what it is doing and how far it is:

    with progress.stage("routing autoencoder", total=len(probes), unit="batch size") as step:
        for batch in probes:
            ...
            step.advance(note=f"batch {batch}")

and does nothing else: no printing, no terminal checks, no rendering library. Nobody listens by
default (a program that calls the API sees nothing); the CLI installs a Reporter with `reporting`
for the length of one command and renders it on stderr when that is a terminal (cli/progress.py).
The listener is one per process, not per thread, so a stage opened in a worker thread reports too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


class Step:
    """One running stage as library code holds it: `advance` after each unit of work. The base
    class does nothing; a Reporter returns its own kind."""

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """`n` more units done; `note` says briefly what is being done now (a file, a loss)."""

    def close(self) -> None:
        """The stage is over (called once, by `stage`)."""

    def over(self, items: Iterable[T], note: Callable[[T], str] | None = None) -> Iterator[T]:
        """`items`, one unit advanced as the loop moves past each (a `continue` included), `note(item)`
        said while it is worked on."""
        for item in items:
            if note is not None:
                self.advance(0, note(item))
            yield item
            self.advance()


class Reporter:
    """What listens to the stages: `start` returns the Step the library advances. The base class
    ignores everything (the API's default)."""

    def start(self, name: str, total: int | None = None, unit: str = "step") -> Step:
        """A stage named `name` begins; `total` units of `unit` when known (None: one step of unknown length)."""
        return Step()


_listener: list[Reporter] = [Reporter()]  # the reporter now installed; `reporting` swaps it


def current() -> Reporter:
    """The reporter now listening (the silent base Reporter unless one is installed)."""
    return _listener[0]


@contextlib.contextmanager
def stage(name: str, total: int | None = None, unit: str = "step") -> Iterator[Step]:
    """A stage of work, reported from its start to its end (an error ends it too)."""
    step = current().start(name, total, unit)
    try:
        yield step
    finally:
        step.close()


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Install `reporter` for the length of the block, then restore the one before."""
    before, _listener[0] = _listener[0], reporter
    try:
        yield reporter
    finally:
        _listener[0] = before


def each(items: Sequence[T], name: str, unit: str = "step", note: Callable[[T], str] | None = None) -> Iterator[T]:
    """`items`, reported as one stage `name` of one `unit` per item: a loop's progress in one line,
    `for file in progress.each(files, "targets", "files", note=str):`."""
    with stage(name, len(items), unit) as step:
        yield from step.over(items, note)
