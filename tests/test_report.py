"""Reports on fake results: figure structure, table values, time-to-target, determinism."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage

from cryobench.harness.results import Results, load_results
from cryobench.harness.record import SCHEMA_VERSION
from cryobench.model.views import lowpass, projections
from cryobench.report import figures as report

DATASETS = [("task-a", "ci"), ("task-b", "ci")]
D = 12
RMAX = 3.0                      # the fake truth's band limit (px)
TRUTH_VIEWS = projections(lowpass(np.random.default_rng(7).random((D, D, D)), RMAX))


def _evals(label):
    if label == "b":                                  # 1,800 evaluations per step
        return np.array([0, 1800, 3600, 5400, 9000, 18000, 36000, 50400, 54000])
    return np.array([0, 100, 1000, 3000, 5000, 10000, 50000, 60000])


def _nll(label, seed, evals, task):
    k = {"a": 10.0, "b": 12.0, "c": 8.0}[label] * (1.0 + 0.1 * seed**2) * (2 if task == "task-b" else 1)
    return 1000.0 - k * np.log1p(evals)


def _runs():
    """(task, scale, label, seed, status): a with seeds 0-2 (median ≠ mean), b with seeds 0 and 1;
    c seed 0 diverges."""
    for task, scale in DATASETS:
        for label, seeds in (("a", (0, 1, 2)), ("b", (0, 1))):
            for seed in seeds:
                yield task, scale, label, seed, "ok"
        yield task, scale, "c", 0, "diverged"


def _write_cell(root, task, scale, label, seed, status):
    cell = f"{task}-{label}-{seed}"
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    evals = _evals(label)
    nll = _nll(label, seed, evals, task)
    if status == "diverged":
        evals, nll = np.append(evals[evals <= 3000], 3100), np.append(nll[evals <= 3000], np.nan)
    trace = pd.DataFrame({"task": task, "scale": scale, "optimizer": label, "label": label,
                          "seed": seed, "cell": cell, "checkpoint": np.arange(len(evals)),
                          "evals": evals, "grad_evals": evals, "value_evals": 0, "hvp_evals": 0,
                          "wall_s": evals / 1000.0, "test_nll": nll, "train_obj": nll / 100})
    trace.to_csv(folder / "trace.csv", index=False)
    rng = np.random.default_rng(sum(map(ord, cell)))
    snaps = {k: e for k, e in (("5K", 5000), ("50K", 50000)) if evals[-1] >= e}
    if status == "ok":
        snaps["final"] = int(evals[-1])
    views = {k: rng.random((3, D, D), dtype=np.float32) for k in snaps}
    views["ground_truth"] = TRUTH_VIEWS
    np.savez_compressed(folder / "views.npz", **views)
    freq = np.linspace(0, 0.1, 8)
    if snaps:
        pd.concat([pd.DataFrame({"label": k, "evals": e, "freq": freq, "fsc": np.exp(-freq * (30 + seed))})
                   for k, e in snaps.items()]).to_csv(folder / "fsc.csv", index=False)
    meta = {"schema_version": SCHEMA_VERSION, "cell": cell, "optimizer_name": label,
            "run": {"task": task, "scale": scale, "label": label, "seed": seed, "params": {}},
            "status": status, "message": "iterate not finite" if status != "ok" else "",
            "budget": int(_evals(label)[-1]), "evaluations": int(evals[-1]), "wall_s": 1.0,
            "task_hash": f"hash-{task}", "provenance": {"cryobench": "0.1.0", "git_commit": "abc",
                                                         "cpu": "fake", "blas": "openblas"},
            "snapshots": [{"label": k, "evals": e, "resolution_A": 40.0 + seed} for k, e in snaps.items()],
            "task_facts": {"n_train": 1000, "batch_size": 100, "box": D, "pixel_size": 10.0,
                           "rmax_px": RMAX}}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """main: the full fake set; board/: two small sets, a tuning set and a non-result folder."""
    root = tmp_path_factory.mktemp("results")
    runs = list(_runs())
    for run in runs:
        _write_cell(root / "main", *run)
    small = [runs[0], runs[5]]                          # task-a: a seed 0, c diverged
    for run in small:
        _write_cell(root / "board" / "small", *run)
    _write_cell(root / "board" / "other", *runs[1])
    # a tuning set (validation_nll) that the leaderboard must skip
    _write_cell(root / "board" / "tune", *runs[0])
    tr = root / "board" / "tune" / "cells" / "task-a-a-0" / "trace.csv"
    pd.read_csv(tr).rename(columns={"test_nll": "validation_nll"}).to_csv(tr, index=False)
    (root / "board" / "notes").mkdir()
    return root


@pytest.fixture(scope="module")
def results(fake_root):
    return load_results(fake_root / "main")


def _labelled(ax):
    return [l for l in ax.get_lines() if not l.get_label().startswith("_")]


def _labelled_lines(ax):
    return [l.get_label() for l in _labelled(ax)]


def test_convergence_figure_structure(results):
    fig = report.convergence_figure(results)
    axes = np.array(fig.axes).reshape(2, len(DATASETS))
    assert axes.size == 2 * len(DATASETS)
    for j, (task, _) in enumerate(DATASETS):
        assert axes[0, j].get_title() == task
        for ax in axes[:, j]:
            assert ax.get_xscale() == "log"
            assert ax.get_ylabel() == "test NLL"
            assert sorted(_labelled_lines(ax)) == ["a", "b", "c"]      # one line per label
        assert axes[1, j].get_xlabel() == "gradient evaluations"
        crosses = [l for l in axes[0, j].get_lines() if l.get_marker() == "x"]
        assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 3000   # c's only seed failed
        lo, hi = axes[1, j].get_xlim()
        assert lo >= 60000 / 10 - 1e-6 and hi <= 60000 + 1e-6
        ylo, yhi = axes[1, j].get_ylim()                   # zoom fitted to the last decade
        final = [_nll(l, s, _evals(l)[-1], task) for t, _, l, s, ok in _runs() if t == task and ok == "ok"]
        assert ylo < min(final) and yhi < 1000
    assert len(fig.legends) == 1 and "band: min–max" in fig.legends[0].get_title().get_text()
    # median over seeds: the plotted line of "a" at 5000 is the median of its three seeds
    line = next(l for l in axes[0, 0].get_lines() if l.get_label() == "a")
    x, y = line.get_data()
    want = _nll("a", 1, 5000, "task-a")                # the median of seeds 0, 1, 2
    assert y[list(x).index(5000)] == pytest.approx(want)


def test_seed_curves_count_failed_seeds_as_worst():
    runs = {0: [5.0, 4, 3], 1: [6.0, 5, 4], 2: [7.0, 6], 3: [8.0, 7]}   # 2 and 3 stop after 100
    trace = pd.DataFrame([{"seed": seed, "evals": e, "test_nll": v} for seed, nll in runs.items()
                          for e, v in zip([10, 100, 1000], nll)])
    plain = report.seed_curves(trace).set_index("evals")
    assert plain.loc[1000, "median"] == 3.5                         # finished seeds: left out
    c = report.seed_curves(trace, failed={2}).set_index("evals")
    assert c.loc[100, "median"] == 5.5 and c.loc[1000, "median"] == 4  # median of [3, 4, +inf]
    assert c.loc[1000, "lo"] == 3 and c.loc[1000, "hi"] == 4         # band: the seeds still running
    c = report.seed_curves(trace, failed={2, 3}).set_index("evals")  # half failed: no median
    assert np.isnan(c.loc[1000, "median"]) and c.loc[100, "median"] == 5.5


def test_line_style_fixed_per_label(results):
    fig = report.convergence_figure(results)
    styles = {}
    for ax in fig.axes:
        for line in _labelled(ax):
            styles.setdefault(line.get_label(), set()).add(
                (tuple(np.atleast_1d(line.get_color())), line.get_linestyle()))
    assert all(len(s) == 1 for s in styles.values())
    assert len({next(iter(s)) for s in styles.values()}) == 3


def test_fifteen_methods_get_fifteen_distinct_line_styles():
    labels = [f"method-{i:02d}" for i in range(15)]
    styles = report.line_styles(labels[::-1] + labels[:3])       # order and repeats do not matter
    pairs = {(tuple(s["color"]), s["ls"]) for s in styles.values()}
    assert len(styles) == 15 and len(pairs) == 15
    assert [styles[k]["ls"] for k in labels] == ["-"] * 10 + ["--"] * 5
    assert styles["method-00"]["color"] == styles["method-10"]["color"]


def test_density_figure_grid(results):
    fig = report.density_figure(results, "task-a", "ci")
    assert len(fig.axes) == 4 * 11                  # truth + a, b, c; 3 snapshots × 3 views + 2 gaps
    axes = np.array(fig.axes).reshape(4, 11)
    views = axes[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]]
    shown = lambda ax: [a for a in ax.get_children() if isinstance(a, AxesImage)]
    # truth: all 9; a, b: 5K, 50K, final × z, y, x; c (diverged at 3,100): none
    assert [sum(bool(shown(ax)) for ax in row) for row in views] == [9, 9, 9, 0]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["ground truth\n(band-limited)", "a", "b", "c"]
    titles = [ax.get_title() for ax in views[0]]
    assert titles[:3] == ["\nalong z", "5K\nalong y", "\nalong x"] and titles[7] == "final\nalong y"
    # the FSC resolution of each estimate under its middle view (seed 0: 40 Å), none for the truth
    assert [axes[1, c].get_xlabel() for c in (1, 5, 9)] == ["FSC 0.5: 40 Å"] * 3
    assert axes[0, 1].get_xlabel() == "" and [t.get_text() for t in axes[3, 5].texts] == ["—"]
    k2 = np.add.outer(np.fft.fftfreq(D) ** 2, np.fft.fftfreq(D) ** 2) * D**2
    for ax in [ax for row in views for ax in row if shown(ax)]:
        image = np.asarray(shown(ax)[0].get_array(), float)
        assert shown(ax)[0].get_clim() == (image.min(), image.max())    # every panel min–max
        assert np.abs(np.fft.fft2(image)[k2 > RMAX**2 + 1e-6]).max() < 1e-9 * np.abs(image).sum()
        assert not ax.get_xticks().size and not ax.get_yticks().size
    truth = shown(views[0, 0])[0].get_array()
    np.testing.assert_allclose(truth, TRUTH_VIEWS[0], rtol=1e-5, atol=1e-5 * np.abs(TRUTH_VIEWS).max())
    raw = results.views("task-a-a-0")["5K"][0]             # the estimates are filtered, not raw
    assert not np.allclose(shown(views[1, 0])[0].get_array(), raw)


def test_checkpoint_table_values(results):
    table = report.checkpoint_table(results).set_index(["task", "label"])
    for task, _ in DATASETS:
        a = table.loc[(task, "a")]                  # seeds 0, 1, 2: the median is seed 1
        assert a["5K"] == pytest.approx(_nll("a", 1, 5000, task))
        assert a["50K"] == pytest.approx(_nll("a", 1, 50000, task))
        finals = [_nll("a", s, 60000, task) for s in (0, 1, 2)]
        assert a["Final"] == pytest.approx(_nll("a", 1, 60000, task))
        assert a["Final range"] == pytest.approx(max(finals) - min(finals))
        b = table.loc[(task, "b")]                  # first checkpoint ≥ 5,000 is 5,400
        assert b["5K"] == pytest.approx(np.median([_nll("b", s, 5400, task) for s in (0, 1)]))
        assert b["50K"] == pytest.approx(np.median([_nll("b", s, 50400, task) for s in (0, 1)]))
        assert b["Final evals"] == 54000 and a["Resolution (Å)"] == pytest.approx(41)
        assert a["Seeds"] == 3 and b["Resolution (Å)"] == pytest.approx(40.5)
        c = table.loc[(task, "c")]                  # diverged at 3,100 of 60,000: failed at all three
        assert (c[["5K", "50K", "Final"]] == np.inf).all() and not c["Final ≈best"]
        assert c["Status"] == "0/1 ok; seed 0: diverged at 3,100" and a["Status"] == "ok"
        assert b["Final best"] and a["Final pairs"] == 2 and a["Final p"] == pytest.approx(1 / 4)
    md = report.table_markdown(report.checkpoint_table(results))
    assert f"**{_nll('a', 1, 5000, 'task-a'):,.1f}**" in md and "| failed |" in md
    assert md.count("| a | 3 |") == md.count("| c | 1 |") == len(DATASETS)
    assert "**task-b (ci)**: 1–3 seeds per method" in md


def _tiny():
    rows = []
    for label, nll in {"x": [100, 50, 10], "y": [100, 90, 0], "z": [100, 100, 100]}.items():
        for k, (e, v) in enumerate(zip([0, 10, 100], nll)):
            rows.append({"task": "t", "scale": "ci", "label": label, "seed": 0, "cell": label,
                         "checkpoint": k, "evals": e, "wall_s": e / 10, "test_nll": float(v)})
    trace = pd.DataFrame(rows)
    cells = pd.DataFrame({"task": "t", "scale": "ci", "label": list("xyz"), "seed": 0,
                          "cell": list("xyz"), "status": "ok", "evals": 100})
    return Results(trace, cells, pd.DataFrame(columns=["cell", "label", "evals", "freq", "fsc"]))


def test_time_to_target_hand_made():
    ttt = report.time_to_target(_tiny(), tau=(0.1, 0.5)).set_index(["tau", "label"])
    assert (ttt["f0"] == 100).all() and (ttt["f_best"] == 0).all()
    assert ttt.loc[(0.1, "x"), "target"] == pytest.approx(10)
    assert ttt.loc[(0.1, "x"), "evals"] == 100 and ttt.loc[(0.1, "y"), "evals"] == 100
    assert ttt.loc[(0.5, "x"), "evals"] == 10 and ttt.loc[(0.5, "x"), "wall_s"] == 1
    assert ttt.loc[(0.5, "y"), "evals"] == 100
    assert np.isinf(ttt.loc[(0.5, "z"), "evals"]) and np.isinf(ttt.loc[(0.1, "z"), "wall_s"])
    prof = report.performance_profile(ttt.reset_index().query("tau == 0.5"))
    assert list(prof["x"]) == [1.0] and list(prof["y"]) == [10.0] and np.isinf(prof["z"][0])


def test_profile_figure_lines(results):
    fig = report.profile_figure(results, tau=(0.1, 0.01))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert sorted(_labelled_lines(ax)) == ["a", "b", "c"]
    fig = report.profile_figure(_tiny(), tau=0.5)
    ys = {l.get_label(): l.get_ydata() for l in fig.axes[0].get_lines()}
    assert ys["x"][0] == 1 and ys["y"][0] == 0 and ys["y"][-1] == 1 and max(ys["z"]) == 0


def test_fsc_figure(results):
    fig = report.fsc_figure(results)
    assert len(fig.axes) == len(DATASETS)
    for ax in fig.axes:
        assert sorted(_labelled_lines(ax)) == ["a", "b"]       # c has no final density
        assert any(np.allclose(l.get_ydata(), 0.5) for l in ax.get_lines())
        # the last sample ≥ 0.5 is freq 0.1/7 (exp(-0.1/7 · 30) = 0.65): the axis ends at twice it
        assert ax.get_xlim() == pytest.approx((0, 2 * 0.1 / 7))


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_write_report_deterministic(fake_root, tmp_path):
    small = fake_root / "board" / "small"
    paths = report.write_report(load_results(small), tmp_path / "one", title="Fake")
    report.write_report(load_results(small), tmp_path / "two", title="Fake")
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert sorted(one) == sorted(p.name for p in paths)
    assert {"convergence.png", "convergence.svg", "densities-task-a-ci.png", "fsc.svg",
            "profile.png", "table.md", "table.csv", "time_to_target.csv", "report.md"} <= set(one)
    assert one == two
    text = one["report.md"].decode()
    assert text.startswith("# Fake") and "![convergence](convergence.png)" in text
    assert "iterate not finite" in text and "abc" in text
    # and in another process, with another hash seed
    code = ("import sys; from cryobench.report import figures as report; from cryobench.harness.results import load_results;"
            "report.write_report(load_results(sys.argv[1]), sys.argv[2], title='Fake')")
    subprocess.run([sys.executable, "-c", code, str(small), str(tmp_path / "three")],
                   check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert _tree(tmp_path / "three") == one


def test_write_leaderboard_deterministic(fake_root, tmp_path):
    board = fake_root / "board"
    assert report.result_sets(board) == ["other", "small"]         # tune and notes skipped
    paths = report.write_leaderboard(board, out=tmp_path / "a" / "LEADERBOARD.md")
    report.write_leaderboard(board, out=tmp_path / "b" / "LEADERBOARD.md")
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and sorted(a) == sorted(p.relative_to(tmp_path / "a").as_posix() for p in paths)
    text = a["LEADERBOARD.md"].decode()
    assert "## small" in text and "## other" in text and "tune" not in text
    assert "(figures/small-convergence.png)" in text and "figures/other-profile.svg" in a
    ranking = text.split("## Ranking per task")[1].split("\n## ")[0]      # opens the page
    datasets = ranking.count("noise floor (median over methods of the Final seed range)")
    assert text.index("## Ranking per task") < text.index("## other") and datasets >= 1
    assert text.count("noise floor (median over methods of the Final seed range)") == 2 + datasets
    assert "| task-a-c-0 | task-a | ci | c | 0 | diverged | 3,100 | iterate not finite |" in text
    # the HTML page beside it: the same sections and figures, runs linked to their meta.json
    page = a["LEADERBOARD.html"].decode()
    assert page.count("<section id=") == 4 and 'id="small"' in page and "tune" not in page
    assert page.index('id="ranking"') < page.index('id="other"')
    assert 'id="findings"' in page and "## The paper's findings beside ours" in text   # last section
    assert '<img src="figures/small-convergence.png"' in page and 'href="figures/other-profile.svg"' in page
    assert "http" not in page and "src=\"/" not in page and "href=\"/" not in page   # relative only
    for cell in ("task-a-a-0", "task-a-c-0"):             # the results lie elsewhere: ../../
        assert f'/board/small/cells/{cell}/meta.json"' in page
    assert "iterate not finite" in page and "<strong>task-a (ci)</strong>" in page
    # and in another process, with another hash seed
    code = ("import sys; from cryobench.report import figures as report;"
            "report.write_leaderboard(sys.argv[1], out=sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(board), str(tmp_path / "c" / "LEADERBOARD.md")],
                   check=True, env={**os.environ, "PYTHONHASHSEED": "321"})
    assert _tree(tmp_path / "c") == a


def test_a_made_up_scale_never_writes_outside_the_report_folder(fake_root, tmp_path):
    """A results folder whose cells name the scale ``../../escape`` (or a task as a path) gets
    figure names that stay inside the report folder."""
    import shutil
    copy = tmp_path / "set"
    shutil.copytree(fake_root / "main", copy)
    for meta in copy.glob("cells/*/meta.json"):
        meta.write_text(meta.read_text().replace('"scale": "ci"', '"scale": "../../escape"'))
    for trace in copy.glob("cells/*/trace.csv"):
        trace.write_text(trace.read_text().replace(",ci,", ",../../escape,"))
    out = tmp_path / "deep" / "er" / "report"
    paths = report.write_report(load_results(copy), out)
    assert paths and all(p.resolve().is_relative_to(out.resolve()) for p in paths)
    assert not list(tmp_path.glob("escape*")) and not list((tmp_path / "deep").glob("escape*"))
