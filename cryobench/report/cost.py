"""Cost in exact-equivalent evaluations: the x-axis on which an importance-sampled run and an
exact run are compared on the work done as well as on the evaluations counted (issue 27).

An evaluation counts one image whatever the oracle; the oracle also tallies the likelihood
terms it computed (the trace column ``terms``). The exact-equivalent evaluations of a run are

    E = terms / T,    T = the terms of one exact evaluation (the quadrature's size per image),

so an exact run's E equals its evaluations and an importance-sampled run's is what the same
terms would have bought exactly. T is read from the exact-oracle runs of the same task and
scale in the results (their terms / evaluations); in a set of importance-sampled runs only,
from their first epoch (checkpoints at ≤ K evaluations, K the training images their records
name): every evaluation there is an image's first visit, which the oracle evaluates exactly
(:mod:`cryobench.model.importance`), so their terms / evaluations is T (the largest such ratio
is taken: no evaluation computes more than T). Rows without ``terms`` (traces written before it
existed), or a task and scale with neither kind of row, have no E (the report layer does not
load task files).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from cryobench.harness.results import Results


def importance_cells(results: Results) -> set[str]:
    """The cells run on a non-exact oracle (their record's ``run.oracle`` is set)."""
    return {c for c, rec in results.records.items() if getattr(rec.run, "oracle", None)}


def exact_terms_per_image(results: Results) -> dict[tuple[str, str], float]:
    """(task, scale) → T, the terms of one exact evaluation (module doc); NaN if unknown."""
    trace, sampled = results.trace, importance_cells(results)
    out = {}
    for (task, scale), cells in results.cells.groupby(["task", "scale"], sort=True):
        exact = trace[trace["cell"].isin(set(cells["cell"]) - sampled) & (trace["evals"] > 0)]
        ratio = (exact["terms"] / exact["evals"]).dropna() if "terms" in exact else pd.Series()
        first = _first_epoch_ratios(results, trace[trace["cell"].isin(set(cells["cell"]) & sampled)])
        out[task, scale] = (float(ratio.median()) if len(ratio)
                            else float(first.max()) if len(first) else np.nan)
    return out


def _first_epoch_ratios(results: Results, rows: pd.DataFrame) -> pd.Series:
    """terms / evals of the importance-sampled ``rows`` in their run's first epoch (0 < evals ≤
    K, the record's ``task_facts.n_train``): first visits, evaluated exactly."""
    if "terms" not in rows or rows.empty:
        return pd.Series(dtype=float)
    facts = {c: getattr(results.records[c], "task_facts", None) for c in set(rows["cell"])}
    k = rows["cell"].map(lambda c: facts[c].n_train if facts[c] is not None else 0)
    first = rows[(rows["evals"] > 0) & (rows["evals"] <= k)]
    return (first["terms"] / first["evals"]).dropna()


def exact_equivalent(results: Results) -> pd.Series:
    """E = terms / T for every row of ``results.trace`` (NaN where terms or T is unknown)."""
    trace = results.trace
    if "terms" not in trace or trace.empty:
        return pd.Series(np.nan, index=trace.index, dtype=float)
    per = exact_terms_per_image(results)
    t = pd.Series([per.get(k, np.nan) for k in zip(trace["task"], trace["scale"])],
                  index=trace.index, dtype=float)
    return trace["terms"].astype(float) / t


def on_cost_axis(results: Results) -> Results:
    """The results with each trace row's ``evals`` replaced by its exact-equivalent
    evaluations; cells with a row whose E is unknown are left out (their cost is not known)."""
    e = exact_equivalent(results)
    unknown = set(results.trace.loc[e.isna(), "cell"])
    keep = ~results.trace["cell"].isin(unknown)
    trace = results.trace[keep].assign(evals=e[keep])
    cells = results.cells[~results.cells["cell"].isin(unknown)]
    return replace(results, trace=trace, cells=cells)


def final_exact_equivalent(results: Results) -> pd.Series:
    """(task, scale, label) → the median over seeds of E at each run's last checkpoint."""
    e = exact_equivalent(results)
    last = results.trace.assign(E=e).sort_values("checkpoint").groupby("cell").tail(1)
    return last.groupby(["task", "scale", "label"])["E"].median()
