"""The report's tables: the paired sign-flip test and the marks against hand-made examples, every
cell status rendered, labels that never average configurations, time-to-target over seeds."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryobench.cli import main as cli
from cryobench.errors import InputError
from cryobench.harness.results import Results, load_results
from cryobench.harness.record import SCHEMA_VERSION
from cryobench.report import figures as report

EVALS = [0, 1000, 5000, 50000, 100000]
NO_FSC = pd.DataFrame(columns=["cell", "label", "evals", "freq", "fsc"])


@pytest.mark.parametrize("d, p", [
    ([1, 2, 3, 4, 5], 1 / 32),             # only the identity pattern reaches the observed mean
    ([1, -1, 1, -1, 1], 16 / 32),          # sum ≥ 1 ⇔ at least 3 of 5 positive: 10 + 5 + 1
    ([1, 2, 3, 4, -1], 3 / 32),            # sum ≥ 9 of 11 ⇔ flip nothing, or one of the two 1s
    ([10, 10, -1, -1, -1], 8 / 32),        # the mean, not the signs: both 10s positive
    ([-1, -2, -3, -4, -5], 1.0),
    ([1, 2, 3, 4, 5, 6], 1 / 64),
    ([1, 2, 3, 4], 1 / 16),                # four seeds: never below 0.05
    ([2.0], 0.5), ([-2.0], 1.0), ([0, 0, 0], 1.0), ([], 1.0)])
def test_sign_flip_pvalue_exact(d, p):
    assert report.sign_flip_pvalue(d) == pytest.approx(p, abs=1e-12)


# per method, the test NLL of seeds 0-4 at 5K, 50K and Final (the initial NLL is 1000 for all)
BEST = np.array([100.0, 110, 120, 130, 140])
TABLE = {"best": {"5K": BEST + 50, "50K": BEST + 10, "Final": BEST},
         "worse": {"5K": BEST + 50, "50K": BEST + 10 + [1, 2, 3, 4, 5], "Final": BEST + [1, 2, 3, 4, 5]},
         "tied": {k: v + [1, -1, 1, -1, 1] for k, v in {"5K": BEST + 50, "50K": BEST + 10,
                                                         "Final": BEST}.items()},
         "shaky": {k: v + 0.5 for k, v in {"5K": BEST + 50, "50K": BEST + 10, "Final": BEST}.items()}}


def _hand_made(seeds=range(5)):
    """Results with TABLE's values at checkpoints 5K, 50K, 100K; 'shaky' diverges at 3,000 on
    seed 2; an interrupted duplicate of best seed 0 (header-only trace) must be ignored."""
    rows, cells = [], []
    for label, cols in TABLE.items():
        for seed in seeds:
            cell, status = f"{label}-{seed}", "ok"
            nll = [1000.0, 500.0, cols["5K"][seed], cols["50K"][seed], cols["Final"][seed]]
            evals = EVALS
            if label == "shaky" and seed == 2:
                evals, nll, status = [0, 1000, 3000], [1000.0, 500.0, np.nan], "diverged"
            rows += [{"task": "t", "scale": "ci", "label": label, "seed": seed, "cell": cell,
                      "checkpoint": k, "evals": e, "wall_s": e / 1e3, "test_nll": v}
                     for k, (e, v) in enumerate(zip(evals, nll))]
            cells.append({"task": "t", "scale": "ci", "label": label, "seed": seed, "cell": cell,
                          "status": status, "evals": evals[-1], "budget": 100000, "message": "",
                          "optimizer": label, "params": "{}", "resolution_A": 40.0})
    cells.append({**cells[0], "cell": "best-0-interrupted", "status": "interrupted", "evals": 0})
    return Results(pd.DataFrame(rows), pd.DataFrame(cells), NO_FSC)


def test_marks_medians_and_spreads_hand_made():
    table = report.checkpoint_table(_hand_made()).set_index("label")
    assert table.loc["best", "Seeds"] == 5                          # the interrupted run is no seed
    assert table.loc["best", "Final"] == 120 and table.loc["best", "Final range"] == 40
    assert table.loc["worse", "Final"] == 123 and table.loc["worse", "Final range"] == 44
    assert table.loc["tied", "Final"] == 121 and table.loc["tied", "50K range"] == 40
    assert table.loc["shaky", "Final"] == 130.5                     # [100.5, 110.5, 130.5, 140.5, inf]
    assert table.loc["shaky", "Final range"] == 40                  # over the seeds that finished
    assert table.loc["best", "Final best"] and table.loc["best", "Final gap"] == 0
    assert table.loc["worse", "Final gap"] == 3 and table.loc["worse", "Final p"] == pytest.approx(1 / 32)
    assert table.loc["tied", "Final gap"] == 1 and table.loc["tied", "Final p"] == pytest.approx(0.5)
    assert table.loc["shaky", "Final p"] == pytest.approx(1 / 16)   # the 4 seeds both reached
    assert table.loc["shaky", "Final pairs"] == 4 and table.loc["shaky", "Final gap"] == 0.5
    marks = {k: sorted(table.index[table[f"{k} ≈best"]]) for k in ("5K", "50K", "Final")}
    assert marks["5K"] == ["best", "tied", "worse"]                 # worse = best at 5K: p = 1
    assert table.loc["worse", "5K p"] == 1.0
    assert marks["50K"] == marks["Final"] == ["best", "tied"]       # shaky failed where best did not
    md = report.table_markdown(report.checkpoint_table(_hand_made()))
    assert "| worse | 5 | **170.0** | 40.0 | 133.0 | 44.0 | 123.0 | 44.0 | +3.0 | 0.031 |" in md
    assert "| best | 5 | **170.0** | 40.0 | **130.0** | 40.0 | **120.0** | 40.0 | best | — |" in md
    assert "noise floor (median over methods of the Final seed range): 40.0." in md
    assert "exact one-sided paired sign-flip permutation test" in md and "α = 0.05" in md
    assert "Fewer than 5 seeds" not in md


def test_four_seeds_cannot_separate():
    table = report.checkpoint_table(_hand_made(range(4))).set_index("label")
    assert table.loc["worse", "Final p"] == pytest.approx(1 / 16)   # d = [1, 2, 3, 4]
    assert table.loc["worse", "Final ≈best"] and not table.loc["shaky", "Final ≈best"]
    md = report.table_markdown(report.checkpoint_table(_hand_made(range(4))))
    assert "Fewer than 5 seeds: the test cannot tell any method apart" in md


def _meta(cell, task, label, seed, status, evals, message="", params=None, **extra):
    return {"schema_version": SCHEMA_VERSION, "cell": cell, "optimizer_name": label.split()[0],
            "run": {"task": task, "scale": "ci", "label": label, "seed": seed,
                    "params": params or {}, "budget": 60000},
            "status": status, "message": message, "budget": 60000, "evaluations": evals,
            "wall_s": 1.0, "task_hash": f"hash-{task}", "provenance": {"cryobench": "0.1.0"},
            "snapshots": [], **{k: v for k, v in extra.items() if k != "numerics"},
            **({"identity": {"numerics": extra["numerics"]}} if "numerics" in extra else {})}


def _write(root, cell, task, label, seed, status, evals, nll, **meta):
    """A cell folder with a trace (header only if ``evals`` is empty) and meta.json."""
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    pd.DataFrame({"task": task, "scale": "ci", "optimizer": label, "label": label, "seed": seed,
                  "cell": cell, "checkpoint": np.arange(len(evals)), "evals": evals,
                  "grad_evals": evals, "value_evals": 0, "hvp_evals": 0,
                  "wall_s": np.asarray(evals, float) / 1e3, "test_nll": nll,
                  "train_obj": nll}).to_csv(folder / "trace.csv", index=False)
    (folder / "meta.json").write_text(json.dumps(_meta(cell, task, label, seed, status,
                                                       int(evals[-1]) if len(evals) else 0, **meta)))


@pytest.fixture
def every_status(tmp_path):
    """One dataset with a cell of every status (empty and one-row traces included); a second
    dataset whose only cell is an error with a header-only trace."""
    root, e = tmp_path / "set", [0, 1000, 5000, 30000, 60000]
    _write(root, "c-ok", "t", "sgd", 0, "ok", e, [900.0, 800, 700, 650, 600])
    _write(root, "c-div", "t", "adam", 0, "diverged", e[:3] + [6000], [900.0, 850, 750, np.nan],
           message="iterate not finite after 6,000 evaluations")
    _write(root, "c-budget", "t", "hf", 0, "budget", e[:4], [900.0, 820, 710, 660],
           message="time limit of 10 s reached")
    _write(root, "c-error0", "t", "mine", 0, "error", [], [],
           message="ValueError: bad shape\nTraceback (most recent call last):")
    _write(root, "c-error1", "t", "other", 0, "error", [0], [900.0], message="RuntimeError: boom")
    _write(root, "c-intr", "t", "sgd", 1, "interrupted", [], [], message="killed by SIGKILL")
    _write(root, "z-error", "z", "sgd", 0, "error", [], [], message="MemoryError")
    return root


def test_every_status_renders(every_status, tmp_path):
    results = load_results(every_status)
    table = report.checkpoint_table(results).set_index(["task", "label"])
    assert table.loc[("t", "sgd"), "Seeds"] == 1 and table.loc[("t", "sgd"), "Final best"]
    assert table.loc[("t", "hf"), "5K"] == 710 and table.loc[("t", "hf"), "50K"] == np.inf
    assert table.loc[("t", "adam"), "5K"] == 750 and table.loc[("t", "adam"), "Final"] == np.inf
    for label in ("mine", "other"):
        assert (table.loc[("t", label), ["5K", "50K", "Final"]] == np.inf).all()
    assert not table.loc[("t", "hf"), "Final ≈best"] and table.loc[("t", "hf"), "5K ≈best"]
    assert table.loc[("z", "sgd"), "Status"] == "0/1 ok; seed 0: error at 0"
    paths = report.write_report(results, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    failed = text.split("Failed / incomplete cells")[1].split("## Provenance")[0]
    for cell, status, message in [("c-div", "diverged", "iterate not finite after 6,000 evaluations"),
                                  ("c-budget", "budget", "time limit of 10 s reached"),
                                  ("c-error0", "error", "ValueError: bad shape"),
                                  ("c-error1", "error", "RuntimeError: boom"),
                                  ("c-intr", "interrupted", "killed by SIGKILL"),
                                  ("z-error", "error", "MemoryError")]:
        assert f"| {cell} |" in failed and f"| {status} |" in failed and f"| {message} |" in failed
    assert "Traceback" not in failed and "| c-ok |" not in failed
    assert "| failed |" in text and len(paths) > 8
    report.write_leaderboard(tmp_path, out=tmp_path / "board" / "LEADERBOARD.md", sets=["set"])
    assert "c-intr" in (tmp_path / "board" / "LEADERBOARD.md").read_text()


def test_only_interrupted_cells_render(tmp_path):
    _write(tmp_path / "set", "c-intr", "t", "sgd", 0, "interrupted", [0, 1000], [900.0, 800],
           message="lost worker")
    results = load_results(tmp_path / "set")
    assert report.checkpoint_table(results).empty
    report.write_report(results, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "No results to compare" in text and "| c-intr |" in text and "| lost worker |" in text


def test_labels_never_average_configurations(tmp_path, data_dir):
    """Two `run sgd` with different lr into one folder are two methods; two runs of one seed
    with the same settings are kept apart too."""
    common = ["--scale", "ci", "--data-dir", str(data_dir), "--out", str(tmp_path / "runs"),
              "--tuned", "none", "--budget", "200"]
    for lr in ("0.5", "2"):
        assert cli(["run", "synthetic-cylinder", "sgd", "--set", f"lr={lr}", *common]) == 0
    results = load_results(tmp_path / "runs")
    table = report.checkpoint_table(results)
    labels = sorted(table["label"])
    assert labels == ["sgd lr=0.5", "sgd lr=2"]
    assert (table["Seeds"] == 1).all()
    fig = report.convergence_figure(results)
    assert sorted(fig.legends[0].get_texts()[i].get_text() for i in range(2)) == labels
    # the same settings twice for one seed (fake cells differing only in their cell id)
    e = [0, 1000]
    for cell in ("aaaaaaaa11", "bbbbbbbb22"):
        _write(tmp_path / "dup", cell, "t", "sgd", 0, "ok", e, [900.0, 800], params={"lr": 1.0})
    _write(tmp_path / "dup", "cccccccc33", "t", "sgd", 1, "ok", e, [900.0, 810], params={"lr": 1.0})
    _write(tmp_path / "dup", "dddddddd44", "t", "sgd", 2, "ok", e, [900.0, 820], params={"lr": 1.0},
           numerics="f" * 64)
    dup = report.comparable(load_results(tmp_path / "dup"))
    # numerics tells d apart (the others lack it); a and b share everything but their cell id
    assert dict(zip(dup.cells["cell"], dup.cells["label"])) == {
        "aaaaaaaa11": "sgd numerics=— #aaaaaaaa", "bbbbbbbb22": "sgd numerics=— #bbbbbbbb",
        "cccccccc33": "sgd numerics=—", "dddddddd44": "sgd numerics=ffffffff"}
    assert report.comparable(dup).cells["label"].tolist() == dup.cells["label"].tolist()
    text = "".join(report._relabelled(load_results(tmp_path / "dup")))
    assert "`sgd` → " in text and "#aaaaaaaa" in text


def _two_seeds():
    """x, y on seeds 0 and 1; z diverges on seed 0 after a value below every final."""
    runs = {("x", 0): [100, 50, 10], ("x", 1): [100, 60, 20], ("y", 0): [100, 90, 0],
            ("y", 1): [100, 95, 40], ("z", 0): [100, -50, np.nan]}
    trace = pd.DataFrame([{"task": "t", "scale": "ci", "label": label, "seed": seed,
                           "cell": f"{label}{seed}", "checkpoint": k, "evals": e, "wall_s": e / 10,
                           "test_nll": float(v)} for (label, seed), nll in runs.items()
                          for k, (e, v) in enumerate(zip([0, 10, 100], nll))])
    cells = pd.DataFrame([{"task": "t", "scale": "ci", "label": label, "seed": seed,
                           "cell": f"{label}{seed}", "status": "diverged" if label == "z" else "ok",
                           "evals": 100} for label, seed in runs])
    return Results(trace, cells, NO_FSC)


def test_time_to_target_every_seed_one_target_per_dataset():
    ttt = report.time_to_target(_two_seeds(), tau=0.5).set_index(["label", "seed"])
    assert (ttt["f_best"] == 0).all() and (ttt["target"] == 50).all()     # not z's −50, not per seed
    assert ttt.loc[("x", 0), "evals"] == 10 and ttt.loc[("x", 1), "evals"] == 100
    assert ttt.loc[("y", 1), "evals"] == 100 and ttt.loc[("z", 0), "evals"] == 10
    prof = report.performance_profile(ttt.reset_index())
    assert list(prof["x"]) == [1.0, 1.0] and list(prof["y"]) == [1.0, 10.0]
    assert prof["z"][0] == 1.0 and np.isinf(prof["z"][1])                 # no run on seed 1


def test_a_set_with_fewer_runs_than_its_grid_plans_says_it_is_in_progress(every_status, tmp_path):
    """The grid file names 2 tasks × 1 scale × 5 seeds × (sgd with 2 lr values + adam) = 30 runs;
    a set holding fewer says so at the top of its section and in its runs line, and a complete
    one reads as before."""
    (every_status / "grid.toml").write_text(
        'tasks = ["t", "z"]\nscales = ["small"]\noptimizers = ["sgd", "adam"]\nseeds = 5\n'
        'budget = 1000\n[params.sgd]\nlr = [0.1, 1.0]\n')
    assert report.planned_runs(every_status) == 30
    assert report.planned_runs(tmp_path) is None                   # no grid file
    results = load_results(every_status)
    n = len(results.cells)
    report.write_report(results, tmp_path / "partial", planned=30)
    text = (tmp_path / "partial" / "report.md").read_text()
    line = f"In progress: {n} of the 30 runs its grid file plans are here"
    assert text.count(line) == 2 and text.index(line) < text.index("Test NLL at 5K")
    report.write_report(results, tmp_path / "complete", planned=n)
    assert "In progress" not in (tmp_path / "complete" / "report.md").read_text()
    assert f"\n{n} runs: " in (tmp_path / "complete" / "report.md").read_text()
    report.write_leaderboard(every_status.parent, out=tmp_path / "board" / "LEADERBOARD.md", sets=["set"])
    for page in ("LEADERBOARD.md", "LEADERBOARD.html"):
        assert line in (tmp_path / "board" / page).read_text()


def test_the_committed_grid_files_count_the_runs_their_complete_sets_hold(tmp_path):
    results = Path(__file__).resolve().parent.parent / "results"
    assert report.planned_runs(results / "paper-small") == 70            # the README's 70 cells
    assert report.planned_runs(results / "refinement-small") == 90       # 18 methods × 5 seeds
    (tmp_path / "grid.toml").write_text('tasks = ["t"]\noptimizers = 3\n')
    with pytest.raises(InputError, match=r"grid\.toml: not a grid file"):
        report.planned_runs(tmp_path)
