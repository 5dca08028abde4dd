"""The error types of cryobench, in one place.

* :class:`InputError` — bad input (a file, a key, a value): the message names the file, the
  field and the problem; the command line prints it as one line and exits with status 2.
* :class:`HarnessFault` — a run could not be carried out for a reason that is not the
  optimizer's (the kernel failing on a valid request, a cell process dying): the run was
  interrupted, which is not a result, and it is recomputed by the next ``run`` or ``grid``.
* :class:`AccountingError` — an oracle's counts disagree with the work it did.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the file, the field and the problem."""


class HarnessFault(RuntimeError):
    """A run could not be carried out for a reason that is not the optimizer's: not a result."""


class AccountingError(RuntimeError):
    """The oracle's counts disagree with the work it did: its accounting was tampered with."""
