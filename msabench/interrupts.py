"""Ctrl-C (SIGINT) handling shared by the store and the runner.

Only the main process reacts to Ctrl-C: worker processes (local pool, Dask ``local:N``) ignore it and the
main process stops them, so an interrupted grid prints one line, not a traceback per process. A run being
stored is finished first (:func:`sigint_deferred`); a Ctrl-C that Python swallows (raised inside a ``__del__``)
is still noted (:func:`sigint_noted`).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, so a short write that has begun is finished (main thread only;
    Python delivers signals to no other thread)."""
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextmanager
def sigint_noted() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also noted in the yielded list: Python ignores an exception
    raised inside a ``__del__`` (e.g. a progress bar's), so a loop should check the note as well."""
    pressed: list[int] = []
    if not _in_main_thread():
        yield pressed
        return

    def handler(signum: int, frame: Any) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_when(items: Iterable[T], pressed: list[int]) -> Iterator[T]:
    """``items`` until Ctrl-C was noted; the item in hand when it came is still handed over (a finished run is
    stored)."""
    for item in items:
        yield item
        if pressed:
            raise KeyboardInterrupt


def ignore_sigint() -> None:
    """Process initializer of workers: leave Ctrl-C to the main process, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started in the block ignore Ctrl-C (an ignored signal stays ignored in a child, and Python then
    installs no handler of its own), so only this process reacts and stops them (Dask's LocalCluster)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
