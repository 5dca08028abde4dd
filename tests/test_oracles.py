"""The importance-sampled oracle beside the exact one (report/oracles.py): paired differences,
ranks, cost ratio and changed finding verdicts, against values computed by hand on made-up
cells; the leaderboard shows the section only when an optimizer ran under both oracles."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryobench.harness.record import SCHEMA_VERSION
from cryobench.harness.results import load_results
from cryobench.model.importance import ImportanceSettings
from cryobench.report.figures import write_leaderboard
from cryobench.report.oracles import (oracle_table, split_by_oracle, two_sided_pvalue,
                                      verdict_changes)

EVALS = np.array([0, 1000, 10000, 60000])
T = 100                                         # terms of one exact evaluation (made up)
SEEDS = range(5)
# final test NLL per (optimizer, oracle) on seed s: FINAL[...] + s
FINAL = {("sgd", False): 500.0, ("olbfgs", False): 503.0,
         ("sgd", True): 510.0, ("olbfgs", True): 506.0}


def write_cell(root, optimizer, seed, sampled, evals=EVALS, platform=None):
    label = optimizer + (" [IS]" if sampled else "")
    cell = f"{optimizer}-{'is' if sampled else 'exact'}-{seed}"
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    final = FINAL[optimizer, sampled] + seed
    nll = final + 100.0 * (evals[-1] - evals) / evals[-1]          # falls to `final`
    terms = np.where(evals <= 1000, evals * T, 1000 * T + (evals - 1000) * T // 4) if sampled \
        else evals * T
    pd.DataFrame({"task": "thermus-style", "scale": "ci", "optimizer": optimizer, "label": label,
                  "seed": seed, "cell": cell, "checkpoint": np.arange(len(evals)),
                  "evals": evals, "grad_evals": evals, "value_evals": 0, "hvp_evals": 0,
                  "terms": terms, "wall_s": evals / 1e3, "test_nll": nll,
                  "train_obj": nll / 100}).to_csv(folder / "trace.csv", index=False)
    run = {"task": "thermus-style", "scale": "ci", "optimizer": optimizer, "label": label,
           "seed": seed, "params": {}}
    if sampled:
        run["oracle"] = ImportanceSettings().to_dict()
    meta = {"schema_version": SCHEMA_VERSION, "cell": cell, "optimizer_name": optimizer,
            "run": run, "status": "ok", "message": "", "budget": int(evals[-1]),
            "evaluations": int(evals[-1]), "wall_s": 1.0, "task_hash": "hash",
            "provenance": {"cryobench": "0.1.0"}, "snapshots": [],
            "task_facts": {"n_train": 1000, "batch_size": 100, "box": 12, "pixel_size": 10.0,
                           "rmax_px": 3.0}}
    if platform:
        meta["identity"] = {"cell": cell, "task_hash": "hash", "platform": platform}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def both(tmp_path):
    for optimizer in ("sgd", "olbfgs"):
        for seed in SEEDS:
            write_cell(tmp_path / "exact-set", optimizer, seed, False)
            write_cell(tmp_path / "is-set", optimizer, seed, True)
    return tmp_path


def test_two_sided_pvalue_by_hand():
    assert two_sided_pvalue([1, 1, 1, 1, 1]) == 2 / 32               # all 32 sign patterns
    assert two_sided_pvalue([-1, -1, -1, -1, -1]) == 2 / 32
    assert two_sided_pvalue([1, -1]) == 1.0


def test_oracle_table_by_hand(both):
    results = load_results(both / "exact-set", both / "is-set")
    exact, sampled = split_by_oracle(results)
    assert set(exact.cells["label"]) == {"sgd", "olbfgs"}
    assert set(sampled.cells["label"]) == {"sgd [IS]", "olbfgs [IS]"}
    t = oracle_table(results).set_index("optimizer")
    assert t.loc["sgd", "exact"] == 502.0 and t.loc["sgd", "IS"] == 512.0   # median seed 2
    assert t.loc["sgd", "IS − exact"] == 10.0 and t.loc["olbfgs", "IS − exact"] == 3.0
    assert t.loc["sgd", "p"] == t.loc["olbfgs", "p"] == 2 / 32
    assert (t.loc["sgd", "rank exact"], t.loc["sgd", "rank IS"]) == (1, 2)   # the order swaps
    assert (t.loc["olbfgs", "rank exact"], t.loc["olbfgs", "rank IS"]) == (2, 1)
    assert t.loc["sgd", "at evals"] == 60000
    # IS: 1,000 exact evaluations, then a quarter of the terms: (1000 + 59000 / 4) / 60000
    assert t.loc["sgd", "IS terms"] == pytest.approx((1000 + 59000 / 4) / 60000)
    assert t.loc["sgd", "other platform"] == 0              # the records name no platform


def test_pairs_run_on_another_platform_are_counted_and_said(tmp_path):
    """Seeds 0 and 1 of SGD ran on CPU A under the exact oracle and on CPU B under the IS one;
    seeds 2–4 on B under both; oLBFGS on B throughout."""
    for optimizer in ("sgd", "olbfgs"):
        for seed in SEEDS:
            exact_cpu = "A" if optimizer == "sgd" and seed < 2 else "B"
            write_cell(tmp_path / "exact-set", optimizer, seed, False, platform=exact_cpu)
            write_cell(tmp_path / "is-set", optimizer, seed, True, platform="B")
    t = oracle_table(load_results(tmp_path / "exact-set", tmp_path / "is-set")).set_index("optimizer")
    assert (t.loc["sgd", "other platform"], t.loc["olbfgs", "other platform"]) == (2, 0)
    write_leaderboard(tmp_path, out=tmp_path / "board.md")
    text = (tmp_path / "board.md").read_text()
    assert "seeds run on another platform under one oracle than under the other: 1 of 2" in text


def test_a_longer_is_set_is_compared_at_the_exact_sets_budget(tmp_path):
    """IS runs of 200,000 evaluations beside exact runs of 60,000: compared at 60,000, where
    the IS curves (made up linear in evals between their checkpoints 10,000 and 200,000, read
    log-linearly) are interpolated."""
    long = np.array([0, 1000, 10000, 200000])
    for seed in SEEDS:
        write_cell(tmp_path / "exact-set", "sgd", seed, False)
        write_cell(tmp_path / "is-set", "sgd", seed, True, evals=long)
    t = oracle_table(load_results(tmp_path / "exact-set", tmp_path / "is-set")).iloc[0]
    assert t["at evals"] == 60000
    w = np.log(60000 / 10000) / np.log(200000 / 10000)               # log-linear weight
    at_10k, at_200k = 512.0 + 100.0 * 190000 / 200000, 512.0           # seed 2 (the median)
    assert t["IS"] == pytest.approx(at_10k + w * (at_200k - at_10k))
    assert t["exact"] == 502.0


def test_a_finding_that_changes_verdict_is_listed(both):
    results = load_results(both / "exact-set", both / "is-set")
    changed = verdict_changes(results).set_index("finding")
    assert len(changed) == 2
    row = changed.loc[changed.index.str.startswith("oLBFGS and HF")].iloc[0]
    # exact: oLBFGS behind SGD on every seed; IS: ahead on every seed, p 1/32 < 0.05
    assert (row["exact"], row["IS"]) == ("reproduced", "not reproduced")
    row = changed.loc[changed.index.str.startswith("Thermus: SGD")].iloc[0]      # SGD vs oLBFGS
    assert (row["exact"], row["IS"]) == ("reproduced", "not reproduced")


def test_the_leaderboard_shows_the_comparison_only_with_both_oracles(both, tmp_path):
    write_leaderboard(both, out=tmp_path / "both.md")
    text = (tmp_path / "both.md").read_text()
    assert "## The importance-sampled oracle beside the exact one" in text
    assert "Ranks agree for 0 of 2 optimizers; findings whose verdict differs: 2." in text
    assert 'id="oracles"' in (tmp_path / "both.html").read_text()
    write_leaderboard(both, out=tmp_path / "exact.md", sets=["exact-set"])
    assert "importance-sampled oracle beside" not in (tmp_path / "exact.md").read_text()
