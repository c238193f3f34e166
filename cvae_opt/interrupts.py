"""Ctrl-C and SIGTERM as one clean stop, raised between storage calls and never inside one.

Python raises KeyboardInterrupt at whatever bytecode the main thread is on. Landing inside SQLAlchemy or
Optuna's storage code, it can leave a session half-committed with SQLite's write lock held: the trial's own
bookkeeping ("interrupted", state FAIL) then waits on that lock for the busy timeout and the run hangs
instead of stopping (seen once in about twenty runs of the Ctrl-C tests under load). So the handler looks at
where the main thread is: outside a storage call it raises at once; inside one it lets the call finish and
raises as the outermost storage frame returns (a trace on that one frame, as pdb sets its breakpoints).
Re-delivering the signal until it lands outside does not work: the redelivering thread gets the GIL while
the main thread waits on SQLite's I/O, so the signal lands inside storage code again, nearly every time.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

# modules whose frames on the main thread's stack mean "a storage call is under way"
STORAGE_MODULES = ("sqlalchemy", "sqlite3", "optuna.storages", "grpc", "psycopg2", "pymysql", "redis")


def is_storage_frame(frame: FrameType) -> bool:
    """Whether `frame` runs code of a storage module."""
    name = frame.f_globals.get("__name__", "")
    return any(name == m or name.startswith(m + ".") for m in STORAGE_MODULES)


def outermost_storage_frame(frame: FrameType | None) -> FrameType | None:
    """The storage frame nearest the bottom of the stack (the call our code or Optuna's loop made), if any."""
    found = None
    while frame is not None:
        if is_storage_frame(frame):
            found = frame
        frame = frame.f_back
    return found


def _no_trace(frame: FrameType, event: str, arg: Any) -> None:
    """A global trace that traces no new frame: it only switches on the one frame's local trace."""
    return None


def install_interrupt_handler() -> None:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread, outside any storage call;
    the ones after it (the lead forwards one more to each worker, a second Ctrl-C) are ignored so they do
    not break into the first one's trial bookkeeping. Call from the main thread; calling again re-arms it.
    SIGINT is set even where it was ignored: shells start background jobs with it ignored. A debugger's or
    coverage tool's trace function is dropped when an interrupt is deferred."""
    raised = threading.Event()
    armed = threading.Event()

    def raise_on_return(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return":  # the storage call has finished its work: the caller gets the interrupt
            raised.set()
            raise KeyboardInterrupt
        return raise_on_return

    def stop(signum: int, frame: FrameType | None) -> None:
        if raised.is_set() or armed.is_set():
            return
        outer = outermost_storage_frame(frame)
        if outer is None:
            raised.set()
            raise KeyboardInterrupt
        armed.set()
        outer.f_trace_lines = False
        outer.f_trace = raise_on_return
        sys.settrace(_no_trace)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
