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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

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

    def stencils(self, rotations: np.ndarray):
        """Trilinear stencils of ξ = R (q, 0)ᵀ read on the rfft half grid: flat node indices
        (n·Np, 8), weights (n·Np, 8) and the points read at −ξ (conjugated), (n·Np,)."""
        d, nx = self.box, self.box // 2 + 1
        rot = np.asarray(rotations, float).reshape(-1, 3, 3)
        xi = (self.points[None, :, 0, None] * rot[:, None, :, 0]
              + self.points[None, :, 1, None] * rot[:, None, :, 1]).reshape(-1, 3)   # (x, y, z)
        flip = xi[:, 0] < 0
        xi[flip] = -xi[flip]
        base = np.floor(xi)
        t = xi - base
        base = base.astype(np.int64)
        index = np.empty((len(xi), 8), np.int64)
        weight = np.empty((len(xi), 8))
        for j, (cz, cy, cx) in enumerate(np.ndindex(2, 2, 2)):
            kx = np.minimum(base[:, 0] + cx, d // 2)          # weight 0 where ξx = D/2 exactly
            ky, kz = (base[:, 1] + cy) % d, (base[:, 2] + cz) % d
            index[:, j] = (kz * d + ky) * nx + kx
            weight[:, j] = ((t[:, 0] if cx else 1 - t[:, 0]) * (t[:, 1] if cy else 1 - t[:, 1])
                            * (t[:, 2] if cz else 1 - t[:, 2]))
        return index, weight.astype(self.dtype), flip

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

    def slices(self, volume_hat: np.ndarray, stencil) -> np.ndarray:
        """S = P V̂ at the stencils' points, complex (n·Np,)."""
        index, weight, flip = stencil
        s = (volume_hat.reshape(-1)[index] * weight).sum(1)
        s[flip] = s[flip].conj()
        return s

    def slices_adjoint(self, g: np.ndarray, stencil) -> np.ndarray:
        """Pᵀ G on the half grid (complex128) for G = ∂f/∂Re S + i ∂f/∂Im S at the points."""
        index, weight, flip = stencil
        g = np.where(flip, np.conj(g), g)
        size = int(np.prod(self.half_shape))
        vals = weight.astype(float) * g[:, None]
        flat = index.reshape(-1)
        out = (np.bincount(flat, vals.real.reshape(-1), size)
               + 1j * np.bincount(flat, vals.imag.reshape(-1), size))
        return out.reshape(self.half_shape)

    def project(self, volume: np.ndarray, rotations: np.ndarray) -> np.ndarray:
        """S_i(q) = V̂(R_i (q, 0)ᵀ) on the half disk, (n, Np) complex (no CTF, no shift)."""
        rot = np.asarray(rotations, float).reshape(-1, 3, 3)
        return self.slices(self.transform(volume), self.stencils(rot)).reshape(len(rot), -1)

    # ---------------------------------------------------------------- values
    def _evaluate(self, volume, data: PosedSpectra, gradient: bool):
        stencil = self.stencils(data.rotations)
        ctf = self.ctf_values(data)                                                # (n, Np)
        s = self.slices(self.transform(volume), stencil).reshape(ctf.shape)
        r = data.y.astype(complex) - ctf * s
        nll = 0.5 * ((r.real ** 2 + r.imag ** 2) @ self.point_weights) + self.constant
        if not gradient:
            return nll, None, stencil, ctf
        g = -(self.point_weights * ctf) * r                                        # ∂/∂S
        grad = self.transform_adjoint(self.slices_adjoint(g.reshape(-1), stencil))
        return nll, grad, stencil, ctf

    def nll(self, volume: np.ndarray, data: PosedSpectra) -> np.ndarray:
        """−log p(I_i | pose_i, V) for each prepared image (float64, shape (n,))."""
        return self._evaluate(volume, data, False)[0]

    def nll_and_grad(self, volume: np.ndarray, data: PosedSpectra):
        """(−log p per image, ∂/∂V of their sum)."""
        nll, grad = self._evaluate(volume, data, True)[:2]
        return nll, grad

    def weights(self, data: PosedSpectra, stencil=None, ctf=None) -> np.ndarray:
        """W: the exact diagonal of the summed data term's Hessian in the oracle's orthonormal
        Fourier basis (module docstring), float64 on the half grid. ``ctf`` (n, Np) replaces
        C/σ (e.g. 1/σ: the diagonal without CTF)."""
        stencil = self.stencils(data.rotations) if stencil is None else stencil
        ctf = self.ctf_values(data) if ctf is None else ctf
        index, weight, flip = stencil
        d, nx = self.box, self.box // 2 + 1
        c2 = ((0.5 * self.point_weights) * ctf ** 2).reshape(-1, 1) * weight.astype(float) ** 2
        kz, rem = np.divmod(index, d * nx)
        ky, kx = np.divmod(rem, nx)
        full = np.zeros(d * d * d)
        for sign in (1, -1):                  # the node and its Hermitian partner, modulo D
            flat = ((sign * kz) % d * d + (sign * ky) % d) * d + (sign * kx) % d
            full += np.bincount(flat.reshape(-1), c2.reshape(-1), d ** 3)
        return d * full.reshape(d, d, d)[..., :nx]

    def nll_grad_weights(self, volume: np.ndarray, data: PosedSpectra, hard: bool = False):
        """(−log p per image, ∂/∂V of the sum, W, B) as in :mod:`cryobench.model.likelihood`:
        W the exact Hessian diagonal of the summed data term (:meth:`weights`), B the
        back-projected data Pᵀ(w C Y) in the same orthonormal basis, so that F(∇f) = H F(V) − B
        (poses are known: ``hard`` changes nothing)."""
        nll, grad, stencil, ctf = self._evaluate(volume, data, True)
        back = self.slices_adjoint(((self.point_weights * ctf) * data.y).reshape(-1), stencil)
        back = sfft.rfftn(self.transform_adjoint(back).astype(np.float64), norm="ortho")
        return nll, grad, self.weights(data, stencil, ctf), back
