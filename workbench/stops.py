"""Stops (Ctrl-C, SIGTERM) that are never lost.

Python raises a signal handler's exception wherever the main thread happens to be. Inside a
callback that the interpreter calls for itself (a weakref callback such as importlib's module
lock cleanup, a ``__del__``, the garbage collector) the exception cannot propagate: Python
prints "Exception ignored in ..." and drops it, and the run goes on as if it was never stopped
(seen in CI: a SIGINT 0.5 s into ``workbench train`` landed during an import). So the handlers
installed here remember the stop before raising it, and ``check()``, called between the steps of
every long loop, raises it again when it was dropped.

- ``install(pid)``: the CLI's handlers for SIGINT and SIGTERM (main thread only).
- ``check()``: raise the stop that was asked for and dropped; free when none was.
- ``Terminated``: SIGTERM, a KeyboardInterrupt, so every Ctrl-C cleanup runs for it too.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_asked: int | None = None  # the signal of a stop asked of the running verb (install() to restore())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C where the process is: cleanups run, a ``Tracker`` marks its
    MLflow run KILLED (resumable), a search trial is re-queued; ``main`` then exits 143."""


def _raise(signum: int) -> None:
    raise Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt


def check() -> None:
    """Raise the stop asked for earlier, if one was (it may have been dropped on its way)."""
    if _asked is not None:
        _raise(_asked)


def _handler(pid: int) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        global _asked
        if os.getpid() != pid:  # a forked child (a worker pool): end as the signal asks
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _asked = signum
        _raise(signum)

    return handler


def _quiet_dropped_stops(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # A dropped stop is not an error to print: check() acts on it at the next step.
    def unraisablehook(u: Any) -> None:
        if not (u.exc_type is not None and issubclass(u.exc_type, KeyboardInterrupt) and _asked is not None):
            hook(u)

    return unraisablehook


def install(pid: int) -> Callable[[], None]:
    """Set the handlers (and forget any earlier stop); returns a function that puts back what
    was there. Outside the main thread, where handlers cannot be set, nothing changes."""
    global _asked
    _asked = None
    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # A process started with Ctrl-C ignored (a background job, nohup) keeps ignoring
            # it, as Python itself does; SIGTERM always stops.
            if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _handler(pid))
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        return lambda: None
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_dropped_stops(hook)

    def restore() -> None:
        global _asked
        _asked = None  # the verb is over: a stop asked of it must not reach the next one
        for sig, h in previous.items():
            signal.signal(sig, signal.SIG_DFL if h is None else h)
        sys.unraisablehook = hook

    return restore
