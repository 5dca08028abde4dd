"""Tasks at ci scale: splits, the shared stream, the initial density, the counted oracle."""
import subprocess
import sys

import numpy as np
import pytest

import cryobench
from cryobench import BudgetExhausted, InputError
from cryobench.data.star import write_particles
from cryobench.model.ctf import CTFParams


def test_splits_are_disjoint_and_sized(ci_task):
    s = ci_task.splits
    assert len(s["test"]) == 100 and len(s["validation"]) == ci_task.scale.n_validation
    every = np.concatenate([s["test"], s["validation"], s["train"]])
    assert np.array_equal(np.sort(every), np.arange(len(ci_task.spectra)))


def test_stream_is_the_same_whatever_the_batch_size(ci_task):
    k = ci_task.n_train
    a, b = ci_task.oracle(), ci_task.oracle()
    small = np.concatenate([a.next_batch(7) for _ in range(2 * k // 7 + 1)])
    large = np.concatenate([b.next_batch(100) for _ in range(len(small) // 100 + 1)])
    assert np.array_equal(small, large[:len(small)])
    for epoch in range(2):  # each epoch is a permutation of the training set
        assert np.array_equal(np.sort(small[epoch * k:(epoch + 1) * k]), ci_task.splits["train"])
    assert not np.array_equal(small[:k], small[k:2 * k])


def test_task_is_deterministic(ci_task, data_dir):
    again = cryobench.load_task(ci_task.name, "ci", data_dir=data_dir, progress=False)
    assert again.content_hash == ci_task.content_hash
    assert np.array_equal(again.init, ci_task.init)
    assert all(np.array_equal(again.splits[k], ci_task.splits[k]) for k in ci_task.splits)


def test_ground_truth_beats_the_random_sphere_init(ci_task):
    truth = ci_task.dataset.ground_truth
    assert truth is not None and truth.shape == ci_task.init.shape
    assert ci_task.test_nll(truth) < ci_task.test_nll(ci_task.init)
    assert np.isfinite(ci_task.test_nll(ci_task.init))


def test_oracle_counts_every_evaluation(ci_task):
    oracle = ci_task.oracle(budget=240)
    x = ci_task.init
    batch = oracle.next_batch(100)
    value, grad = oracle.value_and_grad(x, batch)
    assert oracle.counts == {"grad": 100, "value": 0, "hvp": 0}
    assert oracle.value(x, batch[:10]) == pytest.approx(
        float(ci_task.nll(x, batch[:10]).mean() + ci_task.prior.value(x) / ci_task.n_train), rel=1e-6)
    assert oracle.counts["value"] == 10
    assert value == pytest.approx(float(ci_task.nll(x, batch).mean()
                                        + ci_task.prior.value(x) / ci_task.n_train), rel=1e-6)
    hv = oracle.hvp(x, grad, batch[:20], grad=None)      # charges 20 grad + 20 hvp
    assert oracle.counts == {"grad": 120, "value": 10, "hvp": 20} and hv.shape == x.shape
    with pytest.raises(BudgetExhausted):
        oracle.value_and_grad(x, oracle.next_batch(100))
    assert oracle.evaluations == 150 and oracle.remaining == 90
    with pytest.raises(ValueError, match="not training images"):
        oracle.value(x, ci_task.splits["test"][:5])


def test_oracle_gradient_and_hvp_match_finite_differences(data_dir):
    task = cryobench.load_task("synthetic-cylinder", "ci", data_dir=data_dir, progress=False,
                               dtype=np.float64)
    oracle = task.oracle()
    batch = oracle.next_batch(20)
    rng = np.random.default_rng(0)
    # keep every voxel positive so no finite difference crosses the prior's kink at v = 0
    x = task.init + 0.05 + 0.01 * rng.uniform(size=task.init.shape)
    _, g = oracle.value_and_grad(x, batch)
    u = rng.normal(size=x.shape)
    u /= np.linalg.norm(u)
    h = 1e-4
    fd = (oracle.value(x + h * u, batch) - oracle.value(x - h * u, batch)) / (2 * h)
    assert np.sum(g * u) == pytest.approx(fd, rel=1e-4)
    hv = oracle.hvp(x, u, batch, grad=g)
    g_plus = oracle.value_and_grad(x + h * u, batch)[1]
    g_minus = oracle.value_and_grad(x - h * u, batch)[1]
    central = (g_plus - g_minus) / (2 * h)
    assert np.linalg.norm(hv - central) / np.linalg.norm(central) < 1e-2


def test_density_written_with_voxel_size(ci_task, tmp_path):
    from cryobench.data.mrc import read_volume
    ci_task.write_density(ci_task.init, tmp_path / "init.mrc")
    vol, voxel = read_volume(tmp_path / "init.mrc")
    assert np.array_equal(vol, ci_task.init) and voxel == pytest.approx(ci_task.dataset.pixel_size, rel=1e-6)


# ------------------------------------------------------------------ real data (STAR) tasks
def star_task(tmp_path, images, n=160, extra="", **fields):
    rng = np.random.default_rng(1)
    ctf = CTFParams(rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(0, 180, n),
                    300, 2.7, 0.1, 0, 0)
    write_particles(tmp_path / "particles.star", tmp_path / "particles.mrcs", images, ctf, 6.0)
    spec = tmp_path / "real.toml"
    spec.write_text(f"""name = "real"\nseed = 3\n[dataset]\nkind = "star"\nstar = "particles.star"
particle_radius = 40.0\n{extra}\n[protocol]\nn_test = 100\n[scales.ci]\nrmax = 3.0\nn_validation = 10\n""")
    return spec


def test_star_file_makes_a_task_with_whitened_images(tmp_path):
    rng = np.random.default_rng(2)
    images = (3.0 * rng.normal(size=(160, 24, 24))).astype(np.float32)
    task = cryobench.load_task(star_task(tmp_path, images), "ci", data_dir=tmp_path / "cache",
                               progress=False)
    np.testing.assert_allclose(task.dataset.sigma, 3.0, rtol=0.15)
    assert task.n_train == 50 and np.isfinite(task.test_nll(task.init))
    inverted = cryobench.load_task(star_task(tmp_path, images, extra="invert_sign = true"), "ci",
                                   data_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(inverted.dataset.images, -task.dataset.images)


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "cryobench.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_bad_star_input_gets_one_clear_error_line(tmp_path):
    images = np.random.default_rng(3).normal(size=(160, 24, 24)).astype(np.float32)
    spec = star_task(tmp_path, images)
    star = tmp_path / "particles.star"
    star.write_text(star.read_text().replace("_rlnDefocusU", "_rlnSomethingElse"))
    code, err = run_cli("info", str(spec), "--scale", "ci", "--data-dir", str(tmp_path / "cache"))
    assert code == 2 and len(err) == 1 and "rlnDefocusU" in err[0] and "particles.star" in err[0]
    images[5, 3, 3] = np.nan
    spec = star_task(tmp_path, images)
    with pytest.raises(InputError, match="particles.mrcs.*(NaN|nan)"):
        cryobench.load_task(spec, "ci", data_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("args, needle", [
    (("info", "no-such-task"), "unknown task 'no-such-task'"),
    (("info", "thermus-style", "--scale", "huge"), "unknown scale 'huge'"),
    (("simulate", "missing.toml"), "missing.toml"),
])
def test_cli_bad_input_is_one_line(args, needle):
    code, err = run_cli(*args)
    assert code == 2 and len(err) == 1 and needle in err[0] and err[0].startswith("cryobench: error:")


def test_info_reports_paper_sizes_without_simulating(tmp_path):
    code = subprocess.run([sys.executable, "-m", "cryobench.cli", "info", "thermus-style", "--scale",
                           "paper", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    out = code.stdout
    assert "46105" in out and "45005 / 1000 / 100" in out
    assert "1454 directions × 65 in-plane × 5 shifts = 472,550 points" in out
    assert "10.24 px = 1/35 Å (16 % of Nyquist)" in out and "not simulated yet" in out
    assert not any(tmp_path.iterdir())


def test_recipe_needs_no_simulation_and_changes_with_what_the_task_is_made_of(tmp_path, cylinder):
    """The recipe hash (what tuned values and verify match on): the loaded task's, computed
    without simulating, unlike the content hash blind to the bits a BLAS kernel renders; another
    scale, simulation parameter or objective is another recipe."""
    from cryobench.data.spec import TASKS_DIR
    from cryobench.task import task_recipe
    empty = tmp_path / "no-data"
    assert task_recipe("synthetic-cylinder", "ci", empty) == cylinder.recipe_hash
    assert not empty.exists()                                  # nothing was simulated
    assert cylinder.recipe_hash != cylinder.content_hash
    assert task_recipe("synthetic-cylinder", "small", empty) != cylinder.recipe_hash
    text = (TASKS_DIR / "synthetic-cylinder.toml").read_text()
    for old, new in (("snr = 0.05", "snr = 0.06"), ("prior_beta = 1.0", "prior_beta = 2.0"),
                     ("", "")):
        copy = tmp_path / new.replace(" ", "") / "synthetic-cylinder.toml"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(text.replace(old, new) if old else text)
        same = task_recipe(copy, "ci", empty) == cylinder.recipe_hash
        assert same == (not old), (old, new)                 # an unchanged copy: the same task
