"""The refinement paper's metrics in cells and reports: per-epoch checkpoints with the FSC per
shell against the optimum (fsc_shells.csv), epochs to the outer shells, the heat maps and
suboptimality curves of the report, and the claims as findings rows.

A tiny set at ci scale (K = 250): sgd and exact-diag-sgd × 2 seeds × 4 epochs, run in-process and
written as cells the way the grid writes them."""
import numpy as np
import pandas as pd
import pytest

import cryobench
from cryobench.base.seeding import content_hash
from cryobench.data.mrc import read_volume
from cryobench.errors import InputError
from cryobench.harness.record import RunSpec, cell_files, read_shells, read_trace, write_cell_folder
from cryobench.harness.registry import resolve
from cryobench.harness.results import load_results
from cryobench.harness.run import checkpoints, execute
from cryobench.report.figures import write_report
from cryobench.report.findings import findings_table
from cryobench.report.findings_section import findings_section
from cryobench.report.refinement import (epochs_summary, epochs_table, heat, outer_band,
                                         subopt_figure)
from cryobench.report.refinement_claims import refinement_findings
from cryobench.report.style import line_styles
from cryobench.report.tables import md_text

EPOCHS = 4
RUNS = {"sgd": {"lr": 0.5}, "exact-diag-sgd": {"lr": 0.05}}


def write_run(root, task, name, params, seed, budget):
    spec = RunSpec(task.name, task.scale.name, name, params, seed=seed, budget=budget)
    out = execute(spec, task, resolve(name), compare=False)
    cell = content_hash({"run": spec.to_dict()})[:16]
    return write_cell_folder(root / "cells" / cell, cell_files(out, cell, task.dataset.pixel_size))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory, data_dir):
    task = cryobench.load_task("refinement-atoms", scale="ci", data_dir=data_dir, progress=False)
    root = tmp_path_factory.mktemp("refine-set")
    for name, params in RUNS.items():
        for seed in (0, 1):
            write_run(root, task, name, params, seed, EPOCHS * task.n_train)
    return task, root


def brute_fsc(a, b, n_shells):
    """FSC per 1-voxel shell by an explicit loop over shells (rounded |k|), no shared code."""
    d = a.shape[0]
    fa, fb = np.fft.fftn(a.astype(np.float64)), np.fft.fftn(b.astype(np.float64))
    k = np.fft.fftfreq(d, 1.0 / d)
    r = np.rint(np.sqrt(sum(g ** 2 for g in np.meshgrid(k, k, k, indexing="ij"))))
    out = []
    for s in range(n_shells):
        m = r == s
        out.append(np.real(np.sum(fa[m] * np.conj(fb[m])))
                   / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


def test_every_epoch_is_a_checkpoint_with_the_fsc_per_shell_against_the_optimum(tiny_set):
    task, root = tiny_set
    k, rmax = task.n_train, int(task.likelihood.rmax)
    for folder in sorted((root / "cells").iterdir()):
        trace, shells = read_trace(folder), read_shells(folder)
        assert set(shells["reference"]) == {"optimum"}
        assert sorted(shells["checkpoint"].unique()) == list(trace["checkpoint"])
        assert all(list(g) == list(range(rmax + 1)) for _, g in shells.groupby("checkpoint")["shell"])
        evals = trace["evals"].to_numpy()
        for e in range(1, int(evals.max() // k) + 1):       # within one minibatch after e·K
            assert ((evals >= e * k) & (evals < e * k + task.batch_size)).any(), (folder, e)
        last = shells[shells["checkpoint"] == shells["checkpoint"].max()]
        final = read_volume(folder / "density_final.mrc")[0]
        expected = brute_fsc(final, task.optimum(progress=False), rmax + 1)
        assert np.allclose(last["fsc"], expected, rtol=1e-5, atol=1e-6)
        assert np.allclose(last["freq"], np.arange(rmax + 1) / (task.likelihood.box * task.dataset.pixel_size))
        outer = expected[int(0.8 * rmax) + 1:].min()          # the trace's column, same curve
        assert trace["fsc_opt_outer"].iloc[-1] == pytest.approx(outer, rel=1e-5)


def test_the_outer_band_leaves_out_the_shell_that_straddles_r_max():
    """Outer 20 % of (0, r_max], each shell [s − ½, s + ½] wholly inside r_max."""
    assert list(np.flatnonzero(outer_band(np.arange(70), 64.0))) == list(range(52, 64))
    assert list(np.flatnonzero(outer_band(np.arange(20), 12.0))) == [10, 11]
    assert list(np.flatnonzero(outer_band(np.arange(20), 12.5))) == [11, 12]


def test_epochs_to_threshold_by_hand(tiny_set):
    task, root = tiny_set
    results = load_results(root)
    k, rmax = task.n_train, task.likelihood.rmax
    table = epochs_table(results)
    assert len(table) == 4 and set(table["optimizer"]) == set(RUNS)
    band = (np.arange(int(rmax) + 1) > 0.8 * rmax) & (np.arange(int(rmax) + 1) < rmax)
    for row in table.to_dict("records"):                     # the measured shells, scanned
        shells = results.shells[results.shells["cell"] == row["cell"]].sort_values("checkpoint")
        outer = [(e, g["fsc"].to_numpy()[band].min()) for e, g in shells.groupby("evals")]
        for th in (0.5, 0.8, 0.95):
            hit = [e for e, f in outer if f >= th]
            assert row[f"epochs to {th:g}"] == (hit[0] / k if hit else np.inf)
        assert row["final_fsc_outer"] == outer[-1][1]
    cell = table["cell"].iloc[0]                              # and shells written by hand
    mine = results.shells["cell"] == cell
    evals = results.shells.loc[mine, "checkpoint"] * 125
    results.shells.loc[mine, "evals"] = evals
    results.trace.loc[results.trace["cell"] == cell, "evals"] = np.arange(evals.nunique()) * 125
    # every outer shell at min(0.2·i, 0.9) at checkpoint i, the edge shell at r_max always 0
    fsc = np.minimum(0.2 * results.shells.loc[mine, "checkpoint"], 0.9)
    results.shells.loc[mine, "fsc"] = np.where(results.shells.loc[mine, "shell"] >= rmax, 0, fsc)
    row = epochs_table(results).set_index("cell").loc[cell]
    # 0.2·i ≥ 0.5 first at i = 3 (375 evals = 1.5 epochs), ≥ 0.8 at i = 4 (2 epochs), 0.95 never
    assert (row["epochs to 0.5"], row["epochs to 0.8"], row["epochs to 0.95"]) == (1.5, 2.0, np.inf)
    assert row["final_fsc_outer"] == 0.9
    summary = epochs_summary(pd.DataFrame([{**row, "cell": cell, "label": "x"},
                                           {**row, "cell": "y", "label": "x", "epochs to 0.5": 3.0}]))
    assert summary["epochs to 0.5"].iloc[0] == "2.25 (1.5–3)"
    assert summary["epochs to 0.95"].iloc[0] == "not reached"


def test_the_report_writes_heat_maps_the_epochs_table_and_suboptimality_curves(tiny_set, tmp_path):
    task, root = tiny_set
    results = load_results(root)
    paths = {p.name for p in write_report(results, tmp_path)}
    for name in ("refinement-fsc-epochs-refinement-atoms-ci", "refinement-subopt"):
        assert {f"{name}.png", f"{name}.svg"} <= paths
    report = (tmp_path / "report.md").read_text()
    assert "epochs to the outer shells" in report and "epochs to 0.8" in report
    assert "exact-diag-sgd" in report and "refinement-subopt.png" in report
    csv = pd.read_csv(tmp_path / "refinement_epochs.csv")
    assert len(csv) == 4 and (csv["final_subopt"] > 0).all()
    # a heat map column is the median over the seeds of their first checkpoint at ≥ e·K evals
    sgd = results.cells.loc[results.cells["label"] == "sgd", "cell"]
    shells = results.shells[results.shells["cell"].isin(sgd)]
    epochs, freq, median = heat(shells, task.n_train)
    assert list(epochs) == list(range(EPOCHS + 1))
    at = [s[s["evals"] == s.loc[s["evals"] >= 2 * task.n_train, "evals"].min()]
          .sort_values("shell")["fsc"].to_numpy() for _, s in shells.groupby("cell")]
    assert np.allclose(median[2], np.median(at, axis=0))


def test_suboptimality_curves_draw_each_method_as_every_other_figure_does(tiny_set):
    """A method keeps its colour and line style from figure to figure (line_styles: past ten
    methods the line style tells them apart, where the colour-blind palette repeats)."""
    results = load_results(tiny_set[1])
    for frame in ("cells", "trace"):        # 14 methods: the set's two and 6 copies of each
        part = getattr(results, frame)
        setattr(results, frame, pd.concat([part] + [part.assign(
            label=part["label"] + f" #{i}", cell=part["cell"] + f"-{i}") for i in range(6)],
            ignore_index=True))
    drawn = {line.get_gid(): (tuple(line.get_color()), line.get_linestyle())
             for ax in subopt_figure(results).axes for line in ax.get_lines() if line.get_gid()}
    styles = line_styles(results.cells["label"])
    assert len(drawn) == 14 and len(set(drawn.values())) == 14
    assert drawn == {k: (tuple(s["color"]), s["ls"]) for k, s in styles.items()}


def test_the_leaderboard_findings_section_measures_the_claims_as_the_claims_do(tiny_set):
    """The leaderboard splits the runs by oracle before its findings: the split keeps the FSC
    per shell, so the claims read the runs, not 'no runs with an optimum'."""
    results = load_results(tiny_set[1])
    markdown = "\n".join(findings_section(results)[0])
    for measured in refinement_findings(results)["measured"]:
        assert md_text(measured) in markdown
    assert "sgd ends at outer-shell FSC" in markdown and "a local search" not in markdown


def test_claims_are_findings_rows_not_measurable_without_the_preconditioned_method(tiny_set, tmp_path):
    task, root = tiny_set
    results = load_results(root)
    rows = refinement_findings(results).set_index("key")
    assert list(rows.index) == ["kappa-grows", "sgd-stalls", "precond-epochs"]
    assert rows.loc["kappa-grows", "verdict"] == "reproduced"          # 8.1 → 214 at ci
    assert "κ(r_max = 12 px)" in rows.loc["kappa-grows", "measured"]
    for key in ("sgd-stalls", "precond-epochs"):                     # 2 seeds: p ≥ 1/4
        assert rows.loc[key, "verdict"] in ("not reproduced", "partly"), rows.loc[key, "measured"]
        assert "paired p = " in rows.loc[key, "measured"]
    assert findings_table(results).empty              # Brubaker & Punjani's findings: not here
    keep = results.cells["optimizer"] == "sgd"
    results.cells = results.cells[keep]
    results.trace = results.trace[results.trace["cell"].isin(results.cells["cell"])]
    rows = refinement_findings(results).set_index("key")
    assert rows.loc["precond-epochs", "verdict"] == "not measurable"
    assert rows.loc["sgd-stalls", "verdict"] == "not measurable"
    assert rows.loc["kappa-grows", "verdict"] == "reproduced"


def test_a_local_search_run_has_the_fsc_per_shell_against_the_truth(data_dir, tmp_path):
    task = cryobench.load_task("refinement-local", scale="ci", data_dir=data_dir, progress=False)
    folder = write_run(tmp_path, task, "sgd", {"lr": 0.01}, 0, task.n_train)
    shells, trace = read_shells(folder), read_trace(folder)
    assert set(shells["reference"]) == {"truth"} and "fsc_opt_outer" not in trace
    last = shells[shells["checkpoint"] == shells["checkpoint"].max()]
    final = read_volume(folder / "density_final.mrc")[0]
    rmax = int(task.likelihood.rmax)
    assert np.allclose(last["fsc"], brute_fsc(final, task.dataset.ground_truth, rmax + 1),
                       rtol=1e-5, atol=1e-6)
    results = load_results(tmp_path)
    assert epochs_table(results).empty
    assert set(refinement_findings(results)["verdict"]) == {"not measurable"}


def test_a_broken_shell_file_is_one_line(tiny_set, tmp_path):
    _, root = tiny_set
    folder = sorted((root / "cells").iterdir())[0]
    copy = tmp_path / "set" / "cells" / folder.name
    write_cell_folder(copy, {p.name: p.read_bytes() for p in folder.iterdir()})
    shells = pd.read_csv(copy / "fsc_shells.csv")
    shells.drop(columns=["freq"]).to_csv(copy / "fsc_shells.csv", index=False)
    with pytest.raises(InputError, match=r"fsc_shells.csv: not an FSC per shell: no column 'freq'"):
        load_results(tmp_path / "set")
    shells.assign(reference="median").to_csv(copy / "fsc_shells.csv", index=False)
    with pytest.raises(InputError, match=r"column 'reference' holds 'median', not one of optimum"):
        load_results(tmp_path / "set")


def test_an_ab_initio_run_is_unchanged(cylinder):
    """No per-epoch checkpoints, no shell file, no refinement facts: an ab-initio cell's files
    and checkpoints are what they were."""
    spec = RunSpec(cylinder.name, "ci", "sgd", {"lr": 0.1}, seed=0, budget=3 * cylinder.n_train)
    out = execute(spec, cylinder, resolve("sgd"), compare=False)
    assert out.shells is None and "refinement" not in out.record.to_dict()
    b = cylinder.batch_size                          # sgd spends b evaluations per step
    marks = checkpoints(3 * cylinder.n_train, b)
    expected = sorted({0, *(min(-(-int(m) // b) * b, 3 * cylinder.n_train // b * b) for m in marks)})
    assert list(out.trace["evals"]) == expected
    epochs = {-(-e * cylinder.n_train // b) * b for e in (1, 2)}
    assert not epochs <= set(expected)             # the epoch marks would have added rows
    assert "fsc_shells.csv" not in cell_files(out, "x" * 16, cylinder.dataset.pixel_size)
