"""Grids: tasks × scales × optimizers × hyper-parameter values × seeds, run in parallel.

A grid is a TOML file (see ``results/paper-small/grid.toml``)::

    tasks = ["synthetic-cylinder", "thermus-style"]
    scales = ["small"]
    optimizers = ["sgd", "nesterov"]      # names, module:attr or path/file.py:attr
    seeds = 1                             # streams 0..n−1, or a list of stream indices
    budget = 50000                        # gradient evaluations (or budget_epochs = 10)
    [params.sgd]
    lr = [0.3, 1.0]                       # a list is a grid axis; a number fixes the value

Hyper-parameters not given come from the tuned values (each task's own file — see
:func:`cryobench.tuning.default_tuned_file` — unless the grid says ``tuned = "other.json"`` or
``tuned = ""``), else from the optimizer's defaults.

Each cell is cached under ``OUT/cells/<content hash>`` (task content, optimizer code, the
numerical modules' code, hyper-parameters, seed, budget); cells already there are not recomputed,
so an interrupted grid (even by ``kill -9``) resumes where it stopped. Locally every cell runs
in its own process (``--workers`` at a time); with a scheduler address the cells go to a Dask
distributed cluster and their files come back to be written here.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .cell import Cell, compute_cell, make_cell
from .io import InputError
from .results import remove_stale_temporaries, to_json, write_cell_folder
from .run import SCHEMA_VERSION, RunSpec
from .tuning import DEFAULT_TUNED, default_tuned_file, load_tuned, resolve_params

GRID_KEYS = {"tasks", "scales", "optimizers", "seeds", "budget", "budget_epochs", "params",
             "per_decade", "time_limit", "tuned", "description"}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    path: Path
    tasks: list
    scales: list
    optimizers: list
    seeds: list
    budget: int | None = None
    budget_epochs: float | None = None
    params: dict = field(default_factory=dict)
    per_decade: int = 5
    time_limit: float | None = None
    tuned: Path | None = None


def load_grid(path) -> Grid:
    """Read and check a grid TOML file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such grid file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    for key in ("tasks", "optimizers"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise InputError(f"{path}: {key!r} must be a non-empty list")
    seeds = raw.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise InputError(f"{path}: 'seeds' must be a positive count or a list of stream indices ≥ 0")
    budget = raw.get("budget")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise InputError(f"{path}: 'budget' must be a positive integer of gradient evaluations, "
                         f"got {budget!r}")
    params = raw.get("params", {})
    for opt, values in params.items():
        if opt not in raw["optimizers"]:
            raise InputError(f"{path}: [params.{opt}] names an optimizer not in 'optimizers'")
        if not isinstance(values, dict):
            raise InputError(f"{path}: [params.{opt}] must be a table of hyper-parameter values")
    tuned = raw.get("tuned")
    tuned = DEFAULT_TUNED if tuned is None else (path.parent / tuned if tuned else None)
    return Grid(path, raw["tasks"], raw.get("scales", ["ci"]), raw["optimizers"], seeds, budget,
                raw.get("budget_epochs"), params, raw.get("per_decade", 5), raw.get("time_limit"),
                tuned)


def _budget(grid: Grid, task: str, scale: str, data_dir) -> int | None:
    if grid.budget_epochs is None:
        return grid.budget
    from .task import split_sizes
    return int(grid.budget_epochs * split_sizes(task, scale, data_dir)["train"])


def expand(grid: Grid, data_dir=None) -> list[Cell]:
    """The grid's cells, in a fixed order (tasks are simulated first if needed, to hash them)."""
    from .registry import resolve
    from .task import task_hash
    tuned = load_tuned(grid.tuned) if grid.tuned else {}
    cells = []
    for task, scale in itertools.product(grid.tasks, grid.scales):
        thash = task_hash(task, scale, data_dir)
        budget = _budget(grid, task, scale, data_dir)
        table = load_tuned(default_tuned_file(task)) if grid.tuned == DEFAULT_TUNED else tuned
        for ref in grid.optimizers:
            method = resolve(ref)
            axes = {k: (v if isinstance(v, list) else [v]) for k, v in grid.params.get(ref, {}).items()}
            varied = [k for k, v in axes.items() if len(v) > 1]
            for values in itertools.product(*axes.values()):
                explicit = dict(zip(axes, values))
                params, _ = resolve_params(method, explicit, table, task, scale, thash)
                label = " ".join([method.name] + [f"{k}={explicit[k]:g}" for k in varied])
                for seed in grid.seeds:
                    spec = RunSpec(task, scale, ref, params, seed, budget, grid.per_decade,
                                   time_limit=grid.time_limit, label=label)
                    cells.append(make_cell(spec, thash, method))
    return cells


def error_files(cell: Cell, message: str, detail: str = "") -> dict[str, bytes]:
    """The folder of a cell whose process died: status ``error`` and what is known."""
    meta = {"schema_version": SCHEMA_VERSION, "run": cell.spec.to_dict(), "cell": cell.cell,
            "optimizer_name": cell.spec.label.split(" ")[0] or cell.spec.optimizer,
            "budget": cell.spec.budget, "status": "error", "message": message, "traceback": detail,
            "evaluations": 0, "counts": {}, "wall_s": 0.0, "task_hash": cell.task_hash,
            "snapshots": []}
    header = "task,scale,optimizer,label,seed,cell,checkpoint,evals,wall_s,test_nll,train_obj\n"
    return {"trace.csv": header.encode(), "meta.json": to_json(meta).encode()}


def _run_local(cell: Cell, folder: Path, data_dir, threads: int) -> None:
    """Run a cell in its own Python process; record a crash as an error cell."""
    env = dict(os.environ, **{k: str(threads) for k in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"cell": cell.to_dict(), "data_dir": str(data_dir) if data_dir else None,
                   "threads": threads}, fh)
    try:
        proc = subprocess.run([sys.executable, "-m", "cryobench.cell", fh.name, str(folder)],
                              env=env, capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0 and not (folder / "meta.json").is_file():
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        write_cell_folder(folder, error_files(cell, f"process died: {lines[-1]}", proc.stderr[-4000:]))


def run_grid(cells: list[Cell], out: Path, workers: int | None = None, threads: int | None = None,
             scheduler: str | None = None, data_dir=None, progress: bool = True) -> dict:
    """Run the cells not yet in ``out/cells``; returns {cell id: status} for every cell."""
    cells_dir = Path(out) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cells_dir)
    todo = [c for c in cells if not (cells_dir / c.cell / "meta.json").is_file()]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not progress,
               desc=f"grid {Path(out).name}")
    if scheduler:
        _run_dask(todo, cells_dir, scheduler, threads or 1, data_dir, bar)
    else:
        workers = max(1, workers or os.cpu_count() or 1)
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_run_local, c, cells_dir / c.cell, data_dir, threads) for c in todo]
            for _ in as_completed(futures):
                bar.update()
    bar.close()
    return {c.cell: json.loads((cells_dir / c.cell / "meta.json").read_text())["status"]
            for c in cells}


def _run_dask(todo: list[Cell], cells_dir: Path, address: str, threads: int, data_dir, bar) -> None:
    from dask.distributed import Client, as_completed as dask_completed
    with Client(address) as client:
        futures = {client.submit(compute_cell, c.to_dict(), str(data_dir) if data_dir else None,
                                 threads, key=f"cryobench-cell-{c.cell}", pure=False): c
                   for c in todo}
        for future in dask_completed(futures):
            cell = futures[future]
            try:
                files = future.result()
            except Exception as exc:                   # a worker died or the cell could not start
                files = error_files(cell, f"{type(exc).__name__}: {exc}")
            write_cell_folder(cells_dir / cell.cell, files)
            bar.update()
