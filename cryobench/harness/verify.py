"""``cryobench verify``: recompute stored cells (or their trace prefixes) and compare.

For each chosen cell the run is rebuilt from its ``meta.json`` (task, optimizer, every
hyper-parameter, seed, checkpoints, thread count) and computed again in this process, with the
budget cut to ``prefix`` evaluations if asked (the longest stored checkpoint within it: the
first evaluations of a run do not depend on its budget, since the shipped optimizers never read
it — a method whose ``init`` uses its budget must be verified in full). The rows of both traces
at the evaluation counts they share are compared, with the status and the counts. The ground
truth's test NLL in each set's ``reference.json`` is computed again too.

* **Same platform** — the stored platform (CPU, BLAS, NumPy, numba, Python) and thread count
  equal this machine's: the numbers must be bit-identical, since the same code, data, seed and
  threads give the same bits, and the numerics fingerprint must be the stored one (else the
  code now computes other numbers somewhere, and the results are stale).
* **Another platform** (another CPU, BLAS or numba changes the last bits, and a chaotic float32
  trajectory amplifies them): each test NLL must lie within the tolerance — twice the spread
  (max − min) of the committed seeds of that task and configuration at that checkpoint, plus
  :data:`REL_FLOOR` relative (the rounding of one evaluation). Why the seed spread: a last-bit
  change moves a chaotic trajectory about as far as another data order does (measured with a
  one-ulp change of the kernel standing in for another platform: ``docs/verification.md``), so a
  recomputed value outside the seed spread is a real change, one inside it is what another
  machine gives.
* **The same task rendered with other bits** — the task's content hash differs from the stored
  one but its recipe (:func:`cryobench.task.task_recipe`, recorded as ``task_recipe``) is the
  stored one: data simulated with other last bits (simulators before format 2 followed the
  BLAS kernel; since format 2 a dataset is the same bytes everywhere), a perturbation of the
  same kind as another platform's, so compared as another platform. A stored cell without a
  recipe, or with another, is a mismatch.

One line per cell, a summary, exit status 1 on any mismatch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cryobench.base.seeding import rng_for
from cryobench.base.threads import set_threads
from cryobench.errors import InputError
from cryobench.harness.identity import identity
from cryobench.harness.reference import truth_reference
from cryobench.harness.registry import resolve
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

    def line(self) -> str:
        mode = "bit-identical" if self.exact else "within tolerance"
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


def verify_cell(results, row, prefix: int | None, task_cache: dict) -> Verdict:
    """Recompute one cell (see module doc) and compare it with what is stored."""
    stored_record = results.records[row.cell]
    what = f"{row.task} {row.scale} {row.label} seed {row.seed}"
    stored = results.trace[results.trace["cell"] == row.cell].sort_values("evals")
    spec = stored_record.run
    if prefix:
        within = stored["evals"][stored["evals"] <= prefix]
        if len(within) and int(within.max()) < stored_record.budget:
            spec = replace(spec, budget=int(within.max()))
    set_threads(spec.threads)
    task = _cached_task(task_cache, spec.task, spec.scale)
    rendered = _same_recipe(task, stored_record.task_hash, stored_record.task_recipe)
    if rendered is None:
        return Verdict(row.cell, what, False, False, 0, np.inf,
                       f"task content hash {task.content_hash[:12]} here, "
                       f"{stored_record.task_hash[:12]} stored: the data or the task definition changed")
    method = resolve(spec.optimizer)
    mine = identity(row.cell, stored_record.task_hash, stored_record.run.threads, method)
    theirs = stored_record.identity or {}
    exact = (mine["platform"] == theirs.get("platform") and mine["threads"] == theirs.get("threads")
             and not rendered)
    stale = exact and mine["numerics"] != theirs.get("numerics")
    out = execute(spec, task, method, compare=False)
    now = out.trace.sort_values("evals")
    common = np.intersect1d(stored["evals"].to_numpy(), now["evals"].to_numpy())
    a = stored.set_index("evals").loc[common]
    b = now.set_index("evals").loc[common]
    now_record = out.record
    if spec.budget == stored_record.budget and now_record.status != stored_record.status:
        return Verdict(row.cell, what, False, exact, len(common), np.inf,
                       f"status {now_record.status} now, {stored_record.status} stored "
                       f"({now_record.message or stored_record.message})")
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
                           + (" (the numerics fingerprint changed on this platform)" if stale else ""))
        if stale:
            return Verdict(row.cell, what, False, True, len(common), 0.0,
                           f"{len(common)} rows bit-identical, but the numerics fingerprint changed "
                           "on this platform: the code computes other numbers; regenerate")
        note = "" if mine["cell"] == stored_record.cell else (
            f"{len(common)} rows bit-identical, but this code files the run under id "
            f"{mine['cell']}")
        return Verdict(row.cell, what, True, True, len(common), 0.0, note)
    tol = SPREAD_FACTOR * tolerance(results, row, common) + REL_FLOOR * np.abs(a["test_nll"].to_numpy(float))
    delta = np.abs(a["test_nll"].to_numpy(float) - b["test_nll"].to_numpy(float))
    ratio = np.where(tol > 0, delta / tol, np.where(delta > 0, np.inf, 0.0))
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    if worst > 1:
        at = common[int(np.nanargmax(ratio))]
        return Verdict(row.cell, what, False, False, len(common), worst,
                       f"test NLL off by {delta[int(np.nanargmax(ratio))]:.4g} at {at} evaluations, "
                       f"{worst:.2g}× the tolerance (another platform: seed spread)")
    return Verdict(row.cell, what, True, False, len(common), worst,
                   rendered and f"{len(common)} rows within tolerance; {rendered}")


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


def verify(roots, sample: int | None = None, prefix: int | None = None, out=None) -> int:
    """Verify the cells under ``roots``; print a line per cell and a summary (to ``out``, by
    default standard output); 0 or 1."""
    out = out or sys.stdout
    results = load_results(*roots)
    cells = results.cells[results.cells["status"].isin(["ok", "diverged", "error"])]
    if cells.empty:
        raise InputError(f"{', '.join(map(str, roots))}: no finished cells to verify")
    chosen = choose(cells, sample)
    verdicts, cache = [], {}
    for row in chosen.itertuples():
        v = verify_cell(results, row, prefix, cache)
        verdicts.append(v)
        print(v.line(), file=out, flush=True)
    refs = [verify_reference(key, entry, cache) for key, entry in sorted(results.references.items())]
    for v in refs:
        print(v.line(), file=out, flush=True)
    bad = [v for v in verdicts if not v.ok]
    exact = sum(v.exact for v in verdicts)
    bad_refs = [v for v in refs if not v.ok]
    print(f"verified {len(verdicts)} of {len(results.cells)} cells"
          f"{f' up to {prefix:,} evaluations' if prefix else ''}: {len(verdicts) - len(bad)} agree "
          f"({exact} compared bit for bit, {len(verdicts) - exact} within the off-platform "
          f"tolerance), {len(bad)} mismatch"
          + (f"; {len(refs) - len(bad_refs)} of {len(refs)} ground-truth references agree"
             if refs else ""), file=out)
    return 1 if bad or bad_refs else 0
