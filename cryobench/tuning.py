"""Tuning: the paper chose η₀ by hand per method; here the choice is a reproducible search.

For each (task, scale, optimizer) the hyper-parameters named (``lr`` by default) take
``points`` values spread over their declared search range (log-spaced when declared ``log``;
several names give the product), every other hyper-parameter keeps its default. Each candidate
runs for a short budget on training stream 0 and is scored by the validation NLL of its final
iterate — never the test set. The best candidate that neither diverged nor failed is recorded
in ``results/tuned.json``::

    {"thermus-style": {"small": {"sgd": {"params": {"lr": 0.32}, "validation_nll": …,
                                         "budget": 4600, "candidates": [...]}}}}

``run`` and ``grid`` take hyper-parameters from there unless given explicitly.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .run import REPO_DIR

DEFAULT_TUNED = REPO_DIR / "results" / "tuned.json"


def load_tuned(path) -> dict:
    """The tuned values recorded in ``path`` ({} if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None


def resolve_params(method, explicit: dict, tuned: dict, task: str, scale: str) -> tuple[dict, dict]:
    """Full hyper-parameters: explicit values, else tuned ones, else defaults; and each's source."""
    chosen = tuned.get(task, {}).get(scale, {}).get(method.name, {}).get("params", {})
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


def record(path, task: str, scale: str, optimizer: str, table: pd.DataFrame, budget: int) -> dict:
    """Add the best candidate of ``table`` (from :func:`select`) to the tuned-values file."""
    from .results import atomic_write, to_json
    if not np.isfinite(table["validation_nll"].iloc[0]):
        raise ValueError(f"tuning {optimizer} on {task} ({scale}): every candidate diverged or failed")
    rows = [{"params": json.loads(r.params), "validation_nll": r.validation_nll, "status": r.status}
            for r in table.sort_values("params").itertuples()]
    best = {"params": json.loads(table["params"].iloc[0]),
            "validation_nll": float(table["validation_nll"].iloc[0]), "budget": int(budget),
            "candidates": rows}
    tuned = load_tuned(path)
    tuned.setdefault(task, {}).setdefault(scale, {})[optimizer] = best
    atomic_write(path, to_json(tuned))
    return best


def tune(tasks, scale: str, optimizers, names=("lr",), points: int = 9, budget: int | None = None,
         out=None, record_to=DEFAULT_TUNED, workers=None, data_dir=None, progress=True) -> dict:
    """Search, select on validation, and record; returns {(task, optimizer): chosen entry}."""
    from .cell import make_cell
    from .grid import run_grid
    from .registry import resolve
    from .results import load_results
    from .run import RunSpec, check_run
    from .spec import load_spec
    from .task import split_sizes, task_hash
    out = Path(out) if out else REPO_DIR / "results" / "tune" / scale
    plan = []
    for task in tasks:
        thash = task_hash(task, scale, data_dir)
        n_train = split_sizes(task, scale, data_dir)["train"]
        task_budget = budget or n_train                                       # one epoch
        task_batch = int(load_spec(task).section("protocol").get("batch_size", 100))
        for ref in optimizers:
            method = resolve(ref)
            tunable = [n for n in names if n in method.hypers]
            if not tunable:
                continue
            cells = []
            for values in candidates(method, tunable, points):
                params, _ = resolve_params(method, values, {}, task, scale)
                label = " ".join([method.name] + [f"{k}={v:g}" for k, v in values.items()])
                spec = RunSpec(task, scale, ref, params, 0, task_budget, label=label, score="validation")
                check_run(spec, method, n_train, task_batch, task_budget)
                cells.append(make_cell(spec, thash, method))
            plan.append((task, method.name, task_budget, cells))
    run_grid([c for *_, cells in plan for c in cells], out, workers=workers, data_dir=data_dir,
             progress=progress)
    results = load_results(out)
    chosen = {}
    for task, name, task_budget, cells in plan:
        ids = {c.cell for c in cells}
        table = select(results.cells[results.cells["cell"].isin(ids)], results.trace)
        chosen[task, name] = record(record_to, task, scale, name, table, task_budget)
    return chosen

