"""Tuning: the paper chose η₀ by hand per method; here the choice is a reproducible search.

For each (task, scale, optimizer) the hyper-parameters named (``lr`` by default) take
``points`` values spread over their declared search range (log-spaced when declared ``log``;
several names give the product), every other hyper-parameter keeps its default. Each candidate
runs for a short budget on training streams 0 … seeds−1 (at least 2) and is scored by the
median over its seeds of the validation NLL of its final iterate — never the test set. A
candidate is rejected if any seed diverged, failed, ended worse than it started (a slow
blow-up the 10× divergence rule misses) or never moved (its first step needs more than the
budget, or every step was skipped); a method whose every candidate is rejected gets nothing
recorded, and ``tune`` says so after recording the others. The best accepted candidate is
recorded, with the nearest value that blew up (how far the choice is from the edge), in a
tuned-values file, keyed by the task's identity — its ``name`` and, in the entry, its content
hash and recipe hash at that scale (never the path as typed)::

    {"thermus-style": {"small": {"sgd": {"params": {"lr": 0.32}, "validation_nll": …,
                                         "budget": 4600, "task_hash": "…", "task_recipe": "…",
                                         "candidates": [...]}}}}

``around`` (``cryobench tune --around SCALE``) searches each method a decade either side of its
value tuned at another scale of the same task (``points`` log-spaced values over [v/10, 10 v]);
a choice at an end of that range is searched once more over the next two decades past it, and
the choice is made among both rounds' candidates. That is how a paper-scale task whose
candidates cost minutes each is tuned from its small-scale choices.

The tuned-values file and how ``run`` and ``grid`` use it are in :mod:`cryobench.harness.tuned`.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryobench.base.files import atomic_write, locked, to_json
from cryobench.base.paths import RESULTS_DIR, installed
from cryobench.data.spec import load_spec
from cryobench.errors import InputError
from cryobench.harness.grid import run_grid
from cryobench.harness.plan import Planner
from cryobench.harness.results import load_results
from cryobench.harness.tuned import default_tuned_file, is_shipped, load_tuned, oracle_key
from cryobench.model.importance import oracle_settings


def candidates(method, names, points: int, ranges: dict | None = None) -> list[dict]:
    """Values of the hyper-parameters ``names`` over their declared ranges, or over
    ``ranges[name]`` = (low, high) where given (3 significant digits)."""
    axes = []
    for name in names:
        h = method.hypers[name]
        low, high = (ranges or {}).get(name, (h.low, h.high))
        grid = np.geomspace(low, high, points) if h.log else np.linspace(low, high, points)
        grid = np.unique(np.round(grid)) if h.integer else [_sig3(v) for v in grid]
        axes.append([h.check(name, v) for v in grid])
    return [dict(zip(names, values)) for values in itertools.product(*axes)]


def _sig3(value) -> float:
    """``value`` to 3 significant digits: how candidate values are written and recorded."""
    return float(f"{value:.3g}")


def select(cells: pd.DataFrame, trace: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate (its ``params``): the median final validation NLL over its seeds,
    each seed's final and status, and why it is rejected — any seed that did not end ``ok``
    (diverged, failed, time limit, or missing), that ended worse than it started, or that ended
    exactly where it started (a method whose first step needs more than the budget, or whose
    every step was skipped: choosing among such candidates would record an arbitrary value).
    Accepted candidates first, best first."""
    first = trace.groupby("cell").head(1).set_index("cell")["validation_nll"]
    final = trace.groupby("cell").tail(1).set_index("cell")["validation_nll"]
    table = cells.set_index("cell").join(final.rename("final")).join(first.rename("initial"))
    rows = []
    for params, runs in table.groupby("params", sort=True):
        runs = runs.sort_values("seed")
        why = ""
        for r in runs.itertuples():
            if r.status != "ok":
                why = why or f"seed {r.seed} {r.status}" + (f" ({r.message})" if r.message else "")
            elif not r.final <= r.initial:
                why = why or (f"seed {r.seed} ended worse than it started (validation NLL "
                              f"{r.final:.6g} > {r.initial:.6g}): a slow blow-up")
            elif r.final == r.initial:
                why = why or (f"seed {r.seed} never moved (validation NLL {r.final:.6g} at the "
                              "start and the end: no step changed the density within the budget)")
        finals = runs["final"].to_numpy(float)
        rows.append({"params": params, "validation_nll": float(np.median(finals)),
                     "seeds": runs["seed"].tolist(), "finals": finals.tolist(),
                     "status": runs["status"].tolist(), "rejected": why,
                     "blew_up": bool(why) and ("diverged" in why or "blow-up" in why)})
    out = pd.DataFrame(rows)
    out["key"] = np.where(out["rejected"] == "", out["validation_nll"], np.inf)
    return out.sort_values(["key", "params"]).drop(columns="key").reset_index(drop=True)


def nearest_blow_up(table: pd.DataFrame, chosen: dict, names) -> dict:
    """For each tuned name, the candidate value nearest (in log ratio) to the chosen one among
    those that diverged or blew up, and the ratio: how far the choice sits from the edge."""
    out = {}
    bad = [json.loads(p) for p in table.loc[table["blew_up"], "params"]]
    for name in names:
        values = [p[name] for p in bad if all(p[k] == chosen[k] for k in p if k != name)]
        if values:
            v = min(values, key=lambda x: abs(np.log(abs(x) / abs(chosen[name])))
                    if x and chosen[name] else np.inf)
            out[name] = {"value": v, "ratio": v / chosen[name] if chosen[name] else None}
        else:
            out[name] = {"value": None, "ratio": None, "note": "none diverged in the searched range"}
    return out


def record(path, task, scale: str, optimizer: str, table: pd.DataFrame, budget: int,
           task_hash: str | None = None, names=("lr",), ranges: dict | None = None,
           task_recipe: str | None = None, oracle=None) -> dict:
    """Add the best accepted candidate of ``table`` (from :func:`select`) to the tuned-values
    file, under the task's name (``task``: a name, path or parsed specification), with its
    content hash, every candidate, the distance of the choice to the nearest diverging value,
    and the ranges given in place of the declared ones. ``oracle`` (None: exact, else the
    importance oracle's settings): the entry is recorded under
    :func:`~cryobench.harness.tuned.oracle_key` with the oracle's settings."""
    name = load_spec(task).name
    if table.empty or table["rejected"].iloc[0]:
        raise ValueError(f"{optimizer} on {name} ({scale}): every candidate was rejected "
                         f"({table['rejected'].iloc[0] if len(table) else 'no candidates'}, …)")
    rows = [{"params": json.loads(r.params), "validation_nll": r.validation_nll, "seeds": r.seeds,
             "finals": r.finals, "status": r.status, "rejected": r.rejected}
            for r in table.sort_values("params").itertuples()]
    params = json.loads(table["params"].iloc[0])
    best = {"params": params, "validation_nll": float(table["validation_nll"].iloc[0]),
            "selection": "median final validation NLL over seeds; candidates with a seed that did "
                         "not end ok or ended worse than it started are rejected",
            "seeds": table["seeds"].iloc[0], "budget": int(budget),
            "nearest_blow_up": nearest_blow_up(table, params, [n for n in names if n in params]),
            "candidates": rows}
    if task_hash is not None:
        best["task_hash"] = task_hash
    if task_recipe is not None:
        best["task_recipe"] = task_recipe
    if oracle is not None:
        best["oracle"] = oracle.to_dict()
    if ranges:
        best["searched_ranges"] = {k: list(v) for k, v in sorted(ranges.items()) if k in params}
    with locked(path):                  # another tune may be recording into the same file
        tuned = load_tuned(path)
        tuned.setdefault(name, {}).setdefault(scale, {})[oracle_key(optimizer, oracle)] = best
        atomic_write(path, to_json(tuned))
    return best


def default_tune_dir(task, scale: str) -> Path:
    """Where ``tune`` keeps a task's candidate runs: ``results/tune/SCALE`` for a shipped task,
    ``<task>.tune/SCALE`` beside any other task file."""
    spec = load_spec(task)
    if is_shipped(spec):
        return RESULTS_DIR / "tune" / scale
    return spec.path.with_suffix(".tune") / scale


def check_ranges(ranges: dict, names) -> None:
    """Refuse a search range for a hyper-parameter not searched, or one that is not low < high
    with finite ends (positive for a log range is checked against each method's declaration)."""
    for name, (low, high) in ranges.items():
        if name not in names:
            raise InputError(f"--range {name}: not a searched hyper-parameter (--params "
                             f"{','.join(names)})")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise InputError(f"--range {name}={low:g},{high:g}: a range is LOW,HIGH with finite "
                             "LOW < HIGH")


def around_ranges(tuned: dict, task: str, scale: str, optimizer: str, oracle, names,
                  method) -> dict:
    """{name: (v/10, 10 v)} for each of ``names``, v being ``optimizer``'s value tuned on
    ``task`` at ``scale`` under ``oracle`` (settings, None: exact) in ``tuned``: a decade either
    side of its choice at another scale. One error line when there is no such value."""
    entry = tuned.get(task, {}).get(scale, {}).get(oracle_key(optimizer, oracle))
    if entry is None:
        raise InputError(f"--around {scale}: no tuned values of {oracle_key(optimizer, oracle)} on "
                         f"{task} at scale {scale}; tune it there first, or search with --range")
    out = {}
    for name in names:
        value = entry["params"].get(name)
        if not method.hypers[name].log or not value or value < 0:
            raise InputError(f"--around {scale}: {optimizer}'s {name} "
                             + ("is not searched on a log scale" if not method.hypers[name].log
                                else f"has no positive tuned value at {scale} ({value!r})")
                             + "; search it with --range")
        out[name] = (_sig3(value / 10), _sig3(value * 10))
    return out


def past_edge(table: pd.DataFrame, ranges: dict) -> dict:
    """{name: the next two decades past the searched range} for each name of ``ranges`` whose
    chosen value (the best accepted candidate of ``table``) is at an end of its range; {} when
    every candidate was rejected or the choice is inside."""
    if table.empty or table["rejected"].iloc[0]:
        return {}
    chosen, out = json.loads(table["params"].iloc[0]), {}
    values = [json.loads(p) for p in table["params"]]
    for name in ranges:
        low, high = min(v[name] for v in values), max(v[name] for v in values)
        if chosen[name] == low:
            out[name] = (_sig3(low / 100), low)
        elif chosen[name] == high:
            out[name] = (high, _sig3(high * 100))
    return out


@dataclass
class Search:
    """One method's search on one task: the names searched (``tunable``), the budget of a
    candidate, where its runs go and its choice is recorded, and the ranges searched so far
    (``searched``: the declared ones where absent); :meth:`extend` widens them past an edge."""

    ref: object
    method: object
    tunable: list
    budget: int
    folder: Path
    target: Path
    searched: dict
    runs: list = field(default_factory=list)        # every round's candidate runs
    table: pd.DataFrame | None = None               # their :func:`select` table

    def plan_round(self, over: dict, planner, points: int, seeds: int, per_decade: int,
                   oracle) -> None:
        """Add the candidate runs of a round: ``points`` values per name over its range in
        ``over`` (the declared one where absent); a run planned before is not added again."""
        planned = {c.cell for c in self.runs}
        for values in candidates(self.method, self.tunable, points, over):
            for seed in range(seeds):
                run = planner.plan(self.ref, self.method.name, values, seed, self.budget,
                                   per_decade=per_decade, score="validation", tuned=False,
                                   method=self.method, oracle=oracle)
                if run.cell not in planned:
                    self.runs.append(run)

    def extend(self) -> dict:
        """The ranges of the next round — past the ends where the choice of :attr:`table` sits
        (:func:`past_edge`), the searched ones elsewhere — after widening :attr:`searched` by
        them; {} when the choice sits inside every range."""
        further = past_edge(self.table, self.searched)
        over = {**self.searched, **further}
        for name, (low, high) in further.items():
            self.searched[name] = (min(low, self.searched[name][0]),
                                   max(high, self.searched[name][1]))
        return over if further else {}


def tune(tasks, scale: str | None, optimizers, names=("lr",), points: int = 9,
         budget: int | None = None, out=None, record_to=None, workers=None, data_dir=None,
         progress=True, seeds: int = 2, per_decade: int = 5, ranges: dict | None = None,
         oracle=None, around: str | None = None) -> dict:
    """Search, select on validation, and record; returns {(task, optimizer): chosen entry}.

    ``scale`` None: each task's default scale. ``out`` None: :func:`default_tune_dir`.
    ``record_to`` None: each task's :func:`default_tuned_file` — a task outside the repository's
    ``tasks/`` records beside its own file, never into the repository. ``per_decade``: validation
    checkpoints per decade of evaluations (the selection reads only the first and the last;
    fewer checkpoints spare the scoring where a validation NLL costs as much as the run).
    ``ranges`` {name: (low, high)}: search there instead of the declared range (recorded with
    the choice), e.g. to look past a choice that sits at the declared range's edge. ``around``
    a scale: search each method a decade either side of its value tuned there, and once more
    past an end where the choice sits (:func:`around_ranges`, :func:`past_edge`); not with
    ``ranges``.
    """
    ranges = dict(ranges or {})
    check_ranges(ranges, list(names))
    if around and ranges:
        raise InputError("--around and --range: give one; --around sets each method's range")
    if seeds < 2:
        raise ValueError(f"tuning needs at least 2 seeds per candidate, got {seeds}")
    planner, settings = Planner(data_dir), oracle_settings(oracle)
    plan = []
    for task in tasks:
        ref = planner.task(task, scale)
        folder = Path(out) if out else default_tune_dir(ref.spec, ref.scale.name)
        target = Path(record_to) if record_to else default_tuned_file(ref.spec)
        if record_to is None and installed() and is_shipped(ref.spec):
            raise InputError(f"{target}: the shipped tuned values are read-only in an installed "
                             "cryobench; name the file to record into with --record FILE (and "
                             "use it with run or grid --tuned FILE)")
        task_budget = budget or ref.sizes["train"]                               # one epoch
        for optimizer in optimizers:
            method = planner.optimizer(optimizer)
            tunable = [n for n in names if n in method.hypers]
            if not tunable:
                continue
            for n in tunable:
                if n in ranges and method.hypers[n].log and ranges[n][0] <= 0:
                    raise InputError(f"--range {n}={ranges[n][0]:g},{ranges[n][1]:g}: {method.name}'s "
                                     f"{n} is searched on a log scale, so LOW must be positive")
            searched = (around_ranges(load_tuned(target), ref.spec.name, around, method.name,
                                      settings, tunable, method)
                        if around else ranges)
            plan.append(Search(ref, method, tunable, task_budget, folder, target, dict(searched)))
    if not plan:
        raise InputError(f"--params {','.join(names)}: none of {', '.join(optimizers)} has such a "
                         "hyper-parameter; nothing to tune")
    for s in plan:
        s.plan_round(s.searched, planner, points, seeds, per_decade, oracle)
    _search(plan, workers, data_dir, progress)
    if around:                                  # once more past an end where the choice sits
        again = [(s, over) for s in plan if (over := s.extend())]
        for s, over in again:
            s.plan_round(over, planner, points, seeds, per_decade, oracle)
        _search([s for s, _ in again], workers, data_dir, progress)
    chosen, unchosen = {}, []
    for s in plan:
        ref, name = s.ref, s.method.name
        try:
            entry = record(s.target, ref.spec, ref.scale.name, name, s.table, s.budget,
                           ref.content_hash, names, s.searched, ref.recipe, settings)
        except ValueError as exc:          # the others are still recorded
            unchosen.append(str(exc))
            continue
        chosen[ref.given, name] = {**entry, "recorded_in": str(s.target)}
    if unchosen:
        recorded = f" (recorded: {', '.join(n for _, n in sorted(chosen))})" if chosen else ""
        raise InputError("nothing recorded for " + "; ".join(unchosen) + recorded)
    return chosen


def _search(plan: list[Search], workers, data_dir, progress) -> None:
    """Run the candidate runs of each :class:`Search` of ``plan``, grouped by folder (finished
    ones are kept), and set each one's :func:`select` table."""
    for folder in sorted({s.folder for s in plan}):
        searches = [s for s in plan if s.folder == folder]
        outcomes = run_grid([c for s in searches for c in s.runs], folder, workers=workers,
                            data_dir=data_dir, progress=progress)
        lost = sum(o.status == "interrupted" for o in outcomes.values())
        if lost:
            raise InputError(f"{folder}: {lost} candidate runs were interrupted (see above); run "
                             "the same tune command again to compute them before choosing")
        res = load_results(folder)
        for s in searches:
            ids = {outcomes[c.cell].cell for c in s.runs}
            s.table = select(res.cells[res.cells["cell"].isin(ids)], res.trace)
