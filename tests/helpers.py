"""Helpers shared by the harness and integrity tests."""
import json
from pathlib import Path


def write_grid(path: Path, optimizers, budget=400, extra="") -> Path:
    """A grid file on synthetic-cylinder at ci scale, no tuned values."""
    path.write_text(f'tasks = ["synthetic-cylinder"]\nscales = ["ci"]\n'
                    f'optimizers = {json.dumps([str(o) for o in optimizers])}\n'
                    f'budget = {budget}\ntuned = ""\n{extra}')
    return path
