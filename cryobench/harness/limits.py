"""A wall-clock limit on an optimizer's own time, enforced from outside its ``step``.

The harness checks the time between steps, but a step that never returns (an infinite loop in
an optimizer) would hang the run. :class:`StepClock` therefore runs a watchdog thread that, once
the limit is reached while a step is running, raises :class:`TimeLimitReached` inside the
running thread (``PyThreadState_SetAsyncExc``; CPython delivers it at the next bytecode, so a
step stuck in compiled code is interrupted when that code returns). If the step has still not
returned ``grace`` seconds later (blocked in C: a sleep, a lock, a long compiled loop), the
process ends with status :data:`EXIT_STUCK`, which the grid records as the time limit; the grid
also kills a cell process that outlives its limit by far (:mod:`cryobench.harness.grid`), for compiled
code that holds the interpreter and never returns.

``TimeLimitReached`` derives from ``BaseException`` so that an optimizer's own
``except Exception`` does not swallow it.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time

EXIT_STUCK = 4          # exit status of a process ended because a step ignored its time limit


class TimeLimitReached(BaseException):
    """The run's wall-clock limit on optimizer time was reached inside a step."""


class StepClock:
    """Accumulates the time spent inside ``with clock.step():`` blocks and stops a step that
    would take the total past ``limit`` seconds (``None``: no limit)."""

    def __init__(self, limit: float | None, poll: float = 0.05, grace: float | None = None):
        self.limit, self.poll, self.grace = limit, poll, grace
        self.elapsed = 0.0
        self._started: float | None = None
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fired = False
        self._watchdog = None
        if limit is not None:
            self._watchdog = threading.Thread(target=self._watch, daemon=True, name="step-clock")
            self._watchdog.start()

    @property
    def expired(self) -> bool:
        """Whether the optimizer's time has reached the limit."""
        return self.limit is not None and self.elapsed >= self.limit

    def step(self) -> "_Timed":
        """Context manager timing one call into the optimizer."""
        return _Timed(self)

    def close(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()

    def _watch(self) -> None:
        fired_at = None
        while not self._stop.wait(self.poll):
            with self._lock:
                started = self._started
                if started is None:
                    fired_at = None
                    continue
                now = time.perf_counter()
                if self._fired and self.grace is not None and now - fired_at > self.grace:
                    os.write(2, f"cryobench: a step did not return within {self.grace:g} s of the "
                                f"time limit ({self.limit:g} s); ending the process\n".encode())
                    os._exit(EXIT_STUCK)
                if not self._fired and self.elapsed + now - started >= self.limit:
                    self._fired, fired_at = True, now
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self._thread_id), ctypes.py_object(TimeLimitReached))


class _Timed:
    def __init__(self, clock: StepClock):
        self.clock = clock

    def __enter__(self):
        c = self.clock
        with c._lock:
            c._started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        c = self.clock
        with c._lock:
            c.elapsed += time.perf_counter() - c._started
            c._started = None
            pending = c._fired and exc[0] is None
            c._fired = False
        if pending:
            # the exception was requested but the step returned first: cancel its delivery
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(c._thread_id), None)
        return False
