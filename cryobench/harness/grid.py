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
:func:`cryobench.harness.tuned.default_tuned_file` — unless the grid says ``tuned = "other.json"`` or
``tuned = ""``), else from the optimizer's defaults.

Each cell is cached under ``OUT/cells/<content hash>`` (task content, optimizer code, the
numerical modules' code, hyper-parameters, seed, budget); cells already there are not recomputed,
so an interrupted grid (even by ``kill -9``) resumes where it stopped. A cell another platform
computed with the same numerical code (:func:`cryobench.harness.identity.portable_id`) is kept
too: there it has another id, since its numerics fingerprint follows the CPU, but it is the same
run, a draw from the same distribution over seeds (docs/verification.md). Locally every cell runs
in its own process (``--workers`` at a time); with a scheduler address the cells go to a Dask
distributed cluster and their files come back to be written here.
"""
from __future__ import annotations

import itertools
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from cryobench.base.threads import machine
from cryobench.errors import InputError
from cryobench.harness.fingerprint import numerics_code_digest
from cryobench.harness.identity import optimizer_key, portable_id
from cryobench.model.importance import oracle_settings
from cryobench.harness.plan import EACH_TASKS_OWN, HyperParameterError, Planner, RunPlan
from cryobench.harness.processes import check_output_folder, run_dask, run_local
from cryobench.harness.record import CellRecord, cell_complete
from cryobench.harness.results import remove_stale_temporaries


class GridInterrupted(KeyboardInterrupt):
    """A grid stopped by Ctrl-C or SIGTERM; finished cells are kept and a rerun resumes."""


class Outcome(NamedTuple):
    """What became of one planned run."""

    cell: str       # the folder under cells/ holding its result: its own id, or the id another
                    # platform gave the same run (:func:`computed_elsewhere`)
    status: str     # the result's status, or "interrupted": no result (computed next time)


GRID_KEYS = {"tasks", "scales", "optimizers", "seeds", "budget", "budget_epochs", "params",
             "per_decade", "time_limit", "tuned", "description", "oracle"}


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
    tuned: Path | str | None = EACH_TASKS_OWN     # a file, each task's own, or None (defaults)
    oracle: str | None = None                     # None/"exact", or "importance[:k=v,…]"


def _fail(path, message):
    raise InputError(f"{path}: {message}")


def _check_types(path: Path, raw: dict) -> None:
    """One line naming the file and the key for every value of the wrong type or range."""
    def strings(key, required=False):
        v = raw.get(key)
        if v is None and not required:
            return
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            _fail(path, f"{key!r} must be a non-empty list of names, got {v!r}")
    strings("tasks", required=True)
    strings("optimizers", required=True)
    strings("scales")
    seeds = raw.get("seeds", 1)
    ok = (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1) or (
        isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool)
                                                  and x >= 0 for x in seeds))
    if not ok:
        _fail(path, f"'seeds' must be a positive count or a non-empty list of stream indices ≥ 0, "
                    f"got {seeds!r}")
    if "budget" in raw and "budget_epochs" in raw:
        _fail(path, "give 'budget' or 'budget_epochs', not both")
    checks = {"budget": (int, 1, "a positive integer of gradient evaluations"),
              "budget_epochs": ((int, float), 0, "a positive number of epochs"),
              "per_decade": (int, 1, "a positive integer (checkpoints per decade)"),
              "time_limit": ((int, float), 0, "a positive number of seconds")}
    for key, (kind, low, what) in checks.items():
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or not v >= low
                              or (low == 0 and v <= 0) or v != v):
            _fail(path, f"{key!r} must be {what}, got {v!r}")
    for key in ("tuned", "description", "oracle"):
        if key in raw and not isinstance(raw[key], str):
            _fail(path, f"{key!r} must be a string, got {raw[key]!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        _fail(path, f"'params' must be a table of [params.OPTIMIZER] tables, got {params!r}")
    for opt, values in params.items():
        if opt not in raw["optimizers"]:
            _fail(path, f"[params.{opt}] names an optimizer not in 'optimizers'")
        if not isinstance(values, dict):
            _fail(path, f"[params.{opt}] must be a table of hyper-parameter values, got {values!r}")
        for name, v in values.items():
            items = v if isinstance(v, list) else [v]
            if not items or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                    for x in items):
                _fail(path, f"[params.{opt}] {name} must be a number or a non-empty list of "
                            f"numbers, got {v!r}")


def load_grid(path) -> Grid:
    """Read and check a grid TOML file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f"{path}: no such grid file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    _check_types(path, raw)
    seeds = raw.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    tuned = raw.get("tuned")
    if tuned:
        tuned = path.parent / tuned
        if not tuned.is_file():
            raise InputError(f"{path}: 'tuned' names {tuned}, which does not exist")
    tuned = EACH_TASKS_OWN if tuned is None else (tuned or None)
    oracle_settings(raw.get("oracle"), f"{path}: oracle")
    return Grid(path, raw["tasks"], raw.get("scales", ["ci"]), raw["optimizers"], seeds,
                raw.get("budget"), raw.get("budget_epochs"), raw.get("params", {}),
                raw.get("per_decade", 5), raw.get("time_limit"), tuned,
                raw.get("oracle"))


def expand(grid: Grid, data_dir=None, threads: int = 1) -> list[RunPlan]:
    """The grid's runs, planned (:class:`~cryobench.harness.plan.Planner`) in a fixed order
    (tasks are simulated first if needed, to hash them); each runs with ``threads`` BLAS
    threads, which are part of its identity. A run that the grid names twice (a repeated value,
    one optimizer or task under two names) is planned once: the same cell id is the same run."""
    planner = Planner(data_dir, threads, grid.tuned)
    plans: dict[str, RunPlan] = {}
    for task, scale in itertools.product(grid.tasks, grid.scales):
        ref = planner.task(task, scale)
        budget = grid.budget if grid.budget_epochs is None else int(grid.budget_epochs * ref.sizes["train"])
        for optimizer in grid.optimizers:
            try:
                method = planner.optimizer(optimizer)
            except ValueError as exc:
                raise InputError(f"{grid.path}: optimizers: {exc}") from None
            axes = {k: (v if isinstance(v, list) else [v])
                    for k, v in grid.params.get(optimizer, {}).items()}
            for values in itertools.product(*axes.values()):
                for seed in grid.seeds:
                    try:
                        plan = planner.plan(ref, optimizer, dict(zip(axes, values)), seed,
                                            budget, per_decade=grid.per_decade,
                                            time_limit=grid.time_limit, method=method,
                                            oracle=grid.oracle)
                    except HyperParameterError as exc:
                        raise InputError(f"{grid.path}: [params.{optimizer}] {exc}") from None
                    except ValueError as exc:
                        raise InputError(f"{grid.path}: {exc}") from None
                    plans.setdefault(plan.cell, plan)   # a value repeated, a task named twice
    return list(plans.values())


def finished_records(cells_dir: Path, skip=frozenset()):
    """(cell id, :class:`CellRecord`) of each finished cell directly in ``cells_dir`` whose id
    is not in ``skip``, sorted by id; nothing if the folder does not exist."""
    for folder in sorted(cells_dir.iterdir()) if cells_dir.is_dir() else []:
        if folder.name not in skip and cell_complete(folder):
            yield folder.name, CellRecord.read(folder)


def computed_elsewhere(cells: list[RunPlan], cells_dir: Path) -> dict[str, str]:
    """{planned cell id: stored cell id} for the runs of ``cells`` not stored under their own id
    but computed on another platform by the same numerical code: a finished cell whose identity
    names another platform and whose portable id (:func:`portable_id`, from its record) is the
    plan's. On this platform a cell must have the plan's own id."""
    here, stored = machine(), {}
    for name, record in finished_records(cells_dir) if cells else ():
        parts = record.identity or {}
        if parts.get("platform") not in (None, here) and parts.get("numerics_code"):
            key = portable_id(record.run, record.task_hash, parts["optimizer"], parts["numerics_code"])
            stored.setdefault(key, name)
    if not stored:
        return {}
    code = numerics_code_digest()
    found = {c.cell: stored.get(portable_id(c.spec, c.task_hash, optimizer_key(c.method), code))
             for c in cells}
    return {planned: kept for planned, kept in found.items() if kept}


def unplanned(cells: list[RunPlan], cells_dir: Path, stored: set[str]) -> tuple[list[str], int]:
    """(ids of the finished cells in ``cells_dir`` that are no run of ``cells``, given the
    folders ``stored`` that hold their results; how many of them were computed on another
    definition of a task the grid runs — another content hash — which a report refuses to
    read beside the grid's own)."""
    hashes = {(c.spec.task, c.spec.scale): c.task_hash for c in cells}
    extra, other_data = [], 0
    for name, record in finished_records(cells_dir, skip=stored):
        extra.append(name)
        other_data += hashes.get((record.run.task, record.run.scale), record.task_hash) != record.task_hash
    return extra, other_data


def run_grid(cells: list[RunPlan], out: Path, workers: int | None = None,
             scheduler: str | None = None, data_dir=None, progress: bool = True) -> dict[str, Outcome]:
    """Run the cells not yet in ``out/cells`` (by their id, or computed by the same code on
    another platform: :func:`computed_elsewhere`); returns {planned cell id: :class:`Outcome`}
    for every cell.

    Ctrl-C or SIGTERM stops the grid at once: running cells are killed, nothing queued starts,
    finished cells stay, and :class:`GridInterrupted` says how many remain.
    """
    cells_dir = Path(out) / "cells"
    check_output_folder(cells_dir)
    remove_stale_temporaries(cells_dir)
    todo = [c for c in cells if not cell_complete(cells_dir / c.cell)]
    elsewhere = computed_elsewhere(todo, cells_dir)
    if elsewhere:
        print(f"cryobench: {len(elsewhere)} of the {len(todo)} cells to run were computed on another "
              f"platform by the same numerical code; their results are kept", file=sys.stderr)
        todo = [c for c in todo if c.cell not in elsewhere]
    stored = {c.cell: elsewhere.get(c.cell, c.cell) for c in cells}      # where each result is
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not progress,
               desc=f"grid {Path(out).name}")
    failures: dict[str, str] = {}

    def done(cell: RunPlan, message: str | None) -> None:
        if message is not None:
            failures[cell.cell] = message
            tqdm.write(f"cryobench: {cell.describe()} (cell {cell.cell}) was interrupted: {message}; "
                       "it has no result and will be computed again", file=sys.stderr)
        bar.update()

    try:
        if scheduler:
            run_dask(todo, cells_dir, scheduler, data_dir, done)
        else:
            run_local(todo, cells_dir, data_dir, max(1, workers or os.cpu_count() or 1), done)
    except KeyboardInterrupt:
        finished = sum(cell_complete(cells_dir / s) for s in stored.values())
        raise GridInterrupted(f"interrupted: {finished} of {len(cells)} cells have results in "
                              f"{cells_dir}; run the same command again to compute the rest") from None
    finally:
        bar.close()
    return {c: Outcome(s, CellRecord.read(cells_dir / s).status if cell_complete(cells_dir / s)
                       else "interrupted") for c, s in stored.items()}
