"""The known-pose likelihood of high-resolution refinement (Toader, Brubaker & Lederman,
"Efficient high-resolution refinement in cryo-EM with stochastic gradient descent", 2025).

Each image i has its own known pose: a rotation R_i (image coordinates → map coordinates, as
in :mod:`cryobench.data.simulate`) and an in-plane shift t_i (pixels, the particle displaced
by +t_i). With the image spectrum Î_i and CTF C_i divided by the noise σ_i:

    −log p(I_i | pose_i, V) = ½ Σ_q w_q |Î_i(q) − C_i(q) e^{−2πi q·t_i/D} S_i(q)|² + c
                            = ½ Σ_q w_q |Y_i(q) − C_i(q) S_i(q)|² + c,   Y_i = Î_i e^{+2πi q·t_i/D}

over the half disk |q| ≤ r_max (Hermitian weights w_q, :func:`half_disk`; r_max up to Nyquist
D/2, the image's Nyquist row and column |q_x| = D/2 or |q_y| = D/2 left out), with c = (N_q − 1) log π + ½ log 2π the Gaussian normaliser (as in
:mod:`cryobench.model.likelihood`). The slice S_i(q) = V̂(ξ), ξ = R_i (q, 0)ᵀ, is **trilinear**
interpolation of V̂ on the volume's own integer DFT grid, V̂ = D⁻¹ rfftn(ifftshift(V)) (the model's
centred convention, :mod:`cryobench.model.fourier`) — the forward model of the paper's code
(``simplecryoem.forwardmodel.interpolation``, trilinear; nearest for their exact diagonal).
Trilinear rather than the project's tricubic slicer from a ×2 oversampled cube because (1) the
cost is one FFT of the box per minibatch, not DFT-matrix products over a cube to Nyquist, and
(2) the Hessian diagonal in the Fourier basis is then exact and cheap (below).

**Hessian diagonal (the weights).** The data term is a quadratic, H = Σ_i P_iᵀ diag(w C_i²) P_i.
In the oracle's basis, the unitary DFT X = rfftn(V, norm="ortho") (:meth:`cryobench.oracle.Oracle.to_fourier`),
V̂(k) = √D e^{iφ_k} X(k) and the diagonal of F H Fᴴ is, exactly,

    W(k) = D Σ_i Σ_{q ∈ half disk} (w_q / 2) C_i(q)² [t(ξ_iq − k)² + t(−ξ_iq − k)²]

with t the trilinear weight of grid node k (indices modulo D): the squared interpolation
weights scattered at ±ξ. With nearest-neighbour interpolation H itself would be diagonal; with
trilinear it is not (each slice point couples its 8 nodes), so W is its exact diagonal, not H.
``from_fourier(to_fourier(g) / W)`` divides each Fourier coefficient by its curvature.

**EM's weights.** EM's M-step divides the back-projected data B by weights. Here they are the
gridded weights of RELION's back-projector (Scheres 2012), the same sum with t for t²:

    W_g(k) = D Σ_i Σ_q (w_q / 2) C_i(q)² [t(ξ_iq − k) + t(−ξ_iq − k)],

which is H applied to a flat V̂ (trilinear weights sum to 1), so W_g ⊙ F(V) ≈ F(H V) for a map
whose V̂ varies little over one grid step (a compact particle in its box), and B / W_g is the
data's minimiser in that approximation. The exact diagonal is smaller, by up to 8× where a
slice point falls mid-cell (Σ t² against (Σ t)² = 1): B divided by it overshoots. Measured at
`small` scale with the exact diagonal as EM's weights: every EM step from the low-passed start
raised the training objective unless damped with ε = 1, the top of its range
(``optimizers/em.py``), and the damped fixed point stayed at FSC 0.56 against the optimum in
the outer shells. The exact diagonal is
what ``value_grad_weights(…, exact_diagonal=True)`` returns (their preconditioner,
``optimizers/exact_diag_sgd.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft as sfft

from cryobench.model import trilinear
from cryobench.model.ctf import CTFParams, evaluate_ctf
from cryobench.model.fourier import centered_dft2, complex_dtype, half_disk


@dataclass(frozen=True)
class PosedSpectra:
    """Prepared images: Y = Î e^{+2πi q·t/D} / σ on the half disk, poses, CTFs and 1/σ."""

    y: np.ndarray            # (n, Np) complex
    rotations: np.ndarray    # (n, 3, 3) float64
    ctf: CTFParams
    inv_sigma: np.ndarray    # (n,)
    half_norms: np.ndarray   # (n,) ½ Σ_q w_q |Y(q)|²

    def __len__(self) -> int:
        return len(self.half_norms)


class SlicePoints(NamedTuple):
    """Slice points folded into ξx ≥ 0 (float64 (m, 3), x y z) and the flags of those negated."""

    xi: np.ndarray
    flip: np.ndarray


class RefinementLikelihood:
    """−log p(I_i | R_i, t_i, V) for images with known poses (see the module docstring)."""

    def __init__(self, box: int, pixel_size: float, rmax: float, rotations: np.ndarray,
                 shifts: np.ndarray, dtype=np.float32):
        self.box, self.pixel_size, self.rmax = int(box), float(pixel_size), float(rmax)
        if not 0 < self.rmax <= self.box / 2:
            raise ValueError(f"r_max = {rmax} px must lie in (0, {self.box / 2}] for box {box}")
        self.dtype, self.cdtype = np.dtype(dtype), complex_dtype(dtype)
        self.rotations = np.asarray(rotations, float).reshape(-1, 3, 3)
        self.shifts = np.asarray(shifts, float).reshape(-1, 2)
        if len(self.rotations) != len(self.shifts):
            raise ValueError("one rotation and one shift per image are needed")
        points, weights = half_disk(self.rmax)
        keep = np.abs(points).max(1) < self.box / 2       # not the image's Nyquist row/column
        self.points, self.point_weights = points[keep], weights[keep]
        self.constant = (len(self.points) - 1) * np.log(np.pi) + 0.5 * np.log(2 * np.pi)
        self._freq = self.points / (self.box * self.pixel_size)                   # 1/Å
        d = self.box
        self.half_shape = (d, d, d // 2 + 1)
        self._index = ((self.points[:, 1] % d).astype(int), (self.points[:, 0] % d).astype(int))
        self._points = np.ascontiguousarray(self.points, np.float64)
        self._scratch: dict = {}     # zeroed partial grids of the scatters, reused (see _parts)

    # ------------------------------------------------------------------ data
    def terms_per_image(self) -> int:
        """Likelihood terms an evaluation computes per image: one, its known pose."""
        return 1

    def prepare(self, images: np.ndarray, ctf: CTFParams, sigma) -> PosedSpectra:
        """Spectra of real images (n, D, D) (the images of the poses given at construction, in
        order) on the half disk, shift-corrected and divided by σ."""
        n, d = len(images), self.box
        if images.shape[1:] != (d, d) or n != len(self.rotations):
            raise ValueError(f"images {images.shape} do not match the {len(self.rotations)} poses "
                             f"of box {d}")
        sigma = np.broadcast_to(np.asarray(sigma, float), (n,))
        phase = np.exp(2j * np.pi * (self.shifts @ self.points.T) / d)           # (n, Np)
        iy, ix = (self.points[:, ::-1].astype(int) + d // 2).T
        y = np.empty((n, len(self.points)), self.cdtype)
        for lo in range(0, n, 512):
            block = np.asarray(images[lo:lo + 512], np.float64)
            spec = centered_dft2(block)[:, iy, ix]
            y[lo:lo + 512] = spec * phase[lo:lo + 512] / sigma[lo:lo + 512, None]
        half_norms = 0.5 * (np.abs(y.astype(complex)) ** 2 @ self.point_weights)
        return PosedSpectra(y, self.rotations.copy(), ctf, 1.0 / sigma, half_norms)

    def subset(self, data: PosedSpectra, index) -> PosedSpectra:
        """The prepared images selected by ``index``."""
        return PosedSpectra(data.y[index], data.rotations[index], data.ctf.subset(index),
                            data.inv_sigma[index], data.half_norms[index])

    # ------------------------------------------------------------ operators
    def ctf_values(self, data: PosedSpectra) -> np.ndarray:
        """C_i(q) / σ_i, shape (n, Np), float64."""
        c = evaluate_ctf(data.ctf, self._freq[:, 0], self._freq[:, 1])
        return np.asarray(c, float) * data.inv_sigma[:, None]

    def slice_rotations(self, data: PosedSpectra) -> np.ndarray:
        """The rotation of every slice an evaluation reads: each image's known pose (n, 3, 3)."""
        return data.rotations

    def slice_points(self, rotations: np.ndarray) -> SlicePoints:
        """The points ξ = R (q, 0)ᵀ of every rotation's half disk, folded into ξx ≥ 0
        (:func:`cryobench.model.trilinear.slice_points`), (n·Np, 3)."""
        rot = np.ascontiguousarray(np.asarray(rotations, float).reshape(-1, 3, 3))
        m = len(rot) * len(self.points)
        xi, flip = np.empty((m, 3)), np.empty(m, np.bool_)
        return SlicePoints(*trilinear.slice_points(self._points, rot, xi, flip))

    def transform(self, volume: np.ndarray) -> np.ndarray:
        """V̂ = D⁻¹ rfftn(ifftshift(V)) on the half grid (D, D, D//2 + 1)."""
        v = np.asarray(volume, self.dtype)
        return (sfft.rfftn(sfft.ifftshift(v)) / self.box).astype(self.cdtype, copy=False)

    def transform_adjoint(self, g: np.ndarray) -> np.ndarray:
        """∂f/∂V from G = ∂f/∂Re V̂ + i ∂f/∂Im V̂ on the half grid: Re Σ_k G_k e^{+2πik·(x−c)/D} / D.

        irfftn treats a half-grid array as the Hermitian half of a full one, so the interior
        planes 0 < kx < D/2 are halved first (each stands for itself and its partner)."""
        d = self.box
        h = np.array(g, complex)
        h[..., 1:(d + 1) // 2] *= 0.5
        out = sfft.irfftn(h, s=(d, d, d)) * (d ** 3 / d)
        return sfft.fftshift(out).astype(self.dtype)

    def slices(self, volume_hat: np.ndarray, points: SlicePoints) -> np.ndarray:
        """S = P V̂ at the points, complex128 (n·Np,)."""
        out = np.empty(len(points.xi), np.complex128)
        return trilinear.gather(np.ascontiguousarray(volume_hat), points.xi, points.flip, out)

    def slices_adjoint(self, g: np.ndarray, points: SlicePoints) -> np.ndarray:
        """Pᵀ G on the half grid (complex128) for G = ∂f/∂Re S + i ∂f/∂Im S at the points."""
        parts = self._parts(self.half_shape, np.complex128)
        g = np.ascontiguousarray(g, np.complex128)
        return trilinear.sum_parts(trilinear.scatter(g, points.xi, points.flip, parts)).copy()

    def _parts(self, shape, dtype) -> np.ndarray:
        """``trilinear.PARTS`` zeroed grids of ``shape`` for a scatter: the same memory every
        call (a fresh allocation's first touch costs more than the scatter at 128 px)."""
        parts = self._scratch.get((shape, dtype))
        if parts is None:
            parts = self._scratch[(shape, dtype)] = np.zeros((trilinear.PARTS,) + shape, dtype)
        else:
            parts.fill(0)
        return parts

    def project(self, volume: np.ndarray, rotations: np.ndarray) -> np.ndarray:
        """S_i(q) = V̂(R_i (q, 0)ᵀ) on the half disk, (n, Np) complex (no CTF, no shift)."""
        rot = np.asarray(rotations, float).reshape(-1, 3, 3)
        return self.slices(self.transform(volume), self.slice_points(rot)).reshape(len(rot), -1)

    # ---------------------------------------------------------------- values
    def _evaluate(self, volume, data: PosedSpectra, gradient: bool):
        points = self.slice_points(self.slice_rotations(data))
        ctf = self.ctf_values(data)                                                # (n, Np)
        s = self.slices(self.transform(volume), points).reshape(ctf.shape)
        r = data.y.astype(complex) - ctf * s
        nll = 0.5 * ((r.real ** 2 + r.imag ** 2) @ self.point_weights) + self.constant
        if not gradient:
            return nll, None, points, ctf
        g = -(self.point_weights * ctf) * r                                        # ∂/∂S
        grad = self.transform_adjoint(self.slices_adjoint(g.reshape(-1), points))
        return nll, grad, points, ctf

    def nll(self, volume: np.ndarray, data: PosedSpectra) -> np.ndarray:
        """−log p(I_i | pose_i, V) for each prepared image (float64, shape (n,))."""
        return self._evaluate(volume, data, False)[0]

    def nll_and_grad(self, volume: np.ndarray, data: PosedSpectra):
        """(−log p per image, ∂/∂V of their sum)."""
        nll, grad = self._evaluate(volume, data, True)[:2]
        return nll, grad

    def weights(self, data: PosedSpectra, points: SlicePoints | None = None,
                ctf=None, gridded: bool = False) -> np.ndarray:
        """W: the exact diagonal of the summed data term's Hessian in the oracle's orthonormal
        Fourier basis (module docstring), float64 on the half grid; with ``gridded`` EM's
        gridded weights W_g instead (the Hessian's row sums, module docstring). ``ctf``
        (n, Np) replaces C/σ (e.g. 1/σ: the diagonal without CTF)."""
        points = self.slice_points(data.rotations) if points is None else points
        ctf = self.ctf_values(data) if ctf is None else ctf
        d = self.box
        c2 = np.ascontiguousarray(((0.5 * self.point_weights) * ctf ** 2).reshape(-1), float)
        parts = self._parts((d, d, d), np.float64)
        full = trilinear.sum_parts(trilinear.scatter_weights(c2, points.xi, parts, not gridded))
        return d * full[..., :d // 2 + 1]

    def nll_grad_weights(self, volume: np.ndarray, data: PosedSpectra, hard: bool = False,
                         exact_diagonal: bool = False):
        """(−log p per image, ∂/∂V of the sum, W, B) as in :mod:`cryobench.model.likelihood`:
        W EM's gridded weights W_g (:meth:`weights` with ``gridded``), or with
        ``exact_diagonal`` the exact Hessian diagonal of the summed data term; B the
        back-projected data Pᵀ(w C Y) in the same orthonormal basis, so that
        F(∇f) = H F(V) − B (poses are known: ``hard`` changes nothing)."""
        nll, grad, points, ctf = self._evaluate(volume, data, True)
        back = self.slices_adjoint(((self.point_weights * ctf) * data.y).reshape(-1), points)
        back = sfft.rfftn(self.transform_adjoint(back).astype(np.float64), norm="ortho")
        return nll, grad, self.weights(data, points, ctf, gridded=not exact_diagonal), back
