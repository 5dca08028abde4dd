"""Refinement tasks (known poses): derivatives, the slice theorem at known poses, RELION's Euler
and origin conventions against an independent real-space projection, the exact Fourier Hessian
diagonal, the CG optimum, the simulated data's determinism and what bad task files get."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryobench.data.euler import (angles_from_rotations, relion_matrix, rotations_from_angles,
                                  star_angles)
from cryobench.data.phantoms import pseudo_atoms
from cryobench.data.refinement import lowpass_sigma, solve_optimum
from cryobench.data.render import band_limited_volume, clean_images
from cryobench.data.simulate import SimulationParams, read_poses, simulate
from cryobench.data.star import write_particles
from cryobench.errors import InputError
from cryobench.harness.record import RunSpec
from cryobench.harness.registry import resolve
from cryobench.harness.run import execute
from cryobench.model.ctf import CTFParams
from cryobench.model.fourier import centered_dft2
from cryobench.model.refinement import RefinementLikelihood
from cryobench.task import load_task

D = 12
TASK = Path(__file__).resolve().parent.parent / "tasks" / "refinement-atoms.toml"


def ctfs(rng, n):
    return CTFParams(rng.uniform(5000, 25000, n), rng.uniform(5000, 25000, n),
                     rng.uniform(0, 180, n), 300.0, 2.7, 0.1, 0.0, 30.0)


@pytest.fixture(scope="module", params=[D, D + 1], ids=["even", "odd"])
def tiny(request):
    """A float64 likelihood of 5 random images with random poses, shifts and CTFs, and a volume,
    in an even and an odd box (the odd box's half grid has no Nyquist plane: slices beyond its
    last plane are read from their Hermitian partners)."""
    d = request.param
    rng = np.random.default_rng(0)
    rot = Rotation.random(5, random_state=1).as_matrix()
    lik = RefinementLikelihood(d, 3.0, d / 2, rot, rng.normal(size=(5, 2)), np.float64)
    data = lik.prepare(rng.normal(size=(5, d, d)), ctfs(rng, 5), 1.3)
    return lik, data, rng.normal(size=(d, d, d))


def spectrum_at(lik, images):
    """The centred DFT of images at the likelihood's half-disk points (n, Np)."""
    iy, ix = ((lik.points[:, ::-1].astype(int) + lik.box // 2) % lik.box).T
    return centered_dft2(np.asarray(images, float))[:, iy, ix]


def test_gradient_matches_finite_differences(tiny):
    lik, data, v = tiny
    _, grad = lik.nll_and_grad(v, data)
    f = lambda x: lik.nll(x, data).sum()  # noqa: E731
    rng = np.random.default_rng(2)
    for _ in range(3):
        u = rng.normal(size=v.shape)
        fd = (f(v + 1e-5 * u) - f(v - 1e-5 * u)) / 2e-5
        assert abs(fd - (grad * u).sum()) < 1e-6 * max(1.0, abs(fd))


def test_hessian_vector_product_matches_second_differences(tiny):
    lik, data, v = tiny
    u = np.random.default_rng(3).normal(size=v.shape)
    hu = lik.nll_and_grad(v + u, data)[1] - lik.nll_and_grad(v, data)[1]   # exact: quadratic
    f = lambda x: lik.nll(x, data).sum()  # noqa: E731
    second = (f(v + 1e-2 * u) - 2 * f(v) + f(v - 1e-2 * u)) / 1e-4
    assert (hu * u).sum() == pytest.approx(second, rel=1e-6)


def test_weights_are_the_exact_hessian_diagonal_in_the_fourier_basis(tiny):
    """W(k) = u_kᴴ H u_k for u_k the unitary DFT basis vector, by brute force."""
    lik, data, v = tiny
    w = lik.nll_grad_weights(v, data, exact_diagonal=True)[2]
    zero = lik.nll_and_grad(np.zeros_like(v), data)[1]
    h = lambda x: lik.nll_and_grad(x, data)[1] - zero  # noqa: E731
    for k in [(0, 0, 0), (1, 2, 3), (0, 3, 1), (3, 0, 6), (0, 0, 6), (2, 5, 0), (11, 7, 2)]:
        full = np.zeros((lik.box,) * 3, complex)
        full[k] = 1
        u = sfft.ifftn(full, norm="ortho")
        brute = np.vdot(u, h(u.real) + 1j * h(u.imag)).real
        assert w[k] == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_em_weights_are_the_hessian_applied_to_a_flat_spectrum(tiny):
    """EM's gridded weights W_g (the default of nll_grad_weights): H applied to the map whose V̂
    is flat — a delta at the box centre, by the model's centred convention — is W_g ⊙ F(δ) at
    every node, so B / W_g solves the data term for a spectrum that varies slowly on the grid.
    The exact diagonal (Σ t² ≤ Σ t) is no larger anywhere, and several times smaller where slice
    points fall between nodes: dividing B by it overshoots."""
    lik, data, v = tiny
    d = lik.box
    delta = np.zeros((d, d, d))
    delta[d // 2, d // 2, d // 2] = 1.0
    hd = lik.nll_and_grad(delta, data)[1] - lik.nll_and_grad(np.zeros_like(delta), data)[1]
    w_g = lik.nll_grad_weights(v, data)[2]
    lhs = sfft.rfftn(hd, norm="ortho")
    np.testing.assert_allclose(lhs, w_g * sfft.rfftn(delta, norm="ortho"),
                               rtol=0, atol=1e-10 * np.abs(lhs).max())
    w_exact = lik.nll_grad_weights(v, data, exact_diagonal=True)[2]
    assert np.all(w_exact <= w_g * (1 + 1e-12))
    hit = w_exact > 1e-6 * w_exact.max()
    assert (w_g[hit] / w_exact[hit]).max() > 3


def test_back_projection_gives_the_gradient_in_the_fourier_basis(tiny):
    """F(∇f) = F(H V) − B: the statistics EM-style methods use."""
    lik, data, v = tiny
    _, grad, _, back = lik.nll_grad_weights(v, data)
    hv = lik.nll_and_grad(v, data)[1] - lik.nll_and_grad(np.zeros_like(v), data)[1]
    lhs = sfft.rfftn(grad, norm="ortho")
    assert np.allclose(lhs, sfft.rfftn(hv, norm="ortho") - back, atol=1e-9 * np.abs(lhs).max())


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2, 0), (2, 0, 1)])
def test_slice_theorem_is_exact_for_grid_aligned_poses(axes):
    """Poses that permute the axes put every slice point on the grid (trilinear = exact): the
    slice equals the DFT of the real-space projection ∫ V(R (x, y, z)) dz."""
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(D, D, D))                                 # V[z, y, x]
    r = np.eye(3)[list(axes)].T                 # image axis j ↦ map axis axes[j] (x, y, z order)
    lik = RefinementLikelihood(D, 2.0, D / 2 - 1, r[None], np.zeros((1, 2)), np.float64)
    order = [2 - a for a in axes]               # array axis of map axis a is 2 − a
    proj = np.transpose(vol, [order[2], order[1], order[0]]).sum(0)   # [y_img, x_img]
    assert np.allclose(lik.project(vol, r[None]), spectrum_at(lik, proj[None]), atol=1e-10)


def test_slices_of_a_band_limited_phantom_match_its_rendered_images():
    """At random poses the trilinear slices of the band-limited ground truth agree with the
    closed-form rendered projections at low frequency (to the interpolation's error)."""
    ph = pseudo_atoms(3)
    rot = Rotation.random(3, random_state=4).as_matrix()
    vol = band_limited_volume(ph, 24, 5.0)
    lik = RefinementLikelihood(24, 5.0, 4.0, rot, np.zeros((3, 2)), np.float64)
    images = clean_images(ph, rot, None, None, 24, 5.0)
    s, ref = lik.project(vol, rot), spectrum_at(lik, images)
    assert np.abs(s - ref).mean() < 0.06 * np.abs(ref).mean()
    exact = RefinementLikelihood(24, 5.0, 11.0, np.eye(3)[None], np.zeros((1, 2)), np.float64)
    ident = clean_images(ph, np.eye(3)[None], None, None, 24, 5.0)
    assert np.allclose(exact.project(vol, np.eye(3)[None]), spectrum_at(exact, ident), atol=1e-5)


def test_relion_euler_and_origin_conventions_against_a_real_space_projection(tmp_path):
    """A non-symmetric volume projected independently (scipy.ndimage rotation, sum along z) at
    RELION's A(rot, tilt, psi) — image(x, y) = Σ_z V(Aᵀ (x, y, z)) — and displaced by +t
    pixels, written with rlnOriginX/YAngst = −t·px; read back through the STAR file, the
    likelihood's slice at R = Aᵀ matches the image's spectrum once the origin re-centres it."""
    d, px = 48, 2.0     # a compact particle in a large box: trilinear slicing errs < 5 %
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blobs = [((2.5, 0, 0), 1.0), ((0, 4, 0), 0.7), ((0, 0, -3), 0.5), ((-1.5, -2, 1), 0.3)]
    vol = sum(a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 2.0 ** 2))
              for p, a in blobs)
    angles = np.array([[30.0, 50.0, -70.0], [-120.0, 100.0, 15.0]])
    t = np.array([[2.0, -3.0], [-1.0, 4.0]])                  # whole pixels: np.roll is exact
    images = []
    for (rot, tilt, psi), shift in zip(angles, t):
        a = relion_matrix(rot, tilt, psi)
        pts = np.stack([x, y, z], -1) @ a                       # Aᵀ (x, y, z) per voxel, (x,y,z)
        coords = [pts[..., 2] + d // 2, pts[..., 1] + d // 2, pts[..., 0] + d // 2]
        image = ndimage.map_coordinates(vol, coords, order=3, mode="constant").sum(0)
        images.append(np.roll(image, (int(shift[1]), int(shift[0])), axis=(0, 1)))
    images = np.array(images, np.float32)
    star = tmp_path / "p.star"
    write_particles(star, tmp_path / "p.mrcs", images, ctfs(np.random.default_rng(5), 2), px,
                    (angles, -t * px))
    rot = rotations_from_angles(star_angles(star))
    assert np.allclose(rot, Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix())
    origins = __import__("starfile").read(star)["particles"][["rlnOriginXAngst",
                                                              "rlnOriginYAngst"]].to_numpy()
    lik = RefinementLikelihood(d, px, 6.0, rot, -origins / px, np.float64)
    prepared = lik.prepare(images, ctfs(np.random.default_rng(5), 2), 1.0)
    s = lik.project(vol, rot)
    assert np.abs(prepared.y - s).max() < 0.05 * np.abs(s).max()
    wrong = RefinementLikelihood(d, px, 6.0, rot.transpose(0, 2, 1), np.zeros((2, 2)), np.float64)
    assert np.abs(prepared.y - wrong.project(vol, wrong.rotations)).max() > 0.2 * np.abs(s).max()


def test_angles_round_trip_and_a_star_without_poses_is_one_line(tmp_path):
    rot = Rotation.random(20, random_state=6).as_matrix()
    assert np.allclose(rotations_from_angles(angles_from_rotations(rot)), rot, atol=1e-12)
    write_particles(tmp_path / "p.star", tmp_path / "p.mrcs", np.zeros((2, 8, 8), np.float32),
                    ctfs(np.random.default_rng(0), 2), 1.0)
    with pytest.raises(InputError, match=r"p\.star: has no pose column rlnAngleRot") as err:
        star_angles(tmp_path / "p.star")
    assert "\n" not in str(err.value)


def test_cg_optimum_has_a_small_gradient():
    rng = np.random.default_rng(7)
    rot = Rotation.random(40, random_state=8).as_matrix()
    lik = RefinementLikelihood(D, 3.0, D / 2, rot, rng.normal(size=(40, 2)), np.float64)
    data = lik.prepare(rng.normal(size=(40, D, D)), ctfs(rng, 40), 1.0)
    alpha = 0.5
    v, facts = solve_optimum(lik, data, np.arange(40), alpha, rtol=1e-8)
    grad = lik.nll_and_grad(v.astype(np.float64), data)[1] + alpha * v
    b = lik.nll_and_grad(np.zeros_like(v, np.float64), data)[1]
    assert np.linalg.norm(grad) < 1e-5 * np.linalg.norm(b)
    assert facts["relative_residual"] <= 1e-7 and facts["iterations"] > 0


def test_pseudo_atoms_and_their_simulation_are_deterministic(tmp_path):
    a, b = pseudo_atoms(11), pseudo_atoms(11)
    assert np.array_equal(a.centres, b.centres) and np.array_equal(a.sigmas, b.sigmas)
    assert not np.array_equal(a.centres[:5], pseudo_atoms(12).centres[:5])
    assert 1000 <= len(a) <= 4000 and 0.5 <= a.sigmas.min() and a.sigmas.max() <= 0.7
    assert 15 < a.radius < 40 and np.abs(a.centres.mean(0)).max() < 10
    params = SimulationParams("pseudo-atoms", 6, 16, 8.0, 0.1, 300.0, 2.7, 0.1, 5000.0, 25000.0,
                              300.0, 3.0, 2.0, 0.0, 30.0, 99)
    files = ("particles.star", "particles.mrcs", "ground_truth.mrc", "poses.csv")
    for out in ("one", "two"):
        simulate(params, tmp_path / out, progress=False, chunk_size=4 if out == "one" else 2)
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    rot, shifts, _ = read_poses(tmp_path / "one" / "poses.csv")
    assert np.allclose(rotations_from_angles(star_angles(tmp_path / "one" / "particles.star")),
                       rot, atol=1e-9)


def write_task(tmp_path, old=None, new=None, n_images=160) -> Path:
    text = TASK.read_text()
    if old is not None:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "refine.toml"
    path.write_text(text.replace('n_images = 400', f'n_images = {n_images}'))
    return path


@pytest.mark.parametrize("old, new, message", [
    ('kind = "refinement"', 'kind = "refine"', r"\[objective\] kind = 'refine': must be one of"),
    ("prior_alpha = 1.0 ", "prior_lambda_pos = 1.0 ", r"\[objective\] prior_alpha is required"),
    ("lowpass_resolution = 15.0", "n_spheres = 3", r"\[init\] lowpass_resolution is required"),
    ("rmax = 12.0", "rmax = 13.0", r"\[scales.ci\] r_max = 13 px must lie in \(0, 12\]"),
    ("prior_alpha = 1.0", "prior_alpha = -1.0", r"\[objective\] prior_alpha = -1.0: must be"),
])
def test_a_bad_refinement_task_is_one_line(tmp_path, data_dir, old, new, message):
    with pytest.raises(InputError, match=message) as err:
        load_task(write_task(tmp_path, old, new), "ci", data_dir=data_dir, progress=False)
    assert "\n" not in str(err.value)


def test_a_refinement_task_loads_with_a_low_passed_init_and_its_optimum(tmp_path, data_dir):
    task = load_task(write_task(tmp_path), "ci", data_dir=data_dir, progress=False)
    truth, init = task.dataset.ground_truth, task.init
    spec_t, spec_i = (sfft.rfftn(v.astype(float)) for v in (truth, init))
    for k in (1, 5, 9, 11):          # the Gaussian low-pass, ½ at 1/15 Å⁻¹ (k = 8.5 here)
        s = k / (24 * task.dataset.pixel_size)
        expected = np.exp(-2 * np.pi ** 2 * lowpass_sigma(15.0) ** 2 * s ** 2)
        assert (spec_i[0, 0, k] / spec_t[0, 0, k]).real == pytest.approx(expected, rel=1e-3)
    assert lowpass_sigma(15.0) ** 2 * 2 * np.pi ** 2 / 15.0 ** 2 == pytest.approx(np.log(2))
    opt = task.optimum(progress=False)
    assert task.suboptimality(opt) == 0.0 and task.suboptimality(init) > 0
    oracle = task.oracle()
    _, g, w, _ = oracle.value_grad_weights(opt, task.splits["train"][:20])
    assert w.min() >= 0 and np.abs(g).max() < 0.05 * np.abs(oracle.value_and_grad(
        init, task.splits["train"][:20])[1]).max()


def test_a_star_file_with_poses_is_the_same_refinement_task(tmp_path, data_dir):
    """The simulated task's own STAR file (poses as RELION angles, origins in Å) read as a STAR
    refinement task gives the same rotations and, once the origins re-centre the images, the
    same shift-corrected spectra (up to the per-image σ the STAR path estimates)."""
    sim = load_task(write_task(tmp_path), "ci", data_dir=data_dir, progress=False)
    folder = sim.dataset.directory
    toml = tmp_path / "star.toml"
    toml.write_text(f'''name = "refine-star"
seed = 1
[dataset]
kind = "star"
star = "{folder / 'particles.star'}"
particle_radius = 40.0
reference = "{folder / 'ground_truth.mrc'}"
[objective]
kind = "refinement"
prior_alpha = 1.0
[protocol]
n_test = 20
[init]
lowpass_resolution = 15.0
[scales.ci]
rmax = 12.0
n_validation = 20
''')
    star = load_task(toml, "ci", data_dir=data_dir, progress=False)
    assert np.abs(star.spectra.rotations - sim.spectra.rotations).max() < 1e-9
    y = star.spectra.y / star.spectra.inv_sigma[:, None]
    assert np.abs(y - sim.spectra.y).max() < 1e-5 * np.abs(sim.spectra.y).max()
    no_poses = tmp_path / "no_poses.toml"
    write_particles(tmp_path / "p.star", tmp_path / "p.mrcs",
                    np.asarray(sim.dataset.images[:60]), sim.dataset.ctf.subset(np.arange(60)),
                    sim.dataset.pixel_size)
    no_poses.write_text(toml.read_text().replace(str(folder / "particles.star"),
                                                 str(tmp_path / "p.star")))
    with pytest.raises(InputError, match="has no pose column rlnAngleRot"):
        load_task(no_poses, "ci", data_dir=data_dir, progress=False)


def test_a_refinement_run_records_suboptimality_and_outer_fsc(tmp_path, data_dir):
    """trace.csv of a refinement run gains subopt and fsc_opt_outer (0 and 1 at the optimum's
    own values are covered above); sgd lowers the first and raises the second."""
    task = load_task(write_task(tmp_path, n_images=400), "ci", data_dir=data_dir, progress=False)
    spec = RunSpec("refinement-atoms", "ci", "sgd", {"lr": 0.5}, seed=0, budget=5 * task.n_train)
    trace = execute(spec, task, resolve("sgd"), compare=False).trace
    assert list(trace.columns[-3:]) == ["train_obj", "subopt", "fsc_opt_outer"]
    first, last = trace.iloc[0], trace.iloc[-1]
    assert first["subopt"] == pytest.approx(task.suboptimality(task.init))
    assert last["subopt"] < 0.5 * first["subopt"] and last["fsc_opt_outer"] > first["fsc_opt_outer"]
    assert (trace["subopt"] >= 0).all()


def test_em_statistics_carry_the_gaussian_prior_and_em_reaches_its_fixed_point(tmp_path, data_dir):
    """On a refinement task the oracle's W_B is the data's gridded weights plus α/K and B_B the
    data's back-projection alone, so B_B / W_B does not depend on the iterate: EM (at the
    smallest damping of its range) lowers the training objective in its first iteration and
    stays there. With the exact diagonal as its weights, or the prior to first order only, it
    overshot and grew (the slow blow-ups of the refinement tuning)."""
    task = load_task(write_task(tmp_path, n_images=400), "ci", data_dir=data_dir, progress=False)
    batch, k = task.splits["train"][:20], task.n_train
    x = task.init
    _, _, w, b = task.oracle().value_grad_weights(x, batch)
    _, _, w0, b0 = task.likelihood.nll_grad_weights(x, task.likelihood.subset(task.spectra, batch))
    np.testing.assert_allclose(w, w0 / 20 + task.prior.alpha / k, rtol=1e-6)
    np.testing.assert_allclose(b, b0 / 20, rtol=0, atol=1e-6 * np.abs(b0 / 20).max())
    spec = RunSpec("refinement-atoms", "ci", "em", {"damping": 1e-4}, seed=0, budget=3 * k)
    out = execute(spec, task, resolve("em"), compare=False)
    trace = out.trace
    assert out.record.status == "ok"
    assert trace["subopt"].iloc[1] < 0.6 * trace["subopt"].iloc[0]
    assert trace["subopt"].iloc[-1] == pytest.approx(trace["subopt"].iloc[1], rel=1e-6)


@pytest.mark.parametrize("box", [12, 13])
def test_slices_are_trilinear_interpolation_of_the_full_spectrum(box):
    """The compiled gather equals scipy's order-1 interpolation of the whole (periodic) DFT of
    the volume at ξ = R (q, 0)ᵀ, ξx of either sign: no half grid and no folding there."""
    rng = np.random.default_rng(3)
    rot = Rotation.random(4, random_state=2).as_matrix()
    lik = RefinementLikelihood(box, 2.0, box / 2, rot, np.zeros((4, 2)), np.float64)
    volume = rng.normal(size=(box,) * 3)
    full = sfft.fftn(sfft.ifftshift(volume)) / box                          # axes (z, y, x)
    xi = np.einsum("nab,pb->npa", rot[:, :, :2], lik.points).reshape(-1, 3)
    at = [xi[:, 2] % box, xi[:, 1] % box, xi[:, 0] % box]
    expected = (ndimage.map_coordinates(full.real, at, order=1, mode="grid-wrap")
                + 1j * ndimage.map_coordinates(full.imag, at, order=1, mode="grid-wrap"))
    got = lik.slices(lik.transform(volume), lik.slice_points(rot))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_the_adjoint_slicing_is_exact_and_independent_of_the_thread_count(tiny):
    """⟨P V̂, G⟩ = ⟨V̂, Pᵀ G⟩ on the half grid (real inner product of complex numbers), and the
    scatters give the same bits with one thread as with several."""
    import numba

    lik, data, _ = tiny
    rng = np.random.default_rng(4)
    points = lik.slice_points(data.rotations)
    vhat = rng.normal(size=lik.half_shape) + 1j * rng.normal(size=lik.half_shape)
    g = rng.normal(size=len(points.xi)) + 1j * rng.normal(size=len(points.xi))
    lhs = np.vdot(g, lik.slices(vhat, points)).real
    rhs = np.vdot(lik.slices_adjoint(g, points), vhat).real
    assert lhs == pytest.approx(rhs, rel=1e-12)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = lik.slices_adjoint(g, points), lik.weights(data, points)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = lik.slices_adjoint(g, points), lik.weights(data, points)
    finally:
        numba.set_num_threads(before)
    assert one[0].tobytes() == many[0].tobytes() and one[1].tobytes() == many[1].tobytes()


def test_a_cached_optimum_from_other_kernels_is_solved_again(tmp_path, data_dir, monkeypatch):
    """optimum.json records the key of the code and platform that solved it; under another key
    (other kernels, another machine) the optimum is solved again and rewritten, and a second
    load under the same key reads it back without solving."""
    from cryobench.data import refinement as data_refinement

    path = write_task(tmp_path)
    first = load_task(path, "ci", data_dir=data_dir, progress=False)
    first.optimum(progress=False)
    record = first.derived_dir / "optimum.json"
    assert json.loads(record.read_text())["key"] == data_refinement.optimum_key()
    monkeypatch.setattr(data_refinement, "optimum_key", lambda: "other kernels")
    solved = []
    real = data_refinement.solve_optimum
    monkeypatch.setattr(data_refinement, "solve_optimum",
                        lambda *a, **k: solved.append(1) or real(*a, **k))
    load_task(path, "ci", data_dir=data_dir, progress=False).optimum(progress=False)
    assert solved == [1] and json.loads(record.read_text())["key"] == "other kernels"
    load_task(path, "ci", data_dir=data_dir, progress=False).optimum(progress=False)
    assert solved == [1]
