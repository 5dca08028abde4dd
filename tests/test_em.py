"""EM's weights (the oracle's Gauss–Newton Hessian diagonal in the Fourier basis), what they
cost, hard assignment, and one EM iteration on a task whose quadrature holds only the true pose."""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cryobench.data.datasets import Dataset
from cryobench.data.spec import Scale, TaskSpec
from cryobench.harness.registry import discover
from cryobench.model.ctf import CTFParams
from cryobench.model.likelihood import Likelihood
from cryobench.model.prior import Prior
from cryobench.model.quadrature import Quadrature
from cryobench.oracle import BudgetExhausted
from cryobench.task import Task, make_splits
from cryobench.toy import QuadraticOracle

D, RMAX, PIXEL = 16, 4.0, 4.0
METHODS = discover()


def one_pose(direction, psi=0.0):
    """A quadrature of ONE pose (direction, in-plane angle ψ, no shift): the posterior is 1."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    return Quadrature(d[None], np.ones(1), np.array([psi]), np.zeros((1, 2)), np.ones(1))


def ctfs(rng, n):
    return CTFParams(rng.uniform(8e3, 2e4, n), rng.uniform(8e3, 2e4, n), rng.uniform(0, 180, n),
                     300.0, 2.7, 0.1, 0.0, 0.0)


def real_mode(k, kind):
    """The unit-norm cos or sin mode of integer frequency k = (kx, ky, kz), on V[z, y, x]."""
    x = np.arange(D)
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    phase = 2 * np.pi * (k[0] * xx + k[1] * y + k[2] * z) / D
    u = np.cos(phase) if kind == "cos" else np.sin(phase)
    return u / np.linalg.norm(u)


def half_plane_frequencies(limit):
    """Integer k with |k| ≤ limit, one of each ±k pair (kx ≥ 0 half of the rfft grid), k ≠ 0."""
    out = []
    r = int(np.floor(limit))
    for kz in range(-r, r + 1):
        for ky in range(-r, r + 1):
            for kx in range(0, r + 1):
                if kx == 0 and (ky < 0 or (ky == 0 and kz <= 0)):
                    continue
                if kx * kx + ky * ky + kz * kz <= limit**2:
                    out.append(np.array([kx, ky, kz]))
    return out


@pytest.fixture(scope="module")
def tilted():
    """Float64 likelihood with one generic (tilted, rotated in-plane) pose and 6 images."""
    quad = one_pose([0.3, 0.5, 0.8], 0.4)
    lik = Likelihood(D, PIXEL, RMAX, quad, 2, np.float64)
    rng = np.random.default_rng(0)
    data = lik.prepare(rng.normal(size=(6, D, D)), ctfs(rng, 6), 1.0)
    return lik, data, 0.1 * rng.normal(size=(D, D, D))


def test_weights_match_a_brute_force_hessian_diagonal_in_the_fourier_basis(tilted):
    lik, data, v = tilted
    nll, grad, w, _ = lik.nll_grad_weights(v, data)
    normal = lik.quadrature.rotations[0][:, 2]
    exact, gridded = [], []
    for k in half_plane_frequencies(RMAX - 1):
        if abs(k @ normal) > 0.5:            # the plane's nodes: the others get W ≈ 0 by design
            continue
        for kind in ("cos", "sin"):
            u, h = real_mode(k, kind), 1e-3
            hu = (lik.nll_and_grad(v + h * u, data)[1] - lik.nll_and_grad(v - h * u, data)[1]) / (2 * h)
            exact.append(float(np.sum(u * hu)))
            gridded.append(w[k[2] % D, k[1] % D, k[0]])
    exact, gridded = np.array(exact), np.array(gridded)
    rel = np.abs(gridded - exact) / exact
    # measured: 24 modes (12 frequencies × cos, sin), median |rel| 0.18, correlation 0.970,
    # median ratio W / uᵀHu 1.18: the trilinear hat keeps on the plane the mass that the sinc²
    # tails of one plane in a 16-box spread away from it. A factor 2 wrong gives ratio 0.6 / 2.4.
    assert len(exact) >= 20
    assert np.median(rel) < 0.3
    assert np.corrcoef(exact, gridded)[0, 1] > 0.95
    assert 0.9 < np.median(gridded / exact) < 1.4


def test_weights_conserve_the_hessian_trace(tilted):
    """Σ_k W(k) over the full grid equals D Σ pq, the trace of Pᵀ diag(pq) P for the exact DFT
    slice; the model's tricubic slicing from the ×2 cube attenuates it slightly (measured 2 %)."""
    lik, data, v = tilted
    _, _, w, _ = lik.nll_grad_weights(v, data)
    full = w.sum() + w[:, :, 1:(D + 1) // 2].sum()          # kx > 0 columns stand for ±kx
    pq = lik._evaluate(v, data, gradient=True, extras=True)[2]
    assert full == pytest.approx(D * pq.sum(), rel=1e-9)
    trace = 0.0
    for j in range(pq.shape[1]):
        for unit in (1.0, 1j):
            e = np.zeros(pq.shape, complex)
            e[0, j] = unit
            trace += pq[0, j] * np.sum(lik.slicer.adjoint(e) ** 2)
    assert trace == pytest.approx(full, rel=0.1)


def test_soft_outputs_are_bit_identical_and_hard_weights_are_those_of_the_best_pose(ci_task):
    lik = ci_task.likelihood                             # thermus-style has a shift grid
    batch = ci_task.splits["train"][:7]
    data = lik.subset(ci_task.spectra, batch)
    v = ci_task.init
    before = lik.nll_and_grad(v, data)
    nll, grad, w, b = lik.nll_grad_weights(v, data)
    after = lik.nll_and_grad(v, data)
    for a, b in zip(before, (nll, grad)):
        assert np.array_equal(a, b)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)
    assert w.shape == (lik.box, lik.box, lik.box // 2 + 1) and np.all(w >= 0) and w.max() > 0
    # hard: each image alone, against a quadrature reduced to its most probable pose
    hnll, hgrad, hw, hb = lik.nll_grad_weights(v, data, hard=True)
    assert np.array_equal(hnll, nll)                     # the value stays the marginal NLL
    g_sum, w_sum, b_sum = 0.0, 0.0, 0.0
    quad = lik.quadrature
    for i in range(len(batch)):
        one = lik.subset(data, [i])
        g_full = posterior_logits(lik, v, one)
        a, s, d = np.unravel_index(np.argmax(g_full), g_full.shape)
        reduced = Quadrature(quad.directions[d:d + 1], np.ones(1), quad.inplane_angles[a:a + 1],
                             quad.shifts[s:s + 1], np.ones(1))
        lik1 = Likelihood(lik.box, lik.pixel_size, lik.rmax, reduced, lik.oversampling, lik.dtype)
        _, g1, w1, b1 = lik1.nll_grad_weights(v, lik1.subset(data, [i]))
        g_sum, w_sum, b_sum = g_sum + g1, w_sum + w1, b_sum + b1
    assert np.allclose(hw, w_sum, rtol=1e-5, atol=1e-6 * hw.max())
    assert np.allclose(hgrad, g_sum, rtol=1e-4, atol=1e-5 * np.abs(hgrad).max())
    assert np.allclose(hb, b_sum, rtol=1e-4, atol=1e-5 * np.abs(hb).max())
    assert not np.allclose(hw, w, rtol=0.1)              # soft and hard weights differ


def posterior_logits(lik, v, one):
    """G + log w of one image over (a, s, d), from the kernel's rows (float64)."""
    slices = lik.slicer.forward(v).astype(complex)
    a, q, _ = lik._rows(one)
    na, ns, nd = lik._log_w.shape
    ac = a.astype(float).reshape(na, ns, -1, 2)
    y = ac[..., 0] + 1j * ac[..., 1]                     # w C Y per (a, s, point)
    cross = np.einsum("asp,dp->asd", y.conj(), slices).real
    norm = np.einsum("ap,dp->ad", q.astype(float), np.abs(slices) ** 2)
    return cross - 0.5 * norm[:, None, :] + lik._log_w.astype(float)


def test_value_grad_weights_is_charged_as_its_gradient_evaluations(cylinder):
    oracle = cylinder.oracle(budget=10_000)
    view = oracle.view()
    batch = view.next_batch(50)
    value, grad = view.value_and_grad(cylinder.init, batch)
    v2, g2, w, b = view.value_grad_weights(cylinder.init, batch)
    v3, g3 = view.value_and_grad(cylinder.init, batch)
    assert oracle.counts == {"grad": 150, "value": 0, "hvp": 0}
    assert value == v2 == v3 and np.array_equal(grad, g2) and np.array_equal(grad, g3)
    view.value_grad_weights(cylinder.init, batch, hard=True)
    assert oracle.counts["grad"] == 200
    oracle.audit()
    assert w.dtype == grad.dtype and w.shape == b.shape == view.to_fourier(grad).shape
    # the gradient identity F(∇f_B) ≈ W F(x) − B (gridding error), the prior included in B
    resid = view.to_fourier(grad) - (w * view.to_fourier(cylinder.init) - b)
    inside = w > 0.05 * w.max()
    ratio = np.linalg.norm(resid[inside]) / np.linalg.norm(view.to_fourier(grad)[inside])
    assert ratio < 0.5                                   # measured 0.31
    assert np.allclose(view.from_fourier(view.to_fourier(grad)), grad, atol=1e-6 * np.abs(grad).max())
    small = cylinder.oracle(budget=60).view()
    small.value_grad_weights(cylinder.init, batch)
    with pytest.raises(BudgetExhausted):
        small.value_grad_weights(cylinder.init, batch[:11])
    assert small.counts["grad"] == 50


def test_toy_weights_are_its_hessian_and_one_em_step_is_newton():
    oracle = QuadraticOracle(budget=10_000)
    x = oracle.initial_point()
    _, g, w, b = oracle.view().value_grad_weights(x, np.arange(10))
    assert np.array_equal(w, oracle.h) and np.allclose(g, w * x - b, atol=1e-7)
    oracle = QuadraticOracle(budget=10_000)
    opt = METHODS["em"].configure(damping=0.0)
    state = opt.step(opt.init(x, budget=oracle.budget, rng=None), oracle.view())
    assert oracle.counts["grad"] == oracle.n_train
    assert np.allclose(state["x"], oracle.x_star, atol=1e-5)


# ------------------------------------------------------------- one EM iteration, one true pose
def one_pose_task(quad, n_images=12):
    """A tiny noise-free task: images are CTF-modulated projections of a random volume, all at
    the single pose of ``quad`` (the quadrature holds only the true pose); no prior."""
    rng = np.random.default_rng(5)
    lik = Likelihood(D, PIXEL, RMAX, quad, 2, np.float32)
    truth = np.zeros((D, D, D))
    truth[4:12, 5:11, 3:13] = rng.normal(size=(8, 6, 10))
    ctf = ctfs(rng, n_images)
    # an image = the slice of the truth (the model's own slicing) times its CTF, written on the
    # integer half disk, then back to real space: noise-free, consistent with one volume
    images = np.stack([image_of(lik, truth, ctf.subset([i])) for i in range(n_images)])
    spec = TaskSpec("one-pose", Path("one-pose.toml"), {"name": "one-pose", "seed": 3})
    scale = Scale("tiny", n_images, D, PIXEL, RMAX, None, 0)
    spectra = lik.prepare(images.astype(np.float32), ctf, np.ones(n_images))
    splits = {"train": np.arange(n_images), "validation": np.arange(0), "test": np.arange(0)}
    data = Dataset(images, ctf, np.ones(n_images), PIXEL, 24.0, "one-pose", None, truth)
    return Task(spec, scale, data, lik, Prior(0.0, 0.0, 1.0), spectra, splits,
                np.zeros((D, D, D), np.float32), "one-pose", Path(tempfile.gettempdir()), 4, 10**6)


def image_of(lik, volume, ctf):
    """C · (the slice of ``volume`` at the pose's direction) on the integer half disk, in real
    space (for ψ = 0 exactly an image of the volume at the pose)."""
    from cryobench.model.ctf import evaluate_ctf
    from cryobench.model.fourier import centered_idft2
    spec = np.zeros((D, D), complex)
    s = lik.slicer.forward(volume.astype(np.float32))[0].astype(complex)
    kx, ky = lik.points[:, 0].astype(int), lik.points[:, 1].astype(int)
    c = evaluate_ctf(ctf, kx / (D * PIXEL), ky / (D * PIXEL))[0]
    spec[ky + D // 2, kx + D // 2] = c * s
    spec[-ky + D // 2, -kx + D // 2] = np.conj(c * s)
    return centered_idft2(spec)


def least_squares(task):
    """Σ_i C_i Y_i / Σ_i C_i² at the slice points, from the kernel's own rows (w C Y and w C²)."""
    a, q, _ = task.likelihood._rows(task.spectra)
    a = a.astype(float).reshape(len(task.spectra), -1, 2)
    return (a[..., 0] + 1j * a[..., 1]).sum(0) / q.astype(float).sum(0)


# axis-aligned pose: slice points on grid nodes, gridding exact (measured 5.9e-7, float32);
# tilted and rotated pose: trilinear gridding, then the model's tricubic reslicing (measured 0.243)
@pytest.mark.parametrize("direction, psi, bound", [([0, 0, 1], 0.0, 1e-5),
                                                   ([0.3, 0.5, 0.8], 0.4, 0.35)])
def test_one_em_iteration_reaches_the_least_squares_slice_from_any_start(direction, psi, bound):
    task = one_pose_task(one_pose(direction, psi))
    target = least_squares(task)
    em = METHODS["em"].configure(damping=1e-7)
    rng = np.random.default_rng(11)
    results = []
    for start in (rng.normal(size=(D, D, D)), 3 * rng.normal(size=(D, D, D))):
        oracle = task.oracle(budget=100)
        x0 = (start * (np.abs(target).mean() / D)).astype(np.float32)    # slice values ~ target
        state = em.step(em.init(x0, budget=100, rng=None), oracle.view())
        assert oracle.counts["grad"] == task.n_train
        results.append(task.likelihood.slicer.forward(state["x"])[0].astype(complex))
    for s in results:
        err = np.linalg.norm(s - target) / np.linalg.norm(target)
        assert err < bound, err
    # EM's new iterate depends on the old one only through the posterior (here always 1)
    assert np.linalg.norm(results[0] - results[1]) / np.linalg.norm(target) < 1e-5
