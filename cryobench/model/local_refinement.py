"""Refinement with approximately known poses: the known-pose likelihood of
:mod:`cryobench.model.refinement` marginalised over a small local grid of pose offsets around
each image's given pose, as RELION's local searches do (Scheres, "RELION: implementation of a
Bayesian approach to cryo-EM structure determination", 2012; the local-search setting of
Toader, Brubaker & Lederman, "Efficient high-resolution refinement in cryo-EM with stochastic
gradient descent", 2025):

    p(I_i | V) = Σ_j Σ_k w_jk p(I_i | R_i ΔR_j, t_i + Δt_k, V),

ΔR_0 = identity and ΔR_j (j ≥ 1) rotations by ``rotation_deg`` about ``rotation_steps`` axes
spread evenly (a Fibonacci lattice) on the sphere; Δt_0 = 0 and Δt_k (k ≥ 1) ``shift_steps``
points evenly on the circle of radius ``shift_A`` Å. The weights are the Gaussian prior on the
offset, w_jk ∝ exp(−½ (θ_j/rotation_deg)² − ½ (|Δt_k|/shift_A)²), normalised (a zero radius
gives its ring weight 0 and is refused with steps > 0). The shift only multiplies the
shift-corrected spectrum by a phase, Y_ik = Y_i e^{+2πi q·Δt_k/D}, so one image costs
``1 + rotation_steps`` trilinear slices (one per rotation offset) and (1 + rotation_steps) ×
(1 + shift_steps) residual norms. The log-sum-exp is computed stably (scipy.special.logsumexp).

Not a quadratic: the gradient is the posterior-weighted sum Σ_jk π_ijk ∂/∂V(−log p_ijk), and
the weights returned by :meth:`nll_grad_weights` are a Gauss-Newton part Σ_jk π_ijk W_ijk
(the known-pose weights of each grid point — EM's gridded ones, or the exact diagonal —
weighted by its posterior), leaving out the between-offset variance term.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from scipy import fft as sfft
from scipy.special import logsumexp
from scipy.spatial.transform import Rotation

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)
from cryobench.model.refinement import PosedSpectra, RefinementLikelihood


@nb.njit(parallel=True, cache=True)
def residual_energies(y, phase, ctf, s, point_weights, out):
    """out[i, j, k] = ½ Σ_q w_q |Y_i(q) e^{2πi q·Δt_k/D} − C_i(q) S_ij(q)|² for images i,
    rotation offsets j, shift offsets k (y (n, Np), phase (ns, Np), ctf (n, Np), s (n, nr, Np)),
    without the (n, nr, ns, Np) residual array: one image per iteration, summed over q in
    order."""
    n, nr, n_pts = s.shape
    for i in nb.prange(n):
        for j in range(nr):
            for k in range(phase.shape[0]):
                acc = 0.0
                for q in range(n_pts):
                    yq = y[i, q] * phase[k, q]
                    cs = ctf[i, q] * s[i, j, q]
                    rr, ri = yq.real - cs.real, yq.imag - cs.imag
                    acc += point_weights[q] * (rr * rr + ri * ri)
                out[i, j, k] = 0.5 * acc
    return out


@nb.njit(parallel=True, cache=True)
def weighted_residuals(y, phase, ctf, s, point_weights, post, out):
    """out[i, j, q] = −w_q C_i(q) Σ_k π_ijk (Y_i(q) e^{2πi q·Δt_k/D} − C_i(q) S_ij(q)): the
    gradient with respect to the slices S_ij (arrays as in :func:`residual_energies`, post the
    posterior (n, nr, ns))."""
    n, nr, n_pts = s.shape
    for i in nb.prange(n):
        for j in range(nr):
            for q in range(n_pts):
                cs = ctf[i, q] * s[i, j, q]
                acc = 0j
                for k in range(phase.shape[0]):
                    acc += post[i, j, k] * (y[i, q] * phase[k, q] - cs)
                out[i, j, q] = -point_weights[q] * ctf[i, q] * acc
    return out


def rotation_offsets(rotation_deg: float, rotation_steps: int) -> np.ndarray:
    """ΔR_j: the identity, then rotations by ``rotation_deg`` about ``rotation_steps`` axes of a
    Fibonacci lattice on the sphere; (1 + rotation_steps, 3, 3)."""
    n = int(rotation_steps)
    if n == 0:
        return np.eye(3)[None]
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z ** 2)
    axes = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    rv = np.deg2rad(rotation_deg) * axes
    return np.concatenate([np.eye(3)[None], Rotation.from_rotvec(rv).as_matrix()])


def shift_offsets(shift_px: float, shift_steps: int) -> np.ndarray:
    """Δt_k in pixels: 0, then ``shift_steps`` points evenly on the circle of radius shift_px."""
    a = 2 * np.pi * np.arange(int(shift_steps)) / max(int(shift_steps), 1)
    ring = shift_px * np.stack([np.cos(a), np.sin(a)], 1)
    return np.concatenate([np.zeros((1, 2)), ring])


def grid_log_weights(rotation_deg, rotation_steps, shift_A, shift_steps) -> np.ndarray:
    """log w_jk, (1 + rotation_steps, 1 + shift_steps): the Gaussian prior on the offset with
    standard deviations rotation_deg and shift_A, normalised over the grid."""
    lr = np.r_[0.0, np.full(int(rotation_steps), -0.5)]
    ls = np.r_[0.0, np.full(int(shift_steps), -0.5)]
    lw = lr[:, None] + ls[None, :]
    return lw - logsumexp(lw)


def validate_local_search(rotation_deg, rotation_steps, shift_A, shift_steps) -> None:
    """Raise ValueError naming the bad local-search key."""
    for name, v in (("rotation_steps", rotation_steps), ("shift_steps", shift_steps)):
        if int(v) != v or v < 0:
            raise ValueError(f"local_search.{name} = {v!r} must be a non-negative integer")
    for name, v, steps in (("rotation_deg", rotation_deg, rotation_steps),
                           ("shift_A", shift_A, shift_steps)):
        if not np.isfinite(v) or v < 0 or (steps > 0 and v == 0):
            raise ValueError(f"local_search.{name} = {v!r} must be positive (>= 0 with 0 steps)")


class LocalSearchLikelihood(RefinementLikelihood):
    """−log Σ_jk w_jk p(I_i | R_i ΔR_j, t_i + Δt_k, V) (module docstring)."""

    def __init__(self, box, pixel_size, rmax, rotations, shifts, dtype=np.float32, *,
                 rotation_deg=0.0, rotation_steps=0, shift_A=0.0, shift_steps=0):
        super().__init__(box, pixel_size, rmax, rotations, shifts, dtype)
        validate_local_search(rotation_deg, rotation_steps, shift_A, shift_steps)
        self.delta_rotations = rotation_offsets(rotation_deg, rotation_steps)
        self.delta_shifts = shift_offsets(shift_A / self.pixel_size, shift_steps)
        self.log_w = grid_log_weights(rotation_deg, rotation_steps, shift_A, shift_steps)
        self._shift_phase = np.exp(2j * np.pi * (self.delta_shifts @ self.points.T) / self.box)

    def terms_per_image(self) -> int:
        """Likelihood terms per image: one per local grid point."""
        return self.log_w.size

    def slices_per_image(self) -> int:
        """Trilinear slices per image: one per rotation offset."""
        return len(self.delta_rotations)

    def slice_rotations(self, data: PosedSpectra) -> np.ndarray:
        """The rotation of every slice an evaluation reads: R_i ΔR_j, image by image (n·nr, 3, 3)."""
        return np.einsum("nab,jbc->njac", data.rotations, self.delta_rotations).reshape(-1, 3, 3)

    def _evaluate(self, volume, data: PosedSpectra, gradient: bool):
        n, nr, ns = len(data), len(self.delta_rotations), len(self.delta_shifts)
        points = self.slice_points(self.slice_rotations(data))
        ctf = self.ctf_values(data)                                                 # (n, Np)
        s = self.slices(self.transform(volume), points).reshape(n, nr, -1)
        y = np.ascontiguousarray(data.y, np.complex128)
        e = residual_energies(y, self._shift_phase, ctf, s, self.point_weights,
                              np.empty((n, nr, ns))) + self.constant                   # (n,nr,ns)
        logp = self.log_w[None] - e
        nll = -logsumexp(logp.reshape(n, -1), axis=1)
        post = np.exp(logp + nll[:, None, None])                                    # π_ijk
        if not gradient:
            return nll, None, points, ctf, post
        g = weighted_residuals(y, self._shift_phase, ctf, s, self.point_weights, post,
                               np.empty(s.shape, np.complex128))
        grad = self.transform_adjoint(self.slices_adjoint(g.reshape(-1), points))
        return nll, grad, points, ctf, post

    def nll_grad_weights(self, volume, data: PosedSpectra, hard: bool = False,
                         exact_diagonal: bool = False):
        """(−log p per image, ∂/∂V of the sum, W, B): W = Σ_jk π_ijk × the known-pose weights
        at grid point jk (EM's gridded weights, or with ``exact_diagonal`` the Hessian diagonal:
        :meth:`RefinementLikelihood.weights`; the Gauss-Newton part), B = Σ_jk π_ijk
        Pᵀ(w C Y_ik) in the oracle's orthonormal basis, so that F(∇f) = Σ π H_jk F(V) − B as
        for known poses. ``hard`` keeps only each image's most probable grid point."""
        nll, grad, points, ctf, post = self._evaluate(volume, data, True)
        n, nr = post.shape[:2]
        if hard:
            flat = post.reshape(n, -1)
            post = (flat == flat.max(1, keepdims=True)).astype(float).reshape(post.shape)
        pr = post.sum(2)                                                            # (n, nr)
        c_grid = (np.sqrt(pr)[:, :, None] * ctf[:, None, :]).reshape(n * nr, -1)
        w = self.weights(data, points, c_grid, gridded=not exact_diagonal)
        ybar = np.einsum("njk,kq->njq", post, self._shift_phase) * data.y.astype(complex)[:, None]
        back = self.slices_adjoint(((self.point_weights * ctf)[:, None] * ybar).reshape(-1),
                                   points)
        back = sfft.rfftn(self.transform_adjoint(back).astype(np.float64), norm="ortho")
        return nll, grad, w, back
