"""Tuning: the paper chose η₀ by hand per method; here the choice is a reproducible search.

For each (task, scale, optimizer) the hyper-parameters named (``lr`` by default) take
``points`` values spread over their declared search range (log-spaced when declared ``log``;
several names give the product), every other hyper-parameter keeps its default. Each candidate
runs for a short budget on training stream 0 and is scored by the validation NLL of its final
iterate — never the test set. The best candidate that neither diverged nor failed is recorded
in a tuned-values file, keyed by the task's identity — its ``name`` and, in the entry, its
content hash at that scale (never the path as typed)::

    {"thermus-style": {"small": {"sgd": {"params": {"lr": 0.32}, "validation_nll": …,
                                         "budget": 4600, "task_hash": "…", "candidates": [...]}}}}

The file is ``results/tuned.json`` for the tasks shipped in the repository's ``tasks/`` and
``<task>.tuned.json`` beside any other task file (:func:`default_tuned_file`), unless the user
names another. ``run`` and ``grid`` take hyper-parameters from there unless given explicitly;
an entry whose ``task_hash`` is not the task's (the task file or its data changed since) is not
used: the defaults are, with a one-line note saying so. Entries without a ``task_hash`` (those
committed before hashes were recorded) are used for the shipped tasks only.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .run import REPO_DIR
from .spec import TASKS_DIR, load_spec

DEFAULT_TUNED = REPO_DIR / "results" / "tuned.json"


def is_shipped(spec) -> bool:
    """Whether a task specification is one of the repository's ``tasks/`` files."""
    return spec.path.parent == Path(TASKS_DIR).resolve()


def default_tuned_file(task) -> Path:
    """Where a task's tuned values live: ``results/tuned.json`` for a shipped task, else
    ``<task>.tuned.json`` beside its TOML file."""
    spec = load_spec(task)
    return DEFAULT_TUNED if is_shipped(spec) else spec.path.with_suffix(".tuned.json")


def tuned_entry(tuned: dict, task, scale: str, optimizer: str, task_hash=None,
                data_dir=None) -> tuple[dict, str]:
    """(tuned hyper-parameters, note) of ``optimizer`` on ``task`` (a name or any spelling of its
    path) at ``scale``: ({}, "") when none are recorded; ({}, a one-line note) when they were
    recorded for another content hash. ``task_hash`` is computed when needed and not given."""
    spec = load_spec(task)
    entry = tuned.get(spec.name, {}).get(scale, {}).get(optimizer)
    if not entry:
        return {}, ""
    recorded = entry.get("task_hash")
    if recorded is None:
        if is_shipped(spec):
            return entry.get("params", {}), ""
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"record no task content hash; using the defaults (run cryobench tune again)")
    if task_hash is None:
        from .task import task_hash as compute
        task_hash = compute(spec.path, scale, data_dir)
    if recorded != task_hash:
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"were for task content {recorded[:12]}, this task is {task_hash[:12]} (its "
                    f"file or data changed); using the defaults (run cryobench tune again)")
    return entry.get("params", {}), ""


def load_tuned(path) -> dict:
    """The tuned values recorded in ``path`` ({} if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None


def resolve_params(method, explicit: dict, tuned: dict, task: str, scale: str,
                   task_hash: str | None = None, data_dir=None) -> tuple[dict, dict]:
    """Full hyper-parameters: explicit values, else tuned ones (see :func:`tuned_entry`; pass
    the task's content hash if known), else defaults; and each's source."""
    from .realdata import warn_once
    chosen, note = tuned_entry(tuned, task, scale, method.name, task_hash, data_dir) \
        if tuned else ({}, "")
    if note and set(method.hypers) - set(explicit):
        warn_once(note)
    params, source = {}, {}
    for name, hyper in method.hypers.items():
        for origin, values in (("explicit", explicit), ("tuned", chosen), ("default", None)):
            if values is None or name in values:
                params[name] = hyper.check(name, hyper.default if values is None else values[name])
                source[name] = origin
                break
    unknown = sorted(set(explicit) - set(method.hypers))
    if unknown:
        raise ValueError(f"optimizer {method.name!r} has no hyper-parameter {unknown[0]!r}; "
                         f"known: {', '.join(method.hypers) or 'none'}")
    return params, source


def candidates(method, names, points: int) -> list[dict]:
    """Values of the hyper-parameters ``names`` over their declared ranges (3 significant digits)."""
    axes = []
    for name in names:
        h = method.hypers[name]
        grid = np.geomspace(h.low, h.high, points) if h.log else np.linspace(h.low, h.high, points)
        grid = np.unique(np.round(grid)) if h.integer else [float(f"{v:.3g}") for v in grid]
        axes.append([h.check(name, v) for v in grid])
    return [dict(zip(names, values)) for values in itertools.product(*axes)]


def select(cells: pd.DataFrame, trace: pd.DataFrame) -> pd.DataFrame:
    """Final validation NLL per candidate cell (NaN unless the run ended ``ok``), best first."""
    final = trace.groupby("cell").tail(1).set_index("cell")["validation_nll"]
    table = cells.set_index("cell").join(final)
    table.loc[table["status"] != "ok", "validation_nll"] = np.nan
    return table.sort_values("validation_nll", na_position="last")


def record(path, task: str, scale: str, optimizer: str, table: pd.DataFrame, budget: int,
           task_hash: str | None = None) -> dict:
    """Add the best candidate of ``table`` (from :func:`select`) to the tuned-values file, under
    the task's name, with its content hash."""
    from .results import atomic_write, to_json
    if not np.isfinite(table["validation_nll"].iloc[0]):
        raise ValueError(f"tuning {optimizer} on {task} ({scale}): every candidate diverged or failed")
    rows = [{"params": json.loads(r.params), "validation_nll": r.validation_nll, "status": r.status}
            for r in table.sort_values("params").itertuples()]
    best = {"params": json.loads(table["params"].iloc[0]),
            "validation_nll": float(table["validation_nll"].iloc[0]), "budget": int(budget),
            "candidates": rows}
    if task_hash is not None:
        best["task_hash"] = task_hash
    tuned = load_tuned(path)
    tuned.setdefault(load_spec(task).name, {}).setdefault(scale, {})[optimizer] = best
    atomic_write(path, to_json(tuned))
    return best


def default_tune_dir(task, scale: str) -> Path:
    """Where ``tune`` keeps a task's candidate runs: ``results/tune/SCALE`` for a shipped task,
    ``<task>.tune/SCALE`` beside any other task file."""
    spec = load_spec(task)
    if is_shipped(spec):
        return REPO_DIR / "results" / "tune" / scale
    return spec.path.with_suffix(".tune") / scale


def tune(tasks, scale: str | None, optimizers, names=("lr",), points: int = 9,
         budget: int | None = None, out=None, record_to=None, workers=None, data_dir=None,
         progress=True) -> dict:
    """Search, select on validation, and record; returns {(task, optimizer): chosen entry}.

    ``scale`` None: each task's default scale. ``out`` None: :func:`default_tune_dir`.
    ``record_to`` None: each task's :func:`default_tuned_file` — a task outside the repository's
    ``tasks/`` records beside its own file, never into the repository.
    """
    from .cell import make_cell
    from .grid import run_grid
    from .registry import resolve
    from .results import load_results
    from .run import RunSpec, check_run
    from .task import split_sizes, task_hash
    plan = []
    for task in tasks:
        sc = scale or load_spec(task).default_scale
        folder = Path(out) if out else default_tune_dir(task, sc)
        target = Path(record_to) if record_to else default_tuned_file(task)
        thash = task_hash(task, sc, data_dir)
        n_train = split_sizes(task, sc, data_dir)["train"]
        task_budget = budget or n_train                                       # one epoch
        task_batch = int(load_spec(task).section("protocol").get("batch_size", 100))
        for ref in optimizers:
            method = resolve(ref)
            tunable = [n for n in names if n in method.hypers]
            if not tunable:
                continue
            cells = []
            for values in candidates(method, tunable, points):
                params, _ = resolve_params(method, values, {}, task, sc)
                label = " ".join([method.name] + [f"{k}={v:g}" for k, v in values.items()])
                spec = RunSpec(task, sc, ref, params, 0, task_budget, label=label, score="validation")
                check_run(spec, method, n_train, task_batch, task_budget)
                cells.append(make_cell(spec, thash, method))
            plan.append((task, sc, method.name, task_budget, cells, folder, target, thash))
    folders = sorted({p[5] for p in plan})
    for folder in folders:
        run_grid([c for p in plan if p[5] == folder for c in p[4]], folder, workers=workers,
                 data_dir=data_dir, progress=progress)
    results = {folder: load_results(folder) for folder in folders}
    chosen = {}
    for task, sc, name, task_budget, cells, folder, target, thash in plan:
        ids = {c.cell for c in cells}
        res = results[folder]
        table = select(res.cells[res.cells["cell"].isin(ids)], res.trace)
        entry = record(target, task, sc, name, table, task_budget, thash)
        chosen[task, name] = {**entry, "recorded_in": str(target)}
    return chosen
