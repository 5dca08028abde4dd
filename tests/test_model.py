"""The image-formation model: CTF, quadrature, Fourier slice theorem, likelihood gradients."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from cryobench.model.ctf import CTFParams, electron_wavelength, evaluate_ctf
from cryobench.model.fourier import (centered_dft2, cube_frequencies, cube_to_volume_adjoint,
                                     half_disk, volume_to_cube)
from cryobench.model.likelihood import Likelihood
from cryobench.model.prior import Prior
from cryobench.model.quadrature import quadrature_for, shift_grid
from cryobench.model.slicing import SliceOperator


def blobs(d, rng, n=6, spread=3.0, width=2.0):
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((d, d, d))
    for cx, cy, cz in rng.normal(0, spread, (n, 3)):
        vol += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * width**2))
    return vol


def on_grid(spectrum, points):
    d = spectrum.shape[-1]
    return spectrum[(points[:, 1] + d // 2).astype(int), (points[:, 0] + d // 2).astype(int)]


# ----------------------------------------------------------------------------- CTF
def test_wavelength_by_hand():
    # λ = 12.2643 / sqrt(300e3 · (1 + 0.978466e-6 · 300e3)) = 12.2643 / 622.9461 Å
    assert electron_wavelength(300) == pytest.approx(0.0196875757, rel=1e-8)
    assert electron_wavelength(200) == pytest.approx(0.0250793, rel=1e-5)


def test_ctf_by_hand_with_astigmatism_and_phase_shift():
    p = CTFParams(20000, 18000, 30, 300, 2.7, 0.1, 45, 50)
    # s = (0.05, 0.02) 1/Å: s² = 0.0029, azimuth 21.80°, Δf = 19000 + 1000 cos(2(21.80° − 30°))
    # = 19959.33 Å; χ = −πλΔf s² + ½π Cs λ³ s⁴ − π/4 − atan(0.1/√0.99) = −4.4628685;
    # C = −sin χ = −0.96903094; with B = 50 Å²: × exp(−50 · 0.0029 / 4) → −0.93453263.
    assert evaluate_ctf(p, [0.05], [0.02])[0, 0] == pytest.approx(-0.93453263, abs=1e-7)
    no_b = CTFParams(20000, 18000, 30, 300, 2.7, 0.1, 45, 0)
    assert evaluate_ctf(no_b, [0.05], [0.02])[0, 0] == pytest.approx(-0.96903094, abs=1e-7)


def test_ctf_relion_sign_and_astigmatism_axes():
    p = CTFParams(15000, 10000, 0, 300, 2.7, 0.07, 0, 0)
    assert evaluate_ctf(p, [0.0], [0.0])[0, 0] == pytest.approx(0.07)   # C(0) = +Q (RELION)
    s = 0.005  # low frequency: along the U axis (x, angle 0) the defocus is DefocusU
    lam = electron_wavelength(300)
    for fx, fy, df in ((s, 0.0, 15000), (0.0, s, 10000)):
        chi = -np.pi * lam * df * s**2 + 0.5 * np.pi * 2.7e7 * lam**3 * s**4 - np.arctan(0.07 / np.sqrt(1 - 0.07**2))
        assert evaluate_ctf(p, [fx], [fy])[0, 0] == pytest.approx(-np.sin(chi), abs=1e-12)
    assert evaluate_ctf(p, [s], [0.0])[0, 0] > 0  # first lobe positive for underfocus


def test_kernel_ctf_terms_reassemble_evaluate_ctf():
    # The compiled rows evaluate C = env · sin(iso + aniso · cos 2(α_s − α_ast)) from the terms of
    # kernels.ctf_terms (times 1/σ); they must be the CTF of cryobench.model.ctf, term by term.
    from cryobench.model.kernels import ctf_terms
    p = CTFParams([21000, 15000, 9000], [17000, 14000, 9500], [10, 70, 135], 300, 2.7, 0.1,
                  [0, 30, 90], [0, 50, 120])
    inv_sigma = np.array([1.0, 0.5, 2.0])
    rng = np.random.default_rng(3)
    fx, fy = rng.uniform(-0.1, 0.1, 40), rng.uniform(-0.1, 0.1, 40)
    iso, aniso, env, cos_ast, sin_ast = ctf_terms(p, inv_sigma, fx**2 + fy**2)
    alpha = np.arctan2(fy, fx)[:, None]
    chi = iso + aniso * (np.cos(2 * alpha) * cos_ast + np.sin(2 * alpha) * sin_ast)
    expected = evaluate_ctf(p, fx, fy) * inv_sigma[:, None]
    np.testing.assert_allclose((env * np.sin(chi)).T, expected, rtol=1e-10, atol=1e-12)


def test_ctf_rotation_is_an_azimuth_offset():
    p = CTFParams([21000, 15000], [17000, 14000], [10, 70], 200, 2.0, 0.07, 0, 0)
    psi = np.deg2rad(33.0)
    q = np.array([[0.03, 0.01], [-0.02, 0.025]])
    k = np.stack([q[:, 0] * np.cos(psi) + q[:, 1] * np.sin(psi),
                  -q[:, 0] * np.sin(psi) + q[:, 1] * np.cos(psi)], 1)   # R(−ψ) q
    np.testing.assert_allclose(evaluate_ctf(p, k[:, 0], k[:, 1]),
                               evaluate_ctf(p, q[:, 0], q[:, 1], angle_offset_deg=33.0), atol=1e-12)


# ----------------------------------------------------------------------- quadrature
def test_quadrature_sizes_follow_rmax_at_paper_settings():
    thermus = quadrature_for(0.16 * 64, 128)          # θ = atan(1/10.24): ≥ 1369 → 1454 points
    assert (len(thermus.directions), len(thermus.inplane_angles)) == (1454, 65)
    assert thermus.n_rotations == 94510 and abs(thermus.n_rotations - 95000) < 1000
    synthetic = quadrature_for(0.10 * 64, 128)        # θ = atan(1/6.4): ≥ 538 → 590 points
    assert (len(synthetic.directions), len(synthetic.inplane_angles)) == (590, 41)
    assert synthetic.n_rotations == 24190


def test_lebedev_rules_with_negative_weights_are_skipped():
    from cryobench.model.quadrature import lebedev_directions
    for wanted, got in ((60, 86), (200, 302), (146, 146), (1369, 1454)):
        x, w = lebedev_directions(wanted)
        assert len(w) == got and np.all(w > 0) and w.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)


@pytest.mark.parametrize("sigma", [0.0, 1.6, 5.0])
def test_quadrature_weights_sum_to_one(sigma):
    q = quadrature_for(10.24, 128, shift_sigma_px=sigma, shift_truncation=2.0)
    assert np.exp(q.log_weights()).sum() == pytest.approx(1.0, abs=1e-12)
    assert q.direction_weights.sum() == pytest.approx(1.0) and np.all(q.direction_weights > 0)
    rot = q.rotations
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(rot[:, :, 2], q.directions, atol=1e-12)


def test_shift_grid_spacing_and_truncation():
    shifts, w = shift_grid(128, 10.24, 1.6, 2.0)      # spacing 128/(4·10.24) = 3.125 px, radius 3.2
    assert len(shifts) == 5 and np.isclose(np.abs(shifts).max(), 3.125)
    assert w.sum() == pytest.approx(1.0) and w[np.argmin(np.abs(shifts).sum(1))] == w.max()


# -------------------------------------------------------------- Fourier slice theorem
def test_slice_along_z_equals_spectrum_of_projection():
    d = 24
    vol = blobs(d, np.random.default_rng(0))
    pts, _ = half_disk(6.0)
    op = SliceOperator(d, pts, np.eye(3)[None], dtype=np.float64)
    np.testing.assert_allclose(op.forward(vol)[0], on_grid(centered_dft2(vol.sum(0)), pts), atol=1e-10)


def test_oblique_slice_matches_real_space_projection():
    d = 32
    vol = blobs(d, np.random.default_rng(1))
    rot = Rotation.from_euler("zyz", [0.3, 0.9, -0.4]).as_matrix()
    c = np.arange(d) - d // 2
    u = np.stack(np.meshgrid(c, c, c, indexing="ij"))          # (x, y, z)[ix, iy, iz]
    p = np.einsum("ij,jabc->iabc", rot, u)                      # the point R (x, y, z)
    vals = map_coordinates(vol, [p[2] + d // 2, p[1] + d // 2, p[0] + d // 2], order=3)
    projection = vals.sum(axis=2).T                             # integrate along z → I[y, x]
    pts, _ = half_disk(7.0)
    got = SliceOperator(d, pts, rot[None], dtype=np.float64).forward(vol)[0]
    ref = on_grid(centered_dft2(projection), pts)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.01


def test_slice_operator_adjoint():
    d, rng = 16, np.random.default_rng(2)
    pts, _ = half_disk(4.0)
    op = SliceOperator(d, pts, quadrature_for(4.0, d).rotations, dtype=np.float64)
    x = rng.normal(size=(d, d, d))
    y = rng.normal(size=op.shape) + 1j * rng.normal(size=op.shape)
    assert np.vdot(op.forward(x), y).real == pytest.approx(np.sum(x * op.adjoint(y)), rel=1e-12)
    freqs = cube_frequencies(4.0, 2)
    g = rng.normal(size=(len(freqs),) * 3) + 1j * rng.normal(size=(len(freqs),) * 3)
    lhs = np.vdot(volume_to_cube(x, freqs), g).real
    assert lhs == pytest.approx(np.sum(x * cube_to_volume_adjoint(g, freqs, d, np.float64)), rel=1e-12)


# ------------------------------------------------------------------------ gradients
def tiny_likelihood(dtype=np.float64, shifts=True):
    d, rng = 16, np.random.default_rng(3)
    quad = quadrature_for(3.0, d, shift_sigma_px=1.5 if shifts else 0.0)
    lik = Likelihood(d, 6.0, 3.0, quad, dtype=dtype)
    n = 4
    ctf = CTFParams(rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(0, 180, n),
                    200, 2.0, 0.07, rng.uniform(0, 30, n), 0)
    data = lik.prepare(rng.normal(size=(n, d, d)), ctf, rng.uniform(0.5, 2.0, n))
    return lik, data, rng


@pytest.mark.parametrize("shifts", [False, True])
def test_data_term_gradient_matches_central_differences(shifts):
    lik, data, rng = tiny_likelihood(shifts=shifts)
    assert len(lik.quadrature.shifts) > 1 if shifts else len(lik.quadrature.shifts) == 1
    for trial in range(3):
        vol = rng.normal(size=(16, 16, 16)) * 0.05
        _, grad = lik.nll_and_grad(vol, data)
        u = rng.normal(size=vol.shape)
        u /= np.linalg.norm(u)
        h = 1e-4
        fd = (lik.nll(vol + h * u, data).sum() - lik.nll(vol - h * u, data).sum()) / (2 * h)
        assert np.sum(grad * u) == pytest.approx(fd, rel=1e-4)


def test_prior_gradient_matches_central_differences():
    rng = np.random.default_rng(4)
    for prior in (Prior(1e-4, 1e-4), Prior(3e-2, 1e-4, 1.5), Prior(0.3, 0.7, 2.0)):
        v = rng.normal(size=(8, 8, 8))
        u = rng.normal(size=v.shape)
        h = 1e-6
        fd = (prior.value(v + h * u) - prior.value(v - h * u)) / (2 * h)
        assert np.sum(prior.grad(v) * u) == pytest.approx(fd, rel=1e-4)


def test_prior_values_by_hand():
    assert Prior(3e-2, 1e-4).value(np.array([2.0, -3.0, 0.0])) == pytest.approx(3e-2 * 2 + 1e-4 * 3)
    assert Prior(1.0, 2.0, 2.0).value(np.array([-3.0])) == pytest.approx(18.0)
    with pytest.raises(ValueError):
        Prior(-1.0, 1.0)


def test_float32_kernel_agrees_with_float64():
    lik64, data64, rng = tiny_likelihood()
    lik32, data32, _ = tiny_likelihood(np.float32)
    vol = rng.normal(size=(16, 16, 16)) * 0.05
    v64, g64 = lik64.nll_and_grad(vol, data64)
    v32, g32 = lik32.nll_and_grad(vol.astype(np.float32), data32)
    assert g32.dtype == np.float32
    np.testing.assert_allclose(v32, v64, rtol=1e-5)
    assert np.linalg.norm(g32 - g64) / np.linalg.norm(g64) < 1e-3


def test_likelihood_is_a_gaussian_mixture_over_poses():
    """With one pose point the NLL is the Gaussian ½‖Î − C S‖² + c on the half disk."""
    from cryobench.model.quadrature import Quadrature
    d, rng = 16, np.random.default_rng(5)
    quad = Quadrature(np.array([[0.0, 0.0, 1.0]]), np.ones(1), np.zeros(1), np.zeros((1, 2)), np.ones(1))
    lik = Likelihood(d, 5.0, 4.0, quad, dtype=np.float64)
    vol = blobs(d, rng)
    image = rng.normal(size=(d, d))
    ctf = CTFParams(15000, 15000, 0, 200, 2.0, 0.1, 0, 0)
    nll = lik.nll(vol, lik.prepare(image[None], ctf, 1.0))[0]
    pts, w = half_disk(4.0)
    c = evaluate_ctf(ctf, pts[:, 0] / (d * 5.0), pts[:, 1] / (d * 5.0))[0]
    resid = on_grid(centered_dft2(image), pts) - c * on_grid(centered_dft2(vol.sum(0)), pts)
    expected = 0.5 * np.sum(w * np.abs(resid) ** 2) + (len(pts) - 1) * np.log(np.pi) + 0.5 * np.log(2 * np.pi)
    assert nll == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shifts", [1, 3])
def test_posterior_drops_negligible_poses_and_keeps_the_log_sum_exp(shifts):
    """Poses e⁻⁴⁰ below their row's maximum (and factors below 1e−30) become exact zeros, not
    subnormal products in the gradient's GEMMs; the log-sum-exp and the responsibilities of the
    poses that matter are those of float64 arithmetic to float32 precision."""
    from cryobench.model.kernels import posterior
    rng = np.random.default_rng(5)
    b, na, nd = 3, 4, 64
    g = (rng.uniform(-200.0, 0.0, size=(b, na, shifts, nd))).astype(np.float32)   # a sharp posterior
    g[:, 0, 0, 0] = 0.0
    log_w = np.full((na, shifts, nd), -np.log(na * shifts * nd), np.float32)
    ref_g = g.astype(np.float64) + log_w
    ref = np.log(np.exp(ref_g - ref_g.max(axis=(1, 2, 3), keepdims=True)).sum(axis=(1, 2, 3)))
    p_as = np.empty((b, na, nd), np.float32) if shifts > 1 else np.empty((1, 1, 1), np.float32)
    row_factor, ang_factor = np.empty((b, na, shifts)), np.empty((b, na))
    gmax, log_total = np.empty(b), np.empty(b)
    e = g.copy()
    posterior(e, np.zeros((0, 0, 0), np.float32), log_w, True, True, p_as, row_factor, ang_factor,
              gmax, log_total)
    np.testing.assert_allclose(log_total + gmax, ref + ref_g.max(axis=(1, 2, 3)), rtol=1e-6)
    kept = e[e > 0]
    assert kept.min() >= np.exp(-40.0) * 0.999 and (e == 0).mean() > 0.5
    assert np.all((row_factor == 0) | (row_factor >= 1e-30))
    if shifts > 1:
        assert np.all((p_as == 0) | (p_as >= 1e-30))
    resp = row_factor[..., None] * e                       # P = row_factor · E
    ref_p = np.exp(ref_g - (ref + ref_g.max(axis=(1, 2, 3)))[:, None, None, None])
    big = ref_p > 1e-6
    np.testing.assert_allclose(resp[big], ref_p[big], rtol=1e-5)
