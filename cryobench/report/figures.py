"""Reports from loaded results: the paper's Figure 3 (``convergence_figure``), Figure 4
(``density_figure``), FSC curves and Dolan–Moré performance profiles over gradient evaluations;
the 5K / 50K / Final table with seed spreads and significance marks, time-to-target and the
failed cells come from ``report_tables`` (importable from here too).

``write_report`` and ``write_leaderboard`` write them; the same results give byte-identical files
(no timestamps or version strings, a fixed SVG hash salt, fixed float formats, sorted rows).
Figures are ``matplotlib.figure.Figure`` objects built under a local ``rc_context``: no pyplot
state, no global configuration touched.
"""
from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from cryobench.base.files import atomic_write
from cryobench.harness.results import Results, combine, load_results
from cryobench.report.cost import importance_cells, on_cost_axis
from cryobench.report.densities import _lowest_seed_cells, density_figure  # noqa: F401
from cryobench.report.findings_section import findings_section
from cryobench.report.html import page_html, section_html
from cryobench.report.oracles import oracle_section
from cryobench.report.progress import in_progress, planned_runs, runs_summary
from cryobench.report.ranking import ranking_section
from cryobench.report.refinement import epochs_table, refinement_figures, refinement_markdown
from cryobench.report.style import RC, line_styles, log_scale, style as _style  # noqa: F401
from cryobench.report.style import portable_log as _log  # NumPy's log follows the CPU
from cryobench.report.tables import (ALPHA, SNAPSHOTS, _markdown, checkpoint_table, comparable,  # noqa: F401
                                     failed_cells, failed_markdown, md_code, md_text,
                                     performance_profile, seed_values, sign_flip_pvalue,
                                     table_markdown, time_to_target)

DATASET = ["task", "scale"]
BAND = "median over seeds; band: min–max over seeds"


def _datasets(results: Results) -> list[tuple]:
    """(task, scale, panel title) sorted; the title shows the scale if a task has several."""
    pairs = sorted({(t, s) for t, s in results.cells[DATASET].itertuples(index=False)})
    several = {t for t in {p[0] for p in pairs} if sum(p[0] == t for p in pairs) > 1}
    return [(t, s, f"{t} ({s})" if t in several else t) for t, s in pairs]


def seed_curves(trace: pd.DataFrame, failed=()) -> pd.DataFrame:
    """Median, min and max of test NLL over seeds on the union of the seeds' evaluation counts
    (each seed interpolated in log evals within its own range; 0 and non-finite values dropped).
    A seed in ``failed`` (its run failed) counts as +inf after its last finite point in the
    median, which is NaN where it is infinite (at least half the seeds have failed by then); min
    and max are over the seeds still running."""
    t = trace[(trace["evals"] > 0) & np.isfinite(trace["test_nll"])].sort_values("evals")
    evals = np.unique(t["evals"].to_numpy(float))
    grid, curves = _log(evals), {seed: np.full(len(evals), np.inf) for seed in failed}
    for seed, run in t.groupby("seed"):
        x, y = _log(run["evals"].to_numpy(float)), run["test_nll"].to_numpy(float)
        after = np.inf if seed in set(failed) else np.nan
        curves[seed] = np.where(grid < x[0], np.nan, np.where(grid > x[-1], after, np.interp(grid, x, y)))
    c = pd.DataFrame(curves, index=evals, dtype=float)
    median, finite = c.median(axis=1).to_numpy(float), c.replace(np.inf, np.nan)
    return pd.DataFrame({"evals": evals, "median": np.where(np.isfinite(median), median, np.nan),
                         "lo": finite.min(axis=1).to_numpy(float),
                         "hi": finite.max(axis=1).to_numpy(float)})


LEGEND_WIDTH = 40                     # characters per line of a legend entry


def _legend(fig: Figure, title: str = "method") -> None:
    """One legend for the figure: every labelled artist once, sorted by label, each label as it
    is (no mathtext: a ``$`` is a dollar sign), wrapped at ``LEGEND_WIDTH`` characters."""
    seen = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        legend = fig.legend([seen[k] for k in sorted(seen)],
                            [textwrap.fill(k, LEGEND_WIDTH) for k in sorted(seen)],
                            loc="outside right upper", title=title)
        for text in legend.get_texts():
            text.set_parse_math(False)


def _panels(rows: int, cols: int, height: float) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of rows × cols axes, room on the right for the legend."""
    fig = Figure(figsize=(4.2 * cols + 1.6, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _window(c: pd.DataFrame, start: float, cap: float) -> tuple[float, float]:
    """Lowest and highest band values of curve ``c`` from evals ``start`` on (interpolated at
    ``start``), ignoring values above ``cap`` (worse than the initial density)."""
    at = [np.interp(_log(start), _log(c["evals"]), c[k]) for k in ("lo", "hi")] if len(c) else []
    y = np.concatenate([c.loc[c["evals"] >= start, ["lo", "hi"]].to_numpy().ravel(), at])
    y = y[np.isfinite(y) & (y <= cap)]
    return (y.min(), y.max()) if y.size else (np.nan, np.nan)


def _set_ylim(ax, lo: float, hi: float, pad: float = 0.05) -> None:
    """y-limits [lo, hi] with a margin, if both are finite."""
    if np.isfinite(lo) and np.isfinite(hi) and hi >= lo:
        margin = pad * (hi - lo) if hi > lo else max(1e-6 * abs(lo), 1e-3)
        ax.set_ylim(lo - margin, hi + margin)


def _plain_tick(v: float, _) -> str:
    """'20,000' at 1, 2 and 5 times a power of ten, else no label (the zoom's log x-axis)."""
    mantissa = v / 10 ** np.floor(np.log10(v)) if v > 0 else 0
    return f"{v:,.0f}" if any(np.isclose(mantissa, m) for m in (1, 2, 5)) else ""


def convergence_figure(results: Results, xlabel: str = "gradient evaluations") -> Figure:
    """Figure 3: per dataset (columns) test NLL vs gradient evaluations (top, log x) and a zoom on
    the last decade of evaluations (bottom, y fitted there); median over seeds, min–max band over
    seeds (``seed_curves``: a failed seed counts as +inf after its end, so the median curve ends,
    with ×, where at least half the seeds have failed). The top y-range runs from the best value
    (or the ground truth's, dotted, when the results have a reference) to the initial NLL (the
    0-evaluation point itself is off the log axis; worse values are cut off). Interrupted runs
    are left out. ``xlabel``: what the trace's ``evals`` hold (:func:`cost_figure` puts the
    exact-equivalent evaluations there)."""
    results = comparable(results)
    styles, datasets = line_styles(results.cells["label"]), _datasets(results)
    with _style():
        fig, axes = _panels(2, len(datasets), 6.4)
        for (task, scale, title), top, zoom in zip(datasets, *axes):
            data = results.trace[(results.trace["task"] == task) & (results.trace["scale"] == scale)]
            cells = results.cells[(results.cells["task"] == task) & (results.cells["scale"] == scale)]
            failed = cells[cells["status"] != "ok"].groupby("label")["seed"].agg(set)
            f0, start = data.loc[data["evals"] == 0, "test_nll"].median(), data["evals"].max() / 10
            windows = []
            for label, d in data.groupby("label", sort=True):
                c, st = seed_curves(d, failed.get(label, ())), styles[label]
                for ax in (top, zoom):
                    ax.plot(c["evals"], c["median"], **st, lw=1.5, label=label, gid=label)
                    if d["seed"].nunique() > 1:
                        ax.fill_between(c["evals"], c["lo"], c["hi"], color=st["color"], alpha=0.2, lw=0)
                ends = c[np.isfinite(c["median"])].iloc[-1:]
                if 2 * len(failed.get(label, ())) >= d["seed"].nunique() and len(ends):
                    top.plot(ends["evals"], ends["median"], "x", ms=7, mew=2, color=st["color"])
                windows.append(_window(c, start, f0 if np.isfinite(f0) else np.inf))
            ref = results.references.get((task, scale))
            lowest = data["test_nll"][np.isfinite(data["test_nll"])].min()
            if ref is not None:                 # outside the zoom's fitted range it is not drawn
                for ax in (top, zoom):
                    ax.axhline(ref["truth_test_nll"], color="0.15", ls=":", lw=1.3,
                               label=ref["density"], gid="reference")
                lowest = min(lowest, ref["truth_test_nll"])
            top.set(xscale=log_scale(top.xaxis), ylabel="test NLL")
            top.set_title(title, parse_math=False)
            _set_ylim(top, lowest, f0, pad=0.03)
            zoom.set(xscale=log_scale(zoom.xaxis), xlabel=xlabel, ylabel="test NLL",
                     title=f"last decade (≥ {start:,.0f})" if start > 0 else "last decade")
            if start > 0:
                zoom.set_xlim(start, 10 * start)
                for axis in (zoom.xaxis.set_major_formatter, zoom.xaxis.set_minor_formatter):
                    axis(FuncFormatter(_plain_tick))
            w = pd.DataFrame(windows, columns=["lo", "hi"], dtype=float)
            _set_ylim(zoom, w["lo"].min(), w["hi"].max())
        _legend(fig, "method\n(median over seeds;\nband: min–max)")
    return fig


def cost_figure(results: Results) -> Figure:
    """Figure 3 on the cost axis: test NLL vs exact-equivalent evaluations, terms computed /
    terms of one exact evaluation (:mod:`cryobench.report.cost`); exact runs as in Figure 3,
    importance-sampled runs moved left by the terms they did not compute."""
    return convergence_figure(on_cost_axis(comparable(results)), "exact-equivalent evaluations")


def fsc_figure(results: Results) -> Figure:
    """FSC of the final (aligned) densities against the ground truth, one panel per dataset, one
    line per label (its lowest seed); the 0.5 threshold as a dashed line. The x-axis ends at
    twice the highest frequency where a curve is still ≥ 0.5 (Nyquist if that is beyond it):
    past the band limit the curves are noise about 0 and, drawn to Nyquist, squeeze the
    resolved shells into the left edge."""
    results = comparable(results)
    styles, datasets = line_styles(results.cells["label"]), _datasets(results)
    with _style():
        fig, (axes,) = _panels(1, len(datasets), 3.4)
        for ax, (task, scale, title) in zip(axes, datasets):
            resolved, nyquist = 0.0, 0.0
            for label, cell in _lowest_seed_cells(results, task, scale).items():
                f = results.fsc[(results.fsc["cell"] == cell) & (results.fsc["label"] == "final")]
                if len(f):
                    ax.plot(f["freq"], f["fsc"], **styles[label], lw=1.3, label=label, gid=label)
                    resolved = max([resolved, *f.loc[f["fsc"] >= 0.5, "freq"]])
                    nyquist = max(nyquist, f["freq"].max())
            ax.axhline(0.5, color="0.3", ls="--", lw=1, label="_nolegend_")
            ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC (final density)",
                   ylim=(-0.1, 1.05))
            ax.set_title(title, parse_math=False)
            if resolved > 0:
                ax.set_xlim(0, min(2 * resolved, nyquist))
                ax.xaxis.set_major_locator(MaxNLocator(5))      # short labels on a narrow range
        _legend(fig)
    return fig


def profile_figure(results: Results, tau=(1e-1, 1e-2)) -> Figure:
    """Dolan–Moré performance profiles over gradient evaluations, one panel per tau, over all runs
    (``performance_profile``: a problem is a dataset and a seed): the fraction of problems a label
    solves within a factor α of the fastest label (α on a log2 axis)."""
    results = comparable(results)
    styles, taus = line_styles(results.cells["label"]), list(np.atleast_1d(tau))
    ttt = time_to_target(results, taus)
    with _style():
        fig, (axes,) = _panels(1, len(taus), 3.4)
        for ax, t in zip(axes, taus):
            prof = performance_profile(ttt[np.isclose(ttt["tau"], t)])
            finite = np.concatenate([r[np.isfinite(r)] for r in prof.values()] + [[1.0]])
            amax = max(2.0, 1.25 * finite.max())
            for label, r in prof.items():
                x = np.unique(np.concatenate([[1.0], r[np.isfinite(r)], [amax]]))
                y = np.searchsorted(r, x, side="right") / len(r)     # fraction with ratio ≤ x
                ax.step(x, y, where="post", **styles[label], lw=1.5, label=label, gid=label)
            ax.set_xscale(log_scale(ax.xaxis, base=2))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            n = len(next(iter(prof.values()))) if prof else 0
            ax.set(xlim=(1, amax), ylim=(-0.02, 1.02), title=f"τ = {t:g} ({n} problems: dataset × seed)",
                   xlabel="α (within a factor of the best evaluations)",
                   ylabel="fraction of problems solved")
        _legend(fig)
    return fig


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and .svg deterministically and atomically."""
    out = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buf = io.BytesIO()
        with _style():
            fig.savefig(buf, format=ext, dpi=150, metadata=meta)
        path = stem.with_name(f"{stem.name}.{ext}")
        atomic_write(path, buf.getvalue())
        out.append(path)
    return out


def _file_name(text: str) -> str:
    """``text`` as one safe file name: letters, digits, '.', '_' and '-' only, no leading dot
    (a task given as a path, or a scale a results folder made up, never leaves the folder)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "_"


def _figures(results: Results, folder: Path, prefix: str = "") -> dict[str, tuple[str, list[Path]]]:
    """All figures of a results set into ``folder`` as {name: (caption, [png, svg])}."""
    results = comparable(results)
    if results.cells.empty:
        return {}
    figs = [("convergence", f"Test NLL vs gradient evaluations (Figure 3): {BAND}",
             convergence_figure, ())]
    figs += [("convergence-cost", "Test NLL vs exact-equivalent evaluations (likelihood terms "
              "computed / terms of one exact evaluation; the importance-sampled runs' cost): "
              f"{BAND}", cost_figure, ())] * bool(importance_cells(results))
    figs += [(_file_name(f"densities-{t}-{s}"), f"Densities at 5K / 50K / final: {md_text(t)} "
              f"({md_text(s)}) (Figure 4)", density_figure, (t, s))
             for t, s, _ in _datasets(results)]
    figs += [("fsc", "FSC of the final densities against the ground truth", fsc_figure, ())] * (
        len(results.fsc) > 0)
    figs += [("profile", "Performance profiles over gradient evaluations (every run; a problem is "
              "a dataset and a seed; targets from the best final over all runs)", profile_figure, ())]
    figs += refinement_figures(results)         # refinement tasks: report/refinement.py
    return {name: (caption, _save(make(results, *args), folder / f"{prefix}{name}"))
            for name, caption, make, args in figs}


PROVENANCE = ("cryobench", "git_commit", "cpu", "cores", "blas", "blas_threads", "numba_threads",
              "python", "numpy", "platform")


def provenance(results: Results) -> list[str]:
    """Markdown bullets: the distinct provenance values (sorted) over the cells' records, shown
    as they are (``md_text``)."""
    seen: dict[str, set] = {k: set() for k in PROVENANCE}
    for record in (results.records[c] for c in sorted(results.records)):
        prov = record.provenance
        if prov.get("git_commit") and prov.get("git_dirty"):
            prov = {**prov, "git_commit": f"{prov['git_commit']} (with uncommitted changes)"}
        for key in PROVENANCE:
            seen[key] |= {str(prov[key])} if prov.get(key) is not None else set()
    return [f"- {k}: {', '.join(map(md_text, sorted(v)))}" for k, v in seen.items() if v]


def _relabelled(results: Results) -> list[str]:
    """Markdown bullets naming the labels ``comparable`` extended (given label → shown labels)."""
    c = comparable(results).cells
    c = c[c["label"] != c["given_label"]].groupby(["task", "scale", "given_label"], sort=True)
    return [f"- {md_text(t)} ({md_text(s)}): {md_code(g)} → " + ", ".join(
        md_code(x) for x in sorted(set(x["label"]))) for (t, s, g), x in c]


def _section(results: Results, table: pd.DataFrame, figs: dict, rel: str, level: str,
             planned: int | None = None) -> list[str]:
    """Markdown for one results set: table, figures (relative links), runs (of the ``planned``
    its grid file names, if known), failed / incomplete cells, provenance."""
    md = [*([runs_summary(results, planned), ""] if in_progress(results, planned) else []),
          f"{level} Test NLL at 5K / 50K / final gradient evaluations", "", table_markdown(table),
          *refinement_markdown(results, level)]
    if relabelled := _relabelled(results):
        md += ["Labels extended so that no row averages different configurations or two runs of "
               "one seed:", "", *relabelled, ""]
    for name, (caption, paths) in figs.items():
        md += [f"{level} {caption}", "",
               f"![{name}]({rel}{paths[0].name}) ([svg]({rel}{paths[1].name}))", ""]
    md += [f"{level} Runs", "", runs_summary(results, planned), ""]
    bad = failed_cells(results)
    if len(bad):
        md += [f"{level} Failed / incomplete cells", "",
               "Diverged, error and time-limited (`budget`) runs are results and enter the table "
               "as failures; `interrupted` runs are not results and are left out of it.", "",
               _markdown(failed_markdown(bad), {"seed", "evals"})]
    return md + [f"{level} Provenance", "", *provenance(results), ""]


def write_report(results: Results, out_dir, title: str = "cryobench report",
                 planned: int | None = None) -> list[Path]:
    """Write figures (png + svg), table.md/.csv, time_to_target.csv, report.md (and for refinement
    cells refinement_epochs.csv, report/refinement.py) into
    ``out_dir``; byte-identical for the same results. ``planned``: how many runs the results'
    grid file names (:func:`planned_runs`), to say when they are still in progress. Returns the
    paths written."""
    out = Path(out_dir)
    table = checkpoint_table(results)
    figs = _figures(results, out)
    files = {"table.md": table_markdown(table),
             "table.csv": table.to_csv(index=False, float_format="%.10g", lineterminator="\n"),
             "time_to_target.csv": time_to_target(results).to_csv(
                 index=False, float_format="%.10g", lineterminator="\n"),
             "report.md": "\n".join([f"# {title}", "",
                                        *_section(results, table, figs, "", "##", planned)])}
    if len(epochs := epochs_table(results)):
        files["refinement_epochs.csv"] = epochs.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    for name, text in files.items():
        atomic_write(out / name, text)
    return [p for _, paths in figs.values() for p in paths] + [out / n for n in files]


def result_sets(results_root) -> list[str]:
    """Names of the subfolders of ``results_root`` holding ``cells/`` whose traces have test_nll
    (tuning runs, scored on validation_nll, are skipped), sorted."""
    names = []
    for sub in sorted(p for p in Path(results_root).iterdir() if (p / "cells").is_dir()):
        traces = sorted(sub.glob("cells/*/trace.csv"))
        if traces and "test_nll" in pd.read_csv(traces[0], nrows=0).columns:
            names.append(sub.name)
    return names


def write_leaderboard(results_root, out=None, sets=None,
                      title: str = "cryobench leaderboard") -> list[Path]:
    """Write ``out`` (default ``results_root/LEADERBOARD.md``) and the same as a static page
    beside it (``.html``: sortable tables, figures inline, runs linked to their meta.json;
    :mod:`cryobench.report.html`): first one ranking per (task, scale) of every method of every
    set (:mod:`cryobench.report.ranking`), then one section per results set (the given ``sets`` names, else
    ``result_sets``), with figures in ``<out folder>/figures/<set>-*`` linked relatively.
    Last, the paper's findings beside ours (:mod:`cryobench.report.findings`, with the task
    facts the runs recorded).
    Byte-identical for the same results. Returns the paths written."""
    root = Path(results_root)
    out = Path(out) if out is not None else root / "LEADERBOARD.md"
    fig_dir = out.parent / "figures"
    intro = "Regenerate with `cryobench leaderboard`; the same results give byte-identical output."
    md, written = [f"# {title}", "", intro, ""], []
    names = sets if sets is not None else result_sets(root)
    loaded = {name: load_results(root / name) for name in names}
    combined = combine(*(loaded[n] for n in sorted(loaded))) if loaded else None
    md_ranking, body = ranking_section(loaded, combined)
    (md_oracles, html_oracles), (findings_md, findings_html) = (
        (oracle_section(combined), findings_section(combined)) if loaded else (([], []), ([], [])))
    md, body = md + md_ranking + md_oracles, body + html_oracles
    for name in names:
        results = loaded[name]
        table = checkpoint_table(results)
        figs = _figures(results, fig_dir, prefix=f"{name}-")
        written += [p for _, paths in figs.values() for p in paths]
        planned = planned_runs(root / name)
        md += [f"## {md_text(name)}", "", *_section(results, table, figs, "figures/", "###", planned)]
        body += section_html(name, results, table, figs, _relabelled(results), provenance(results),
                             out.parent, planned)
    md, body = md + findings_md, body + findings_html
    page = out.with_suffix(".html")
    anchors = ((["ranking"] if md_ranking else []) + (["oracles"] if md_oracles else []) + names
               + (["findings"] if findings_html else []))
    atomic_write(out, "\n".join(md))
    atomic_write(page, page_html(title, intro, anchors, body, markdown=out.name))
    return written + [out, page]

