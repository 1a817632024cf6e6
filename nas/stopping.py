"""Stopping cleanly on SIGTERM and SIGINT.

``install()`` (called by every command and flow entry point) makes both signals raise ``Stopped``
in the main thread.  Work that runs in other threads (a sweep's trials on the thread runner)
cannot be interrupted by a signal, so every batch stream calls ``check()``: once a stop was asked,
the next batch raises ``Stopped`` in that thread too.  ``Stopped`` is a ``KeyboardInterrupt``,
so it passes every ``except Exception``; the run folders keep their last checkpoint (files are
written to a temporary name, then renamed) and tracking runs end KILLED.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_ASKED = threading.Event()
_BY = ["a request"]  # the signal that asked


class Stopped(KeyboardInterrupt):
    """A stop was asked (SIGTERM or SIGINT)."""


def check() -> None:
    """Raise ``Stopped`` if a stop was asked (called once per batch)."""
    if _ASKED.is_set():
        raise Stopped(_BY[0])


def ask(by: str = "a request") -> None:
    """Ask every thread of this process to stop at its next batch."""
    _BY[0] = by
    _ASKED.set()


def reset() -> None:
    _ASKED.clear()
    _PENDING[0] = False


_SHIELD_DEPTH = [0]  # > 0: the main thread is inside ``shielded()``
_PENDING = [False]  # a signal arrived inside ``shielded()``: raise when it ends


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    first = not _ASKED.is_set()
    if first:  # a second signal during the clean-up does not interrupt it
        ask(signal.Signals(signum).name)
        if _SHIELD_DEPTH[0] == 0:
            raise Stopped(_BY[0])
        _PENDING[0] = True


@contextmanager
def shielded() -> Iterator[None]:
    """A call that must not be cut in the middle (a write to a local tracking database, whose
    transaction a ``Stopped`` raised inside would leave holding the database's lock): a signal
    that arrives meanwhile raises ``Stopped`` when the call has returned, not inside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SHIELD_DEPTH[0] += 1
    try:
        yield
    finally:
        _SHIELD_DEPTH[0] -= 1
    if _SHIELD_DEPTH[0] == 0 and _PENDING[0]:
        _PENDING[0] = False
        raise Stopped(_BY[0])


def install() -> None:
    """SIGTERM and SIGINT raise ``Stopped`` in the main thread and stop the others at their next
    batch.  Does nothing outside the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


def stopped_line(exc: BaseException, resume: str) -> str:
    """The one line a stopped command ends with: which signal, and how to go on."""
    return f"stopped by {signal_name(exc)}; {resume}"


def signal_name(exc: BaseException) -> str:
    """The signal behind a stop: ``Stopped`` names it, a library's signal exception carries its
    number (Prefect's ``TerminationSignal.signal``), a plain ``KeyboardInterrupt`` is SIGINT."""
    if isinstance(exc, Stopped):
        return str(exc)
    number = getattr(exc, "signal", None)
    return signal.Signals(number).name if isinstance(number, int) else "SIGINT"


@contextmanager
def others_stop_on_abort() -> Iterator[None]:
    """Around a wait on work in other threads: when the wait is aborted (a signal, or a
    library's own signal exception such as Prefect's ``TerminationSignal``), the other threads
    stop at their next batch instead of being waited for to the end."""
    try:
        yield
    except BaseException as exc:
        if is_stop(exc):
            ask(signal_name(exc))
        raise


def is_stop(exc: BaseException) -> bool:
    """A stop asked from outside: SIGINT (``KeyboardInterrupt``, ``Stopped``) or a library's signal
    exception that carries the signal's number (Prefect's ``TerminationSignal``)."""
    return isinstance(exc, KeyboardInterrupt) or isinstance(getattr(exc, "signal", None), int)


def status(exc: BaseException | None) -> str:
    """The final state of a tracking run that ended with ``exc`` (None: it ended normally)."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if is_stop(exc) else "FAILED"
