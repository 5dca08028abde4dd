"""The importance-sampled oracle beside the exact one (issue 27 item 5): where the results hold
runs of one optimizer under both oracles on the same task and scale, whether its final test NLL,
its rank and the paper's findings change with the oracle.

Per (task, scale) and optimizer run under both (its configuration with the most seeds under
each, as :mod:`cryobench.report.findings` picks them): the median final test NLL under each, the
median over the seeds both ran of the paired difference IS − exact (seed n is the same training
stream under both oracles), the two-sided sign-flip p-value of that difference
(:func:`two_sided_pvalue`), the optimizer's rank among the optimizers run under both (by median
final test NLL, a failed median seed last, ties by name), and the cost ratio: the IS run's
exact-equivalent evaluations over the exact run's evaluations (:mod:`cryobench.report.cost`).
The findings are measured twice, on the exact runs and on the IS runs (each with its optimizers'
labels as the findings table uses them), and the rows whose verdicts differ are listed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.cost import final_exact_equivalent, importance_cells
from cryobench.report.findings import findings_table
from cryobench.report.html import inline, table_html
from cryobench.report.tables import _markdown, comparable, md_text, seed_values, sign_flip_pvalue

COLUMNS = ["task", "scale", "optimizer", "exact", "IS", "seeds", "IS − exact", "p", "rank exact",
           "rank IS", "cost ratio"]


def subset(results: Results, cells: set) -> Results:
    """``results`` restricted to the cell ids ``cells``."""
    keep = lambda frame: frame[frame["cell"].isin(cells)].reset_index(drop=True)
    return Results(keep(results.trace), keep(results.cells), keep(results.fsc),
                   {c: f for c, f in results.folders.items() if c in cells}, results.references,
                   {c: r for c, r in results.records.items() if c in cells})


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


def _finals(results: Results) -> dict:
    """{(task, scale): {optimizer: (label, seed → final test NLL)}}: per optimizer its label
    with the most seeds (ties by label), failures +inf."""
    results = comparable(results)
    values = seed_values(results).merge(results.cells[["cell", "optimizer"]], on="cell")
    out: dict = {}
    for (task, scale, optimizer), v in values.groupby(["task", "scale", "optimizer"], sort=True):
        counts = v.groupby("label").size()
        label = sorted(counts.index, key=lambda lab: (-counts[lab], lab))[0]
        out.setdefault((task, scale), {})[optimizer] = (
            label, v[v["label"] == label].set_index("seed")["Final"])
    return out


def _ranks(finals: dict) -> dict:
    """{optimizer: rank} by median final (NaN and failures last, ties by name)."""
    med = {o: float(np.median(f.to_numpy(float))) if len(f) else np.inf
           for o, (_, f) in finals.items()}
    order = sorted(med, key=lambda o: (np.nan_to_num(med[o], nan=np.inf), o))
    return {o: i + 1 for i, o in enumerate(order)}


def oracle_table(results: Results) -> pd.DataFrame:
    """One row per (task, scale, optimizer) run under both oracles (module doc); empty when
    no optimizer is."""
    exact, sampled = split_by_oracle(results)
    if exact.cells.empty or sampled.cells.empty:
        return pd.DataFrame(columns=COLUMNS)
    by_exact, by_is = _finals(exact), _finals(sampled)
    cost = final_exact_equivalent(comparable(results))
    rows = []
    for key in sorted(set(by_exact) & set(by_is)):
        both = sorted(set(by_exact[key]) & set(by_is[key]))
        r_exact = _ranks({o: by_exact[key][o] for o in both})
        r_is = _ranks({o: by_is[key][o] for o in both})
        for o in both:
            (l_exact, f_exact), (l_is, f_is) = by_exact[key][o], by_is[key][o]
            d = (f_is - f_exact).dropna()
            finite = d[np.isfinite(d)]
            e_exact, e_is = cost.get((*key, l_exact), np.nan), cost.get((*key, l_is), np.nan)
            rows.append({"task": key[0], "scale": key[1], "optimizer": o,
                         "exact": float(f_exact.median()), "IS": float(f_is.median()),
                         "seeds": len(d), "IS − exact": float(d.median()) if len(d) else np.nan,
                         "p": two_sided_pvalue(finite) if len(finite) else np.nan,
                         "rank exact": r_exact[o], "rank IS": r_is[o],
                         "cost ratio": e_is / e_exact if e_exact else np.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


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
         "with the exact one, on the same task, scale and training streams: median final test "
         "NLL under each, the median paired difference IS − exact over the seeds both ran with "
         "its two-sided sign-flip p, the rank among the optimizers run under both, and the cost "
         "ratio (IS exact-equivalent evaluations / exact evaluations); then the paper's findings "
         "whose verdict differs between the two oracles.")


def oracle_section(results: Results) -> tuple[list[str], list[str]]:
    """(markdown lines, HTML lines) of the oracle comparison; empty without an optimizer run
    under both oracles."""
    table = oracle_table(results)
    if table.empty:
        return [], []
    shown = pd.DataFrame({
        "task": table["task"].map(md_text), "scale": table["scale"].map(md_text),
        "optimizer": table["optimizer"].map(md_text),
        "exact": table["exact"].map(_fmt), "IS": table["IS"].map(_fmt),
        "seeds": table["seeds"].astype(str), "IS − exact": table["IS − exact"].map(_fmt),
        "p": table["p"].map(lambda p: _fmt(p, 3)),
        "rank exact": table["rank exact"].astype(str), "rank IS": table["rank IS"].astype(str),
        "cost ratio": table["cost ratio"].map(lambda r: _fmt(r, 2))})
    numeric = set(shown.columns) - {"task", "scale", "optimizer"}
    changed = verdict_changes(results)
    agree = int((table["rank exact"] == table["rank IS"]).sum())
    summary = (f"Ranks agree for {agree} of {len(table)} optimizers; "
               + (f"findings whose verdict differs: {len(changed)}." if len(changed)
                  else "no finding changes verdict."))
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
