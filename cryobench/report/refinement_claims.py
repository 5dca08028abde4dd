"""The refinement paper's claims (Toader, Brubaker & Lederman, "Efficient high-resolution
refinement in cryo-EM with stochastic gradient descent", 2025) as findings rows: one row per
(claim, refinement task, scale), the numbers and a verdict — reproduced, partly, not reproduced
or not measurable (and why) — in the columns of :func:`cryobench.report.findings.findings_table`.

Methods are compared seed by seed (the same training stream) with the findings' paired test
(:func:`cryobench.report.findings._ahead_paired`: one-sided sign-flip p below 0.05 over the seeds
both have, or the rival's median seed failed where the method's did not); with n seeds the
smallest p is 2^−n, so 2 seeds can never show a difference and 5 can (1/32). Each method is
represented by its configuration (label) with the most seeds, as in the other findings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.findings import _ahead_paired, _median_at
from cryobench.report.refinement import datasets, epochs_table
from cryobench.report.tables import ALPHA, comparable

PRECONDITIONED = ("precond-sgd-fourier", "exact-diag-sgd")
RIVALS = ("sgd", "adam")
REACHED = 0.8                # the outer shells "reached": FSC ≥ 0.8 against the optimum there
COLUMN = "epochs to 0.8"

CLAIMS = {
    "kappa-grows": ("The condition number grows with resolution (Toader et al. 2025).",
                    "the spread max W / min W of the task's exact Fourier Hessian diagonal (data "
                    "term over all training images, recorded by its runs) over |k| ≤ r is larger at "
                    "r = r_max than at r = r_max/2"),
    "sgd-stalls": ("Plain SGD stalls at high frequencies (Toader et al. 2025).",
                   f"at the end of the budget tuned SGD's outer-shell FSC against the optimum "
                   f"(median over seeds) is below {REACHED:g}, and each preconditioned SGD "
                   f"({', '.join(PRECONDITIONED)}) ends above it by the paired test "
                   f"(sign-flip p below {ALPHA:g})"),
    "precond-epochs": ("The preconditioned SGD reaches the outer shells in far fewer epochs than "
                       "SGD and Adam (Toader et al. 2025).",
                       f"each preconditioned SGD needs fewer epochs than tuned SGD and Adam to "
                       f"reach FSC ≥ {REACHED:g} against the optimum in the outer 20 % of the shells "
                       f"wholly inside r_max, by "
                       f"the paired test over seeds (sign-flip p below {ALPHA:g}); a seed that does "
                       "not reach it counts as the run's budget in epochs (a lower bound)"),
}
COLUMNS = ["key", "finding", "criterion", "task", "scale", "seeds", "measured", "verdict"]


def _runs(table: pd.DataFrame, optimizer: str, value) -> dict:
    """{seed: (None, value(row), cell)} of ``optimizer``'s label with the most seeds (findings'
    run-set form, compared at their final value)."""
    mine = table[table["optimizer"] == optimizer]
    if mine.empty:
        return {}
    counts = mine.groupby("label").size().reset_index(name="n")
    label = counts.sort_values(["n", "label"], ascending=[False, True])["label"].iloc[0]
    return {r["seed"]: (None, value(r), r["cell"])
            for r in mine[mine["label"] == label].to_dict("records")}


def _range(runs: dict, scale: float = 1.0, inf: str = "failed") -> str:
    """'median (min–max)' of the runs' values × ``scale``; ±inf shown as ``inf``."""
    v = np.sort([x * scale for _, x, _ in runs.values()])
    f = lambda x: inf if np.isinf(x) else f"{x:.3g}"  # noqa: E731
    return f"{f(np.median(v))}" + (f" ({f(v[0])}–{f(v[-1])})" if len(v) > 1 and np.isfinite(v[0])
                                   else "")


def _kappa(results: Results, task: str, scale: str) -> tuple[str, str]:
    facts = next((results.records[c].refinement for c in sorted(results.cells.loc[
        (results.cells["task"] == task) & (results.cells["scale"] == scale), "cell"])
        if c in results.records and (results.records[c].refinement or {}).get("kappa_rmax")), None)
    if not facts or not facts.get("kappa_half"):
        return "not measurable", "no κ recorded (a local search's W depends on V; or older runs)"
    half, full = facts["kappa_half"], facts["kappa_rmax"]
    text = (f"κ(r = {facts['r_half']:g} px) = {half:.3g}, κ(r_max = {facts['r_rmax']:g} px) = "
            f"{full:.3g} (×{full / half:.3g}); with the prior α = {facts['alpha']:g}: "
            f"{facts['kappa_alpha_half']:.3g} → {facts['kappa_alpha_rmax']:.3g}; "
            f"{facts['images']:,} training images")
    return ("reproduced" if full > half else "not reproduced"), text


def _stalls(table: pd.DataFrame) -> tuple[str, str]:
    final = lambda r: -r["final_fsc_outer"] if np.isfinite(r["final_fsc_outer"]) else np.inf  # noqa: E731
    sgd = _runs(table, "sgd", final)
    pre = {k: _runs(table, k, final) for k in PRECONDITIONED}
    pre = {k: v for k, v in pre.items() if v}
    if not sgd or not pre:
        return "not measurable", "needs sgd and precond-sgd-fourier or exact-diag-sgd runs"
    sgd_median = -_median_at(sgd, None)
    parts, ahead = [f"sgd ends at outer-shell FSC {_range(sgd, -1)}"], []
    for k, runs in pre.items():
        wins, p = _ahead_paired(runs, sgd, None)
        ahead.append(wins)
        parts.append(f"{k} {_range(runs, -1)} (paired p = {p:.2g})")
    stalled = bool(sgd_median < REACHED)
    verdict = ("reproduced" if stalled and all(ahead) else "partly" if stalled and any(ahead)
               else "not reproduced")
    return verdict, "; ".join(parts)


def _fewer_epochs(table: pd.DataFrame) -> tuple[str, str]:
    censored = lambda r: min(r[COLUMN], r["budget_epochs"])  # noqa: E731
    pre = {k: _runs(table, k, censored) for k in PRECONDITIONED}
    rivals = {k: _runs(table, k, censored) for k in RIVALS}
    pre, rivals = {k: v for k, v in pre.items() if v}, {k: v for k, v in rivals.items() if v}
    if not pre or not rivals:
        return "not measurable", ("needs precond-sgd-fourier or exact-diag-sgd, and sgd or adam "
                                  "runs with an optimum")
    shown = lambda k: _range(_runs(table, k, lambda r: r[COLUMN]), inf="not reached")  # noqa: E731
    parts, wins = [], []
    for k, runs in pre.items():
        for r, other in rivals.items():
            ahead, p = _ahead_paired(runs, other, None)
            wins.append(ahead)
            ratio = _median_at(other, None) / max(_median_at(runs, None), 1e-12)
            parts.append(f"{k} {shown(k)} vs {r} {shown(r)} epochs (censored medians "
                         f"×{ratio:.3g}, paired p = {p:.2g})")
    missing = [r for r in RIVALS if r not in rivals]
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    verdict = "reproduced" if all(wins) else ("partly" if any(wins) else "not reproduced")
    return verdict, "; ".join(parts)


def refinement_findings(results: Results) -> pd.DataFrame:
    """One row per (claim, refinement dataset) of ``results`` (:data:`CLAIMS`); empty without
    refinement cells. A local-search dataset has no optimum: its FSC claims are not measurable."""
    results, rows = comparable(results), []
    table = epochs_table(results)
    for task, scale, _ in datasets(results):
        mine = table[(table["task"] == task) & (table["scale"] == scale)]
        seeds = int(results.cells.loc[(results.cells["task"] == task)
                                      & (results.cells["scale"] == scale), "seed"].nunique())
        for key, (claim, criterion) in CLAIMS.items():
            if key == "kappa-grows":
                verdict, measured = _kappa(results, task, scale)
            elif mine.empty:
                verdict, measured = "not measurable", "no runs with an optimum (a local search)"
            else:
                verdict, measured = (_stalls if key == "sgd-stalls" else _fewer_epochs)(mine)
            rows.append({"key": key, "finding": claim, "criterion": criterion, "task": task,
                         "scale": scale, "seeds": seeds, "measured": measured, "verdict": verdict})
    return pd.DataFrame(rows, columns=COLUMNS)
