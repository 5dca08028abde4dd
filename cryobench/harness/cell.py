"""Computing one grid cell, in a process of its own (on this machine or on a Dask worker).

``python -m cryobench.harness.cell JOB FOLDER`` computes the run described by the job (a
:class:`~cryobench.harness.plan.RunPlan` and the dataset folder; JOB ``-`` reads it from standard
input, as the grid sends it, so that no job file outlives a killed grid) and writes its folder
atomically. Exit status 0 means the folder holds a result — whatever the method did: ``ok``,
``diverged``, ``budget`` or
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
import sys
import time
import traceback
from pathlib import Path

from cryobench.base.threads import set_threads
from cryobench.errors import HarnessFault
from cryobench.harness.identity import cell_id, identity
from cryobench.harness.plan import RunPlan
from cryobench.harness.record import cell_files, write_cell_folder
from cryobench.harness.registry import resolve
from cryobench.harness.isolation import prestart
from cryobench.harness.run import execute
from cryobench.task import load_task

EXIT_INTERRUPTED = 3        # the run failed for a reason that is not the method's


def compute_cell(cell: dict, data_dir: str | None, known: dict | None = None) -> dict[str, bytes]:
    """Run a cell (given as :meth:`RunPlan.to_dict`) in this process; its folder's files as
    bytes. The task file is parsed once here (loading the task) and the registry scanned once."""
    c = RunPlan.from_dict(cell)
    set_threads(c.spec.threads)
    prestart()                          # the optimizers' zygote imports while the task loads
    start = time.perf_counter()
    task = load_task(c.spec.task, c.spec.scale, data_dir, progress=False)
    loading = time.perf_counter() - start
    if task.content_hash != c.task_hash:
        raise HarnessFault(f"task {c.spec.task} ({c.spec.scale}) here has content hash "
                           f"{task.content_hash[:12]}, the grid expects {c.task_hash[:12]}: "
                           "this process sees different data than the grid")
    method = resolve(c.spec.optimizer, data_dir=data_dir)
    ident = identity(c.cell, c.task_hash, c.spec.threads, method, known, task.is_refinement)
    if cell_id(c.spec, task.name, c.task_hash, ident["optimizer"], ident["numerics"]) != c.cell:
        raise HarnessFault(f"cell {c.cell} computes here under another identity (other code, "
                           "numerics or platform than the grid's): its result would be mislabelled")
    out = execute(c.spec, task, method)
    out.record.identity = ident
    out.record.overhead_s = {"loading": loading, **out.record.overhead_s}
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
    job_path, folder = (argv or sys.argv[1:])[:2]
    job = json.loads(sys.stdin.read() if job_path == "-" else Path(job_path).read_text())
    if job.get("parent"):
        _die_with_parent(int(job["parent"]))
    try:
        files = compute_cell(job["cell"], job.get("data_dir"), job.get("known"))
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
