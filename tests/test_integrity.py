"""Integrity (issue 9): interrupted runs are not results, time limits hold inside a step, the
oracle's accounting cannot be bent, zero work is refused, a cell's identity covers the thread
count and its configuration, and bad values get one line."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for, write_grid as grid_file

from cryobench.cli import main as cli
from cryobench.harness.plan import plan_for_cell
from cryobench.harness.grid import expand, load_grid, run_grid
from cryobench.harness.registry import resolve
from cryobench.harness.results import load_results
from cryobench.harness.record import RunSpec
from cryobench.harness.run import execute

OPTIMIZERS = '''
import time
import numpy as np
from cryobench.optim import GradientMethod, Hyper, method


def _sgd_step(state, oracle):
    _, g = oracle.value_and_grad(state["x"], oracle.next_batch(100))
    return {"x": state["x"] - np.float32(0.5) * g}


def _init(x0, *, budget, rng):
    return {"x": x0.copy()}


@method(after=Hyper(1, 0, 100, integer=True, log=False))
def spinning(after):
    """Loops forever in pure Python on step ``after``."""
    count = [0]
    def step(state, oracle):
        count[0] += 1
        while count[0] > after:
            pass
        return _sgd_step(state, oracle)
    return GradientMethod(_init, step)


@method(after=Hyper(1, 0, 100, integer=True, log=False))
def sleeping(after):
    """Blocks in C (a sleep the interpreter cannot interrupt) on step ``after``."""
    count = [0]
    def step(state, oracle):
        count[0] += 1
        if count[0] > after:
            time.sleep(3600)
        return _sgd_step(state, oracle)
    return GradientMethod(_init, step)


@method(seconds=Hyper(0.3, 0.01, 10))
def slow(seconds):
    """SGD that waits ``seconds`` per step (to be killed mid-run)."""
    def step(state, oracle):
        time.sleep(seconds)
        return _sgd_step(state, oracle)
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def budget_forger(lr):
    """Raises its own budget."""
    def step(state, oracle):
        oracle.budget *= 10
        return _sgd_step(state, oracle)
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def count_forger(lr):
    """Takes 50 gradient evaluations off its count after each step."""
    def step(state, oracle):
        out = _sgd_step(state, oracle)
        oracle.counts["grad"] -= 50
        return out
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def peeker(lr):
    """Reaches for the task (and so the test images) behind the oracle."""
    def step(state, oracle):
        test = oracle._task.splits["test"]
        return _sgd_step(state, oracle)
    return GradientMethod(_init, step)


def _real_oracle(view):
    for cell in type(view).value_and_grad.__closure__:
        inner = cell.cell_contents
        if hasattr(inner, "audit"):
            return inner
        for c in getattr(inner, "__closure__", None) or ():
            if hasattr(c.cell_contents, "audit"):
                return c.cell_contents
    raise LookupError


@method(lr=Hyper(0.5, 0.01, 10))
def digger(lr):
    """Digs the real oracle out of the view's closures and evaluates without being charged."""
    def step(state, oracle):
        real = _real_oracle(oracle)
        batch = oracle.next_batch(100)
        _, g = real._evaluate(state["x"], batch, gradient=True)
        return {"x": state["x"] - np.float32(0.5) * g}
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def ledger_forger(lr):
    """Digs the real oracle out and rewrites its private counts."""
    def step(state, oracle):
        out = _sgd_step(state, oracle)
        _real_oracle(oracle)._CountedOracle__counts["grad"] -= 50
        return out
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def misshapen(lr):
    """Returns an iterate of the wrong shape."""
    def step(state, oracle):
        out = _sgd_step(state, oracle)
        return {"x": out["x"][:, :, :5]}
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def idle(lr):
    """Never evaluates anything and never stops."""
    return GradientMethod(_init, lambda state, oracle: state)
'''


@pytest.fixture(scope="module")
def opt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "cheats.py"
    path.write_text(OPTIMIZERS)
    return path




def run_one(opt_file, name, task, **spec):
    ref = f"{opt_file}:{name}"
    return execute(RunSpec("synthetic-cylinder", "ci", ref, {}, budget=spec.pop("budget", 400),
                           **spec), task, resolve(ref))


def cell_processes(grid_pid: int) -> list[int]:
    """Pids of live `cryobench.harness.cell` processes whose parent is ``grid_pid``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"cryobench.harness.cell" in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == grid_pid:
            pids.append(int(proc.name))
    return pids


# --- 1. an interrupted run is not a result ------------------------------------------------------

def test_killed_cell_process_is_recomputed_and_report_works(tmp_path, data_dir, opt_file):
    # 2 s per step (20 s in all) so that the slow cell is still running when sgd's cell is done,
    # even on a machine whose other work makes sgd's cell slow (0.3 s per step lost that race)
    slow_steps = f'[params."{opt_file}:slow"]\nseconds = 2.0\n'
    grid = grid_file(tmp_path / "grid.toml", ["sgd", f"{opt_file}:slow"], budget=1000,
                     extra=slow_steps)
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(cell_processes(proc.pid)) == 2)
    assert wait_for(lambda: len(list(tmp_path.glob("cells/*/meta.json"))) == 1)   # sgd is done
    assert wait_for(lambda: len(cell_processes(proc.pid)) == 1)
    victim, = cell_processes(proc.pid)                     # the slow cell, still running
    os.kill(victim, signal.SIGKILL)                        # as the out-of-memory killer would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "was interrupted: the cell process was killed by signal SIGKILL" in err
    assert "1 of 2 cells were interrupted" in err
    done = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert len(done) == 1                                  # the killed cell left nothing cached
    assert cli(["report", str(tmp_path)]) == 0
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    after = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert len(after) == 2 and all(after[k] == v for k, v in done.items())
    assert set(load_results(tmp_path).cells["status"]) == {"ok"}


def test_sigint_stops_a_grid_at_once_and_leaves_it_resumable(tmp_path, data_dir, opt_file):
    grid = grid_file(tmp_path / "grid.toml", [f"{opt_file}:slow"], budget=600, extra="seeds = 6\n")
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers", "2", "--quiet"]
    # as from a terminal: a shell without job control starts background commands with SIGINT
    # ignored (`nohup .ci/run &`), and a Python started so never raises KeyboardInterrupt
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(lambda: len(cell_processes(proc.pid)) == 2)
    children = cell_processes(proc.pid)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)                     # Ctrl-C in the grid's terminal
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 10 and proc.returncode == 130
    assert "run the same command again" in err
    assert not [p for p in children if Path(f"/proc/{p}").exists()], "a cell outlived its grid"
    assert len(list(tmp_path.glob("cells/*/meta.json"))) < 6        # nothing queued started
    assert not list(tmp_path.glob("cells/.*tmp-*"))
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert len(list(tmp_path.glob("cells/*/meta.json"))) == 6


def test_cells_die_with_their_grid(tmp_path, data_dir, opt_file):
    grid = grid_file(tmp_path / "grid.toml", [f"{opt_file}:slow"], budget=2000, extra="seeds = 2\n")
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers",
                             "2", "--quiet"], env=env, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(cell_processes(proc.pid)) == 2)
    children = cell_processes(proc.pid)
    proc.kill()                                            # kill -9 of the grid alone
    proc.wait()
    assert wait_for(lambda: not [p for p in children if Path(f"/proc/{p}").exists()], 10)


def test_harness_fault_in_a_cell_is_not_cached(tmp_path, data_dir, cylinder):
    spec = RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 0.5}, budget=200, label="sgd")
    cell = plan_for_cell(spec, "synthetic-cylinder", "0" * 64, resolve("sgd"))       # the grid expects other data
    status = run_grid([cell], tmp_path, workers=1, data_dir=data_dir, progress=False)
    assert status == {cell.cell: (cell.cell, "interrupted")}
    assert not (tmp_path / "cells" / cell.cell).exists()


def test_failing_write_is_not_a_result_and_a_retry_succeeds(tmp_path, data_dir):
    """A full disk (a 40 kB tmpfs on the results folder, mounted in a mount namespace of the
    grid's own) interrupts the cells; once writes work again, the same command computes them.
    (A file-size limit would fail the optimizer's shared-memory channel before any cell.)"""
    grid = grid_file(tmp_path / "grid.toml", ["sgd", "nesterov"], budget=200)
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers", "2", "--quiet"]
    cells = tmp_path / "cells"
    cells.mkdir()
    inside = (f"mount -t tmpfs -o size=40k tmpfs {cells} || exit 99; {shlex.join(command)}; "
              f"echo rc=$?; ls -a {cells}")
    full = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inside],
                          env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr                # the namespace and its tmpfs worked
    assert "rc=1\n" in full.stdout and "No space left on device" in full.stderr
    assert full.stdout.split("rc=1\n")[1].split() == [".", ".."]      # no result, no temporary
    assert not list(cells.iterdir())                        # the tmpfs is gone with its namespace
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert set(load_results(tmp_path).cells["status"]) == {"ok"}


def test_output_folder_that_is_a_file_gets_one_line(tmp_path, data_dir, capsys):
    (tmp_path / "out").write_text("not a folder")
    argv = ["run", "synthetic-cylinder", "sgd", "--budget", "200", "--tuned", "none",
            "--data-dir", str(data_dir), "--out", str(tmp_path / "out")]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cryobench: error: {tmp_path / 'out'}: is a file, but the results folder must be a directory"


# --- 2. a step that never returns is stopped ----------------------------------------------------

def test_infinite_loop_in_a_step_is_stopped_by_the_time_limit(cylinder, opt_file):
    t = time.time()
    out = run_one(opt_file, "spinning", cylinder, time_limit=1.0)
    assert time.time() - t < 20
    assert out.record.status == "budget" and "time limit of 1 s" in out.record.message
    assert out.record.evaluations == 100 and out.trace["evals"].tolist() == [0, 100]
    assert out.record.time_limit_s == 1.0


def test_step_blocked_in_c_ends_its_cell_as_a_time_limit(tmp_path, data_dir, opt_file):
    grid = grid_file(tmp_path / "grid.toml", [f"{opt_file}:sleeping"], extra="time_limit = 1.0\n")
    t = time.time()
    status = run_grid(expand(load_grid(grid), data_dir), tmp_path, workers=1, data_dir=data_dir,
                      progress=False)
    assert time.time() - t < 60 and [o.status for o in status.values()] == ["budget"]
    results = load_results(tmp_path)
    row = results.cells.iloc[0]
    assert "did not return" in row.message and "time limit of 1 s" in row.message
    assert results.trace["evals"].tolist() == [0, 100]          # the checkpoints reached are kept
    assert cli(["report", str(tmp_path)]) == 0


# --- 5. the oracle's accounting belongs to the oracle ----------------------------------------

@pytest.mark.parametrize("name, message", [
    ("budget_forger", "AttributeError"), ("count_forger", "TypeError"),
    ("peeker", "AttributeError"), ("digger", "LookupError"),       # the real oracle is in
    ("ledger_forger", "LookupError")])                              # another process
def test_cheating_optimizers_end_in_error(cylinder, opt_file, name, message):
    out = run_one(opt_file, name, cylinder)
    assert out.record.status == "error" and message in out.record.message
    assert out.record.evaluations <= 400


def test_optimizers_are_handed_a_view_without_the_data(cylinder):
    oracle = cylinder.oracle(500)
    view = oracle.view()
    assert not hasattr(view, "_task") and not hasattr(view, "__dict__")
    with pytest.raises(AttributeError):
        view.budget = 10**9
    with pytest.raises(TypeError):
        view.counts["grad"] = -1
    with pytest.raises(ValueError):
        view.train_indices[0] = cylinder.splits["test"][0]
    with pytest.raises(ValueError, match="not training images"):
        view.value_and_grad(cylinder.init, cylinder.splits["test"][:5])
    view.value_and_grad(cylinder.init, view.next_batch(100))
    assert view.evaluations == oracle.evaluations == 100 and view.remaining == 400
    oracle.audit()


def test_wrong_shaped_iterate_and_idle_optimizer_are_the_methods_errors(cylinder, opt_file):
    out = run_one(opt_file, "misshapen", cylinder)
    assert out.record.status == "error" and "shape (24, 24, 5)" in out.record.message
    assert len(out.trace) >= 2 and np.isnan(out.trace["test_nll"].iloc[-1])
    out = run_one(opt_file, "idle", cylinder)
    assert out.record.status == "error" and "no evaluations" in out.record.message


# --- 6. zero work is not a result --------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--budget", "50"], "less than one minibatch"),
    (["--set", "batch_size=400", "--budget", "1000"], "exceeds the 350 training images"),
    (["--set", "batch_size=0"], "batch_size must be ≥ 1"),
    (["--set", "batch_size=3.5"], "whole number"),
    (["--set", "lr=-1"], "lr must be positive"),
    (["--set", "lr=0"], "lr must be positive"),
    (["--set", "lr=nan"], "finite"),
    (["--set", "lr=inf"], "finite"),
    (["--tuned", "missing.json"], "no such tuned-values file"),
    (["--time-limit", "0"], "positive number of seconds"),
    (["--seed", "-1"], "training stream index ≥ 0"),
    (["--threads", "0"], "thread count is a positive integer"),
])
def test_runs_that_cannot_be_meant_are_refused_up_front(tmp_path, data_dir, capsys, extra, message):
    argv = ["run", "synthetic-cylinder", "sgd", "--data-dir", str(data_dir), "--out", str(tmp_path),
            *(["--tuned", "none"] if "--tuned" not in extra else []), *extra]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryobench: error:") and message in err and "\n" not in err
    assert not (tmp_path / "cells").exists() or not list((tmp_path / "cells").iterdir())


def test_tune_with_a_budget_below_one_minibatch_is_refused(tmp_path, data_dir, capsys):
    assert cli(["tune", "synthetic-cylinder", "--scale", "ci", "--optimizers", "sgd", "--budget",
                "5", "--data-dir", str(data_dir), "--out", str(tmp_path / "t"),
                "--record", str(tmp_path / "tuned.json")]) == 2
    assert "less than one minibatch" in capsys.readouterr().err
    assert not (tmp_path / "tuned.json").exists()


# --- 7. a cell's identity covers what changes its numbers --------------------------------------

def test_thread_count_and_configuration_are_part_of_a_cells_identity(tmp_path, data_dir, capsys):
    grid = load_grid(grid_file(tmp_path / "g.toml", ["sgd"], extra="[params.sgd]\nlr = [0.5, 1.0]\n"))
    one, two = expand(grid, data_dir, threads=1), expand(grid, data_dir, threads=2)
    assert {c.cell for c in one}.isdisjoint(c.cell for c in two)
    assert [c.spec.label for c in one] == ["sgd lr=0.5", "sgd"]    # lr 1 is sgd's default
    common = ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs"), "--tuned", "none",
              "--budget", "200"]
    for lr in ("0.5", "0.25"):
        assert cli(["run", "synthetic-cylinder", "sgd", "--set", f"lr={lr}", *common]) == 0
    labels = sorted(load_results(tmp_path / "runs").cells["label"])
    assert labels == ["sgd lr=0.25", "sgd lr=0.5"]


# --- 8. every bad value gets one line ----------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nbudget_epochs = "ten"\n', "'budget_epochs' must be"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nscales = "ci"\n', "'scales' must be a non-empty list"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nscales = []\n', "'scales' must be a non-empty list"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nparams = 3\n', "'params' must be a table"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nbudget = 100\nbudget_epochs = 2\n', "not both"),
    ('tasks = []\noptimizers = ["sgd"]\n', "'tasks' must be a non-empty list"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\n[params.sgd]\nlr = []\n', "non-empty list of numbers"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\n[params.sgd]\nlr = "big"\n', "must be a number"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nseeds = 0\n', "'seeds' must be"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\ntime_limit = -1\n', "'time_limit' must be"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\ntuned = "nope.json"\n', "which does not exist"),
    ('tasks = ["synthetic-cylinder"\n', "not valid TOML"),
    ('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd", "nosuch"]\n', "optimizers: unknown optimizer 'nosuch'"),
])
def test_bad_grid_values_get_one_line(tmp_path, capsys, body, message):
    path = tmp_path / "grid.toml"
    path.write_text(body)
    assert cli(["grid", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cryobench: error: {path}") and message in err and "\n" not in err


def test_grid_values_that_cannot_be_meant_are_refused_before_any_cell(tmp_path, data_dir, capsys):
    path = grid_file(tmp_path / "grid.toml", ["sgd"], budget=50)
    assert cli(["grid", str(path), "--data-dir", str(data_dir)]) == 2
    assert "less than one minibatch" in capsys.readouterr().err
    path = grid_file(tmp_path / "grid.toml", ["sgd"], extra="[params.sgd]\nlr = [1, -1]\n")
    assert cli(["grid", str(path), "--data-dir", str(data_dir)]) == 2
    assert "[params.sgd] hyper-parameter lr must be positive" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


def test_unreachable_scheduler_gets_one_line_quickly(tmp_path, data_dir, capsys):
    path = grid_file(tmp_path / "grid.toml", ["sgd"], budget=200)
    t = time.time()
    assert cli(["grid", str(path), "--data-dir", str(data_dir), "--scheduler",
                "tcp://127.0.0.1:9", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.time() - t < 30 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert "\n" not in err


@pytest.mark.parametrize("name, content, message", [
    ("trace.csv", b"", "empty file"), ("trace.csv", b"a,b\n1,2\n", "no column 'evals'"),
    ("trace.csv", b"\x00\xff\xfe garbage", "trace"), ("meta.json", b"{not json", "cannot read"),
    ("meta.json", b"[1, 2]", "JSON object"), ("views.npz", b"garbage", "cannot read the views")])
def test_garbage_result_files_get_one_line(tmp_path, data_dir, capsys, name, content, message):
    grid = grid_file(tmp_path / "grid.toml", ["sgd"], budget=200)
    run_grid(expand(load_grid(grid), data_dir), tmp_path, workers=1, data_dir=data_dir, progress=False)
    target = next(tmp_path.glob(f"cells/*/{'meta.json' if name == 'views.npz' else name}")).parent / name
    target.write_bytes(content)
    assert cli(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cryobench: error: {target}") and message in err and "\n" not in err


def test_killed_dask_scheduler_leaves_its_cells_to_the_next_grid(tmp_path, data_dir, opt_file):
    pytest.importorskip("dask.distributed")
    dask = Path(sys.executable).parent / "dask"
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    grid = grid_file(tmp_path / "grid.toml", ["sgd", f"{opt_file}:slow"], budget=1000,
                     extra="seeds = 2\n")

    def cluster(port):
        address = f"tcp://127.0.0.1:{port}"
        sched = subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], env=env, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        worker = subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers", "2",
                                   "--no-dashboard"], env=env, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        return address, sched, worker

    def stop(*procs):
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    address, sched, worker = cluster(18786)
    try:
        command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--scheduler", address,
                   "--quiet"]
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: len(list(tmp_path.glob("cells/*/meta.json"))) >= 2, 180)
        stop(sched)                                        # kill -9 of the scheduler mid-grid
        _, err = proc.communicate(timeout=120)
        done = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
        assert proc.returncode == 1 and "interrupted" in err and 2 <= len(done) < 4
    finally:
        stop(sched, worker)
    address, sched, worker = cluster(18787)
    try:
        command[command.index("--scheduler") + 1] = address
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    finally:
        stop(sched, worker)
    after = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert len(after) == 4 and all(after[k] == v for k, v in done.items())
    assert set(load_results(tmp_path).cells["status"]) == {"ok"}
