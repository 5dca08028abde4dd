"""Writing files: never a special file replaced, never an update lost to a second writer, never a
folder cryobench did not make removed."""
import multiprocessing
import os

import pytest

from cryobench.base.files import atomic_write, locked
from cryobench.errors import InputError
from cryobench.harness.results import remove_stale_temporaries


def test_a_device_or_folder_is_never_replaced(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write("/dev/null", "{}")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with pytest.raises(InputError, match="not a regular file"):
        atomic_write(tmp_path, "{}")
    atomic_write(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"


def _add(path, key):
    import json
    with locked(path):
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = 1
        atomic_write(path, json.dumps(data))


def test_two_writers_keep_every_entry(tmp_path):
    """Read-modify-write under the lock from two processes, 100 entries each: all 200 kept."""
    import json
    path = tmp_path / "tuned.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=lambda w=w: [_add(path, f"{w}-{i}") for i in range(100)])
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(json.loads(path.read_text())) == 200
    assert sorted(os.listdir(tmp_path)) == ["tuned.json"]          # no lock file left behind


def test_only_cryobenchs_own_temporaries_are_removed(tmp_path):
    """A hidden folder of the user's in an output folder is not a leftover of cryobench's."""
    mine = tmp_path / ".cryobench-abc.tmp-999999999-x"
    theirs = tmp_path / ".notes.tmp-1-x"
    mine.mkdir()
    theirs.mkdir()
    assert remove_stale_temporaries(tmp_path) == 1
    assert not mine.exists() and theirs.exists()


def test_a_killed_grid_leaves_no_job_file_behind(tmp_path, data_dir):
    """Cells receive their job on standard input: a kill -9 of the grid while a cell runs leaves
    nothing in the temporary folder."""
    import signal
    import subprocess
    import sys
    import time

    import psutil
    spool = tmp_path / "tmp"
    spool.mkdir()
    (tmp_path / "grid.toml").write_text('tasks = ["thermus-style"]\nscales = ["ci"]\n'
                                        'optimizers = ["sgd"]\nbudget = 3500\ntuned = ""\n')
    env = dict(os.environ, TMPDIR=str(spool), CRYOBENCH_DATA=str(data_dir))
    grid = subprocess.Popen([sys.executable, "-m", "cryobench.cli", "grid", str(tmp_path / "grid.toml"),
                             "--out", str(tmp_path / "out"), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
            "cryobench.harness.cell" in " ".join(c.cmdline()) for c in psutil.Process(grid.pid).children()):
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(grid.pid, signal.SIGKILL)
    grid.wait()
    time.sleep(1.0)                                 # the cell dies with its grid
    assert not list(spool.glob("cryobench-cell-*"))


def test_a_symbolic_link_is_written_through_and_kept(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    """A write that fails half-way (here: data of the wrong type, as a full disk would fail it)
    leaves the file as it was and no temporary beside it."""
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(path, 12345)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.json"]
