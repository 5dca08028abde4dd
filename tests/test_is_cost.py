"""Honest cost accounting for the oracles (issue 27 item 2): the flops column, the
exact-equivalent evaluations of the report, and tuned values kept per oracle."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from cryobench.harness.plan import Planner, resolve_params
from cryobench.harness.record import SCHEMA_VERSION, RunSpec
from cryobench.harness.registry import resolve
from cryobench.harness.results import load_results
from cryobench.harness.run import execute
from cryobench.harness.tuned import DEFAULT_TUNED, load_tuned
from cryobench.harness.tuning import tune
from cryobench.importance import sampled_flops
from cryobench.model.importance import ImportanceSettings, oracle_settings
from cryobench.model.likelihood import Likelihood
from cryobench.model.quadrature import quadrature_for
from cryobench.report.cost import (exact_equivalent, exact_terms_per_image, importance_cells,
                                   on_cost_axis)
from cryobench.report.figures import cost_figure, write_report
from cryobench.report.tables import COST_COLUMN, checkpoint_table, table_markdown
from cryobench.task import task_recipe

D, PIXEL, RMAX = 16, 4.0, 3.0


def gemm_flops(lik, batch, value_only=False):
    """2 m k n summed over the kernel's matrix products (value only: those of G, "AB^T")."""
    return sum(2 * m * k * n for layout, m, k, n in lik.gemm_shapes(batch)
               if not value_only or layout == "AB^T")


def test_a_full_draw_costs_exactly_the_exact_kernels_flops():
    """The sampled pass over every point counts the multiply-adds of the exact products."""
    for shifts in (1.5, 0.0):                       # several shifts, and one shift
        quad = quadrature_for(RMAX, D, shift_sigma_px=shifts)
        lik = Likelihood(D, PIXEL, RMAX, quad, 2, np.float64)
        na, ns, nd = lik._log_w.shape
        full = tuple((np.arange(n), np.zeros(n), np.zeros(n)) for n in (na, ns, nd))
        assert sampled_flops(full, len(lik.points), True) == gemm_flops(lik, 1)
        assert sampled_flops(full, len(lik.points), False) == gemm_flops(lik, 1, True)
        half = tuple((np.arange(max(1, n // 2)), np.zeros(1), np.zeros(1)) for n in (na, ns, nd))
        # by hand: na'·ns'·nd'·2Np + na'·nd'·Np multiply-adds, 2 flops each, twice with the gradient
        a, s, d = (max(1, n // 2) for n in (na, ns, nd))
        n_p = len(lik.points)
        assert sampled_flops(half, n_p, True) == 4 * (a * s * d * 2 * n_p + a * d * n_p)


def test_the_exact_oracle_counts_the_flops_of_what_it_evaluated(cylinder):
    lik = cylinder.likelihood
    oracle = cylinder.oracle(10**6, 0)
    x = cylinder.init.copy()
    batch = oracle.next_batch(30)
    oracle.value_and_grad(x, batch)
    assert oracle.flops == gemm_flops(lik, 30)
    oracle.value(x, batch)
    assert oracle.flops == gemm_flops(lik, 30) + gemm_flops(lik, 30, True)
    oracle.hvp(x, x, batch, grad=np.zeros_like(x))                # one more gradient pass
    assert oracle.flops == 2 * gemm_flops(lik, 30) + gemm_flops(lik, 30, True)


def test_the_importance_oracle_counts_its_sampled_and_exact_flops(cylinder):
    lik = cylinder.likelihood
    # without annealing, so that the second visit already samples (annealed, its flat proposal
    # computes more than exact_above of the terms and is evaluated exactly)
    oracle = cylinder.oracle(10**6, 0, "importance:anneal=0", "sgd")
    x = cylinder.init.copy()
    for _ in range(cylinder.n_train // 100):                      # first visits: exact
        oracle.value_and_grad(x, oracle.next_batch(100))
    assert oracle.flops == oracle.evaluations * lik.flops_per_image()
    before = oracle.flops
    batch = oracle.next_batch(100)
    oracle.value_and_grad(x, batch)
    draws = [oracle.sampler.last[int(i)] for i in batch]
    want = sum(lik.flops_per_image() if d is None else
               4 * (len(d[0][0]) * len(d[1][0]) * len(d[2][0]) * 2 * len(lik.points)
                    + len(d[0][0]) * len(d[2][0]) * len(lik.points)) for d in draws)
    assert any(d is not None for d in draws)
    assert oracle.flops - before == want < 100 * lik.flops_per_image()


def test_flops_column_of_a_run(cylinder):
    spec = RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 1.0, "decay": 0.01,
                                                       "batch_size": 100}, 0, 300)
    trace = execute(spec, cylinder, resolve("sgd"), compare=False).trace
    assert "flops" in trace.columns
    assert (trace["flops"] == trace["evals"] * cylinder.likelihood.flops_per_image()).all()


# ------------------------------------------------------------------ tuned values per oracle
def tuned_table(recipe, **entries):
    """{"synthetic-cylinder": {"ci": {key: entry}}} with lr values, matched on ``recipe``."""
    return {"synthetic-cylinder": {"ci": {k: {"params": {"lr": v}, "task_recipe": recipe}
                                          for k, v in entries.items()}}}


def test_each_oracle_gets_the_values_tuned_under_it(tmp_path, caplog):
    empty = tmp_path / "no-data"
    ref = Planner(empty).task("synthetic-cylinder", "ci")
    recipe = task_recipe("synthetic-cylinder", "ci", empty)
    sgd = resolve("sgd")
    both = tuned_table(recipe, **{"sgd": 0.25, "sgd [IS]": 0.0625})
    assert resolve_params(sgd, {}, both, ref)[0]["lr"] == 0.25                      # exact
    params, source = resolve_params(sgd, {}, both, ref, oracle_settings("importance"))
    assert params["lr"] == 0.0625 and source["lr"] == "tuned"
    # an exact run never takes values tuned under another oracle
    only_is = tuned_table(recipe, **{"sgd [IS]": 0.0625})
    params, source = resolve_params(sgd, {}, only_is, ref)
    assert source["lr"] == "default" and params["lr"] == sgd.hypers["lr"].default
    # other importance settings, tuned under none: the exact values, with a note naming them
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        params, source = resolve_params(sgd, {}, both, ref,
                                        oracle_settings("importance:ess_scale=5"))
    assert params["lr"] == 0.25 and source["lr"] == "tuned"
    assert "no tuned values of sgd under the IS ess_scale=5 oracle" in caplog.text
    assert "using those tuned with the exact oracle" in caplog.text
    # and nothing recorded at all: the defaults, without a note
    params, source = resolve_params(sgd, {}, tuned_table(recipe), ref,
                                    oracle_settings("importance"))
    assert source["lr"] == "default"


def test_committed_exact_values_serve_an_importance_run_with_a_note(caplog):
    committed = load_tuned(DEFAULT_TUNED)
    lr = committed["synthetic-cylinder"]["small"]["sgd"]["params"]["lr"]
    planner = Planner()
    ref = planner.task("synthetic-cylinder", "small")
    assert planner.plan(ref, "sgd").spec.params["lr"] == lr
    with caplog.at_level(logging.WARNING, logger="cryobench"):
        plan = planner.plan(ref, "sgd", oracle="importance")
    assert plan.spec.params["lr"] == lr and plan.sources["lr"] == "tuned"
    assert "under the IS oracle" in caplog.text


def test_tune_under_the_importance_oracle_records_under_it(tmp_path, data_dir):
    record = tmp_path / "tuned.json"
    exact = {"params": {"lr": 0.125}, "task_recipe": "kept as it was"}
    record.write_text(json.dumps({"synthetic-cylinder": {"ci": {"sgd": exact}}}))
    chosen = tune(["synthetic-cylinder"], "ci", ["sgd"], ["lr"], points=2, budget=200,
                  out=tmp_path / "tune", record_to=record, workers=1, data_dir=data_dir,
                  progress=False, oracle="importance")
    table = load_tuned(record)["synthetic-cylinder"]["ci"]
    assert table["sgd"] == exact                                     # the exact entry untouched
    entry = table["sgd [IS]"]
    assert entry["oracle"] == ImportanceSettings().to_dict()
    assert entry["params"] == chosen["synthetic-cylinder", "sgd"]["params"]
    planner = Planner(data_dir, tuned=record)
    ref = planner.task("synthetic-cylinder", "ci")
    plan = planner.plan(ref, "sgd", oracle="importance")
    assert plan.spec.params == entry["params"] and plan.sources["lr"] == "tuned"
    cells = load_results(tmp_path / "tune").cells
    assert (cells["label"].str.endswith("[IS]")).all()               # tuned with the IS oracle


# ------------------------------------------------------------------ exact-equivalent evaluations
T = 1000                                        # terms of one exact evaluation (made up)
EVALS = np.array([0, 100, 1000, 3000, 6000])


def _is_terms(evals):
    """The IS runs' terms: exact up to 1,000 evaluations, then a tenth of the terms."""
    return np.where(evals <= 1000, evals * T, 1000 * T + (evals - 1000) * T // 10)


def write_cell(root, label, seed, oracle=None, terms=True, task="task-a", facts=None):
    """A cell folder as the harness writes it: trace (with or without terms) and meta.json."""
    cell = f"{task}-{label.replace(' ', '_')}-{seed}"
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    nll = 1000.0 - (10 + seed) * np.log1p(EVALS)
    trace = pd.DataFrame({"task": task, "scale": "ci", "optimizer": "sgd", "label": label,
                          "seed": seed, "cell": cell, "checkpoint": np.arange(len(EVALS)),
                          "evals": EVALS, "grad_evals": EVALS, "value_evals": 0, "hvp_evals": 0,
                          "wall_s": EVALS / 1000.0, "test_nll": nll, "train_obj": nll / 100})
    if terms:
        trace.insert(10, "terms", _is_terms(EVALS) if oracle else EVALS * T)
    trace.to_csv(folder / "trace.csv", index=False)
    run = {"task": task, "scale": "ci", "optimizer": "sgd", "label": label, "seed": seed,
           "params": {}}
    if oracle:
        run["oracle"] = ImportanceSettings().to_dict()
    meta = {"schema_version": SCHEMA_VERSION, "cell": cell, "optimizer_name": "sgd", "run": run,
            "status": "ok", "message": "", "budget": int(EVALS[-1]),
            "evaluations": int(EVALS[-1]), "wall_s": 1.0, "task_hash": f"hash-{task}",
            "provenance": {"cryobench": "0.1.0"}, "snapshots": [],
            "task_facts": facts or {"n_train": 1000, "batch_size": 100, "box": 12,
                                    "pixel_size": 10.0, "rmax_px": 3.0}}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def mixed(tmp_path):
    """Exact sgd and sgd [IS], two seeds each."""
    for seed in (0, 1):
        write_cell(tmp_path / "mixed", "sgd", seed)
        write_cell(tmp_path / "mixed", "sgd [IS]", seed, oracle=True)
    return load_results(tmp_path / "mixed")


def test_exact_equivalent_evaluations_by_hand(mixed):
    assert importance_cells(mixed) == {"task-a-sgd_[IS]-0", "task-a-sgd_[IS]-1"}
    assert exact_terms_per_image(mixed) == {("task-a", "ci"): T}
    e = exact_equivalent(mixed)
    is_rows = mixed.trace["label"] == "sgd [IS]"
    assert (e[~is_rows] == mixed.trace.loc[~is_rows, "evals"]).all()          # exact: E = evals
    assert list(e[is_rows & (mixed.trace["seed"] == 0)]) == [0, 100, 1000, 1200, 1500]
    table = checkpoint_table(mixed).set_index("label")
    assert table.loc["sgd", COST_COLUMN] == 6000 and table.loc["sgd [IS]", COST_COLUMN] == 1500
    assert COST_COLUMN in table_markdown(checkpoint_table(mixed))


def test_the_cost_figure_puts_is_runs_at_their_exact_equivalent_evaluations(mixed):
    fig = cost_figure(mixed)
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    assert list(lines["sgd [IS]"].get_xdata()) == [100, 1000, 1200, 1500]
    assert list(lines["sgd"].get_xdata()) == [100, 1000, 3000, 6000]
    assert fig.axes[1].get_xlabel() == "exact-equivalent evaluations"


def test_report_adds_the_cost_figure_and_column_only_with_is_runs(mixed, tmp_path):
    names = {p.name for p in write_report(mixed, tmp_path / "with")}
    assert {"convergence-cost.png", "convergence-cost.svg"} <= names
    assert COST_COLUMN in (tmp_path / "with" / "table.csv").read_text()
    exact_only = tmp_path / "exact"
    for seed in (0, 1):
        write_cell(exact_only, "sgd", seed)
    names = {p.name for p in write_report(load_results(exact_only), tmp_path / "without")}
    assert not any("cost" in n for n in names)
    assert COST_COLUMN not in (tmp_path / "without" / "table.csv").read_text()


def test_old_traces_without_terms_have_no_cost(tmp_path):
    root = tmp_path / "old"
    write_cell(root, "sgd", 0, terms=False)                          # written before terms
    write_cell(root, "sgd", 1)
    write_cell(root, "sgd [IS]", 0, oracle=True)
    results = load_results(root)
    old = results.trace["cell"] == "task-a-sgd-0"
    e = exact_equivalent(results)
    assert e[old].isna().all() and e[~old].notna().all()
    assert set(on_cost_axis(results).cells["cell"]) == {"task-a-sgd-1", "task-a-sgd_[IS]-0"}
    # no exact run with terms to read T from: no cost at all
    alone = tmp_path / "alone"
    write_cell(alone, "sgd [IS]", 0, oracle=True, terms=False)
    assert exact_equivalent(load_results(alone)).isna().all()


def test_a_set_of_is_runs_alone_reads_t_from_their_first_epoch(tmp_path):
    """Without an exact run, T is terms / evals over the IS runs' first epoch (first visits,
    evaluated exactly): K = 1,000 here, where the made-up terms are exact."""
    root = tmp_path / "alone"
    for seed in (0, 1):
        write_cell(root, "sgd [IS]", seed, oracle=True)
    results = load_results(root)
    assert exact_terms_per_image(results) == {("task-a", "ci"): T}
    assert list(exact_equivalent(results)[results.trace["seed"] == 0]) == [0, 100, 1000, 1200, 1500]
    names = {p.name for p in write_report(results, tmp_path / "report")}
    assert {"convergence-cost.png", "convergence-cost.svg"} <= names
    # a record whose K is below every checkpoint: no first-epoch row, no T
    late = tmp_path / "late"
    write_cell(late, "sgd [IS]", 0, oracle=True,
               facts={"n_train": 50, "batch_size": 10, "box": 12, "pixel_size": 10.0,
                      "rmax_px": 3.0})
    assert np.isnan(exact_terms_per_image(load_results(late))["task-a", "ci"])
