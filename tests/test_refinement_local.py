"""Refinement with approximately known poses (local search): derivatives against finite
differences, the one-point grid equal to the known-pose likelihood, the marginal against a
brute-force sum of known-pose likelihoods over the grid, and what bad local-search keys get."""
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import cryobench
from cryobench.base.seeding import rng_for
from cryobench.data.local_refinement import local_settings, perturb_poses
from cryobench.data.spec import load_spec
from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams
from cryobench.model.local_refinement import LocalSearchLikelihood, grid_log_weights
from cryobench.model.refinement import RefinementLikelihood
from cryobench.task import describe

D = 12
TASK = Path(__file__).resolve().parent.parent / "tasks" / "refinement-local.toml"
GRID = dict(rotation_deg=2.0, rotation_steps=4, shift_A=1.5, shift_steps=4)


def ctfs(rng, n):
    return CTFParams(rng.uniform(5000, 25000, n), rng.uniform(5000, 25000, n),
                     rng.uniform(0, 180, n), 300.0, 2.7, 0.1, 0.0, 30.0)


def make(cls, n=4, **grid):
    rng = np.random.default_rng(0)
    rot = Rotation.random(n, random_state=1).as_matrix()
    shifts = rng.normal(size=(n, 2))
    lik = cls(D, 3.0, D / 2, rot, shifts, np.float64, **grid)
    images, c = rng.normal(size=(n, D, D)), ctfs(rng, n)
    # small images: keep the residual norms O(1) so the posterior is not one-hot
    return lik, lik.prepare(0.05 * images, c, 1.0), 0.05 * rng.normal(size=(D, D, D)), (
        rot, shifts, 0.05 * images, c)


def test_gradient_matches_finite_differences():
    lik, data, v, _ = make(LocalSearchLikelihood, **GRID)
    _, grad = lik.nll_and_grad(v, data)
    f = lambda x: lik.nll(x, data).sum()  # noqa: E731
    rng = np.random.default_rng(2)
    for _ in range(3):
        u = rng.normal(size=v.shape)
        fd = (f(v + 1e-5 * u) - f(v - 1e-5 * u)) / 2e-5
        assert abs(fd - (grad * u).sum()) < 1e-6 * max(1.0, abs(fd))


def test_one_point_grid_is_the_known_pose_likelihood():
    lik, data, v, _ = make(LocalSearchLikelihood)
    ref, rdata, _, _ = make(RefinementLikelihood)
    a, ga, wa, ba = lik.nll_grad_weights(v, data)
    b, gb, wb, bb = ref.nll_grad_weights(v, rdata)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-12)
    np.testing.assert_allclose(wa, wb, rtol=1e-12)
    np.testing.assert_allclose(ba, bb, rtol=1e-12, atol=1e-12)


def test_marginal_equals_brute_force_sum_over_the_grid():
    lik, data, v, (rot, shifts, images, c) = make(LocalSearchLikelihood, **GRID)
    logw = grid_log_weights(**GRID)
    total = np.zeros(len(rot))
    for j, dr in enumerate(lik.delta_rotations):
        for k, dt in enumerate(lik.delta_shifts):
            known = RefinementLikelihood(D, 3.0, D / 2, rot @ dr, shifts + dt, np.float64)
            p = known.nll(v, known.prepare(images, c, 1.0))
            total += np.exp(logw[j, k] - p)
    np.testing.assert_allclose(lik.nll(v, data), -np.log(total), rtol=1e-10)
    assert np.exp(logw).sum() == pytest.approx(1.0)
    assert lik.terms_per_image() == 25 and lik.slices_per_image() == 5


@pytest.mark.parametrize("bad", [dict(rotation_steps=-1), dict(shift_steps=1.5),
                                 dict(rotation_deg=-2.0, rotation_steps=2),
                                 dict(shift_A=0.0, shift_steps=3)])
def test_bad_local_search_keys_are_refused(bad):
    with pytest.raises(ValueError, match="local_search"):
        make(LocalSearchLikelihood, **bad)


# ------------------------------------------------------------------- the task file's keys


def test_pose_perturbation_is_deterministic_and_of_the_stated_size():
    rot = Rotation.random(2000, random_state=3).as_matrix()
    shifts = np.zeros((2000, 2))
    a = perturb_poses(rot, shifts, 2.0, 0.5, rng_for("t", 1, "pose-error"))
    b = perturb_poses(rot, shifts, 2.0, 0.5, rng_for("t", 1, "pose-error"))
    c = perturb_poses(rot, shifts, 2.0, 0.5, rng_for("t", 2, "pose-error"))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    angle = np.rad2deg(Rotation.from_matrix(np.transpose(rot, (0, 2, 1)) @ a[0]).magnitude())
    assert np.sqrt((angle ** 2).mean()) == pytest.approx(2.0, rel=0.1)
    assert a[1].std() == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("line, word", [
    ("rotation_deg = 2.0, rotation_steps = -1, shift_A = 1.0, shift_steps = 4", "rotation_steps"),
    ("rotation_deg = 2.0, rotation_steps = 6, shift_A = 1.0", "missing"),
    ("rotation_deg = 2.0, rotation_steps = 6, shift_A = 1.0, shift_steps = 4, x = 1", "unknown"),
    ("rotation_deg = 0.0, rotation_steps = 6, shift_A = 1.0, shift_steps = 4", "rotation_deg"),
])
def test_bad_task_local_search_is_one_input_error(tmp_path, line, word):
    text = TASK.read_text().replace(
        "{rotation_deg = 2.0, rotation_steps = 6, shift_A = 1.0, shift_steps = 4}", "{" + line + "}")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=word) as err:
        local_settings(load_spec(path))
    assert "\n" not in str(err.value) and "bad.toml" in str(err.value)


def test_negative_pose_error_is_refused_by_the_task_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TASK.read_text().replace("pose_error_deg = 2.0", "pose_error_deg = -1.0"))
    with pytest.raises(InputError, match="pose_error_deg"):
        local_settings(load_spec(path))


def test_the_local_task_has_no_exact_optimum_and_says_what_it_is(data_dir):
    """Its objective is marginalised over local poses, not quadratic: asking for V* is one
    InputError, not a CG solve of another objective; ``info`` names the pose error and grid."""
    task = cryobench.load_task("refinement-local", scale="ci", data_dir=data_dir, progress=False)
    with pytest.raises(InputError, match="local-search refinement task has no exact optimum"):
        task.optimum()
    kind = describe("refinement-local", "ci", data_dir)["kind"]
    assert kind.startswith("refinement (poses known to ~2°, ~1 Å; local search: 6 rotations")
