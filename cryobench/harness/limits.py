"""A wall-clock limit on an optimizer's own time.

The optimizer runs in a process of its own (:mod:`cryobench.harness.isolation`), and its time is
measured in the harness: the round trip of each ``init`` and ``step``. When the limit is reached
before a step has answered, the harness stops waiting and kills the optimizer's process — a step
that never returns (a loop in Python, a sleep or a lock in C, an exception swallowed) cannot hold
the run — and the run ends with status ``budget``, its checkpoints kept. Nothing is injected into
a running thread.

``TimeLimitReached`` derives from ``BaseException`` so that no ``except Exception`` of the
harness's mistakes it for a failure of the method.
"""
from __future__ import annotations


class TimeLimitReached(BaseException):
    """The run's wall-clock limit on optimizer time was reached."""
