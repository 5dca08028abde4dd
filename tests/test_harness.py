"""The harness: runs, grids (local processes and Dask), kill-and-resume, tuning, results files."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import write_grid

from cryobench.cli import main as cli
from cryobench.data.mrc import read_volume
from cryobench.errors import InputError
from cryobench.harness.grid import expand, load_grid, run_grid
from cryobench.harness.registry import resolve
from cryobench.data.spec import TASKS_DIR
from cryobench.harness.plan import Planner, resolve_params
from cryobench.harness.record import CellRecord, RunSpec
from cryobench.harness.results import load_results
from cryobench.harness.run import checkpoints, execute
from cryobench.harness.tuned import load_tuned
from cryobench.harness.tuning import tune

BAD_OPTIMIZERS = '''
import numpy as np
from cryobench.optim import GradientMethod, Hyper, method


@method(scale=Hyper(1e30, 1.0, 1e40))
def exploding(scale):
    """Multiplies the density by a huge factor: diverges on its first step."""
    def step(state, oracle):
        oracle.value_and_grad(state["x"], oracle.next_batch(100))
        return {"x": (state["x"] * np.float32(scale)) * np.float32(scale)}
    return GradientMethod(lambda x0, *, budget, rng: {"x": x0.copy()}, step)


@method(after=Hyper(2, 1, 100, integer=True))
def failing(after):
    """Raises on step ``after``."""
    def step(state, oracle):
        if state["t"] + 1 >= after:
            raise RuntimeError("deliberate failure")
        oracle.value_and_grad(state["x"], oracle.next_batch(100))
        return {"x": state["x"], "t": state["t"] + 1}
    return GradientMethod(lambda x0, *, budget, rng: {"x": x0.copy(), "t": 0}, step)
'''


@pytest.fixture(scope="module")
def bad_optimizers(tmp_path_factory):
    path = tmp_path_factory.mktemp("opt") / "bad.py"
    path.write_text(BAD_OPTIMIZERS)
    return path




def test_checkpoints_are_log_spaced_and_include_paper_marks():
    marks = checkpoints(100_000, 100, per_decade=5)
    assert marks[0] == 0 and marks[-1] == 100_000
    assert {5000, 50_000} <= set(marks.tolist())
    ratios = marks[2:] / marks[1:-1]
    assert ratios.max() < 10 ** (1 / 5) + 0.05 and np.all(np.diff(marks) > 0)
    assert 5000 not in checkpoints(4000, 100)
    with pytest.raises(ValueError, match="budget"):
        checkpoints(0, 100)


def test_run_trace_is_deterministic_and_scored_uncounted(cylinder):
    spec = RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 1.0}, seed=0, budget=600)
    a, b = (execute(spec, cylinder, resolve("sgd")) for _ in range(2))
    assert a.record.status == "ok" and a.record.evaluations == 600
    assert a.record.counts == {"grad": 600, "value": 0, "hvp": 0}     # scoring is not counted
    pd.testing.assert_series_equal(a.trace["test_nll"], b.trace["test_nll"])
    assert a.trace["evals"].tolist()[0] == 0 and a.trace["evals"].tolist()[-1] == 600
    assert a.trace["test_nll"].iloc[-1] < a.trace["test_nll"].iloc[0]
    assert a.trace["wall_s"].is_monotonic_increasing
    assert set(a.densities) == {"final"} and a.record.snapshots[0]["resolution_A"] > 0
    prov = a.record.provenance
    assert prov["task_hash"] == cylinder.content_hash and prov["blas"] and prov["cpu"]
    other = execute(RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 1.0}, seed=1, budget=600),
                    cylinder, resolve("sgd"))
    assert other.trace["test_nll"].iloc[-1] != a.trace["test_nll"].iloc[-1]   # another stream


def test_diverging_and_failing_runs_keep_their_checkpoints(cylinder, bad_optimizers):
    out = execute(RunSpec("synthetic-cylinder", "ci", f"{bad_optimizers}:exploding", {}, budget=600),
                  cylinder, resolve(f"{bad_optimizers}:exploding"))
    assert out.record.status == "diverged" and "not finite" in out.record.message
    assert "final" not in out.densities and len(out.trace) == 2
    out = execute(RunSpec("synthetic-cylinder", "ci", f"{bad_optimizers}:failing", {"after": 3},
                          budget=600), cylinder, resolve(f"{bad_optimizers}:failing"))
    assert out.record.status == "error" and "deliberate failure" in out.record.message
    assert out.record.evaluations == 200 and out.trace["evals"].iloc[-1] == 200


def _as_if_computed_elsewhere(folder, **identity) -> str:
    """Rewrite a finished cell as another platform would have filed it: its identity's platform
    (and ``identity``'s other parts) changed, its folder under another id; the new id."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["identity"].update({"platform": "another CPU | another BLAS", "numerics": "0" * 16, **identity})
    (folder / "meta.json").write_text(json.dumps(meta))
    other = folder.with_name("e1sewhere" + folder.name[9:])
    folder.rename(other)
    return other.name


def test_grid_keeps_a_cell_another_platform_computed_with_the_same_code(tmp_path, data_dir):
    """A grid resumed on another CPU keeps the cells the first computed (the numerics
    fingerprint, in the id, follows the platform; the numerical code's digest does not); a cell
    computed there by other numerical code, or filed under another id on this platform, is
    computed again."""
    cells = expand(load_grid(write_grid(tmp_path / "grid.toml", ["sgd", "adagrad"])), data_dir)
    first = run_grid(cells, tmp_path, workers=1, data_dir=data_dir, progress=False)
    sgd, adagrad = (tmp_path / "cells" / c.cell for c in cells)
    kept = _as_if_computed_elsewhere(sgd)
    _as_if_computed_elsewhere(adagrad, numerics_code="another code")
    again = run_grid(cells, tmp_path, workers=1, data_dir=data_dir, progress=False)
    assert again[cells[0].cell] == (kept, "ok") and again[cells[1].cell] == first[cells[1].cell]
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == sorted(
        [kept, "e1sewhere" + cells[1].cell[9:], cells[1].cell])
    assert not (tmp_path / "cells" / cells[0].cell).exists()
    # the same cell under another id on this platform is not this run: recomputed
    meta = json.loads((tmp_path / "cells" / kept / "meta.json").read_text())
    meta["identity"]["platform"] = CellRecord.read(tmp_path / "cells" / cells[1].cell).identity["platform"]
    (tmp_path / "cells" / kept / "meta.json").write_text(json.dumps(meta))
    third = run_grid(cells, tmp_path, workers=1, data_dir=data_dir, progress=False)
    assert third[cells[0].cell] == (cells[0].cell, "ok")


def test_grid_names_the_finished_cells_that_are_none_of_its_runs(tmp_path, data_dir, capsys):
    """Cells left in the folder by another definition of the task (a stale set being replaced)
    or by a run the grid no longer plans are named by ``cryobench grid``, and counted apart when
    their task data differ; a grid whose cells are all its own says nothing."""
    grid = write_grid(tmp_path / "grid.toml", ["sgd"])
    command = ["grid", str(grid), "--workers", "1", "--quiet", "--data-dir", str(data_dir)]
    assert cli(command) == 0
    assert "no run of this grid" not in capsys.readouterr().out
    own = next((tmp_path / "cells").iterdir())
    for name, task_hash in (("0ldtask0000000000", "0" * 64), ("0ldrun00000000000", None)):
        shutil.copytree(own, own.with_name(name))
        if task_hash:
            meta = json.loads((own.with_name(name) / "meta.json").read_text())
            meta["task_hash"] = task_hash
            (own.with_name(name) / "meta.json").write_text(json.dumps(meta))
    assert cli(command) == 0
    out = capsys.readouterr().out
    assert "2 other finished cells" in out and "(1 computed on another definition" in out
    assert "0ldrun00000000000, 0ldtask0000000000" in out


def test_a_run_stopped_early_has_the_whole_runs_first_rows(cylinder):
    """``execute(stop_after=S)`` (verify's prefix) gives, bit for bit, the rows the whole run has
    up to S, a checkpoint of the whole run: the same checkpoints, since the run is given its
    whole budget (a budget of S would checkpoint elsewhere)."""
    spec = RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 0.1}, budget=2000)
    whole = execute(spec, cylinder, resolve("sgd"), compare=False).trace
    stop = int(whole["evals"][whole["evals"] <= 1000].max())
    early = execute(spec, cylinder, resolve("sgd"), compare=False, stop_after=stop).trace
    first = whole[whole["evals"] <= stop]
    assert checkpoints(stop, 100).tolist() != first["evals"].tolist()
    pd.testing.assert_frame_equal(early.drop(columns="wall_s"), first.drop(columns="wall_s"))


def test_grid_records_every_status_and_resumes_without_recomputing(tmp_path, data_dir, bad_optimizers):
    grid = write_grid(tmp_path / "grid.toml", ["sgd", f"{bad_optimizers}:exploding",
                                               f"{bad_optimizers}:failing"])
    cells = expand(load_grid(grid), data_dir)
    status = run_grid(cells, tmp_path, workers=2, data_dir=data_dir, progress=False)
    assert sorted(o.status for o in status.values()) == ["diverged", "error", "ok"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert run_grid(cells, tmp_path, workers=2, data_dir=data_dir, progress=False) == status
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    results = load_results(tmp_path)
    assert len(results.cells) == 3 and (results.trace.groupby("cell")["evals"].max() <= 400).all()
    final, size = read_volume(next(tmp_path.glob("cells/*/density_final.mrc")))
    assert final.shape == (24, 24, 24) and size > 0
    for record in map(CellRecord.read, tmp_path.glob("cells/*")):            # where a cell's time went
        overhead = record.overhead_s
        assert set(overhead) == {"loading", "scoring", "comparison"}
        assert overhead["loading"] > 0 and overhead["scoring"] > 0 and overhead["comparison"] >= 0


def test_killed_grid_resumes_without_redoing_finished_cells(tmp_path, data_dir):
    grid = write_grid(tmp_path / "grid.toml", ["sgd"], budget=300,
                      extra="seeds = 5\n[params.sgd]\nlr = [0.5, 1.0]\n")
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    command = [sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(tmp_path.glob("cells/*/meta.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)                       # the grid and its cell processes
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert 2 <= len(done) < 10, "the grid should have been killed mid-way"
    for name in done:                                         # no finished cell is corrupt
        results = load_results(tmp_path / "cells" / name)
        assert results.cells["status"].iloc[0] == "ok"
    subprocess.run(command, env=env, check=True, capture_output=True)
    after = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/meta.json")}
    assert len(after) == 10 and all(after[k] == v for k, v in done.items())
    assert not list(tmp_path.glob("cells/.*")), "temporary folders were left behind"
    assert set(load_results(tmp_path).cells["status"]) == {"ok"}


def test_grid_on_a_dask_local_cluster(tmp_path, data_dir):
    distributed = pytest.importorskip("dask.distributed")
    grid = write_grid(tmp_path / "grid.toml", ["sgd", "nesterov"], budget=300)
    cells = expand(load_grid(grid), data_dir)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None, processes=True) as cluster:
        status = run_grid(cells, tmp_path / "dask", scheduler=cluster.scheduler_address,
                          data_dir=data_dir, progress=False)
    assert [o.status for o in status.values()] == ["ok", "ok"]
    local = run_grid(cells, tmp_path / "local", workers=1, data_dir=data_dir, progress=False)
    a, b = load_results(tmp_path / "dask"), load_results(tmp_path / "local")
    pd.testing.assert_frame_equal(a.trace.drop(columns="wall_s"), b.trace.drop(columns="wall_s"))
    assert local == status


def test_combined_sets_equal_loading_their_folders_together(tmp_path, data_dir):
    from cryobench.harness.results import combine
    grid = write_grid(tmp_path / "grid.toml", ["sgd", "nesterov"], budget=200)
    run_grid(expand(load_grid(grid), data_dir), tmp_path / "all", workers=2, data_dir=data_dir,
             progress=False)
    sgd, nag = sorted((tmp_path / "all" / "cells").iterdir(),
                      key=lambda d: json.loads((d / "meta.json").read_text())["optimizer_name"])[1::-1]
    for name, cells in [("a", [sgd]), ("b", [sgd, nag])]:          # SGD in both sets
        for cell in cells:
            shutil.copytree(cell, tmp_path / name / "cells" / cell.name)
    sets = [tmp_path / "a", tmp_path / "b"]
    together, combined = load_results(*sets), combine(*map(load_results, sets))
    for frame in ("trace", "cells", "fsc"):
        pd.testing.assert_frame_equal(getattr(combined, frame), getattr(together, frame))
    assert combined.folders == together.folders and len(combined.cells) == 2
    shutil.copytree(nag, tmp_path / "c" / "cells" / nag.name)
    meta = tmp_path / "c" / "cells" / nag.name / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "task_hash": "f" * 64}))
    with pytest.raises(InputError, match=f"{meta}: task synthetic-cylinder .ci. has content hash ffff"):
        combine(load_results(tmp_path / "a"), load_results(tmp_path / "c"))


def test_results_refuse_other_schema_or_task_hash(tmp_path, data_dir):
    grid = write_grid(tmp_path / "grid.toml", ["sgd", "nesterov"], budget=200)
    run_grid(expand(load_grid(grid), data_dir), tmp_path, workers=2, data_dir=data_dir,
             progress=False)
    metas = sorted(tmp_path.glob("cells/*/meta.json"))
    meta = json.loads(metas[0].read_text())
    with pytest.raises(InputError, match="the current task definition"):
        load_results(tmp_path, task_hashes={("synthetic-cylinder", "ci"): "0" * 64})
    metas[0].write_text(json.dumps({**meta, "task_hash": "f" * 64}))
    with pytest.raises(InputError, match="content hash"):
        load_results(tmp_path)
    metas[0].write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(InputError, match=f"{metas[0]}: schema_version 99"):
        load_results(tmp_path)


def test_tune_selects_on_validation_and_run_picks_it_up(tmp_path, data_dir):
    record = tmp_path / "tuned.json"
    chosen = tune(["synthetic-cylinder"], "ci", ["sgd"], ["lr"], points=3, budget=300,
                  out=tmp_path / "tune", record_to=record, workers=2, data_dir=data_dir,
                  progress=False)
    entry = chosen["synthetic-cylinder", "sgd"]
    results = load_results(tmp_path / "tune")
    assert "test_nll" not in results.trace.columns                 # the test set is never used
    assert sorted(results.cells["seed"].unique()) == [0, 1] and len(results.cells) == 6
    finals = results.trace.groupby("cell").tail(1).set_index("cell")["validation_nll"]
    cells = results.cells.set_index("cell").join(finals)
    medians = cells.groupby("params")["validation_nll"].median()
    best = json.loads(medians.idxmin())
    assert entry["params"] == best and len(entry["candidates"]) == 3 and entry["seeds"] == [0, 1]
    assert entry["validation_nll"] == medians.min()
    tuned = load_tuned(record)
    params, source = resolve_params(resolve("sgd"), {}, tuned,
                                    Planner(data_dir).task("synthetic-cylinder", "ci"))
    assert params["lr"] == best["lr"] and source["lr"] == "tuned"
    params, source = resolve_params(resolve("sgd"), {"lr": 0.1}, tuned,
                                    Planner(data_dir).task("synthetic-cylinder", "ci"))
    assert params["lr"] == 0.1 and source["lr"] == "explicit"


def test_a_tasks_minibatch_is_the_methods_default_minibatch(tmp_path, data_dir):
    """[protocol] batch_size = 50 halves every default minibatch (SGD's 100 → 50, Hessian-free's
    300 → 150); explicit and tuned values win; a shipped task (100) changes nothing."""
    text = (TASKS_DIR / "synthetic-cylinder.toml").read_text().replace("batch_size = 100",
                                                                     "batch_size = 50")
    (tmp_path / "half.toml").write_text(text)
    half = Planner(data_dir).task(str(tmp_path / "half.toml"), "ci")
    params, source = resolve_params(resolve("sgd"), {}, {}, half)
    assert params["batch_size"] == 50 and source["batch_size"] == "task"
    assert resolve_params(resolve("hessian-free"), {}, {}, half)[0]["batch_size"] == 150
    params, source = resolve_params(resolve("sgd"), {"batch_size": 70}, {}, half)
    assert params["batch_size"] == 70 and source["batch_size"] == "explicit"
    shipped = Planner(data_dir).task("synthetic-cylinder", "ci")
    params, source = resolve_params(resolve("hessian-free"), {}, {}, shipped)
    assert params["batch_size"] == 300 and source["batch_size"] == "default"


def test_tuning_records_nothing_for_a_method_that_never_moved(tmp_path, data_dir):
    record = tmp_path / "tuned.json"      # SVRG: a full gradient (350 images), then no room for a step
    with pytest.raises(InputError, match=r"nothing recorded for svrg on synthetic-cylinder \(ci\): "
                                         r"every candidate was rejected \(seed 0 never moved.*"
                                         r"\(recorded: sgd\)"):
        tune(["synthetic-cylinder"], "ci", ["sgd", "svrg"], ["lr"], points=2, budget=400,
             out=tmp_path / "tune", record_to=record, workers=2, data_dir=data_dir, progress=False)
    assert list(load_tuned(record)["synthetic-cylinder"]["ci"]) == ["sgd"]


def test_tuning_with_fewer_checkpoints_chooses_the_same(tmp_path, data_dir, capsys):
    kwargs = dict(points=3, budget=300, workers=2, data_dir=data_dir, progress=False)
    dense = tune(["synthetic-cylinder"], "ci", ["sgd"], ["lr"], out=tmp_path / "dense",
                 record_to=tmp_path / "dense.json", **kwargs)["synthetic-cylinder", "sgd"]
    sparse = tune(["synthetic-cylinder"], "ci", ["sgd"], ["lr"], out=tmp_path / "sparse",
                  record_to=tmp_path / "sparse.json", per_decade=1,
                  **kwargs)["synthetic-cylinder", "sgd"]
    rows = {k: load_results(tmp_path / k).trace.groupby("cell").size().max()
            for k in ("sparse", "dense")}
    assert rows == {"sparse": 3, "dense": 4}       # 0, one minibatch, the budget; + one per decade
    assert sparse["params"] == dense["params"] and sparse["validation_nll"] == dense["validation_nll"]
    assert [c["status"] for c in sparse["candidates"]] == [c["status"] for c in dense["candidates"]]
    finals = [[c["finals"] for c in e["candidates"] if c["status"] == ["ok", "ok"]]
              for e in (sparse, dense)]     # a divergence is caught at a checkpoint: later here
    assert finals[0] == finals[1] and len(finals[0]) == 2
    assert cli(["tune", "synthetic-cylinder", "--scale", "ci", "--per-decade", "0",
                "--data-dir", str(data_dir), "--out", str(tmp_path / "t"),
                "--record", str(tmp_path / "t.json")]) == 2
    assert "checkpoints per decade must be a positive whole number, got 0" in capsys.readouterr().err


def test_tuning_over_a_range_given_instead_of_the_declared_one(tmp_path, data_dir, capsys):
    """``--range lr=0.05,0.5`` with 2 points searches exactly those ends (sgd declares 1e-3…10)
    and records the range with the choice; bad ranges get one line each."""
    common = ["--scale", "ci", "--optimizers", "sgd", "--budget", "300", "--points", "2",
              "--data-dir", str(data_dir), "--out", str(tmp_path / "tune"), "--quiet"]
    record = tmp_path / "tuned.json"
    assert cli(["tune", "synthetic-cylinder", "--range", "lr=0.05,0.5", "--record", str(record),
                *common]) == 0
    entry = load_tuned(record)["synthetic-cylinder"]["ci"]["sgd"]
    assert sorted(c["params"]["lr"] for c in entry["candidates"]) == [0.05, 0.5]
    assert entry["searched_ranges"] == {"lr": [0.05, 0.5]} and entry["params"]["lr"] in (0.05, 0.5)
    for bad, message in [("mu=1,2", "--range mu: not a searched hyper-parameter (--params lr)"),
                         ("lr=1", "--range lr=1: expected NAME=LOW,HIGH with two numbers"),
                         ("lr=2,1", "a range is LOW,HIGH with finite LOW < HIGH"),
                         ("lr=0,1", "sgd's lr is searched on a log scale, so LOW must be positive")]:
        assert cli(["tune", "synthetic-cylinder", "--range", bad, "--record", str(record), *common]) == 2
        assert message in capsys.readouterr().err


def test_tuning_around_another_scales_choice_looks_past_an_edge_once(tmp_path, data_dir, capsys):
    """``--around small`` searches a decade either side of the value tuned at small (here a
    recorded lr of 1e-5, far below ci's best): 1e-6, 1e-5, 1e-4 chooses the top end, so the
    next two decades are searched (1e-4 is not run twice), and the choice among all five is
    recorded with the whole range searched; one more edge is not chased. Without a value at that
    scale, or with --range, one error line."""
    record = tmp_path / "tuned.json"
    record.write_text(json.dumps({"synthetic-cylinder": {"small": {"sgd": {"params": {"lr": 1e-5}}}}}))
    common = ["--scale", "ci", "--optimizers", "sgd", "--budget", "300", "--points", "3",
              "--data-dir", str(data_dir), "--out", str(tmp_path / "tune"), "--quiet",
              "--record", str(record)]
    assert cli(["tune", "synthetic-cylinder", "--around", "small", *common]) == 0
    entry = load_tuned(record)["synthetic-cylinder"]["ci"]["sgd"]
    lrs = sorted(c["params"]["lr"] for c in entry["candidates"])
    assert lrs == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    assert len(load_results(tmp_path / "tune").cells) == 10              # 5 values × 2 seeds
    assert entry["searched_ranges"] == {"lr": [1e-6, 1e-2]}
    best = min((c for c in entry["candidates"] if not c["rejected"]), key=lambda c: c["validation_nll"])
    assert entry["params"]["lr"] == best["params"]["lr"] >= 1e-4
    for extra, message in [(["--around", "paper"], "--around paper: no tuned values of sgd on "
                                                   "synthetic-cylinder at scale paper"),
                           (["--around", "small", "--range", "lr=0.1,1"], "--around and --range")]:
        assert cli(["tune", "synthetic-cylinder", *extra, *common]) == 2
        assert message in capsys.readouterr().err


def test_cli_run_and_its_errors(tmp_path, data_dir, capsys):
    common = ["--scale", "ci", "--data-dir", str(data_dir), "--out", str(tmp_path), "--tuned", "none"]
    assert cli(["run", "synthetic-cylinder", "sgd", "--budget", "200", "--set", "lr=0.5", *common]) == 0
    out = capsys.readouterr().out
    assert "lr=0.5 (explicit)" in out and "status ok" in out
    for argv, message in [(["run", "synthetic-cylinder", "nosuch", *common], "unknown optimizer"),
                          (["run", "synthetic-cylinder", "sgd", "--set", "lr=abc", *common], "not a number"),
                          (["run", "synthetic-cylinder", "sgd", "--set", "mu=1", *common], "no hyper-parameter"),
                          (["run", "synthetic-cylinder", "sgd", "--budget", "0", *common], "positive")]:
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cryobench: error:") and message in err and "\n" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text('tasks = ["synthetic-cylinder"]\noptimizers = ["sgd"]\nbudgett = 10\n')
    assert cli(["grid", str(bad)]) == 2
    assert f"{bad}: unknown key 'budgett'" in capsys.readouterr().err


def test_tuning_selection_rejects_blow_ups_and_records_the_edge():
    """Median over seeds decides; a seed that failed or ended worse than it started rejects its
    candidate; the nearest value that blew up is recorded with its ratio."""
    from cryobench.harness.tuning import nearest_blow_up, select
    runs = {  # lr: [(status, final validation NLL) per seed]; every run starts at 100
        0.1: [("ok", 90.0), ("ok", 92.0)], 0.3: [("ok", 80.0), ("ok", 88.0)],
        1.0: [("ok", 70.0), ("ok", 101.0)], 3.0: [("ok", 60.0), ("diverged", float("nan"))],
        10.0: [("error", float("nan")), ("ok", 50.0)], 0.01: [("ok", 100.0), ("ok", 100.0)]}
    cells, trace = [], []
    for lr, seeds in runs.items():
        for seed, (status, final) in enumerate(seeds):
            cell = f"c{lr}-{seed}"
            cells.append({"cell": cell, "params": json.dumps({"lr": lr}), "seed": seed,
                          "status": status, "message": ""})
            trace += [{"cell": cell, "evals": 0, "validation_nll": 100.0},
                      {"cell": cell, "evals": 500, "validation_nll": final}]
    table = select(pd.DataFrame(cells), pd.DataFrame(trace))
    assert json.loads(table["params"].iloc[0]) == {"lr": 0.3} and table["validation_nll"].iloc[0] == 84.0
    why = dict(zip(table["params"].map(lambda p: json.loads(p)["lr"]), table["rejected"]))
    assert why[0.1] == "" and why[0.3] == ""
    assert "seed 1 ended worse than it started" in why[1.0]
    assert why[3.0].startswith("seed 1 diverged") and why[10.0].startswith("seed 0 error")
    assert why[0.01].startswith("seed 0 never moved")          # not chosen, not a blow-up edge
    edge = nearest_blow_up(table, {"lr": 0.3}, ["lr"])
    assert edge == {"lr": {"value": 1.0, "ratio": pytest.approx(1 / 0.3)}}
