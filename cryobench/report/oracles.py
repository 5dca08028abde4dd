"""The importance-sampled oracle beside the exact one (issue 27 item 5): where the results hold
runs of one optimizer under both oracles on the same task and scale, whether its test NLL, its
rank and the paper's findings change with the oracle.

Per (task, scale) and optimizer run under both (its configuration with the most seeds under
each, as :mod:`cryobench.report.findings` picks them), at the smaller of the two budgets (an IS
set may run longer than the exact one it is set beside; test NLL between checkpoints
log-linear, a failure +inf from there on, as the findings read runs): the median test NLL under
each, the median over the seeds both ran of the paired difference IS − exact (seed n is the
same training stream under both oracles), its two-sided sign-flip p-value
(:func:`two_sided_pvalue`), the optimizer's rank among the optimizers run under both, and the
share of the exact terms the IS runs computed over their whole run (:mod:`cryobench.report.cost`),
and how many of the paired seeds ran on another platform under one oracle than under the other
(their records' ``identity["platform"]``): such a pair differs by the platform as well, and a
chaotic run on another platform is a new draw, not a reproduction (docs/verification.md).
The findings are measured twice, on the exact runs and on the IS runs, and the rows whose
verdicts differ are listed.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.cost import final_exact_equivalent, importance_cells
from cryobench.report.findings import _per_seed, findings_table
from cryobench.report.html import inline, table_html
from cryobench.report.tables import _markdown, comparable, md_text, sign_flip_pvalue

COLUMNS = ["task", "scale", "optimizer", "at evals", "exact", "IS", "seeds", "IS − exact", "p",
           "rank exact", "rank IS", "IS terms", "other platform"]


def subset(results: Results, cells: set) -> Results:
    """``results`` restricted to the cell ids ``cells``."""
    keep = lambda frame: frame[frame["cell"].isin(cells)].reset_index(drop=True)
    return replace(results, trace=keep(results.trace), cells=keep(results.cells),
                   fsc=keep(results.fsc), shells=keep(results.shells),
                   folders={c: f for c, f in results.folders.items() if c in cells},
                   records={c: r for c, r in results.records.items() if c in cells})


def split_by_oracle(results: Results) -> tuple[Results, Results]:
    """(the exact-oracle runs, the importance-sampled runs) of ``results``."""
    sampled = importance_cells(results)
    everything = set(results.cells["cell"])
    return subset(results, everything - sampled), subset(results, everything & sampled)


def two_sided_pvalue(d) -> float:
    """Two-sided exact sign-flip p-value of the paired differences ``d``: twice the smaller of
    the one-sided p-values (:func:`cryobench.report.tables.sign_flip_pvalue`), at most 1."""
    d = np.asarray(d, float)
    return float(min(1.0, 2 * min(sign_flip_pvalue(d), sign_flip_pvalue(-d))))


def _at(runs: dict, evals: float) -> pd.Series:
    """seed → test NLL at ``evals`` of one optimizer's runs (``findings._per_seed``'s curves:
    log-linear between checkpoints, +inf after a failure)."""
    return pd.Series({seed: curve(evals) for seed, (curve, _, _) in runs.items()}, dtype=float)


def _platform(results: Results, cell: str):
    """The platform a cell's record says it was computed on; None if it does not say."""
    record = results.records.get(cell)
    return ((record.identity or {}).get("platform") if record is not None else None)


def _other_platform(exact: Results, sampled: Results, runs_exact: dict, runs_is: dict,
                    seeds) -> int:
    """How many of ``seeds`` ran on different platforms under the two oracles (both known)."""
    pairs = ((_platform(exact, runs_exact[s][2]), _platform(sampled, runs_is[s][2])) for s in seeds)
    return sum(a is not None and b is not None and a != b for a, b in pairs)


def _ranks(values: dict) -> dict:
    """{optimizer: rank} by the median over seeds (NaN and failures last, ties by name)."""
    med = {o: float(v.median()) if len(v) else np.nan for o, v in values.items()}
    order = sorted(med, key=lambda o: (np.nan_to_num(med[o], nan=np.inf), o))
    return {o: i + 1 for i, o in enumerate(order)}


def oracle_table(results: Results) -> pd.DataFrame:
    """One row per (task, scale, optimizer) run under both oracles (module doc), compared at
    the smaller of the two budgets (median over the runs); empty when no optimizer is."""
    exact, sampled = (comparable(r) for r in split_by_oracle(results))
    if exact.cells.empty or sampled.cells.empty:
        return pd.DataFrame(columns=COLUMNS)
    share = (final_exact_equivalent(sampled)
             / sampled.cells.groupby(["task", "scale", "label"])["evals"].median())
    rows = []
    keys = sorted(set(map(tuple, exact.cells[["task", "scale"]].to_numpy()))
                  & set(map(tuple, sampled.cells[["task", "scale"]].to_numpy())))
    for task, scale in keys:
        by_exact, by_is = _per_seed(exact, task, scale), _per_seed(sampled, task, scale)
        both = sorted(set(by_exact) & set(by_is))
        budget = {o: min(_budget(exact, by_exact[o]), _budget(sampled, by_is[o])) for o in both}
        v_exact = {o: _at(by_exact[o], budget[o]) for o in both}
        v_is = {o: _at(by_is[o], budget[o]) for o in both}
        r_exact, r_is = _ranks(v_exact), _ranks(v_is)
        for o in both:
            d = (v_is[o] - v_exact[o]).dropna()
            finite = d[np.isfinite(d)]
            label = sampled.cells.set_index("cell").loc[next(iter(by_is[o].values()))[2], "label"]
            rows.append({"task": task, "scale": scale, "optimizer": o, "at evals": budget[o],
                         "exact": float(v_exact[o].median()), "IS": float(v_is[o].median()),
                         "seeds": len(d), "IS − exact": float(d.median()) if len(d) else np.nan,
                         "p": two_sided_pvalue(finite) if len(finite) else np.nan,
                         "rank exact": r_exact[o], "rank IS": r_is[o],
                         "IS terms": share.get((task, scale, label), np.nan),
                         "other platform": _other_platform(exact, sampled, by_exact[o], by_is[o],
                                                           d.index)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _budget(results: Results, runs: dict) -> float:
    """The median budget (planned evaluations) of one optimizer's runs."""
    cells = results.cells.set_index("cell").loc[[cell for _, _, cell in runs.values()]]
    return float(pd.to_numeric(cells["budget"], errors="coerce").median())


def verdict_changes(results: Results) -> pd.DataFrame:
    """The findings rows (finding, task, scale) whose verdict differs between the exact runs and
    the IS runs, with both measurements; only datasets with runs under both oracles."""
    exact, sampled = split_by_oracle(results)
    cols = ["finding", "task", "scale", "exact", "IS", "measured exact", "measured IS"]
    if exact.cells.empty or sampled.cells.empty:
        return pd.DataFrame(columns=cols)
    key = ["key", "finding", "task", "scale"]
    both = findings_table(exact).merge(findings_table(sampled), on=key, suffixes=(" exact", " IS"))
    changed = both[both["verdict exact"] != both["verdict IS"]]
    return changed.rename(columns={"verdict exact": "exact", "verdict IS": "IS"})[cols]


def _fmt(v, digits: int = 1) -> str:
    return "–" if pd.isna(v) else "failed" if np.isinf(v) else f"{v:,.{digits}f}"


INTRO = ("The same optimizers run with the importance-sampled oracle (labels ending `[IS]`) and "
         "with the exact one, on the same task, scale and training streams, compared at the "
         "smaller of their budgets: median test NLL under each, the median paired difference "
         "IS − exact over the seeds both ran with its two-sided sign-flip p, the rank among the "
         "optimizers run under both, and the share of the exact likelihood terms the IS runs "
         "computed, and how many of the paired seeds ran on another platform under one oracle "
         "than under the other (such a pair differs by the platform too: a chaotic run there is "
         "a new draw); then the paper's findings whose verdict differs between the two oracles.")


def oracle_section(results: Results) -> tuple[list[str], list[str]]:
    """(markdown lines, HTML lines) of the oracle comparison; empty without an optimizer run
    under both oracles."""
    table = oracle_table(results)
    if table.empty:
        return [], []
    shown = pd.DataFrame({
        "task": table["task"].map(md_text), "scale": table["scale"].map(md_text),
        "optimizer": table["optimizer"].map(md_text),
        "at evals": table["at evals"].map(lambda e: _fmt(e, 0)),
        "exact": table["exact"].map(_fmt), "IS": table["IS"].map(_fmt),
        "seeds": table["seeds"].astype(str), "IS − exact": table["IS − exact"].map(_fmt),
        "p": table["p"].map(lambda p: _fmt(p, 3)),
        "rank exact": table["rank exact"].astype(str), "rank IS": table["rank IS"].astype(str),
        "IS terms": table["IS terms"].map(lambda r: _fmt(r, 3)),
        "other platform": table["other platform"].astype(str)})
    numeric = set(shown.columns) - {"task", "scale", "optimizer"}
    changed = verdict_changes(results)
    agree = int((table["rank exact"] == table["rank IS"]).sum())
    moved = int((table["other platform"] > 0).sum())
    summary = (f"Ranks agree for {agree} of {len(table)} optimizers; "
               + (f"findings whose verdict differs: {len(changed)}." if len(changed)
                  else "no finding changes verdict.")
               + (f" Optimizers with seeds run on another platform under one oracle than under "
                  f"the other: {moved} of {len(table)}; their differences, and any verdict that "
                  "rests on them, include the platform's." if moved else ""))
    md = ["## The importance-sampled oracle beside the exact one", "", INTRO, "",
          _markdown(shown, numeric), summary, ""]
    body = ['<section id="oracles">', "<h2>The importance-sampled oracle beside the exact one</h2>",
            f"<p>{inline(INTRO)}</p>", table_html(shown, numeric), f"<p>{inline(summary)}</p>"]
    if len(changed):
        text = changed.astype(str).assign(task=changed["task"].map(md_text),
                                          scale=changed["scale"].map(md_text))
        md += [_markdown(text, set()), ""]
        body += [table_html(text, set())]
    return md, body + ["</section>"]
