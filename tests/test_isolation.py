"""Optimizers in their own process (issue 28, item 3): a hostile optimizer cannot see the data,
the oracle's accounting, the scorer, the checkpoints or the clock; how its process ends is its
result; the numbers are those of an optimizer running beside the data; nothing outlives a
killed harness."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import with_own_shm, write_grid

from cryobench.harness.channel import Arena, ProtocolError, decode, encode
from cryobench.harness.record import RunSpec
from cryobench.harness.registry import resolve
from cryobench.harness.run import execute
from cryobench.optim import minimize

HOSTILE = '''
import gc, os, sys, tempfile, time
from pathlib import Path
import numpy as np
from cryobench.optim import GradientMethod, Hyper, method

DATA, DATA_FILE = {data!r}, {data_file!r}


def _init(x0, *, budget, rng):
    return {{"x": x0.copy()}}


def _sgd(state, oracle):
    _, g = oracle.value_and_grad(state["x"], oracle.next_batch(100))
    return {{"x": state["x"] - np.float32(0.5) * g}}


def _harness_pid():
    status = Path(f"/proc/{{os.getppid()}}/status").read_text()       # the zygote's parent
    return int(next(l.split()[1] for l in status.splitlines() if l.startswith("PPid:")))


def _try(fn):
    try:
        fn()
        return "read"
    except Exception as exc:
        return type(exc).__name__


def _reachable(view):
    """Objects reachable from the view's class through closures, two levels deep."""
    found = []
    for member in vars(type(view)).values():
        for f in (member, getattr(member, "fget", None)):
            for cell in getattr(f, "__closure__", None) or ():
                found.append(cell.cell_contents)
                for inner in getattr(cell.cell_contents, "__closure__", None) or ():
                    found.append(inner.cell_contents)
    return found


HARNESS_TYPES = {{"Task", "Oracle", "CountedOracle", "Dataset", "ImageSpectra", "_Scorer",
                 "RunOutput", "CellRecord", "Likelihood"}}


def _spy(view):
    report = {{}}
    report["closures"] = sorted({{type(o).__name__ for o in _reachable(view)}} & HARNESS_TYPES)
    report["gc"] = sorted({{type(o).__name__ for o in gc.get_objects()}} & HARNESS_TYPES)
    frame, kinds = sys._getframe(), set()
    while frame is not None:
        kinds |= {{type(v).__name__ for v in frame.f_locals.values()}}
        frame = frame.f_back
    report["frames"] = sorted(kinds & HARNESS_TYPES)
    report["cache"] = _try(lambda: os.listdir(DATA))
    report["cache_file"] = _try(lambda: open(DATA_FILE, "rb").read(10))
    report["home_cache"] = _try(lambda: os.listdir(os.path.expanduser("~/.cache/cryobench")))
    report["memory"] = _try(lambda: open(f"/proc/{{_harness_pid()}}/mem", "rb").read(1))
    report["signal"] = _try(lambda: os.kill(_harness_pid(), 0))
    report["write"] = _try(lambda: open(Path(np.__file__).parent / "cryobench-forged.csv", "w"))
    report["temporary"] = _try(lambda: tempfile.NamedTemporaryFile().write(b"x"))
    return report


@method(lr=Hyper(0.5, 0.01, 10))
def spy(lr):
    """Looks for the harness's objects and files, and reports what it found."""
    def step(state, oracle):
        raise RuntimeError(f"report {{_spy(oracle)!r}}")
    return GradientMethod(_init, step)


@method(lr=Hyper(0.5, 0.01, 10))
def honest(lr):
    """SGD with step 0.5, as the vandal steps."""
    return GradientMethod(_init, _sgd)


@method(lr=Hyper(0.5, 0.01, 10))
def vandal(lr):
    """Patches everything it can reach, then steps as SGD."""
    def init(x0, *, budget, rng):
        import cryobench.harness.run as run
        import cryobench.oracle as oracle
        oracle.CountedOracle.audit = lambda self: None
        oracle.CountedOracle.budget = property(lambda self: 10 ** 9)
        run._Scorer.__call__ = lambda self, x: (1.0, 1.0)
        run.checkpoints = lambda *a, **k: np.array([0])
        time.perf_counter = lambda: -1000.0
        time.monotonic = lambda: -1000.0
        return _init(x0, budget=budget, rng=rng)
    def step(state, oracle):
        try:
            type(oracle).budget = property(lambda self: 10 ** 9)
        except Exception:
            pass
        return _sgd(state, oracle)
    return GradientMethod(init, step)


@method(how=Hyper(0, 0, 10, integer=True, log=False))
def ender(how):
    """Steps as SGD, then on its third step ends its process in the way ``how`` says."""
    count = [0]
    def step(state, oracle):
        count[0] += 1
        if count[0] == 3:
            if how == 0:
                sys.exit(3)
            if how == 1:
                os._exit(7)
            if how == 2:
                raise MemoryError("no room for the Hessian")
            if how == 3:
                os.kill(os.getpid(), 9)
            if how == 4:                                    # swallows every interruption
                while True:
                    try:
                        time.sleep(100)
                    except BaseException:
                        pass
            if how == 5:
                from threadpoolctl import threadpool_limits
                threadpool_limits(2)
            if how == 6:                                    # writes garbage on its channel
                import socket
                sock = next(o for o in gc.get_objects() if isinstance(o, socket.socket)
                            and o.fileno() >= 0)
                sock.sendall(b"\\xff" * 64)
                time.sleep(100)
        return _sgd(state, oracle)
    return GradientMethod(_init, step)
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, data_dir, cylinder):
    path = tmp_path_factory.mktemp("hostile") / "hostile.py"
    data_file = next(p for p in sorted(Path(data_dir).rglob("*")) if p.is_file())
    path.write_text(HOSTILE.format(data=str(data_dir), data_file=str(data_file)))
    return path


def run(task, optimizer, budget=400, time_limit=None, **params):
    spec = RunSpec("synthetic-cylinder", "ci", optimizer, params, budget=budget,
                   time_limit=time_limit)
    return execute(spec, task, resolve(optimizer), compare=False)


def test_a_spying_optimizer_finds_neither_the_harness_nor_the_data(cylinder, hostile):
    out = run(cylinder, f"{hostile}:spy")
    assert out.record.status == "error" and out.record.message.startswith("RuntimeError: report")
    report = eval(out.record.message.split("report ", 1)[1])
    assert report["closures"] == report["gc"] == report["frames"] == []
    denied = {k: report[k] for k in ("memory", "signal", "write")}
    assert set(denied.values()) == {"PermissionError"}, denied
    for key in ("cache", "cache_file", "home_cache"):      # hidden, or absent (home_cache)
        assert report[key] in ("PermissionError", "FileNotFoundError"), report
    assert report["temporary"] == "read"                   # its own /tmp, gone with it
    assert out.record.provenance["optimizer_process"].startswith("landlock")


def test_a_vandal_changes_none_of_the_numbers(cylinder, hostile):
    honest, vandal = run(cylinder, f"{hostile}:honest"), run(cylinder, f"{hostile}:vandal")
    assert vandal.record.status == "ok" and vandal.record.evaluations == 400
    columns = [c for c in honest.trace.columns if c != "wall_s"]
    assert vandal.trace[columns].equals(honest.trace[columns])
    wall = vandal.trace["wall_s"].to_numpy()
    assert wall[0] == 0 and np.all(np.diff(wall) > 0) and vandal.record.wall_s == wall[-1]


@pytest.mark.parametrize("how, status, message", [
    (0, "error", "SystemExit: the optimizer called sys.exit(3)"),
    (1, "error", "the optimizer's process ended with exit status 7 while stepping at 200"),
    (2, "error", "MemoryError: no room for the Hessian"),
    (3, "error", "the optimizer's process was killed by signal SIGKILL while stepping at 200"),
    (4, "budget", "time limit of 1 s of optimizer time reached (a step did not return"),
    (5, "error", "the optimizer changed its thread counts (BLAS, numba) from [1, "),
    (6, "error", "the optimizer's process sent a message of"),
])
def test_how_an_optimizers_process_ends_is_its_result(cylinder, hostile, how, status, message):
    if how == 5 and (os.cpu_count() or 1) < 2:
        pytest.skip("one core: two BLAS threads cannot be set")
    out = run(cylinder, f"{hostile}:ender", how=how, time_limit=1.0 if how == 4 else None)
    assert out.record.status == status and message in out.record.message, out.record.message
    assert out.trace["evals"].tolist()[:3] == [0, 100, 200]             # checkpoints kept


@pytest.mark.parametrize("optimizer", ["sgd", "em", "hessian-free"])
def test_isolated_numbers_equal_those_computed_beside_the_data(cylinder, optimizer):
    """The final iterate and its score are bit-identical to the same method stepped here, on
    the oracle itself (value_and_grad, the EM weights and Hessian-vector products cross)."""
    from cryobench.base.seeding import rng_for
    method = resolve(optimizer)
    out = run(cylinder, optimizer, budget=600)
    oracle = cylinder.oracle(600, stream=0)
    rng = rng_for(cylinder.name, method.name, "optimizer", 0)
    opt = method.configure()
    x = opt.iterate(minimize(opt, cylinder.init.copy(), oracle, rng))
    assert out.record.evaluations == oracle.evaluations
    assert np.array_equal(out.densities["final"], x.astype(np.float32))
    assert out.trace["test_nll"].iloc[-1] == cylinder.test_nll(x)


def test_the_channel_refuses_what_is_not_data():
    arena = Arena.create(1 << 16)
    try:
        message = {"x": np.arange(1000, dtype=np.float32), "eps": np.float64(1e-3),
                   "b": np.arange(3), "t": (1, 2.5, None, True), "s": "z"}
        back = decode(encode(message, arena), arena, copy=True)
        assert np.array_equal(back["x"], message["x"]) and back["x"].dtype == np.float32
        assert type(back["eps"]) is np.float64 and back["t"] == (1, 2.5, None, True)
        for bad in [b'{"a": ["O", [1], "AA=="]}', b'{"a": ["<f4", [10], 1e9]}',
                    b'{"a": ["<f4", [100000000], 0]}', b'{"x": 1, "y": 2}', b"[" * 100000,
                    b'{"s": ["V8", "AAAAAAAAAAA="]}', b"\xff\xfe"]:
            with pytest.raises(ProtocolError):
                decode(bad, arena, copy=False)
        with pytest.raises(TypeError):
            encode({"f": lambda: 0}, arena)
    finally:
        arena.close()


def _descendants(root: int) -> set[int]:
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def test_nothing_outlives_a_killed_grid(tmp_path, data_dir, hostile):
    """kill -9 of the grid: its cells, their zygotes and optimizer processes all end, and no
    shared-memory file is left behind (the arenas are memfds). The grid runs with a /dev/shm of
    its own (a folder bound over it in a mount namespace), so that what other processes on the
    machine open there at the time (their semaphores, sem.mp-*) is not taken for its leftovers."""
    grid = write_grid(tmp_path / "grid.toml", [f"{hostile}:ender"], budget=100000,
                      extra=f'seeds = 2\n[params."{hostile}:ender"]\nhow = 4\n')
    shm = tmp_path / "shm"
    shm.mkdir()
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(with_own_shm(command, shm), env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300                        # a loaded machine starts slowly
        tree = _descendants(proc.pid)                       # the tree that was counted, not a
        while time.time() < deadline and len(tree) < 6:     # later look: a process starting or
            time.sleep(0.1)                                 # ending in between changes the count
            tree = _descendants(proc.pid)                   # 2 × (cell, zygote, child)
        assert len(tree) >= 6, f"the grid started {len(tree)} processes in 300 s"
        assert (shm / ".bound").exists()                    # the grid's /dev/shm is this folder
    finally:                                                # never leave the grid running
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
        time.sleep(0.1)
    assert not [p for p in tree if Path(f"/proc/{p}").exists()], "a process outlived its grid"
    assert sorted(p.name for p in shm.iterdir()) == [".bound"]
    assert not list(tmp_path.glob("cells/*/meta.json"))


def test_a_task_outside_the_data_directory_still_runs():
    """The numerics fingerprint's probe task has its derived folder in the temporary folder, whose
    parent is /: hiding it must not hide the Python the optimizer's process runs on."""
    from cryobench.harness.fingerprint import _probe_sgd, _probe_task
    out = execute(RunSpec("fingerprint", "probe", "probe-sgd", {"lr": 0.5}, seed=1, budget=400,
                          snapshots=()), _probe_task(1.0), _probe_sgd(), compare=False)
    assert out.record.status == "ok" and out.record.evaluations == 400, out.record.message
