"""``cryobench verify``: recompute stored cells (or their trace prefixes) and compare.

For each chosen cell the run is rebuilt from its ``meta.json`` (task, optimizer, every
hyper-parameter, seed, checkpoints, thread count) and computed again in a fresh process of its
own (:func:`_recompute`: a cell's optimizer module never runs in verify's process), with the
run stopped after ``prefix`` evaluations if asked (after the step that reaches the longest stored
checkpoint within it: the run is given its whole budget and checkpoints on the stored run's
grid, so its rows are those the stored run had by then). The rows of both traces
at the evaluation counts they share are compared, with the status and the counts. The ground
truth's test NLL in each set's ``reference.json`` is computed again too.

* **Same platform** — the stored platform (CPU, BLAS, NumPy, numba, Python) and thread count
  equal this machine's: the numbers must be bit-identical, since the same code, data, seed and
  threads give the same bits, and the numerics fingerprint must be the stored one (else the
  code now computes other numbers somewhere, and the results are stale).
* **Another platform** (another CPU, BLAS or numba changes the last bits, and a chaotic float32
  trajectory amplifies them): each seed's run is then a new draw from the distribution over
  seeds, not a reproduction, so what must reproduce is that distribution. Every seed of a
  chosen cell's configuration (task, scale, label) is recomputed, and the configuration is
  judged (:func:`judge_configuration`): at every checkpoint both have, the median over seeds
  within :data:`SPREAD_FACTOR` × the seed spread of this machine's recomputation (+
  :data:`REL_FLOOR` relative; never a spread the folder reports about itself), and the
  failures over seeds (diverged, error, time limit) not different beyond chance (Fisher's
  exact test at :data:`FAILURE_ALPHA`), with the seeds that failed named. A seed that diverges
  here and not there is a draw; a weakened method moves the median.
* **The same task rendered with other bits** — the task's content hash differs from the stored
  one but its recipe (:func:`cryobench.task.task_recipe`, recorded as ``task_recipe``) is the
  stored one: data simulated with other last bits (simulators before format 2 followed the
  BLAS kernel; since format 2 a dataset is the same bytes everywhere), a perturbation of the
  same kind as another platform's, so compared as another platform. A stored cell without a
  recipe, or with another, is a mismatch.

One line per cell, a summary, exit status 1 on any mismatch.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from threadpoolctl import threadpool_limits

from cryobench.base.seeding import rng_for
from cryobench.base.threads import set_threads
from cryobench.errors import InputError
from cryobench.harness.identity import identity
from cryobench.harness.reference import truth_reference
from cryobench.harness.registry import resolve, scan
from cryobench.harness.results import load_results
from cryobench.harness.run import execute
from cryobench.task import load_task

# Off-platform floor, relative: a test NLL sums 100 images' log-sum-exps over ~10⁴ float32
# terms each; another BLAS or CPU rounds each differently, by about √10⁴ · 2⁻²⁴ ≈ 6·10⁻⁶
# relative (an estimate: only one platform was at hand to measure on).
REL_FLOOR = 1e-5
# Off-platform factor on the seed spread: a one-ulp change in the kernel (docs/verification.md)
# moved committed small-scale cells by up to 1.1 × their seed spread (thermus-style momentum at
# 100K evaluations; most by < 10⁻⁴ of it), so twice the spread.
SPREAD_FACTOR = 2.0
# Off-platform failure rates: a configuration fails when its failures over seeds now and stored
# differ beyond chance, two-sided Fisher exact test at this level (with 5 seeds: 0 of 5 against
# 4 or 5 of 5 is a mismatch, 0 against 3 is not).
FAILURE_ALPHA = 0.05
FAILED = ("diverged", "error", "budget")


@dataclass
class Verdict:
    """The outcome for one cell."""

    cell: str
    what: str               # task scale label seed
    ok: bool
    exact: bool             # compared bit for bit (same platform)
    rows: int
    worst: float            # largest |Δ test NLL| (or Δ / tolerance off-platform)
    note: str = ""
    # off-platform: judged with the other seeds of its configuration (judge_configuration)
    config: tuple | None = None                     # (task, scale, label)
    seed: int | None = None
    now: pd.Series | None = field(default=None, repr=False)     # test NLL by evals, recomputed
    now_failed: bool = False
    stored_failed: bool = False

    def line(self) -> str:
        mode = "bit-identical" if self.exact else "within tolerance"
        if self.config is not None and self.ok:
            return (f"recomputed {self.cell}  {self.what:44s} {self.rows} rows (judged with its "
                    f"configuration){'; ' + self.note if self.note else ''}")
        head = "ok      " if self.ok else "MISMATCH"
        detail = (f"{self.rows} rows {mode if self.ok else ''}".strip() if not self.note
                  else self.note)
        return f"{head} {self.cell}  {self.what:44s} {detail}"


def choose(cells: pd.DataFrame, sample: int | None) -> pd.DataFrame:
    """All cells, or ``sample`` of them: spread over (task, scale, label), deterministic."""
    ok = cells.sort_values(["task", "scale", "label", "seed", "cell"]).reset_index(drop=True)
    if sample is None or sample >= len(ok):
        return ok
    groups = [g for _, g in ok.groupby(["task", "scale", "label"], sort=True)]
    order = rng_for("verify", len(ok)).permutation(len(groups))
    picked, round_ = [], 0
    while len(picked) < sample:
        for i in order:
            g = groups[i]
            if round_ < len(g) and len(picked) < sample:
                picked.append(g.iloc[(round_ + i) % len(g)])
        round_ += 1
    return pd.DataFrame(picked).sort_values(["task", "scale", "label", "seed"]).reset_index(drop=True)


def tolerance(results, row, evals: np.ndarray) -> np.ndarray:
    """Off-platform tolerance at ``evals``: the committed seeds' spread of that configuration."""
    same = results.cells[(results.cells["task"] == row.task) & (results.cells["scale"] == row.scale)
                         & (results.cells["label"] == row.label)]["cell"]
    trace = results.trace[results.trace["cell"].isin(same) & results.trace["evals"].isin(evals)]
    spread = trace.groupby("evals")["test_nll"].agg(lambda v: v.max() - v.min())
    return spread.reindex(evals).fillna(0.0).to_numpy(float)


def _cached_task(task_cache: dict, task: str, scale: str):
    """The loaded task (task, scale), loaded once per verify run."""
    if (task, scale) not in task_cache:
        task_cache[task, scale] = load_task(task, scale, progress=False)
    return task_cache[task, scale]


def _recompute_here(spec, cell: str, task_hash: str, threads, stop_after: int | None):
    """In the recomputation's own process: the optimizer resolved (declared by a sandboxed
    process; a file shipped in a results folder is imported only there and in the run's
    optimizer process, never here nor in verify's process), its identity and the run."""
    set_threads(spec.threads)
    task = load_task(spec.task, spec.scale, progress=False)
    method = resolve(spec.optimizer)
    return (identity(cell, task_hash, threads, method, refinement=task.is_refinement),
            execute(spec, task, method, compare=False, stop_after=stop_after))


def _recompute(spec, cell: str, task_hash: str, threads, stop_after: int | None = None):
    """(identity, RunOutput) of ``spec`` (stopped after ``stop_after`` evaluations, if given)
    computed in a fresh interpreter of its own: whatever a
    cell's optimizer module patches at import or while it runs dies with that process, so it
    cannot change verify's accounting or another cell's recomputation."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_recompute_here, spec, cell, task_hash, threads, stop_after).result()


def verify_cell(results, row, prefix: int | None, task_cache: dict) -> Verdict:
    """Recompute one cell (see module doc) and compare it with what is stored."""
    stored_record = results.records[row.cell]
    what = f"{row.task} {row.scale} {row.label} seed {row.seed}"
    library = (stored_record.identity or {}).get("library")
    if library:                                # another library's method: say which version ran
        what += f" [{library.split(' | ')[0]}]"
    stored = results.trace[results.trace["cell"] == row.cell].sort_values("evals")
    spec, stop = stored_record.run, None
    if prefix:
        within = stored["evals"][stored["evals"] <= prefix]
        if len(within) and int(within.max()) < int(stored["evals"].max()):
            stop = int(within.max())
    set_threads(spec.threads)
    task = _cached_task(task_cache, spec.task, spec.scale)
    rendered = _same_recipe(task, stored_record.task_hash, stored_record.task_recipe)
    if rendered is None:
        return Verdict(row.cell, what, False, False, 0, np.inf,
                       f"task content hash {task.content_hash[:12]} here, "
                       f"{stored_record.task_hash[:12]} stored: the data or the task definition changed")
    try:
        mine, out = _recompute(spec, row.cell, stored_record.task_hash, stored_record.run.threads, stop)
    except BrokenProcessPool:
        return Verdict(row.cell, what, False, False, 0, np.inf, "the recomputation's process ended "
                       "before it returned (the optimizer's module or the run ended it)")
    theirs = stored_record.identity or {}
    exact = (mine["platform"] == theirs.get("platform") and mine["threads"] == theirs.get("threads")
             and not rendered)
    version = lambda parts: (parts.get("library") or "").split(" | ")[0]
    moved = (f" ({version(mine)} here, {version(theirs)} stored)"
             if version(mine) != version(theirs) else "")
    stale = exact and mine["numerics"] != theirs.get("numerics")
    now = out.trace.sort_values("evals")
    common = np.intersect1d(stored["evals"].to_numpy(), now["evals"].to_numpy())
    a = stored.set_index("evals").loc[common]
    b = now.set_index("evals").loc[common]
    now_record = out.record
    if exact and stop is None and now_record.status != stored_record.status:
        return Verdict(row.cell, what, False, exact, len(common), np.inf,
                       f"status {now_record.status} now, {stored_record.status} stored "
                       f"({now_record.message or stored_record.message})")
    timed_out = "budget" in (now_record.status, stored_record.status)
    # the stored rows within the recomputation's reach must all be produced on this platform; on
    # another, a trajectory whose checkpoints follow its own steps (HF's CG) lands elsewhere: there
    # every stored row is judged as of its evaluation count (judge_configuration)
    reach = stored["evals"] if stop is None else stored["evals"][stored["evals"] <= stop]
    unproduced = np.setdiff1d(reach.to_numpy(), now["evals"].to_numpy()) if exact else []
    if not len(common) or (len(unproduced) and not timed_out):
        where = (f"stored rows at {', '.join(f'{int(e):,}' for e in unproduced[:3])} evaluations "
                 "that the recomputation does not produce" if len(common) else "no stored row to compare")
        return Verdict(row.cell, what, False, exact, len(common), np.inf, where)
    if exact:
        cols = [c for c in ("test_nll", "train_obj", "grad_evals", "value_evals", "hvp_evals")
                if c in a.columns and c in b.columns]
        diff = np.abs(a[cols].to_numpy(float) - b[cols].to_numpy(float))
        same = np.array_equal(a[cols].to_numpy(float), b[cols].to_numpy(float), equal_nan=True)
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        if not same:
            at = common[np.nanargmax(np.nanmax(diff, axis=1))] if diff.size else "?"
            return Verdict(row.cell, what, False, True, len(common), worst,
                           f"not bit-identical: largest difference {worst:.3g} at {at} evaluations"
                           + (" (the numerics fingerprint changed on this platform)" if stale else "")
                           + moved)
        if stale:
            return Verdict(row.cell, what, False, True, len(common), 0.0,
                           f"{len(common)} rows bit-identical, but the numerics fingerprint changed "
                           "on this platform: the code computes other numbers; regenerate")
        note = "" if mine["cell"] == stored_record.cell else (
            f"{len(common)} rows bit-identical, but this code files the run under id "
            f"{mine['cell']}")
        return Verdict(row.cell, what, True, True, len(common), 0.0, note)
    # another platform: a chaotic trajectory is a new draw from the seeds' distribution, so the
    # cell is judged with the other seeds of its configuration (judge_configuration)
    return Verdict(row.cell, what, True, False, len(common), 0.0, rendered,
                   (row.task, row.scale, row.label), int(row.seed),
                   now.set_index("evals")["test_nll"], now_record.status in FAILED,
                   stored_record.status in FAILED and stop is None)   # a prefix ends before any failure


def as_of(trace: pd.Series, evals: np.ndarray, failed: bool) -> np.ndarray:
    """The test NLL of a run as of each of ``evals``: its last checkpoint at or before it; NaN
    before its first, and after its last when the run failed there (an ended run keeps its
    final value)."""
    trace = trace.sort_index()
    at = np.asarray(trace.index, float)
    i = np.searchsorted(at, evals, side="right") - 1
    values = np.where(i >= 0, trace.to_numpy(float)[np.maximum(i, 0)], np.nan)
    if failed and len(at):
        values = np.where(evals > at[-1], np.nan, values)
    return values


def _medians(table: np.ndarray) -> np.ndarray:
    """Median over seeds (rows) of the test NLL; a seed without a value (it failed before)
    counts as +inf, as in the reports' tables."""
    return np.median(np.where(np.isnan(table), np.inf, table), axis=0)


def judge_configuration(results, key: tuple, verdicts: list) -> Verdict:
    """Off-platform verdict on one configuration (task, scale, label) from the recomputed runs of
    all its seeds (``verdicts``): what another platform must reproduce is the distribution over
    seeds, not each chaotic curve. It fails when, at a stored row's evaluation count (each run
    taken :func:`as_of` it, as far as the recomputation went), the median over
    seeds now differs from the stored one by more than :data:`SPREAD_FACTOR` × the seed spread of
    the recomputation (+ :data:`REL_FLOOR` relative), or when the failures over seeds differ beyond chance
    (:data:`FAILURE_ALPHA`). The line gives the failures with the seeds that failed."""
    task, scale, label = key
    cells = {v.cell: v for v in sorted(verdicts, key=lambda v: v.cell)}
    stored = results.trace[results.trace["cell"].isin(cells)]
    then_by_cell = {c: g.set_index("evals")["test_nll"] for c, g in stored.groupby("cell")}
    # every stored row's evaluation count, each run taken as of it (checkpoints that follow a
    # chaotic run's own steps land elsewhere on another platform), up to where the recomputation
    # went (a prefix run stops early)
    reach = max((float(v.now.index.max()) for v in cells.values() if len(v.now)), default=0.0)
    evals = np.array(sorted(e for e in set(stored["evals"]) if e <= reach), dtype=float)
    table_then = np.array([as_of(then_by_cell[c], evals, v.stored_failed) if c in then_by_cell
                           else np.full(len(evals), np.nan) for c, v in cells.items()])
    table = np.array([as_of(v.now, evals, v.now_failed) for v in cells.values()])
    then, now = _medians(table_then), _medians(table)
    # the spread of this machine's own recomputation, never of what the folder says about itself
    finite = np.where(np.isfinite(table), table, np.nan)
    spread = np.nan_to_num(np.nanmax(finite, axis=0) - np.nanmin(finite, axis=0)) if len(evals) else evals
    tol = SPREAD_FACTOR * spread + REL_FLOOR * np.abs(np.where(np.isfinite(then), then, 0.0))
    both_inf = np.isinf(then) & np.isinf(now) & (np.sign(then) == np.sign(now))
    delta = np.where(both_inf, 0.0, np.abs(now - then))
    ratio = np.where(tol > 0, delta / np.where(tol > 0, tol, 1.0), np.where(delta > 0, np.inf, 0.0))
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    n = len(verdicts)
    fail_then = sorted(v.seed for v in verdicts if v.stored_failed)
    fail_now = sorted(v.seed for v in verdicts if v.now_failed)
    p = fisher_exact([[len(fail_then), n - len(fail_then)], [len(fail_now), n - len(fail_now)]])[1]
    seeds = lambda f: f"{len(f)}/{n}" + (f" (seed{'s' if len(f) > 1 else ''} {', '.join(map(str, f))})" if f else "")
    failures = f"failures {seeds(fail_then)} stored, {seeds(fail_now)} now"
    what = f"{task} {scale} {label} ({n} seeds)"
    if worst > 1:
        at = int(evals[int(np.nanargmax(ratio))])
        return Verdict("config", what, False, False, len(evals), worst,
                       f"median test NLL over seeds off by {delta[int(np.nanargmax(ratio))]:.4g} at "
                       f"{at:,} evaluations, {worst:.2g}× the tolerance; {failures}")
    if p < FAILURE_ALPHA:
        return Verdict("config", what, False, False, len(evals), worst,
                       f"{failures}: differ beyond chance (Fisher exact p = {p:.3g})")
    return Verdict("config", what, True, False, len(evals), worst,
                   f"medians within {worst:.2g}× the tolerance at {len(evals)} checkpoints; {failures}")


def _same_recipe(task, stored_hash: str, stored_recipe: str | None) -> str | None:
    """"" if the stored content hash is the task's; a note if it is not but the stored recipe
    is (the same task, its simulation rendered with other last bits on this platform: compared
    as another platform); None if the task is another."""
    if task.content_hash == stored_hash:
        return ""
    if stored_recipe == task.recipe_hash:
        return (f"same task, simulated with other last bits here (content "
                f"{task.content_hash[:12]} here, {stored_hash[:12]} stored)")
    return None


def verify_reference(key: tuple, entry: dict, task_cache: dict) -> Verdict:
    """Recompute a result set's ground-truth test NLL (``reference.json``) and compare: equal on
    the platform that wrote it, within :data:`REL_FLOOR` relative on another."""
    what = f"{key[0]} {key[1]} {entry['density']} (reference.json)"
    task = _cached_task(task_cache, *key)
    rendered = _same_recipe(task, entry["task_hash"], entry.get("task_recipe"))
    if rendered is None:
        return Verdict("reference", what, False, False, 0, np.inf,
                       f"task content hash {task.content_hash[:12]} here, "
                       f"{entry['task_hash'][:12]} stored")
    with threadpool_limits(limits=1):
        now = truth_reference(task, *key)
    if now is None:
        return Verdict("reference", what, False, False, 0, np.inf, "the task has no ground truth here")
    delta = abs(now["truth_test_nll"] - entry["truth_test_nll"])
    ok = delta <= REL_FLOOR * abs(entry["truth_test_nll"])
    return Verdict("reference", what, ok, delta == 0 and not rendered, 1, delta, rendered if ok else (
        f"test NLL of the truth {now['truth_test_nll']:,.4f} now, {entry['truth_test_nll']:,.4f} "
        f"stored{'; ' + rendered if rendered else ''}"))


#: the optimizer libraries whose classes a ``torch:``/``optax:`` reference in a results folder may
#: name: verify imports no other module a data file names
LIBRARIES = {"torch", "schedulefree", "pytorch_optimizer", "heavyball", "optax"}


def check_optimizers(references, roots) -> list[Path]:
    """Before anything runs: the optimizer files a results folder ships (``path.py:attr`` inside
    one of ``roots``), to be listed; one line refusing any other reference a data file names but
    a registered optimizer, or a ``torch:``/``optax:`` class of a known optimizer library (an
    arbitrary ``module:attr`` or a file elsewhere would run code the data chose)."""
    registry, files = scan(), set()
    inside = [Path(r).resolve() for r in roots]
    for ref in sorted(set(references)):
        if ref in registry.methods or ref in registry.broken_names:
            continue
        library, sep, target = ref.partition(":")
        if sep and library in ("torch", "optax") and target.split(".")[0] in LIBRARIES | {target}:
            continue
        path = Path(ref.rsplit(":", 1)[0]).resolve() if ":" in ref else None
        if path is not None and path.suffix == ".py" and any(path.is_relative_to(r) for r in inside):
            files.add(path)
            continue
        raise InputError(f"a results folder names the optimizer {ref!r}, which verify does not "
                         "run: only registered optimizers, optimizer libraries' classes and "
                         "files inside the results folder are (register it, or ship its file in "
                         "the folder)")
    return sorted(files)


def verify(roots, sample: int | None = None, prefix: int | None = None, out=None) -> int:
    """Verify the cells under ``roots``; print a line per cell and a summary (to ``out``, by
    default standard output); 0 or 1."""
    out = out or sys.stdout
    results = load_results(*roots)
    cells = results.cells[results.cells["status"] != "interrupted"]       # not results
    if cells.empty:
        raise InputError(f"{', '.join(map(str, roots))}: no finished cells to verify")
    chosen = choose(cells, sample)
    runs = [results.records[c].run.optimizer for c in cells["cell"]]
    for path in check_optimizers(runs, roots):
        print(f"verify runs the optimizer file {path}, shipped in the results folder", file=out)
    verdicts, cache = [], {}
    for row in chosen.itertuples():
        v = verify_cell(results, row, prefix, cache)
        verdicts.append(v)
        print(v.line(), file=out, flush=True)
    configs = sorted({v.config for v in verdicts if v.config is not None})
    for key in configs:                  # off-platform: every seed of the configuration
        done = {v.cell for v in verdicts}
        rest = cells[(cells["task"] == key[0]) & (cells["scale"] == key[1]) & (cells["label"] == key[2])
                     & ~cells["cell"].isin(done)]
        for row in rest.sort_values("seed").itertuples():
            v = verify_cell(results, row, prefix, cache)
            verdicts.append(v)
            print(v.line(), file=out, flush=True)
    judged = [judge_configuration(results, key, [v for v in verdicts if v.config == key])
              for key in configs]
    for v in judged:
        print(v.line(), file=out, flush=True)
    refs = [verify_reference(key, entry, cache) for key, entry in sorted(results.references.items())]
    for v in refs:
        print(v.line(), file=out, flush=True)
    agreed = {key: v.ok for key, v in zip(configs, judged)}
    bad = [v for v in verdicts if not v.ok or (v.config is not None and not agreed[v.config])]
    exact = sum(v.exact for v in verdicts)
    off = sum(v.config is not None for v in verdicts)
    bad_refs = [v for v in refs if not v.ok]
    print(f"verified {len(verdicts)} of {len(results.cells)} cells"
          f"{f' up to {prefix:,} evaluations' if prefix else ''}: {len(verdicts) - len(bad)} agree "
          f"({exact} compared bit for bit, {off} within the off-platform tolerance)"
          + (f"; by configuration (every seed, another platform): {sum(agreed.values())} of "
             f"{len(agreed)} agree" if agreed else "") + f"; {len(bad)} mismatch"
          + (f"; {len(refs) - len(bad_refs)} of {len(refs)} ground-truth references agree"
             if refs else ""), file=out)
    return 1 if bad or bad_refs else 0
