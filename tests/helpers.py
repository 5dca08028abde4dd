"""Helpers shared by the harness and integrity tests."""
import json
import shlex
import time
from pathlib import Path


def write_grid(path: Path, optimizers, budget=400, extra="") -> Path:
    """A grid file on synthetic-cylinder at ci scale, no tuned values."""
    path.write_text(f'tasks = ["synthetic-cylinder"]\nscales = ["ci"]\n'
                    f'optimizers = {json.dumps([str(o) for o in optimizers])}\n'
                    f'budget = {budget}\ntuned = ""\n{extra}')
    return path


def wait_for(predicate, seconds=120.0) -> bool:
    """Whether ``predicate()`` became true within ``seconds`` (polled every 0.1 s)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def with_own_shm(command: list, shm: Path) -> list:
    """``command`` run with ``shm`` (a folder) as its /dev/shm, bound over it in a user and mount
    namespace, and the marker ``shm/.bound`` made there: what it leaves in shared memory is then
    told apart from what other processes on the machine open there meanwhile (their
    semaphores, sem.mp-*)."""
    inside = f"mount --bind {shlex.quote(str(shm))} /dev/shm && touch /dev/shm/.bound && " \
             f"exec {shlex.join(map(str, command))}"
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inside]
