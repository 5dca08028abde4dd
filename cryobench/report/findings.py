"""The paper's findings (Brubaker & Punjani 2015, §4 and Figure 3) beside what the committed
results measure: one row per (finding, task, scale) with the numbers, the seed spread and a
verdict — reproduced, not reproduced, partly, or not measurable (and why).

Each finding is turned into a stated, checkable criterion (the paper gives none); the criteria
are in :data:`FINDINGS` and printed with the table. Methods are compared by seed (the same
training stream), median over seeds; with n seeds, "ahead on every seed" has a sign-flip p of
2^−n (1/8 for 3 seeds), which is reported with it. Values between checkpoints are interpolated
linearly in log evaluations; a run that failed (diverged, error, time limit) counts as +inf from
its failure on.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.refinement import refinement_pairs
from cryobench.report.style import portable_log   # NumPy's log follows the CPU in the last bit
from cryobench.report.tables import ALPHA, comparable, md_text, sign_flip_pvalue

PAPER = ["sgd", "momentum", "nesterov", "adagrad", "tonga", "olbfgs", "hessian-free"]
NAMES = {"sgd": "SGD", "momentum": "CM", "nesterov": "NAG", "adagrad": "AdaGrad", "tonga": "TONGA",
         "olbfgs": "oLBFGS", "hessian-free": "HF", "em": "EM", "projection-matching": "PM"}
BAND_FACTOR = 1.5          # "a reasonable structure": FSC 0.5 within 1.5 × the band-limit resolution

FINDINGS = {
    "within-two": ("All methods end within two log units of each other (§4).",
                   "range of the seven methods' final median test NLL ≤ 2 nats (the test set's "
                   "log-likelihood; the paper does not say which log)"),
    "synthetic-plateau": ("Synthetic set: SGD and AdaGrad slow down around 10⁴ evaluations, while "
                          "TONGA, CM and NAG do well (Fig. 3).",
                          "at 2·10⁴ evaluations the best of TONGA / CM / NAG is ahead of SGD and of "
                          "AdaGrad on every seed"),
    "quasi-newton": ("oLBFGS and HF are not worth their extra evaluations (§4, both sets).",
                     "at 50K evaluations and at the end, neither oLBFGS nor HF is ahead of SGD "
                     "by the paired test (sign-flip p below 0.05 on the seeds both reached, or SGD's "
                     "median seed failed where theirs did not)"),
    "thermus-order": ("Thermus: SGD, AdaGrad and TONGA converge faster than oLBFGS or the momentum "
                      "methods (§4).",
                      "at 5K and 50K evaluations, each of SGD / AdaGrad / TONGA ahead of each of "
                      "oLBFGS / CM / NAG (median): reproduced if all 18 pairs are, partly if most"),
    "one-epoch": ("A reasonable structure within one epoch from a random start (abstract, §5).",
                  f"after one epoch (the first snapshot at ≥ K evaluations) SGD's FSC-0.5 "
                  f"resolution is within {BAND_FACTOR}× the band limit 1/r_max (median over seeds)"),
    "figure-6": ("Projection matching and RELION's batch EM after five iterations are further from a "
                 "solution than SGD after one epoch (§4, Fig. 6).",
                 "SGD's median FSC-0.5 resolution after one epoch (the first snapshot at ≥ K "
                 "evaluations) finer, by more than one Fourier shell, than EM's and projection "
                 "matching's after five iterations (the finer of their snapshots either side of "
                 "5·K evaluations); test NLL given beside"),
}


def _curve(trace: pd.DataFrame, failed: bool):
    """f(evals) → test NLL of one run: log-linear between checkpoints, +inf after a failure."""
    t = trace[(trace["evals"] > 0) & np.isfinite(trace["test_nll"])].sort_values("evals")
    x, y = portable_log(t["evals"].to_numpy(float)), t["test_nll"].to_numpy(float)
    last = trace["evals"].max()

    def at(evals: float) -> float:
        if not len(x) or portable_log(evals) < x[0]:
            return np.nan
        if portable_log(evals) > x[-1]:
            return np.inf if failed or evals > last else np.nan
        return float(np.interp(portable_log(evals), x, y))
    return at


def _per_seed(results: Results, task: str, scale: str) -> dict:
    """{optimizer: {seed: (curve, final NLL, cell)}} of the runs of one dataset; an optimizer
    run in several configurations (labels) is represented by its label with the most seeds."""
    cells = results.cells[(results.cells["task"] == task) & (results.cells["scale"] == scale)
                          & (results.cells["status"] != "interrupted")]
    traces = dict(tuple(results.trace.groupby("cell")))
    counts = cells.groupby(["optimizer", "label"]).size().reset_index(name="n")
    chosen = set(counts.sort_values(["n", "label"], ascending=[False, True])
                 .drop_duplicates("optimizer")["label"])
    out: dict = {}
    for r in cells.itertuples(index=False):
        if r.label not in chosen:
            continue
        failed = r.status != "ok"
        t = traces.get(r.cell, results.trace.iloc[:0])          # a failed run may have no rows
        final = np.inf if failed else (float(t.sort_values("evals")["test_nll"].iloc[-1])
                                       if len(t) else np.nan)
        out.setdefault(r.optimizer, {})[r.seed] = (_curve(t, failed), final, r.cell)
    return out


def _values(runs: dict, evals: float | None) -> list[float]:
    """Each seed's test NLL at ``evals`` (None: its final value), seeds that do not apply left out."""
    v = [final if evals is None else curve(evals) for curve, final, _ in runs.values()]
    return [x for x in v if not np.isnan(x)]


def _median_at(runs: dict, evals: float | None) -> float:
    v = _values(runs, evals)
    return float(np.median(v)) if v else np.nan


def _fmt(v: float) -> str:
    return "—" if v is None or np.isnan(v) else ("failed" if np.isinf(v) else f"{v:,.1f}")


def _spread(runs: dict, evals: float | None) -> float:
    v = [x for x in _values(runs, evals) if np.isfinite(x)]
    return float(max(v) - min(v)) if len(v) > 1 else np.nan


def _within_two(m: dict, **_) -> tuple[str, str]:
    have = [k for k in PAPER if k in m]
    finals = {k: _median_at(m[k], None) for k in have}
    failed = [NAMES[k] for k, v in finals.items() if np.isinf(v)]
    ok = {k: v for k, v in finals.items() if np.isfinite(v)}
    if len(ok) < 2:
        return "not measurable", "fewer than two methods finished"
    lo, hi = min(ok, key=ok.get), max(ok, key=ok.get)
    spreads = [s for s in (_spread(m[k], None) for k in ok) if np.isfinite(s)]
    text = (f"range {ok[hi] - ok[lo]:.1f} nats ({NAMES[lo]} {ok[lo]:,.1f} … {NAMES[hi]} "
            f"{ok[hi]:,.1f}); " + (f"largest seed range of one method {max(spreads):.1f}" if spreads
                                   else "seed ranges not measurable (one seed per method)"))
    if failed:
        text += f"; failed (median seed): {', '.join(failed)}"
    if len(have) < len(PAPER):
        text += f"; missing: {', '.join(NAMES[k] for k in PAPER if k not in m)}"
    verdict = "reproduced" if ok[hi] - ok[lo] <= 2 and not failed else "not reproduced"
    return verdict, text


def _ahead(a: dict, b: dict, evals) -> tuple[int, int, float]:
    """On the seeds both have at ``evals``: (seeds where run set ``a`` is below ``b``, seeds,
    median of b − a)."""
    seeds = sorted(set(a) & set(b))
    d = [b[s][0](evals) - a[s][0](evals) for s in seeds]
    d = [x for x in d if not np.isnan(x)]
    return sum(x > 0 for x in d), len(d), float(np.median(d)) if d else np.nan


def _plateau(m: dict, **_) -> tuple[str, str]:
    at = 2e4
    good = [k for k in ("tonga", "momentum", "nesterov") if k in m]
    slow = [k for k in ("sgd", "adagrad") if k in m]
    if not good or not slow:
        return "not measurable", "needs SGD or AdaGrad and one of TONGA / CM / NAG"
    best = min(good, key=lambda k: _median_at(m[k], at))
    parts, every = [f"best of TONGA/CM/NAG at 2·10⁴: {NAMES[best]} {_fmt(_median_at(m[best], at))}"], []
    for k in slow:
        wins, n, gap = _ahead(m[best], m[k], at)
        every.append(n > 0 and wins == n)
        parts.append(f"{NAMES[k]} {_fmt(_median_at(m[k], at))} ({gap:+,.1f} vs {NAMES[best]}, which "
                     f"is ahead on {wins}/{n} seeds; all {n}: p = {0.5 ** n:.3g})")
    verdict = "reproduced" if all(every) else ("partly" if any(every) else "not reproduced")
    return verdict, "; ".join(parts)


def _ahead_paired(a: dict, b: dict, evals) -> tuple[bool, float]:
    """(whether run set ``a`` is ahead of ``b`` at ``evals`` by the paired test, its p): the
    sign-flip p of b − a over the seeds both reached (finite) is below ALPHA, or ``b``'s median
    seed failed where ``a``'s did not. A median difference within the seeds' noise is not "ahead":
    on another CPU a chaotic method's median moves by about that much."""
    seeds = sorted(set(a) & set(b))
    d = np.array([b[s][0](evals) - a[s][0](evals) if evals is not None else b[s][1] - a[s][1]
                  for s in seeds], float)
    p = sign_flip_pvalue(d[np.isfinite(d)])
    failed_only_b = np.isinf(_median_at(b, evals)) and np.isfinite(_median_at(a, evals))
    return bool(p < ALPHA or failed_only_b), p


def _quasi_newton(m: dict, **_) -> tuple[str, str]:
    if "sgd" not in m or not {"olbfgs", "hessian-free"} & set(m):
        return "not measurable", "needs SGD and oLBFGS or HF"
    parts, fine = [], []
    for k in ("olbfgs", "hessian-free"):
        if k not in m:
            continue
        for col, evals in (("50K", 5e4), ("final", None)):
            mine, ref = _median_at(m[k], evals), _median_at(m["sgd"], evals)
            ahead, p = _ahead_paired(m[k], m["sgd"], evals)
            fine.append(not ahead)
            parts.append(f"{NAMES[k]} {col} {_fmt(mine)} vs SGD {_fmt(ref)} (p {p:.2g})")
    verdict = "reproduced" if all(fine) else ("partly" if any(fine) else "not reproduced")
    return verdict, "; ".join(parts)


def _thermus_order(m: dict, **_) -> tuple[str, str]:
    fast = [k for k in ("sgd", "adagrad", "tonga") if k in m]
    slow = [k for k in ("olbfgs", "momentum", "nesterov") if k in m]
    if not fast or not slow:
        return "not measurable", "needs methods of both groups"
    parts, wins, total = [], 0, 0
    for col, evals in (("5K", 5e3), ("50K", 5e4)):
        med = {k: _median_at(m[k], evals) for k in fast + slow}
        w = sum(med[a] < med[b] for a in fast for b in slow)
        wins, total = wins + w, total + len(fast) * len(slow)
        parts.append(f"{col}: {w}/{len(fast) * len(slow)} pairs (" + ", ".join(
            f"{NAMES[k]} {_fmt(med[k])}" for k in fast + slow) + ")")
    verdict = "reproduced" if wins == total else ("partly" if wins > total / 2 else "not reproduced")
    return verdict, "; ".join(parts)


def _resolutions(results: Results, runs: dict, pick) -> tuple[list[float], str | None]:
    """Each seed's FSC-0.5 resolution (Å) at the snapshot ``pick(snapshots)`` chooses (None: the
    seed is left out), and the label of the last snapshot picked; runs without a folder (results
    built in memory) are left out."""
    res, label = [], None
    for _, _, cell in runs.values():
        if cell not in results.records:
            continue
        snaps = [s for s in results.records[cell].snapshots or []
                 if s.get("resolution_A") is not None]
        chosen = pick(snaps)
        if chosen is not None:
            res.append(chosen["resolution_A"])
            label = chosen["label"]
    return res, label


def _first_after(evals: float):
    """Picks the first snapshot at or after ``evals`` evaluations."""
    return lambda snaps: min((s for s in snaps if s["evals"] >= evals), key=lambda s: s["evals"],
                             default=None)


def _one_epoch(m: dict, results: Results, k_train: int | None, band_A: float | None, **_):
    if "sgd" not in m or not k_train or not band_A:
        return "not measurable", "needs SGD runs with a ground truth and the task's K and r_max"
    res, at = _resolutions(results, m["sgd"], _first_after(k_train))
    if not res:
        return "not measurable", "no snapshot at or after one epoch with an FSC"
    med = float(np.median(res))
    verdict = "reproduced" if med <= BAND_FACTOR * band_A else "not reproduced"
    return verdict, (f"SGD at {at} ({k_train:,} images per epoch): FSC 0.5 at {med:.0f} Å "
                     f"(seeds {min(res):.0f}–{max(res):.0f} Å); band limit {band_A:.0f} Å")


def _bracketing(evals: float):
    """Picks, of the snapshots on either side of ``evals`` evaluations (the last before, the first
    at or after), the one of finer resolution: the rival's best near that point; none if the run
    stopped before ``evals`` (its last snapshot is not near that point)."""
    def pick(snaps):
        after = _first_after(evals)(snaps)
        if after is None:
            return None
        before = max((s for s in snaps if s["evals"] < evals), key=lambda s: s["evals"], default=after)
        return min((before, after), key=lambda s: s["resolution_A"])
    return pick


def _figure_6(m: dict, results: Results, k_train: int | None, box_A: float | None, **_):
    """The paper's Figure 6 compares structures, so the verdict is by FSC 0.5 against the ground
    truth: SGD after one epoch finer than EM's and PM's best snapshot next to five iterations
    (5·K evaluations; not measurable if their runs stop before it) by more than one Fourier
    shell (1/box_A: r²/box_A Å at resolution r; less is a tie, and a tie is not ahead). The test NLL at the same points is given beside it, and a
    disagreement said."""
    rivals = [k for k in ("em", "projection-matching") if k in m]
    if "sgd" not in m or not rivals or not k_train or not box_A:
        return "not measurable", "needs SGD, EM or projection matching, and the task's K and box"
    sgd_res, sgd_at = _resolutions(results, m["sgd"], _first_after(k_train))
    if not sgd_res:
        return "not measurable", "no SGD snapshot with an FSC at or after one epoch"
    sgd, sgd_nll = float(np.median(sgd_res)), _median_at(m["sgd"], k_train)
    shell = sgd ** 2 / box_A
    parts, wins, nll_wins = [f"SGD after 1 epoch: FSC 0.5 at {sgd:.0f} Å ({sgd_at}; one shell "
                             f"there is {shell:.1f} Å), test NLL {_fmt(sgd_nll)} at {k_train:,}"], [], []
    for k in rivals:
        res, at = _resolutions(results, m[k], _bracketing(5 * k_train))
        if not res:
            return "not measurable", (f"no {NAMES[k]} run reaches five iterations "
                                      f"({5 * k_train:,} evaluations) with an FSC snapshot")
        v, nll = float(np.median(res)), _median_at(m[k], 5 * k_train)
        wins.append(v - sgd > shell)
        nll_wins.append(sgd_nll < nll)
        parts.append(f"{NAMES[k]} after 5 iterations: {v:.0f} Å (best snapshot next to "
                     f"{5 * k_train:,}, seeds {min(res):.0f}–{max(res):.0f} Å), test NLL {_fmt(nll)}")
    verdict = "reproduced" if all(wins) else ("partly" if any(wins) else "not reproduced")
    if wins != nll_wins:
        parts.append("by test NLL the order is " + ", ".join(
            f"SGD {'ahead of' if w else 'behind'} {NAMES[k]}" for k, w in zip(rivals, nll_wins)))
    return verdict, "; ".join(parts)


CHECKS = {"within-two": _within_two, "synthetic-plateau": _plateau, "quasi-newton": _quasi_newton,
          "thermus-order": _thermus_order, "one-epoch": _one_epoch, "figure-6": _figure_6}
APPLIES = {"synthetic-plateau": {"synthetic-cylinder"}, "thermus-order": {"thermus-style"}}


def findings_table(results: Results, sizes: dict | None = None) -> pd.DataFrame:
    """One row per (finding, task, scale) that applies: claim, criterion, measured, verdict.

    ``sizes`` {(task, scale): (K training images, band-limit resolution 1/r_max in Å, box side
    in Å)} for the one-epoch and Figure 6 findings; by default the facts the runs recorded
    (without them those findings are not measurable). Labels as the tables make them
    (``comparable``): two optimizers of one name are never mixed."""
    results, rows = comparable(results), []
    datasets = sorted({(t, s) for t, s in results.cells[["task", "scale"]].itertuples(index=False)}
                      - refinement_pairs(results))    # their claims: report.refinement_claims
    for key, (claim, criterion) in FINDINGS.items():
        for task, scale in datasets:
            if key in APPLIES and task not in APPLIES[key]:
                continue
            facts = results.task_facts(task, scale)
            k_train, band, box = (sizes or {}).get((task, scale), (
                (facts.n_train, facts.band_limit_A, facts.box_A) if facts else (None, None, None)))
            m = _per_seed(results, task, scale)
            seeds = max((len(v) for v in m.values()), default=0)
            verdict, measured = CHECKS[key](m, results=results, k_train=k_train, band_A=band,
                                            box_A=box)
            rows.append({"key": key, "finding": claim, "criterion": criterion, "task": task, "scale": scale,
                         "seeds": seeds, "measured": measured, "verdict": verdict})
    return pd.DataFrame(rows, columns=["key", "finding", "criterion", "task", "scale", "seeds",
                                       "measured", "verdict"])


def findings_markdown(table: pd.DataFrame) -> str:
    """The findings table as markdown: finding and criterion once, one line per dataset."""
    lines = ["| Paper's finding | Criterion here | Task (scale) | Seeds | Measured | Verdict |",
             "|:---|:---|:---|---:|:---|:---|"]
    esc = lambda s: str(s).replace("|", "\\|")
    for _, r in table.iterrows():
        lines.append(f"| {esc(r.finding)} | {esc(r.criterion)} | {esc(md_text(r.task))} "
                     f"({esc(md_text(r.scale))}) | {r.seeds} | "
                     f"{esc(r.measured)} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"
