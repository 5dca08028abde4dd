"""Identity by behaviour and ``cryobench verify`` (issue 10): a pure move/rename/comment
refactor keeps results valid; a one-ulp change in the kernel is caught."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryobench.cli import main as cli
from cryobench.harness.fingerprint import code_fingerprint
from cryobench.harness.grid import expand, load_grid, run_grid

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
    """A small grid at ci scale: two methods on both tasks."""
    root = tmp_path_factory.mktemp("verify")
    (root / "grid.toml").write_text('tasks = ["synthetic-cylinder", "thermus-style"]\nscales = ["ci"]\n'
                                    'optimizers = ["sgd", "nesterov"]\nbudget = 800\ntuned = ""\n')
    status = run_grid(expand(load_grid(root / "grid.toml"), data_dir), root, workers=2,
                      data_dir=data_dir, progress=False)
    assert {o.status for o in status.values()} == {"ok"}
    return root


def copy_repo(dest: Path) -> Path:
    for part in ("cryobench", "optimizers", "tasks"):
        shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def verify_with(repo: Path, results: Path, data_dir, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo), CRYOBENCH_DATA=str(data_dir))
    return subprocess.run([sys.executable, "-m", "cryobench.cli", "verify", str(results), *extra],
                          env=env, capture_output=True, text=True, cwd=repo)


def test_verify_passes_bit_identical_on_the_code_that_made_the_results(results, capsys):
    assert cli(["verify", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.startswith("ok ") and "bit-identical" in line for line in out[:4])
    assert out[-1].startswith("verified 4 of 4 cells: 4 agree (4 compared bit for bit")
    assert cli(["verify", str(results), "--sample", "2", "--prefix", "300"]) == 0
    assert "verified 2 of 4 cells up to 300 evaluations: 2 agree" in capsys.readouterr().out


def test_pure_refactor_keeps_results_valid(tmp_path, results, data_dir):
    """Move a numerical module, rename a function used everywhere, edit comments and docstrings
    of the kernel and of an optimizer: the same cells, verified bit for bit."""
    repo = copy_repo(tmp_path)
    (repo / "cryobench" / "model" / "prior.py").rename(repo / "cryobench" / "model" / "regularizer.py")
    for path in list((repo / "cryobench").rglob("*.py")) + list((repo / "optimizers").glob("*.py")):
        text = path.read_text()
        text = text.replace("from cryobench.model.prior import", "from cryobench.model.regularizer import")
        text = re.sub(r"\brandom_spheres\b", "sum_of_soft_spheres", text)
        path.write_text(text)
    kernels = repo / "cryobench" / "model" / "kernels.py"
    kernels.write_text("# a comment added by a refactor\n" + kernels.read_text().replace(
        '"""', '"""Reworded. ', 1))
    sgd = repo / "optimizers" / "sgd.py"
    sgd.write_text(sgd.read_text().replace('"""', '"""A new explanation. ', 1) + "\n# trailing note\n")
    done = verify_with(repo, results, data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 agree (4 compared bit for bit" in done.stdout


def test_one_ulp_change_in_the_kernel_fails_verify(tmp_path, results, data_dir):
    repo = copy_repo(tmp_path)
    lik = repo / "cryobench" / "model" / "likelihood.py"
    text = lik.read_text()
    marker = "    def nll_and_grad(self, volume: np.ndarray, data: ImageSpectra):"
    assert marker in text
    text = text.replace(marker, marker + "\n        return self._one_ulp(volume, data)\n\n"
                        "    def _one_ulp(self, volume, data):\n"
                        "        nll, grad = self._evaluate(volume, data, gradient=True)\n"
                        "        grad.flat[0] = np.nextafter(grad.flat[0], np.float32(np.inf))\n"
                        "        return nll, grad\n\n"
                        "    def _unused(self, volume: np.ndarray, data: ImageSpectra):", 1)
    lik.write_text(text)
    done = verify_with(repo, results, data_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("MISMATCH") == 4 and "4 mismatch" in done.stdout


def test_off_platform_cells_are_judged_against_the_seed_spread(tmp_path, results, capsys):
    """A cell stored from another platform is compared within the tolerance, not bit for bit."""
    copy = tmp_path / "other"
    shutil.copytree(results, copy)
    for meta in copy.glob("cells/*/meta.json"):
        m = json.loads(meta.read_text())
        m["identity"]["platform"] = "another CPU | another BLAS"
        meta.write_text(json.dumps(m))
    assert cli(["verify", str(copy)]) == 0
    assert "4 within the off-platform tolerance" in capsys.readouterr().out
    trace = next(copy.glob("cells/*/trace.csv"))
    rows = trace.read_text().splitlines()
    last = rows[-1].split(",")
    col = rows[0].split(",").index("test_nll")
    last[col] = str(float(last[col]) + 50.0)          # far outside any seed spread
    trace.write_text("\n".join(rows[:-1] + [",".join(last)]) + "\n")
    assert cli(["verify", str(copy)]) == 1
    assert "× the tolerance" in capsys.readouterr().out


def _rerender(copy: Path, recipe=None) -> None:
    """Store the set as if its data had been simulated with other last bits (another BLAS kernel):
    another content hash in every cell and reference, the recipe kept (or replaced)."""
    paths = list(copy.glob("cells/*/meta.json")) + [copy / "reference.json"]
    for path in paths:
        raw = json.loads(path.read_text())
        for entry in raw.get("references", [raw]):
            assert entry["task_recipe"]                   # recorded by the grid
            task = entry["task"] if "task" in entry else entry["run"]["task"]
            entry["task_hash"] = "f" * 64 if task == "synthetic-cylinder" else "e" * 64
            entry["task_recipe"] = recipe or entry["task_recipe"]
        path.write_text(json.dumps(raw))


def test_the_same_task_simulated_with_other_bits_is_compared_as_another_platform(
        tmp_path, results, data_dir, capsys):
    """Simulators before format 2 gave other last bits under another BLAS kernel: a set whose content hashes differ but whose recipe is this task's is verified within the
    off-platform tolerance and says why; one whose recipe differs too is another task."""
    from cryobench.harness.reference import record_references
    metas = [json.loads(m.read_text()) for m in results.glob("cells/*/meta.json")]
    hashes = {(m["run"]["task"], m["run"]["scale"]): m["task_hash"] for m in metas}
    for name in ("other-bits", "other-task"):
        shutil.copytree(results, tmp_path / name)
        assert record_references(tmp_path / name, hashes, data_dir)      # the truth of each task
    _rerender(tmp_path / "other-bits")
    assert cli(["verify", str(tmp_path / "other-bits")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum("same task, simulated with other last bits here" in line for line in out) == 6
    assert "4 agree (0 compared bit for bit, 4 within the off-platform tolerance)" in out[-1]
    assert out[-1].endswith("2 of 2 ground-truth references agree")
    _rerender(tmp_path / "other-task", recipe="0" * 64)
    assert cli(["verify", str(tmp_path / "other-task")]) == 1
    out = capsys.readouterr().out
    assert out.count("MISMATCH") == 6 and "the data or the task definition changed" in out


def test_code_fingerprint_ignores_comments_docstrings_and_layout():
    a = 'def f(x):\n    """Doc."""\n    # note\n    return x + 1\n'
    b = 'def f(x):\n\n    return (x +\n            1)   # other note\n'
    assert code_fingerprint(a) == code_fingerprint(b)
    assert code_fingerprint(a) != code_fingerprint(a.replace("+ 1", "+ 2"))


def test_a_refinement_kernel_edit_changes_refinement_cells_ids_only(monkeypatch):
    """The refinement kernels are probed into a refinement task's fingerprint only: another
    summation order of their scatters (3 partial grids instead of 4) makes every refinement
    cell stale and leaves every ab-initio cell's id as it was."""
    from cryobench.harness.fingerprint import numerics_fingerprint
    from cryobench.model import trilinear

    base, refinement = numerics_fingerprint(), numerics_fingerprint(True)
    assert base != refinement
    numerics_fingerprint.cache_clear()
    monkeypatch.setattr(trilinear, "PARTS", 3)
    try:
        assert numerics_fingerprint() == base
        assert numerics_fingerprint(True) != refinement
    finally:
        numerics_fingerprint.cache_clear()


def test_a_cell_in_two_results_sets_is_loaded_and_verified_once(tmp_path, results, capsys):
    """SGD runs in two committed sets as their common reference: one cell, not two seeds."""
    from cryobench.harness.results import load_results
    for name in ("a", "b"):
        shutil.copytree(results, tmp_path / name)
    both = load_results(tmp_path / "a", tmp_path / "b")
    assert len(both.cells) == 4 and not both.trace.duplicated(["cell", "evals"]).any()
    assert cli(["verify", str(tmp_path / "a"), str(tmp_path / "b"), "--sample", "2"]) == 0
    assert "verified 2 of 4 cells" in capsys.readouterr().out


# ---------------------------------------------- another platform: the distribution over seeds
@pytest.fixture(scope="module")
def five_seeds(tmp_path_factory, data_dir):
    """SGD on thermus-style ci, five training streams, as if computed on another platform."""
    root = tmp_path_factory.mktemp("five")
    (root / "grid.toml").write_text('tasks = ["thermus-style"]\nscales = ["ci"]\noptimizers = ["sgd"]\n'
                                    'seeds = 5\nbudget = 600\ntuned = ""\n')
    status = run_grid(expand(load_grid(root / "grid.toml"), data_dir), root, workers=2,
                      data_dir=data_dir, progress=False)
    assert {o.status for o in status.values()} == {"ok"}
    for meta in root.glob("cells/*/meta.json"):
        m = json.loads(meta.read_text())
        m["identity"]["platform"] = "another CPU | another BLAS"
        meta.write_text(json.dumps(m))
    return root


def _fail_stored(folder: Path, seeds) -> None:
    """Store seeds ``seeds`` as diverged after their second checkpoint (what a chaotic method
    can do on another platform)."""
    for meta in folder.glob("cells/*/meta.json"):
        m = json.loads(meta.read_text())
        if m["run"]["seed"] in seeds:
            m["status"], m["message"] = "diverged", "iterate not finite"
            meta.write_text(json.dumps(m))
            trace = meta.parent / "trace.csv"
            trace.write_text("\n".join(trace.read_text().splitlines()[:3]) + "\n")


def test_off_platform_a_seed_that_failed_there_is_judged_with_its_configuration(
        tmp_path, five_seeds, capsys):
    """One of five seeds diverged on the other platform and not here: a new draw from the same
    distribution, so the configuration agrees (every seed is recomputed) and the line says which
    seed failed; all five failing there and none here is a real change."""
    copy = tmp_path / "one"
    shutil.copytree(five_seeds, copy)
    _fail_stored(copy, {2})
    assert cli(["verify", str(copy), "--sample", "1"]) == 0
    out = capsys.readouterr().out
    assert "failures 1/5 (seed 2) stored, 0/5 now" in out and out.count("recomputed ") == 5
    assert "by configuration (every seed, another platform): 1 of 1 agree; 0 mismatch" in out
    copy = tmp_path / "all"
    shutil.copytree(five_seeds, copy)
    _fail_stored(copy, set(range(5)))
    assert cli(["verify", str(copy)]) == 1
    assert "differ beyond chance" in capsys.readouterr().out


def _move_rows(folder: Path, shift: int, forge_seed=None) -> None:
    """Store every row but the first at ``shift`` evaluations later (as a method whose
    checkpoints follow its own steps, HF's CG, lands elsewhere on another platform); with
    ``forge_seed``, that seed's rows after the first also claim a test NLL 500 nats lower."""
    for trace in folder.glob("cells/*/trace.csv"):
        seed = json.loads((trace.parent / "meta.json").read_text())["run"]["seed"]
        lines = trace.read_text().splitlines()
        head = lines[0].split(",")
        ev, nll = head.index("evals"), head.index("test_nll")
        out = lines[:2]
        for line in lines[2:]:
            row = line.split(",")
            row[ev] = str(int(row[ev]) + shift)
            if seed == forge_seed or forge_seed == "all":
                row[nll] = str(float(row[nll]) - 500.0)
            out.append(",".join(row))
        trace.write_text("\n".join(out) + "\n")


def test_off_platform_rows_at_other_evaluation_counts_are_judged_as_of_them(
        tmp_path, five_seeds, capsys):
    """Rows the recomputation does not produce (its checkpoints land elsewhere on another
    platform) are compared as of their evaluation count, not refused; forged numbers at such
    rows on every seed are still a mismatch."""
    copy = tmp_path / "moved"
    shutil.copytree(five_seeds, copy)
    _move_rows(copy, 7)
    assert cli(["verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 agree; 0 mismatch" in out and "does not produce" not in out
    copy = tmp_path / "forged"
    shutil.copytree(five_seeds, copy)
    _move_rows(copy, 7, forge_seed="all")
    assert cli(["verify", str(copy)]) == 1
    assert "median test NLL over seeds off by" in capsys.readouterr().out


def test_off_platform_a_weakened_method_fails(tmp_path, five_seeds, data_dir):
    """The same configuration recomputed by an SGD whose step is ten times smaller: every seed
    is a valid run, but the median over seeds leaves the seed spread."""
    repo = copy_repo(tmp_path / "repo")
    sgd = repo / "optimizers" / "sgd.py"
    sgd.write_text(sgd.read_text().replace("annealed_lr(lr, state", "annealed_lr(lr / 10, state"))
    done = verify_with(repo, five_seeds, data_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "median test NLL over seeds off by" in done.stdout and "1 of 1" not in done.stdout


def test_forged_rows_and_statuses_do_not_pass(tmp_path, results, capsys):
    """A final row at an evaluation count the run does not reach, a header-only trace, and a
    status that is not a status: each refused, none skipped."""
    for name in ("row", "empty", "status"):
        shutil.copytree(results, tmp_path / name)
    trace = sorted((tmp_path / "row").glob("cells/*/trace.csv"))[0]
    lines = trace.read_text().splitlines()
    last = lines[-1].split(",")
    last[lines[0].split(",").index("evals")] = "799"         # the run checkpoints at 800
    trace.write_text("\n".join(lines + [",".join(last)]) + "\n")
    assert cli(["verify", str(tmp_path / "row")]) == 1
    assert "stored rows at 799 evaluations that the recomputation does not produce" in capsys.readouterr().out
    trace = sorted((tmp_path / "empty").glob("cells/*/trace.csv"))[0]
    trace.write_text(trace.read_text().splitlines()[0] + "\n")
    assert cli(["verify", str(tmp_path / "empty")]) == 1
    assert "no stored row to compare" in capsys.readouterr().out
    meta = sorted((tmp_path / "status").glob("cells/*/meta.json"))[0]
    meta.write_text(meta.read_text().replace('"status": "ok"', '"status": "OK"'))
    assert cli(["verify", str(tmp_path / "status")]) == 2
    assert "status 'OK' is not one of ok, diverged, budget, error" in capsys.readouterr().err


def test_one_cell_id_in_two_folders_with_other_numbers_is_refused(tmp_path, results, capsys):
    """Only the first copy of a cell id would be verified and the other shown: a copy whose
    numbers differ is refused when the sets load (verify, report and leaderboard alike)."""
    for name in ("a", "b"):
        shutil.copytree(results, tmp_path / name)
    trace = sorted((tmp_path / "b").glob("cells/*/trace.csv"))[0]
    lines = trace.read_text().splitlines()
    col = lines[0].split(",").index("test_nll")
    last = lines[-1].split(",")
    last[col] = str(float(last[col]) - 100.0)
    trace.write_text("\n".join(lines[:-1] + [",".join(last)]) + "\n")
    assert cli(["verify", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"cell {trace.parent.name} is also in" in err and "one cell id has one result" in err


def test_verify_runs_no_code_a_results_folder_names_outside_itself(tmp_path, results, capsys):
    """An optimizer named by a meta.json as a module or a file elsewhere is refused before
    anything runs; nothing is imported (the marker file is never written)."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    for ref in (f"{evil}:sgd", "this:zen", "torch:this.zen"):
        copy = tmp_path / f"set-{abs(hash(ref))}"
        shutil.copytree(results, copy)
        meta = sorted(copy.glob("cells/*/meta.json"))[0]
        m = json.loads(meta.read_text())
        m["run"]["optimizer"] = ref
        meta.write_text(json.dumps(m))
        assert cli(["verify", str(copy)]) == 2
        assert "which verify does not run" in capsys.readouterr().err
    assert not marker.exists() and "this" not in sys.modules


def test_an_optimizer_file_shipped_in_the_folder_is_listed_and_run(tmp_path, results, capsys):
    copy = tmp_path / "shipped"
    shutil.copytree(results, copy)
    shutil.copy(REPO / "optimizers" / "sgd.py", copy / "my_sgd.py")
    for meta in copy.glob("cells/*/meta.json"):
        m = json.loads(meta.read_text())
        if m["optimizer_name"] == "sgd":
            m["run"]["optimizer"] = f"{copy / 'my_sgd.py'}:sgd"
            meta.write_text(json.dumps(m))
    assert cli(["verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"verify runs the optimizer file {copy / 'my_sgd.py'}, shipped in the results folder")


PATCHER = '''
import numpy as np
import cryobench.harness.run as _run
import cryobench.schedules as _schedules
_run._Scorer.__call__ = lambda self, x: (1.0, 1.0)          # at import, in the harness's process
_schedules.annealed_lr.__code__ = (lambda *a, **k: 1e9).__code__
from cryobench.optim import GradientMethod, Hyper, method


def _init(x0, *, budget, rng):
    return {"x": x0.copy()}


def _step(state, oracle):
    _, g = oracle.value_and_grad(state["x"], oracle.next_batch(100))
    return {"x": state["x"] - np.float32(0.5) * g}


@method(lr=Hyper(0.5, 0.01, 10))
def patcher(lr):
    """SGD whose module patches the scorer and the step schedule when it is imported."""
    return GradientMethod(_init, _step)
'''


def test_a_cell_that_patches_the_harness_cannot_change_another_cells_verdict(tmp_path, data_dir,
                                                                            capsys):
    """Each cell is recomputed in a process of its own: an optimizer module shipped in the folder
    that patches the scorer and annealed_lr at import does not touch the honest cells verified
    after it (in one process they were MISMATCH by 10^17)."""
    root = tmp_path / "set"
    root.mkdir()
    (root / "patcher.py").write_text(PATCHER)
    env = dict(os.environ, CRYOBENCH_DATA=str(data_dir))
    for optimizer in (f"{root}/patcher.py:patcher", "sgd"):    # two grids: the patcher's module
        grid = tmp_path / "grid.toml"                            # runs in the grid's process too
        grid.write_text(f'tasks = ["synthetic-cylinder"]\nscales = ["ci"]\nseeds = 3\n'
                        f'optimizers = ["{optimizer}"]\nbudget = 200\ntuned = ""\n')
        done = subprocess.run([sys.executable, "-m", "cryobench.cli", "grid", str(grid), "--out",
                               str(root), "--quiet"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    import cryobench.harness.run as run
    import cryobench.schedules as schedules
    code = schedules.annealed_lr.__code__, run._Scorer.__call__
    try:
        assert cli(["verify", str(root)]) == 0
    finally:
        assert (schedules.annealed_lr.__code__, run._Scorer.__call__) == code, "patched verify"
    out = capsys.readouterr().out
    sgd = [line for line in out.splitlines() if " sgd seed " in line]
    assert len(sgd) == 3 and all(line.startswith("ok") for line in sgd), out
