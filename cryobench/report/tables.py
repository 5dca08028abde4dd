"""The tables of a report: the 5K / 50K / Final table with seed spreads and significance marks
(``checkpoint_table``, ``table_markdown``), the paired sign-flip test behind the marks
(``sign_flip_pvalue``), time-to-target and performance profiles, the failed / incomplete cells.

Every function first calls ``comparable``: interrupted runs are dropped (they are not results) and
labels are made unique per configuration, so no table or figure ever averages different
configurations or two runs of one seed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import permutation_test

from cryobench.errors import InputError
from cryobench.harness.results import Results
from cryobench.report.cost import final_exact_equivalent, importance_cells

ALPHA = 0.05                               # level of the marks: cannot be told apart from the best
EXACT_MAX = 20                             # exact sign-flip enumeration up to 2**20 patterns
SNAPSHOTS = {"5K": 5_000, "50K": 50_000}
COLUMNS = [*SNAPSHOTS, "Final"]
COST_COLUMN = "Final exact-equiv."          # with importance-sampled runs only (report/cost.py)
NOT_RESULTS = {"interrupted"}              # not a result of the method: never compared
IDENTITY = {"task", "scale", "label", "seed", "params", "optimizer"}
NUMERIC = ["checkpoint", "evals", "grad_evals", "value_evals", "hvp_evals", "wall_s", "test_nll",
           "validation_nll", "train_obj"]


def md_text(text) -> str:
    """``text`` (a label, a task, a message: whatever a results folder says) as markdown that
    shows it as it is: the characters markdown would read as emphasis, code, links, HTML,
    entities or math escaped with a backslash (``_`` only where it could be emphasis: not
    inside a word), line breaks as spaces. Table cells escape ``|`` (``_markdown``)."""
    s = " ".join(str(text).splitlines())
    return re.sub(r"[\\`*\[\]<>$~&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", lambda m: "\\" + m[0], s)


def md_code(text) -> str:
    """``text`` as a markdown code span, shown as it is (fenced by more backticks than it holds)."""
    s = " ".join(str(text).splitlines())
    fence = "`" * (max(map(len, re.findall("`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _fmt(value) -> str:
    """A setting's value as shown in a label (numbers to 12 digits, long hex hashes to 8)."""
    if isinstance(value, float):
        return format(value, ".12g")
    if isinstance(value, str):
        return re.sub(r"(?<![0-9a-f])[0-9a-f]{17,}(?![0-9a-f])", lambda m: m[0][:8], value)
    return json.dumps(value, sort_keys=True)


def _reference(record) -> str:
    """How a run named its optimizer (registered name, ``module:attr``, ``file.py:attr`` without
    the folder)."""
    where, _, attr = record.run.optimizer.rpartition(":")
    return f"{Path(where).name}:{attr}" if where.endswith(".py") else record.run.optimizer


def _settings(row, record=None) -> dict:
    """A cell's configuration: optimizer (as the run referred to it, with its code hash, if the
    record is at hand), hyper-parameters (``params`` JSON), budget."""
    params = row.get("params")
    conf = {"optimizer": _reference(record) if record else row.get("optimizer"),
            **(json.loads(params) if isinstance(params, str) else {}), "budget": row.get("budget"),
            "code": (record.identity or {}).get("optimizer") if record else None}
    return {k: _fmt(v) for k, v in conf.items() if v is not None and not pd.isna(v)}


def _run_settings(record) -> dict:
    """The other run settings (the record's ``run`` but the identity) and the numerics hash of a
    cell, to tell apart runs of one seed that agree in every hyper-parameter; {} without a record."""
    if record is None:
        return {}
    conf = {k: v for k, v in record.run.to_dict().items() if k not in IDENTITY | {"budget"}}
    conf |= {k: v for k, v in (record.identity or {}).items() if k == "numerics"}
    return {k: _fmt(v) for k, v in conf.items() if v is not None}


def _extend(labels: pd.Series, confs: dict) -> None:
    """Append to ``labels`` (index → label) the settings that differ among ``confs`` (index →
    settings), as ``key=value`` in key order."""
    keys = sorted(set().union(*confs.values()))
    differing = [k for k in keys if len({c.get(k, "—") for c in confs.values()}) > 1]
    for i, conf in confs.items():
        labels[i] = " ".join([labels[i], *(f"{k}={conf.get(k, '—')}" for k in differing)])


def comparable(results: Results) -> Results:
    """``results`` without interrupted runs and with one configuration per (task, scale, label):
    a label whose cells differ in optimizer (as the run referred to it), its code, a
    hyper-parameter or the budget gets the differing values appended (``sgd lr=0.5``; two
    optimizers of one name: ``sgd code=sgd:1f0e3dad optimizer=mine.py:sgd``); if runs of one
    seed remain, the label's other run settings and numerics hash are compared too, and runs
    still sharing a seed get their cell id (``sgd #05cd19f0``). The given label is kept in
    ``given_label``. Idempotent."""
    cells = results.cells[~results.cells["status"].isin(NOT_RESULTS)].copy()
    if "given_label" not in cells:
        cells["given_label"] = cells["label"]
    labels = cells["label"].copy()
    duplicated = lambda idx: pd.DataFrame({"l": labels[idx], "s": cells.loc[idx, "seed"]}).duplicated(
        keep=False).to_numpy()
    for _, group in cells.groupby(["task", "scale", "label"], sort=True):
        _extend(labels, {i: _settings(r, results.records.get(r["cell"]))
                         for i, r in group.iterrows()})
        if duplicated(group.index).any():
            _extend(labels, {i: _run_settings(results.records.get(c)) for i, c in group["cell"].items()})
            for i in group.index[duplicated(group.index)]:
                labels[i] = f"{labels[i]} #{cells.at[i, 'cell'][:8]}"
    cells["label"] = labels
    new = dict(zip(cells["cell"], cells["label"]))
    trace = results.trace[results.trace["cell"].isin(new)].copy()
    trace["label"] = trace["cell"].map(new)
    numeric = [c for c in NUMERIC if c in trace and trace[c].dtype == object]
    trace = trace.astype(dict.fromkeys(numeric, float))   # object if a header-only trace.csv came first
    sort = ["task", "scale", "label", "seed", "cell"]
    return Results(trace, cells.sort_values(sort, ignore_index=True), results.fsc, results.folders,
                   results.references, results.records, results.shells)


def sign_flip_pvalue(d) -> float:
    """Exact one-sided p-value of the paired sign-flip permutation test on the mean of the paired
    differences ``d`` (method − best, one per seed): the fraction of the 2^n sign patterns
    (identity included) whose mean is ≥ the observed mean. H0: each d_n is symmetric about 0
    (same distribution of outcomes on a stream for both methods); alternative: the method is worse.

    Chosen over a paired t-test because it is exact for any n with no normality assumption
    (chaotic float32 runs have heavy-tailed differences that 5 seeds cannot check); with n seeds
    the smallest attainable p is 2^−n (1/32 for 5 seeds). Beyond ``EXACT_MAX`` seeds 2^20 random
    patterns from a fixed generator are used (deterministic, then not exact). No pairs: 1.0.
    """
    d = np.asarray(d, float)
    if d.size == 0 or not np.any(d):
        return 1.0
    if d.size == 1:                                   # patterns {d, −d}; scipy wants n ≥ 2
        return 0.5 if d[0] > 0 else 1.0
    res = permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), vectorized=True,
                           permutation_type="samples", alternative="greater",
                           n_resamples=2**EXACT_MAX, rng=np.random.default_rng(0))
    return float(res.pvalue)


def _failed(status: str) -> bool:
    """The method's own failure (diverged, error, time limit, ...): a result, ranked worst."""
    return status != "ok" and status not in NOT_RESULTS


def seed_values(results: Results) -> pd.DataFrame:
    """One row per run: test NLL at the first checkpoint with evals ≥ 5,000 / ≥ 50,000 and at
    the end. A column the run did not reach because it failed (status not ok: diverged, error,
    time limit) is +inf — worse than any finished run; a column beyond an ok run's budget is NaN
    (not applicable), as is every column of an ok run without a trace."""
    results = comparable(results)
    rows = []
    traces = dict(tuple(results.trace.groupby("cell")))
    for r in results.cells.itertuples(index=False):
        t = traces.get(r.cell, results.trace.iloc[:0]).sort_values("checkpoint")
        nll, evals, failed = t["test_nll"].to_numpy(float), t["evals"].to_numpy(float), _failed(r.status)
        budget = pd.to_numeric(getattr(r, "budget", np.nan), errors="coerce")
        row = {"task": r.task, "scale": r.scale, "label": r.label, "seed": r.seed, "cell": r.cell}
        for k, at in SNAPSHOTS.items():
            hit = np.flatnonzero(evals >= at)
            if hit.size and np.isfinite(nll[hit[0]]):
                row[k] = nll[hit[0]]
            else:                                       # failed before it, or beyond budget
                row[k] = np.inf if failed and not budget < at else np.nan
        row["Final"] = np.inf if failed else (nll[-1] if len(nll) and np.isfinite(nll[-1]) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", "scale", "label", "seed", "cell", *COLUMNS])


def _range(v: pd.Series) -> float:
    """max − min over the finite values (NaN with fewer than two)."""
    f = v[np.isfinite(v)]
    return float(f.max() - f.min()) if len(f) > 1 else np.nan


def _versus(m: pd.Series, b: pd.Series) -> tuple[float, float, int, bool]:
    """(gap, p, pairs, told apart) of method ``m`` against the best ``b`` (seed → value) on the
    seeds both have: gap = median of m − b (failures as +inf), p = ``sign_flip_pvalue`` over the
    seeds both reached (NaN if none), whether m failed on a seed that b reached."""
    both = pd.concat([m, b], axis=1, keys=["m", "b"], join="inner").dropna()
    d = both["m"] - both["b"]                       # inf − inf = NaN: both failed, no evidence
    finite = d[np.isfinite(d)]
    failed_alone = bool((np.isinf(both["m"]) & np.isfinite(both["b"])).any())
    gap = float(d.dropna().median()) if d.notna().any() else np.nan
    return gap, sign_flip_pvalue(finite) if len(finite) else np.nan, len(finite), failed_alone


def _status(runs: pd.DataFrame) -> str:
    """'ok', or e.g. '1/2 ok; seed 1: diverged at 3,100'."""
    bad = runs[runs["status"] != "ok"]
    if bad.empty:
        return "ok"
    parts = [f"seed {r.seed}: {r.status} at {int(r.evals):,}" if pd.notna(r.evals) else
             f"seed {r.seed}: {r.status}" for r in bad.itertuples()]
    return f"{len(runs) - len(bad)}/{len(runs)} ok; " + "; ".join(parts)


def checkpoint_table(results: Results, alpha: float = ALPHA) -> pd.DataFrame:
    """The 5K / 50K / Final table, one row per (task, scale, label): at each column the median
    over seeds of the test NLL (``seed_values``: +inf if the median seed failed, NaN if no seed
    applies), the seed range (max − min over the seeds that reached it), and against the best
    method of the column (lowest finite median, ties by label): the gap (median paired
    difference), the p-value of ``sign_flip_pvalue`` over the seeds both reached, their number
    and ``≈best`` — True when the method cannot be told apart from the best at level ``alpha``:
    p ≥ alpha (or no seed both reached) and no failure on a seed where the best reached the
    column. Also the seeds, median final evals, median FSC-0.5 resolution (Å) and the status.
    Interrupted runs are not results and are left out."""
    if "test_nll" not in results.trace:
        raise InputError("these results have no test_nll (tuning runs are scored on the "
                         "validation split); reports compare test NLL")
    results = comparable(results)
    values, rows = seed_values(results), []
    for (task, scale), cells in results.cells.groupby(["task", "scale"], sort=True):
        v = values[(values["task"] == task) & (values["scale"] == scale)]
        per = {label: g.set_index("seed") for label, g in v.groupby("label", sort=True)}
        best = {}
        for k in COLUMNS:
            med = pd.Series({label: g[k].median() for label, g in per.items()}, dtype=float)
            med = med[np.isfinite(med)].sort_index(kind="stable")
            best[k] = med.sort_values(kind="stable").index[0] if len(med) else None
        for label, runs in cells.groupby("label", sort=True):
            g, row = per[label], {"task": task, "scale": scale, "label": label, "Seeds": len(runs)}
            for k in COLUMNS:
                med = g[k].median()
                row |= {k: med, f"{k} range": _range(g[k])}
                if best[k] is None:
                    row |= {f"{k} best": False, f"{k} gap": np.nan, f"{k} p": np.nan,
                            f"{k} pairs": 0, f"{k} ≈best": False}
                    continue
                gap, p, pairs, apart = _versus(g[k], per[best[k]][k])
                if label == best[k]:
                    gap, p, apart = 0.0, np.nan, False
                row |= {f"{k} best": label == best[k], f"{k} gap": gap, f"{k} p": p,
                        f"{k} pairs": pairs, f"{k} ≈best": bool(not apart and not p < alpha)}
            evals = runs["evals"].median()
            row |= {"Final evals": int(evals) if pd.notna(evals) else np.nan,
                    "Resolution (Å)": runs["resolution_A"].median() if "resolution_A" in runs else np.nan,
                    "Status": _status(runs)}
            rows.append(row)
    per_column = [f"{k}{suffix}" for k in COLUMNS
                  for suffix in ("", " range", " best", " gap", " p", " pairs", " ≈best")]
    table = pd.DataFrame(rows, columns=["task", "scale", "label", "Seeds", *per_column,
                                        "Final evals", "Resolution (Å)", "Status"])
    if importance_cells(results):          # the cost beside the evaluations (issue 27)
        cost = final_exact_equivalent(results)
        table.insert(table.columns.get_loc("Final evals") + 1, COST_COLUMN,
                     [cost.get(k, np.nan) for k in zip(table["task"], table["scale"],
                                                        table["label"])])
    table.attrs["alpha"] = alpha
    table.attrs["references"] = dict(results.references)
    return table


def _markdown(df: pd.DataFrame, right: set) -> str:
    """A GitHub markdown table of already formatted strings (right-aligns the ``right`` columns)."""
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(esc, df.columns)) + " |",
             "|" + "|".join("---:" if c in right else ":---" for c in df.columns) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def noise_floor(table: pd.DataFrame) -> pd.Series:
    """(task, scale) → the median over methods of the Final seed range (NaN with one seed)."""
    return table.groupby(["task", "scale"], sort=True)["Final range"].median()


def table_note(table: pd.DataFrame) -> str:
    """The note under the table: what the numbers, the marks and the test are."""
    alpha = table.attrs.get("alpha", ALPHA)
    return (f"Test NLL, Σ −log p over the test images (lower is better): median over seeds; *range* "
            f"is max − min over seeds (the seed spread: read every gap against it); *gap to best* "
            f"is the median over seeds of (method − best) at Final, where best is the method with "
            f"the lowest median at that column. **Bold**: cannot be told apart from the best at "
            f"that column — exact one-sided paired sign-flip permutation test on the mean of the "
            f"per-seed differences (all 2^n sign flips, seed n = training stream n for every "
            f"method), level α = {alpha:g}; *p* is its p-value at Final. With n paired seeds the "
            f"smallest attainable p is 2^−n, so with fewer than 5 paired seeds the test cannot "
            f"tell any method apart at α = {alpha:g}. A seed that failed (diverged, error, time "
            f"limit) before a column counts as +∞ in medians and gaps, and a method that failed "
            f"on a seed where the best reached the column is told apart there without the test; "
            f"interrupted runs are not results and are left out. Resolution: FSC = 0.5 after "
            f"alignment." + (f" {COST_COLUMN}: the likelihood terms computed over the run / the "
                             f"terms of one exact evaluation (median over seeds), the cost of "
                             f"an importance-sampled run in exact evaluations."
                             if COST_COLUMN in table else ""))


def table_blocks(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Per dataset of the checkpoint table: (the line with the seeds and the noise floor, the
    methods as formatted markdown — NLL to 0.1, ``**bold**`` where ≈best, 'failed' where the
    median seed failed, '—' where missing, labels shown as they are (``md_text``) —, the table's
    own rows for them)."""
    num = lambda v, spec: "—" if pd.isna(v) else format(v, spec)
    alpha = table.attrs.get("alpha", ALPHA)
    n_min = int(np.floor(-np.log2(alpha))) + 1     # the fewest seeds with 2^−n < alpha
    blocks, floors = [], noise_floor(table)
    for (task, scale), t in table.groupby(["task", "scale"], sort=True):
        lo, hi = t["Seeds"].min(), t["Seeds"].max()
        seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
        floor = floors[(task, scale)]
        line = (f"**{md_text(task)} ({md_text(scale)})**: {seeds} seed{'s' if hi > 1 else ''} "
                "per method; noise "
                "floor (median over methods of the Final seed range): "
                + (f"{floor:,.1f}." if pd.notna(floor) else "not measurable (fewer than 2 seeds)."))
        ref = table.attrs.get("references", {}).get((task, scale))
        if ref is not None:
            line += f" The {md_text(ref['density'])}'s test NLL: {ref['truth_test_nll']:,.1f}."
        if lo < n_min:
            line += (f" Fewer than {n_min} seeds: the test cannot tell any method apart from the "
                     f"best (p ≥ 2^−n > {alpha:g}); only failures do.")
        shown = pd.DataFrame({"method": t["label"].map(md_text),
                              "seeds": t["Seeds"].map("{:d}".format)})
        for k in COLUMNS:
            shown[k] = [("**{}**" if mark else "{}").format(num(v, ",.1f")) if np.isfinite(v)
                        else "failed" if v == np.inf else "—" for v, mark in zip(t[k], t[f"{k} ≈best"])]
            shown[f"{k} range"] = t[f"{k} range"].map(lambda v: num(v, ",.1f"))
        shown["gap to best"] = ["best" if b else "failed" if g == np.inf else num(g, "+,.1f")
                                for g, b in zip(t["Final gap"], t["Final best"])]
        shown["p"] = t["Final p"].map(lambda v: num(v, ".3f"))
        shown["Final evals"] = t["Final evals"].map(lambda v: num(v, ",.0f"))
        if COST_COLUMN in t:
            shown[COST_COLUMN] = t[COST_COLUMN].map(lambda v: num(v, ",.0f"))
        shown["Resolution (Å)"] = t["Resolution (Å)"].map(lambda v: num(v, ".1f"))
        shown["Status"] = t["Status"].map(md_text)
        blocks.append((line, shown, t))
    return blocks


TEXT_COLUMNS = {"method", "Status"}                # left-aligned; every other shown column is a number


def table_markdown(table: pd.DataFrame) -> str:
    """The checkpoint table as markdown, one block per dataset (``table_blocks``): the line with
    the seeds and the noise floor, then the methods; the note."""
    blocks = []
    for line, shown, _ in table_blocks(table):
        blocks += [line, "", _markdown(shown, set(shown.columns) - TEXT_COLUMNS)]
    if table.empty:
        blocks = ["No results to compare (no run other than interrupted ones).", ""]
    return "\n".join(blocks + [table_note(table), ""])


FAILED_TEXT = ["cell", "task", "scale", "label", "status", "message"]


def failed_markdown(bad: pd.DataFrame) -> pd.DataFrame:
    """``failed_cells`` as formatted markdown: its text shown as it is (``md_text``), evals with
    thousands separators."""
    return bad.assign(**{c: bad[c].map(md_text) for c in FAILED_TEXT},
                      seed=bad["seed"].map(str),
                      evals=bad["evals"].map(lambda v: "—" if pd.isna(v) else f"{int(v):,}"))


def failed_cells(results: Results) -> pd.DataFrame:
    """The runs whose status is not ok (interrupted included), one row each: cell id, task, scale,
    label, seed, status, evals, the message's first line; sorted."""
    labels = dict(zip(*comparable(results).cells[["cell", "label"]].to_numpy().T))
    c = results.cells[results.cells["status"] != "ok"]
    first = lambda m: str(m).strip().splitlines()[0] if isinstance(m, str) and m.strip() else ""
    out = pd.DataFrame({"cell": c["cell"], "task": c["task"], "scale": c["scale"],
                        "label": [labels.get(x, lab) for x, lab in zip(c["cell"], c["label"])],
                        "seed": c["seed"], "status": c["status"],
                        "evals": c["evals"] if "evals" in c else np.nan,
                        "message": c["message"].map(first) if "message" in c else ""})
    return out.sort_values(["task", "scale", "label", "seed", "cell"], ignore_index=True)


def time_to_target(results: Results, tau=(1e-1, 1e-2)) -> pd.DataFrame:
    """Per run (task, scale, label, seed: every seed is a run) and tau: the evals and wall_s at
    which the run first reaches f0 − (1 − tau)(f0 − f_best), inf if never. Per dataset, f0 is
    the initial test NLL and f_best the lowest final test NLL over all runs that ended ok (NaN if
    none: then no run reaches a target). Interrupted runs are left out."""
    results, rows = comparable(results), []
    ok = set(results.cells.loc[results.cells["status"] == "ok", "cell"])
    for (task, scale), data in results.trace.groupby(["task", "scale"], sort=True):
        data = data.sort_values(["cell", "checkpoint"])
        f0 = data.loc[data["evals"] == 0, "test_nll"].median()
        finals = data.groupby("cell")["test_nll"].apply(lambda s: s.iloc[-1])
        finals = finals[finals.index.isin(ok) & np.isfinite(finals)]
        f_best = finals.min() if len(finals) else np.nan
        for t in np.atleast_1d(tau):
            target = f0 - (1 - t) * (f0 - f_best)
            for (label, seed, cell), run in data.groupby(["label", "seed", "cell"], sort=True):
                hit = run[run["test_nll"] <= target]
                rows.append({"task": task, "scale": scale, "seed": seed, "tau": float(t),
                             "label": label, "cell": cell, "f0": f0, "f_best": f_best,
                             "target": target,
                             "evals": float(hit["evals"].iloc[0]) if len(hit) else np.inf,
                             "wall_s": float(hit["wall_s"].iloc[0]) if len(hit) else np.inf})
    return pd.DataFrame(rows, columns=["task", "scale", "seed", "tau", "label", "cell", "f0",
                                       "f_best", "target", "evals", "wall_s"])


def performance_profile(ttt: pd.DataFrame) -> dict:
    """label → its sorted performance ratios from one tau's ``time_to_target`` rows, over all
    runs: a problem is a (task, scale, seed) — the training stream every method sees — and the
    ratio is the run's evals over the fastest method's on that problem (inf if it never reached
    the target or has no run there)."""
    if ttt.empty:
        return {}
    times = ttt.pivot_table(index=["task", "scale", "seed"], columns="label", values="evals",
                            aggfunc="first").fillna(np.inf).clip(lower=1)
    ratios = times.div(times.min(axis=1), axis=0).fillna(np.inf)
    return {label: np.sort(r.to_numpy(float)) for label, r in ratios.items()}
