"""No temporary file outlives its process, killed or not (issue 28, item 5).

What cryobench writes on the way to a file: a cell's job (standard input, never a file), its
densities (anonymous memory, :func:`cryobench.data.mrc.volume_bytes`), its folder being written
(``.cryobench-<cell>.tmp-<pid>-…``, removed by the next grid), files replaced atomically
(``.<name>.cryobench.tmp-<pid>-<host>-…``, removed by the next write of that file), a Dask worker's
folder (``$TMPDIR/.cryobench-worker.cryobench.tmp-<pid>-<host>-…``, removed by the next cell on
that host), the channel's arenas (memfd: no name) and the optimizer's private ``/tmp`` (a tmpfs
in its own mount namespace). Each test kills with SIGKILL, which no handler can catch.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import wait_for, with_own_shm, write_grid

from cryobench.base.files import atomic_write
from cryobench.data.mrc import read_volume, volume_bytes, write_volume
from cryobench.harness.results import load_results

SLOW = '''
import tempfile, time
import numpy as np
from cryobench.optim import GradientMethod, Hyper, method


def _init(x0, *, budget, rng):
    open("/tmp/{probe}", "w").write("x")            # the optimizer's own /tmp
    tempfile.NamedTemporaryFile(delete=False).write(b"x")
    return {{"x": x0.copy()}}


def _step(state, oracle):
    time.sleep(0.05)
    _, g = oracle.value_and_grad(state["x"], oracle.next_batch(100))
    return {{"x": state["x"] - np.float32(0.5) * g}}


@method(lr=Hyper(0.5, 0.01, 10))
def slow(lr):
    """SGD that sleeps 50 ms a step and leaves files in its temporary folder."""
    return GradientMethod(_init, _step)
'''


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def _cryobenchs(folder: Path) -> list[str]:
    """Names in ``folder`` (recursively) that cryobench or the optimizer may have made."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                  if ("cryobench" in p.name or p.name.startswith(("tmp", ".write-probe")))
                  and "dask-scratch-space" not in p.parts)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _is_cell(proc: psutil.Process) -> bool:
    try:
        return "cryobench.harness.cell" in " ".join(proc.cmdline())
    except psutil.Error:                            # ended meanwhile (a zombie: a finished zygote)
        return False


@pytest.fixture
def slow(tmp_path):
    probe = f"cryobench-probe-{uuid.uuid4().hex}"
    path = tmp_path / "slow.py"
    path.write_text(SLOW.format(probe=probe))
    yield f"{path}:slow", probe
    assert not Path("/tmp", probe).exists(), "the optimizer's /tmp was the machine's"


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """atomic_write and write_volume remove the temporaries of the same file whose writer on this
    host has died; a live writer's, another host's, another file's and a user's files stay."""
    host, dead = socket.gethostname(), _dead_pid()
    for target, write in [("tuned.json", lambda p: atomic_write(p, "{}")),
                          ("init.mrc", lambda p: write_volume(p, np.ones((4, 4, 4)), 2.0))]:
        keep = [f".{target}.cryobench.tmp-{os.getpid()}-{host}-live",      # a live writer
                f".{target}.cryobench.tmp-{dead}-elsewhere-x",              # another host
                f".other.json.cryobench.tmp-{dead}-{host}-x",               # another file
                f".{target}.tmp-{dead}-{host}-x", f".{target}.bak"]         # the user's
        gone = [f".{target}.cryobench.tmp-{dead}-{host}-abc"]
        for name in keep + gone:
            (tmp_path / name).write_text("half")
        (tmp_path / f".{target}.cryobench.tmp-{dead}-{host}-dir").mkdir()
        write(tmp_path / target)
        names = {p.name for p in tmp_path.iterdir()}
        assert set(keep) <= names and not set(gone) & names, names
        assert f".{target}.cryobench.tmp-{dead}-{host}-dir" not in names
        for name in keep:
            (tmp_path / name).unlink()
        (tmp_path / target).unlink()


def test_volume_bytes_are_write_volumes_bytes_and_leave_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    vol = np.random.default_rng(0).normal(size=(6, 6, 6)).astype(np.float32)
    write_volume(tmp_path / "a.mrc", vol, 1.5)
    assert volume_bytes(vol, 1.5) == (tmp_path / "a.mrc").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.mrc"]
    back, pixel = read_volume(tmp_path / "a.mrc")
    assert np.array_equal(back, vol) and pixel == 1.5


@pytest.mark.parametrize("victim", ["cell", "grid"])
def test_kill_9_of_a_cell_or_its_grid_leaves_no_temporary(tmp_path, data_dir, slow, victim,
                                                          request):
    """kill -9 of the cell process (the grid goes on and says the cell was interrupted) or of
    the grid (its cells die with it) while the optimizer runs: nothing of cryobench's stays in
    the temporary folder, the output folder or /dev/shm, no process outlives its grid, and the
    next grid computes the cell and leaves nothing either."""
    name, _ = slow
    spool = tmp_path / "spool"
    spool.mkdir()
    grid = write_grid(tmp_path / "grid.toml", [name], budget=20000)
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(spool), CRYOBENCH_DATA=str(data_dir))
    shm = tmp_path / "shm"                          # the grid's own /dev/shm (helpers.with_own_shm)
    shm.mkdir()
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(with_own_shm(command, shm), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    request.addfinalizer(proc.kill)                 # never left running by a failed assertion

    def cell():
        return next((c for c in _descendants(proc.pid) if _is_cell(c)), None)

    assert wait_for(lambda: cell() is not None and len(_descendants(cell().pid)) >= 2, 300), \
        "the cell and its optimizer process never started"
    assert (shm / ".bound").exists()
    time.sleep(1.0)                                 # the optimizer steps
    tree = _descendants(proc.pid)
    os.kill(cell().pid if victim == "cell" else proc.pid, signal.SIGKILL)
    if victim == "cell":
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "killed by signal SIGKILL" in err, err
    else:
        proc.wait()
    assert wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"], 10), \
        "a process outlived its cell"
    assert _cryobenchs(spool) == [] and _cryobenchs(out) == []
    assert not list(out.glob("cells/*/meta.json"))
    assert sorted(p.name for p in shm.iterdir()) == [".bound"]
    grid.write_text(grid.read_text().replace("budget = 20000", "budget = 300"))
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _cryobenchs(spool) == [] and [p.name for p in out.glob("cells/.*")] == []
    assert set(load_results(out).cells["status"]) == {"ok"}


def test_kill_9_of_a_dask_worker_leaves_no_temporary_after_the_next_cell(tmp_path, data_dir, slow):
    """kill -9 of a Dask worker while its cell runs: the cell process dies with it; Dask computes
    the cell again on the worker its nanny restarts (or, if it gives up, the grid says the cell
    was interrupted and the next grid computes it). The killed worker's folder, its only
    temporary, is removed by the next cell computed on the host: nothing is left behind."""
    pytest.importorskip("dask.distributed")
    name, _ = slow
    dask = Path(sys.executable).parent / "dask"
    spool = tmp_path / "spool"
    spool.mkdir()
    env = dict(os.environ, TMPDIR=str(spool), CRYOBENCH_DATA=str(data_dir))
    grid = write_grid(tmp_path / "grid.toml", [name], budget=20000)
    port = 18000 + os.getpid() % 1000
    address = f"tcp://127.0.0.1:{port}"
    cluster = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)]
    cluster.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers",
                                     "1", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--out", str(tmp_path / "out"),
               "--scheduler", address, "--quiet"]
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

        def cell():
            return next((c for c in _descendants(cluster[1].pid) if _is_cell(c)), None)

        assert wait_for(lambda: cell() is not None and len(_descendants(cell().pid)) >= 2, 180), \
            "the cell never started on the worker"
        time.sleep(1.0)
        worker = cell().parent()
        assert list(spool.glob(f".cryobench-worker.cryobench.tmp-{worker.pid}-*"))
        tree = [worker, *worker.children(recursive=True)]
        worker.send_signal(signal.SIGKILL)                 # kill -9 of the Dask worker
        assert wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"], 10), \
            "a process outlived its worker"
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:        # Dask gave up on the task: the next grid computes it
            assert proc.returncode == 1 and "interrupted" in err, err
            rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert rerun.returncode == 0, rerun.stderr
    finally:
        for p in cluster:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    assert _cryobenchs(spool) == [], "a worker's temporary outlived it"
    assert set(load_results(tmp_path / "out").cells["status"]) == {"ok"}
