"""Computing one grid cell, in a process of its own (on this machine or on a Dask worker).

``python -m cryobench.harness.cell JOB.json FOLDER`` computes the run described by JOB.json (a
:class:`Cell` and the dataset folder) and writes its folder atomically. Exit status 0 means the
folder holds a result — whatever the method did: ``ok``, ``diverged``, ``budget`` or
``error``. Any other ending (a harness fault, an exception outside the optimizer, a signal, the
out-of-memory killer, a full disk) writes nothing: the run was interrupted, and the next
``grid`` or ``run`` computes it again. The last line of standard error says why.

A cell process dies with the process that started it (``PR_SET_PDEATHSIG`` on Linux), so no cell
outlives its grid, even after ``kill -9``.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from cryobench.harness.fingerprint import (machine, numerics_fingerprint, optimizer_fingerprint,
                                           source_digest)
from cryobench.harness.run import DEFAULT_TIME_LIMIT, RunSpec, cell_id, execute

EXIT_INTERRUPTED = 3        # the run failed for a reason that is not the method's


def stuck_grace(time_limit: float) -> float:
    """Seconds a step may go on past the time limit before its process is ended: half the
    limit, between 1 and 30 s."""
    return min(30.0, max(1.0, time_limit / 2))


@dataclass(frozen=True)
class Cell:
    """A run of a grid with its content hash and the task content hash it expects."""

    spec: RunSpec
    cell: str
    task_hash: str

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "cell": self.cell, "task_hash": self.task_hash}

    @staticmethod
    def from_dict(d: dict) -> "Cell":
        spec = dict(d["spec"])
        spec["snapshots"] = tuple(spec["snapshots"])
        return Cell(RunSpec(**spec), d["cell"], d["task_hash"])

    def describe(self) -> str:
        """``label seed n on task (scale)``, for messages."""
        s = self.spec
        return f"{s.label or s.optimizer} seed {s.seed} on {s.task} ({s.scale})"


def make_cell(spec: RunSpec, task_hash: str, method) -> Cell:
    """The cell of a run of ``method`` (the resolved ``spec.optimizer``): its id hashes the spec,
    the task content, the optimizer's fingerprint and the library's numerics fingerprint."""
    return Cell(spec, cell_id(spec, task_hash, optimizer_key(method)), task_hash)


def optimizer_key(method) -> str:
    """``name:fingerprint`` of an optimizer, as its part of a cell's identity."""
    return f"{method.name}:{optimizer_fingerprint(method)}"


def grid_identity() -> dict:
    """What the grid's process knows of its numerics, passed to its cell processes so that
    they need not run the fingerprint probe again on the same code and machine."""
    return {"numerics": numerics_fingerprint(), "source": source_digest(), "machine": machine()}


def identity(cell: "Cell", method, known: dict | None = None) -> dict:
    """The parts of a cell's id, recorded in its meta.json (``verify`` compares them). The
    numerics fingerprint is taken from ``known`` (:func:`grid_identity`) when the code and the
    machine are those it was computed on, and computed here otherwise."""
    same = known and known.get("source") == source_digest() and known.get("machine") == machine()
    return {"cell": cell.cell, "task_hash": cell.task_hash,
            "numerics": known["numerics"] if same else numerics_fingerprint(),
            "optimizer": optimizer_key(method), "threads": cell.spec.threads, "platform": machine()}


def compute_cell(cell: dict, data_dir: str | None, stuck_grace: float | None = None,
                 known: dict | None = None) -> dict[str, bytes]:
    """Run a cell (given as :meth:`Cell.to_dict`) in this process; its folder's files as bytes."""
    from cryobench.base.threads import set_threads
    from cryobench.errors import HarnessFault
    from cryobench.harness.registry import resolve
    from cryobench.harness.results import cell_files
    from cryobench.task import load_task
    c = Cell.from_dict(cell)
    set_threads(c.spec.threads)
    start = time.perf_counter()
    task = load_task(c.spec.task, c.spec.scale, data_dir, progress=False)
    loading = time.perf_counter() - start
    if task.content_hash != c.task_hash:
        raise HarnessFault(f"task {c.spec.task} ({c.spec.scale}) here has content hash "
                           f"{task.content_hash[:12]}, the grid expects {c.task_hash[:12]}: "
                           "this process sees different data than the grid")
    method = resolve(c.spec.optimizer)
    ident = identity(c, method, known)
    if cell_id(c.spec, c.task_hash, ident["optimizer"], ident["numerics"]) != c.cell:
        raise HarnessFault(f"cell {c.cell} computes here under another identity (other code, "
                           "numerics or platform than the grid's): its result would be mislabelled")
    out = execute(c.spec, task, method, stuck_grace=stuck_grace)
    out.meta["identity"] = ident
    out.meta["overhead_s"] = {"loading": loading, **out.meta.get("overhead_s", {})}
    return cell_files(out, c.cell, task.dataset.pixel_size)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ends; exit if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                                           # not Linux
    if os.getppid() != parent:
        os._exit(EXIT_INTERRUPTED)


def main(argv=None) -> int:
    """Entry point of a cell process: compute the job, write the folder, or say why not."""
    from cryobench.harness.results import write_cell_folder
    job_path, folder = (argv or sys.argv[1:])[:2]
    job = json.loads(Path(job_path).read_text())
    if job.get("parent"):
        _die_with_parent(int(job["parent"]))
    try:
        limit = job["cell"]["spec"].get("time_limit") or DEFAULT_TIME_LIMIT
        files = compute_cell(job["cell"], job.get("data_dir"), stuck_grace(limit), job.get("known"))
        write_cell_folder(folder, files)
    except KeyboardInterrupt:
        print("cryobench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:                       # noqa: BLE001 — reported, not a result
        traceback.print_exc()
        print(f"cryobench: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
