"""Helpers shared by the harness and integrity tests."""
import json
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
