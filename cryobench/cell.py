"""Computing one grid cell, in whatever process runs it (a local subprocess or a Dask worker).

``python -m cryobench.cell SPEC.json FOLDER`` computes the run described by SPEC.json (a
:class:`~cryobench.run.RunSpec` plus ``cell``, ``task_hash``, ``data_dir`` and ``threads``)
and writes its folder atomically. Each local cell runs in its own process, so a crash (even a
segmentation fault or the out-of-memory killer) loses that cell only.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .run import RunSpec, cell_id, execute, optimizer_code_hash


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


def make_cell(spec: RunSpec, task_hash: str, method) -> Cell:
    """The cell of a run of ``method`` (the resolved ``spec.optimizer``): its id hashes the spec,
    the task content and the optimizer's code."""
    return Cell(spec, cell_id(spec, task_hash, optimizer_code_hash(method)), task_hash)


def compute_cell(cell: dict, data_dir: str | None, threads: int | None = None) -> dict[str, bytes]:
    """Run a cell (given as :meth:`Cell.to_dict`) and return its folder's files as bytes."""
    from .registry import resolve
    from .results import cell_files
    from .task import load_task
    from .threads import set_threads
    set_threads(threads)
    c = Cell.from_dict(cell)
    task = load_task(c.spec.task, c.spec.scale, data_dir, progress=False)
    if task.content_hash != c.task_hash:
        raise RuntimeError(f"task {c.spec.task} ({c.spec.scale}) here has content hash "
                           f"{task.content_hash[:12]}, the grid expects {c.task_hash[:12]}: "
                           "the workers see different data than the scheduler")
    out = execute(c.spec, task, resolve(c.spec.optimizer))
    return cell_files(out, c.cell, task.dataset.pixel_size)


def main(argv=None) -> int:
    from .results import write_cell_folder
    spec_path, folder = (argv or sys.argv[1:])[:2]
    job = json.loads(Path(spec_path).read_text())
    files = compute_cell(job["cell"], job.get("data_dir"), job.get("threads"))
    write_cell_folder(folder, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
