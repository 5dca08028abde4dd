"""Cell processes: start each cell in a Python process of its own, watch it, collect its folder.

A cell process that exits 0 has written a result folder. A process still alive long after its
time limit (:func:`hard_limit`; it is killed) is also a result — the run never ended; a step
that never returns is ended inside the cell (:mod:`cryobench.harness.isolation`) — and a folder
with status ``budget`` is written for it here. Any other ending means the run was
interrupted: no folder, and the last line of the process's standard error says why.

Locally the grid's process keeps up to ``workers`` cell processes running (each in a session
of its own, so the terminal's Ctrl-C reaches the grid, which then kills them all); on a Dask
cluster each worker runs its cell the same way and returns the folder's files.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from cryobench.base.files import remove_dead_temporaries_of, temporary_prefix, to_json
from cryobench.errors import HarnessFault, InputError
from cryobench.harness.identity import grid_identity
from cryobench.harness.plan import RunPlan
from cryobench.harness.record import (TEMPORARY, CellRecord, cell_complete, empty_trace, read_cell_files,
                                      write_cell_folder)
from cryobench.harness.run import DEFAULT_TIME_LIMIT


def hard_limit(cell) -> float:
    """Seconds after which a cell process is killed: its limit on optimizer time plus room for
    loading and scoring (the time limit itself is enforced inside the process)."""
    limit = cell.spec.time_limit if cell.spec.time_limit is not None else DEFAULT_TIME_LIMIT
    return 1.25 * limit + 300.0


def check_output_folder(cells_dir: Path) -> None:
    """Refuse, with one line, an output folder that is a file or cannot be written."""
    for parent in [cells_dir, *cells_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent}: is a file, but the results folder must be a directory")
        if parent.exists():
            break
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=cells_dir)  # O_TMPFILE: no name a kill could leave
        probe.write(b"x" * 4096)
        probe.flush()
        probe.close()
    except OSError as exc:
        raise InputError(f"{cells_dir}: cannot write results here: {exc.strerror or exc}") from None


class CellProcess:
    """A running cell: ``python -m cryobench.harness.cell JOB FOLDER`` in its own session."""

    def __init__(self, cell, folder: Path, data_dir):
        self.cell, self.folder = cell, Path(folder)
        self.started = time.monotonic()
        # numba's pool starts at the cell's size; BLAS is limited by the cell itself (set_threads),
        # not through the environment (OpenBLAS takes OMP_NUM_THREADS as its maximum too), so that
        # a simulation in the cell can still use SIMULATION_THREADS
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",
                                                                  "MKL_NUM_THREADS", "OMP_NUM_THREADS")}
        env["NUMBA_NUM_THREADS"] = str(cell.spec.threads)
        job = json.dumps({"cell": cell.to_dict(), "data_dir": str(data_dir) if data_dir else None,
                          "parent": os.getpid(), "known": grid_identity()})
        self.stderr = tempfile.TemporaryFile()      # unlinked at once: nothing outlives a kill
        self.proc = subprocess.Popen([sys.executable, "-m", "cryobench.harness.cell", "-", str(folder)],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        self.proc.stdin.write(job.encode())         # the job on standard input, never on disk
        self.proc.stdin.close()

    def poll(self) -> bool:
        """Whether the process has ended (it is killed once past :func:`hard_limit`)."""
        if self.proc.poll() is not None:
            return True
        if time.monotonic() - self.started > hard_limit(self.cell):
            self.kill()
            self.killed_for_time = True
            return True
        return False

    def kill(self) -> None:
        """SIGKILL the process (and anything it started) and wait for it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def outcome(self) -> str | None:
        """None if the folder holds a result (written now for a stuck step), else why not."""
        for tmp in self.folder.parent.glob(f"{TEMPORARY}{self.folder.name}.tmp-{self.proc.pid}-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        rc = self.proc.returncode
        if rc == 0 and cell_complete(self.folder):
            return None
        if getattr(self, "killed_for_time", False):
            how = f"the process was still running {hard_limit(self.cell):.0f} s after it started"
            write_cell_folder(self.folder, stuck_files(self.cell, how + "; the process was ended"))
            return None
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else -rc
            return f"the cell process was killed by signal {name}" + (
                f" ({lines[-1]})" if lines else "")
        return lines[-1].removeprefix("cryobench: ") if lines else f"exit status {rc}"


def stuck_files(cell, message: str) -> dict[str, bytes]:
    """The folder of a run whose step never returned: status ``budget``, no checkpoints."""
    record = CellRecord(cell.spec, cell.spec.label.split(" ")[0] or cell.spec.optimizer,
                        cell.spec.budget, "budget", message, 0, None, cell.task_hash,
                        snapshots=[], cell=cell.cell)
    return {"trace.csv": empty_trace(cell.spec.score).encode(),
            "meta.json": to_json(record.to_dict()).encode()}


def run_local(todo, cells_dir: Path, data_dir, workers: int, done) -> None:
    """Run the cells, ``workers`` processes at a time; ``done(cell, message or None)`` after each.

    SIGTERM is turned into KeyboardInterrupt; on either, every running cell is killed first.
    """
    queue, running = deque(todo), []
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < workers:
                cell = queue.popleft()
                running.append(CellProcess(cell, cells_dir / cell.cell, data_dir))
            for p in [p for p in running if p.poll()]:
                running.remove(p)
                done(p.cell, p.outcome())
            time.sleep(0.05)
    finally:
        for p in running:
            p.kill()
            p.outcome()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def compute_isolated(cell_dict: dict, data_dir) -> dict[str, bytes]:
    """On a Dask worker: run the cell in a process of its own and return its folder's files;
    raise :class:`~cryobench.errors.HarnessFault` when it was interrupted. The cell writes into
    ``$TMPDIR/.cryobench-worker.cryobench.tmp-<pid>-<host>-…``; the folder a killed worker left
    is removed by the next cell computed on that host."""
    cell = RunPlan.from_dict(cell_dict)
    spool = Path(tempfile.gettempdir()) / "cryobench-worker"
    remove_dead_temporaries_of(spool)               # a killed worker's folder (kill -9)
    with tempfile.TemporaryDirectory(prefix=temporary_prefix(spool), dir=spool.parent) as tmp:
        folder = Path(tmp) / cell.cell
        p = CellProcess(cell, folder, data_dir)
        try:
            while not p.poll():
                time.sleep(0.2)
        finally:
            if p.proc.poll() is None:
                p.kill()
        message = p.outcome()
        if message is not None:
            raise HarnessFault(message)
        return read_cell_files(folder)


def run_dask(todo, cells_dir: Path, address: str, data_dir, done) -> None:
    """Send the cells to a Dask scheduler; write each returned folder; a lost worker or
    scheduler leaves its cells without a result (computed again by the next grid)."""
    from dask.distributed import Client, as_completed   # heavy (~1 s): only with a scheduler
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = {client.submit(compute_isolated, c.to_dict(), str(data_dir) if data_dir else None,
                                 key=f"cryobench-cell-{c.cell}", pure=False, retries=0): c
                   for c in todo}
        remaining = set(futures)
        try:
            for future in as_completed(futures):
                remaining.discard(future)
                cell = futures[future]
                try:
                    write_cell_folder(cells_dir / cell.cell, future.result())
                    done(cell, None)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:           # interrupted on the worker, or the worker lost
                    done(cell, f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            client.cancel(list(remaining))
