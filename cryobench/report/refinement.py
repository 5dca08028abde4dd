"""The refinement section of a report (Toader, Brubaker & Lederman, "Efficient high-resolution
refinement in cryo-EM with stochastic gradient descent", 2025): their metrics on the result sets'
refinement cells (``[objective] kind = "refinement"``).

* **Heat maps** (:func:`heatmap_figure`, their figures of FSC per epoch): per method, the FSC per
  1-voxel shell (y, 1/Å) against the CG optimum (``fsc_shells.csv``; with a local search, which
  has no optimum, against the ground truth) per epoch (x), the median over seeds. Epoch e is the
  first checkpoint at ≥ e·K evaluations (K the training images, evaluations of any kind; a run
  is scored at every epoch, so it lies within one minibatch of e·K).
* **Epochs to the outer shells** (:func:`epochs_table`): per seed, the epochs (evaluations / K)
  at the first checkpoint whose outer FSC (:func:`outer_curves`: the lowest FSC against the
  optimum over the outer 20 % of the shells that lie wholly inside r_max) is ≥ 0.5 / 0.8 /
  0.95; +inf ("not reached") when no checkpoint is. A checkpoint lies at most one epoch after
  the crossing: an upper bound. Summarised per method as "median (min–max over seeds)".
* **Suboptimality** (:func:`subopt_figure`): (F(V) − F*)/image against epochs, log y, median
  and min–max band over seeds (each seed interpolated linearly in epochs within its range; a
  value ≤ 0 — within the optimum's CG residual — is not drawn on the log axis).

Known-pose tasks only have the optimum; local-search tasks have the heat maps against the truth
and no table or curves.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cryobench.harness.results import Results
from cryobench.report.style import line_styles, log_scale, style
from cryobench.report.tables import comparable, md_text

THRESHOLDS = (0.5, 0.8, 0.95)
EPOCH_COLUMNS = [f"epochs to {t:g}" for t in THRESHOLDS]
OUTER_SHELLS = 0.2      # the outer 20 % of shells, as in the runs' fsc_opt_outer (data.refinement)
REFERENCE_NAMES = {"optimum": "the CG optimum", "truth": "the ground truth"}


def _name(text: str) -> str:
    """``text`` as one safe file name (as report.figures names its files)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "_"


def refinement_pairs(results: Results) -> set[tuple[str, str]]:
    """(task, scale) of the refinement datasets: those whose cells recorded refinement facts
    (meta.json's ``refinement``) or FSC per shell."""
    marked = {c for c, r in results.records.items() if getattr(r, "refinement", None) is not None}
    marked |= set(results.shells["cell"])
    cells = results.cells[["task", "scale", "cell"]]
    return {(t, s) for t, s, c in cells.itertuples(index=False) if c in marked}


def datasets(results: Results) -> list[tuple[str, str, int]]:
    """(task, scale, K) of the refinement datasets (:func:`refinement_pairs`) that recorded K
    (their TaskFacts), sorted."""
    pairs = sorted(refinement_pairs(results))
    facts = {p: results.task_facts(*p) for p in pairs}
    return [(t, s, facts[(t, s)].n_train) for t, s in pairs if facts[(t, s)] is not None]


def outer_band(shell: np.ndarray, rmax: float) -> np.ndarray:
    """Which of the 1-voxel shells ``shell`` (index = rint |k|) are the outer shells a report
    reads: the outer :data:`OUTER_SHELLS` of (0, r_max] that lie wholly inside r_max,
    (1 − 0.2)·r_max < s ≤ r_max − ½. The shell at r_max straddles it: half its voxels lie
    beyond r_max, which no slice reaches and trilinear interpolation observes only through its
    spread, so its Hessian diagonal is a fraction of its neighbours' (at ci, median W 5.7
    against 33 one shell in) and it is the last shell every method learns. The trace's own
    ``fsc_opt_outer`` includes it."""
    shell = np.asarray(shell, dtype=float)
    return (shell > (1 - OUTER_SHELLS) * rmax) & (shell + 0.5 <= rmax)


def outer_curves(results: Results, task: str, scale: str, rmax: float) -> dict[str, pd.Series]:
    """{cell: its outer FSC per checkpoint (index evals)}: the lowest FSC against the CG optimum
    over :func:`outer_band`, from ``fsc_shells.csv``, for the cells of (task, scale) that
    scored against an optimum (a local search scores against the truth: none)."""
    cells = results.cells.loc[(results.cells["task"] == task) & (results.cells["scale"] == scale),
                              "cell"]
    shells = results.shells[results.shells["cell"].isin(cells)
                            & (results.shells["reference"] == "optimum")]
    shells = shells[outer_band(shells["shell"].to_numpy(), rmax)]
    lowest = shells.groupby(["cell", "evals"])["fsc"].min()
    return {cell: curve.droplevel("cell") for cell, curve in lowest.groupby(level="cell")}


def _epochs_to(curve: pd.Series, threshold: float, k: int) -> float:
    """Epochs (evals / K) at the first checkpoint of an outer-FSC ``curve`` (index evals) that
    is ≥ ``threshold``; +inf if none is."""
    hit = curve.index[curve.to_numpy() >= threshold]
    return float(hit.min()) / k if len(hit) else np.inf


def epochs_table(results: Results) -> pd.DataFrame:
    """One row per refinement run with an optimum: task, scale, label, optimizer, seed, cell,
    status, budget in epochs, epochs to each of :data:`THRESHOLDS` in the outer FSC
    (:func:`outer_curves`; +inf: not reached), and the last checkpoint's outer FSC and
    suboptimality (NaN after a failure: a non-finite iterate has neither)."""
    results, rows = comparable(results), []
    columns = ["task", "scale", "label", "optimizer", "seed", "cell", "status", "budget_epochs",
               *EPOCH_COLUMNS, "final_fsc_outer", "final_subopt"]
    traces = dict(tuple(results.trace.groupby("cell")))
    for task, scale, k in datasets(results):
        curves = outer_curves(results, task, scale, results.task_facts(task, scale).rmax_px)
        cells = results.cells[(results.cells["task"] == task) & (results.cells["scale"] == scale)]
        for r in cells.itertuples(index=False):
            if r.cell not in curves or r.cell not in traces:
                continue                                 # a local search: no optimum
            curve, last = curves[r.cell], traces[r.cell].sort_values("evals").iloc[-1]
            budget = results.records[r.cell].budget if r.cell in results.records else None
            rows.append({"task": task, "scale": scale, "label": r.label, "optimizer": r.optimizer,
                         "seed": r.seed, "cell": r.cell, "status": r.status,
                         "budget_epochs": (budget or last["evals"]) / k,
                         **{c: _epochs_to(curve, t, k) for c, t in zip(EPOCH_COLUMNS, THRESHOLDS)},
                         "final_fsc_outer": float(curve.get(last["evals"], np.nan)),
                         "final_subopt": float(last["subopt"])})
    return pd.DataFrame(rows, columns=columns)


def _epochs_text(v: float) -> str:
    return "not reached" if np.isinf(v) else f"{v:.3g}"


def _summary_text(values: pd.Series) -> str:
    """'median (min–max)' of per-seed epochs, 'not reached' for +inf (the median too when half
    or more of the seeds did not reach it)."""
    v = np.sort(values.to_numpy(float))
    if len(v) == 1 or np.isinf(v[0]):
        return _epochs_text(v[0])
    return f"{_epochs_text(float(np.median(v)))} ({_epochs_text(v[0])}–{_epochs_text(v[-1])})"


def _number(v: float, spec: str) -> str:
    """``v`` formatted by ``spec``; '—' if it is not finite (a failed median seed)."""
    return format(v, spec) if np.isfinite(v) else "—"


def epochs_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (task, scale, label) of :func:`epochs_table`: seeds, the epochs to each threshold as
    'median (min–max)', and the median final outer-shell FSC and suboptimality."""
    rows = []
    for (task, scale, label), g in table.groupby(["task", "scale", "label"], sort=True):
        rows.append({"task": task, "scale": scale, "label": label, "seeds": len(g),
                     **{c: _summary_text(g[c]) for c in EPOCH_COLUMNS},
                     "final outer FSC": _number(g["final_fsc_outer"].median(), ".3f"),
                     "final F − F* per image": _number(g["final_subopt"].median(), ".4g")})
    return pd.DataFrame(rows, columns=["task", "scale", "label", "seeds", *EPOCH_COLUMNS,
                                       "final outer FSC", "final F − F* per image"])


def _shells(results: Results, task: str, scale: str) -> pd.DataFrame:
    """The FSC-per-shell rows of one dataset's cells with their (comparable) label and seed."""
    cells = results.cells[(results.cells["task"] == task) & (results.cells["scale"] == scale)]
    return results.shells.merge(cells[["cell", "label", "seed"]], on="cell")


def heat(shells: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs 0 … E, freq per shell in 1/Å, FSC median over seeds (E + 1, shells)) of one
    method's per-shell rows (one reference): epoch e is each seed's first checkpoint at ≥ e·K
    evaluations; a seed without one (it stopped) is left out there; NaN where no seed has it."""
    epochs = np.arange(int(shells["evals"].max() // k) + 1)
    freq = np.sort(shells["freq"].unique())
    per_seed = []
    for _, run in shells.groupby("cell"):
        table = run.pivot_table(index="evals", columns="freq", values="fsc").reindex(columns=freq)
        at = np.searchsorted(table.index.to_numpy(float), epochs * float(k))   # first ≥ e·K
        rows = np.full((len(epochs), len(freq)), np.nan)
        ok = at < len(table)
        rows[ok] = table.to_numpy(float)[at[ok]]
        per_seed.append(rows)
    stack = np.stack(per_seed)
    count = np.isfinite(stack).sum(axis=0)
    median = np.where(count > 0, np.nanmedian(np.where(count > 0, stack, 0.0), axis=0), np.nan)
    return epochs, freq, median


def heatmap_figure(results: Results, task: str, scale: str, k: int) -> Figure:
    """One panel per method: FSC per shell (y, 1/Å) per epoch (x), median over seeds, against the
    optimum (or, with a local search, the truth); colour 0 … 1."""
    results = comparable(results)
    shells = _shells(results, task, scale)
    labels = sorted(shells["label"].unique())
    cols = min(4, max(1, len(labels)))
    rows = -(-len(labels) // cols) if labels else 1
    reference = REFERENCE_NAMES[sorted(shells["reference"].unique())[0]] if len(shells) else ""
    with style():
        fig = Figure(figsize=(3.4 * cols + 1.2, 2.8 * rows + 0.4), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        image = None
        for ax, label in zip(axes, labels):
            epochs, freq, median = heat(shells[shells["label"] == label], k)
            de, df = 1.0, (freq[1] - freq[0]) if len(freq) > 1 else 1.0
            image = ax.pcolormesh(np.append(epochs, epochs[-1] + de) - de / 2,
                                  np.append(freq, freq[-1] + df) - df / 2, median.T, vmin=0, vmax=1,
                                  cmap="viridis", shading="flat")
            ax.set(xlabel="epoch", ylabel="shell (1/Å)")
            ax.set_title(label, parse_math=False, fontsize=9)
            ax.grid(False)
        for ax in axes[len(labels):]:
            ax.set_visible(False)
        if image is not None:
            fig.colorbar(image, ax=list(axes[:len(labels)]),
                         label=f"FSC against {reference}\n(median over seeds)")
        fig.suptitle(f"{task} ({scale})", fontsize=10)
    return fig


def _seed_band(run_curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """(x, median, min, max) over seeds of curves (x, y), each interpolated linearly within its
    own x-range on the union of their x; non-positive y are left out first."""
    runs = [(x[y > 0], y[y > 0]) for x, y in run_curves]
    runs = [(x, y) for x, y in runs if len(x)]
    if not runs:
        return (np.array([]),) * 4
    grid = np.unique(np.concatenate([x for x, _ in runs]))
    m = np.array([np.where((grid < x[0]) | (grid > x[-1]), np.nan, np.interp(grid, x, y))
                  for x, y in runs])
    count = np.isfinite(m).sum(axis=0)
    safe = np.where(count > 0, m, 0.0)
    with np.errstate(all="ignore"):
        return (grid, np.nanmedian(safe, axis=0), np.nanmin(safe, axis=0),
                np.nanmax(safe, axis=0))


def subopt_figure(results: Results) -> Figure:
    """Per refinement dataset with an optimum, (F(V) − F*) per image against epochs (log y):
    median over seeds, min–max band."""
    results = comparable(results)
    keys = [(t, s, k) for t, s, k in datasets(results)
            if "subopt" in results.trace and results.trace.loc[
                (results.trace["task"] == t) & (results.trace["scale"] == s), "subopt"].notna().any()]
    styles = line_styles(results.cells["label"])
    with style():
        fig = Figure(figsize=(4.6 * max(1, len(keys)) + 2.2, 3.6), layout="constrained")
        axes = fig.subplots(1, max(1, len(keys)), squeeze=False)[0]
        for ax, (task, scale, k) in zip(axes, keys):
            data = results.trace[(results.trace["task"] == task) & (results.trace["scale"] == scale)]
            for label, d in data.groupby("label", sort=True):
                curves = [(r["evals"].to_numpy(float) / k, r["subopt"].to_numpy(float))
                          for _, r in d.sort_values("evals").groupby("seed")]
                x, med, lo, hi = _seed_band([(x, y) for x, y in curves if np.isfinite(y).any()])
                if not len(x):
                    continue
                ax.plot(x, med, **styles[label], lw=1.4, label=label, gid=label)
                if d["seed"].nunique() > 1:
                    ax.fill_between(x, lo, hi, color=styles[label]["color"], alpha=0.2, lw=0)
            ax.set(yscale=log_scale(ax.yaxis), xlabel="epoch (evaluations / K)",
                   ylabel="F(V) − F* per image")
            ax.set_title(f"{task} ({scale})", parse_math=False)
        handles = {}
        for ax in axes:
            handles.update(dict(zip(ax.get_legend_handles_labels()[1],
                                    ax.get_legend_handles_labels()[0])))
        if handles:
            legend = fig.legend([handles[k] for k in sorted(handles)], sorted(handles),
                                loc="outside right upper", title="method\n(median; band: min–max)")
            for text in legend.get_texts():
                text.set_parse_math(False)
    return fig


def refinement_figures(results: Results) -> list[tuple]:
    """The refinement figures of a result set as report.figures lists them: (file name,
    caption, make, args); none without refinement cells."""
    keys = datasets(comparable(results))
    figs = []
    for task, scale, k in keys:
        shells = results.shells[results.shells["cell"].isin(
            results.cells.loc[(results.cells["task"] == task) & (results.cells["scale"] == scale), "cell"])]
        if len(shells):
            ref = REFERENCE_NAMES[sorted(shells["reference"].unique())[0]]
            figs.append((_name(f"refinement-fsc-epochs-{task}-{scale}"),
                         f"FSC per shell against {ref} per epoch (median over seeds): "
                         f"{md_text(task)} ({md_text(scale)})", heatmap_figure, (task, scale, k)))
    if len(epochs_table(results)):
        figs.append(("refinement-subopt", "Suboptimality (F(V) − F*) per image against epochs "
                     "(median over seeds; band: min–max)", subopt_figure, ()))
    return figs


EPOCHS_NOTE = ("Epochs (evaluations / K, any kind) at the first checkpoint whose lowest FSC "
               "against the CG optimum over the outer 20 % of the shells wholly inside r_max "
               "(the shell at r_max, half outside, is left out) reaches the threshold: median "
               "(min–max over seeds); a run is scored at every epoch, so a value is at most one "
               "epoch late. \"not reached\": not within the run's budget.")


def refinement_tables(results: Results) -> list[tuple[str, str, pd.DataFrame]]:
    """[(title, note, table)] of the refinement section: the epochs to the outer shells
    (:func:`epochs_summary`), if the set has refinement runs with an optimum."""
    table = epochs_table(results)
    if table.empty:
        return []
    return [("Refinement: epochs to the outer shells (FSC against the optimum)", EPOCHS_NOTE,
             epochs_summary(table))]


def refinement_markdown(results: Results, level: str) -> list[str]:
    """Markdown lines of :func:`refinement_tables` (headings at ``level``)."""
    md = []
    for title, note, table in refinement_tables(results):
        md += [f"{level} {title}", "", note, "",
               "| " + " | ".join(table.columns) + " |",
               "|" + "|".join(":---" if c in ("task", "scale", "label") else "---:"
                              for c in table.columns) + "|"]
        md += ["| " + " | ".join(md_text(v).replace("|", "\\|") for v in row) + " |"
               for row in table.astype(str).itertuples(index=False)]
        md.append("")
    return md
