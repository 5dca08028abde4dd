"""The marginal negative log-likelihood of particle images and its gradient (paper eqs. 2–4).

For image i (spectrum Î_i and CTF C_i already divided by the noise σ_i, so σ = 1), the
quadrature points j = (a, s, d) of :mod:`cryobench.quadrature` and the half-disk frequencies
q (|q| ≤ r_max, Hermitian weights w_q):

    −log p(I_i | θ_i, V) = ½ Σ_q w_q |Î_i(q)|² + c − log Σ_{a,s,d} w_asd exp(G_iasd)
    G_iasd = Re Σ_q w_q Y_ias(q)* C_ia(q) S_d(q) − ½ Σ_q w_q C_ia(q)² |S_d(q)|²

where S_d = P_{R_d} V̂ is the central slice of direction d, and the image and CTF are
rotated in-plane instead of the slice: with k = R_z(−ψ_a) q, C_ia(q) = C_i(k) and
Y_ias(q) = Î_i(k) e^{+2πi k·t_s/D} (Î_i interpolated bicubically from its spectrum oversampled
×2). c = (N_q − 1) log π + ½ log 2π is the Gaussian normaliser of the retained coefficients.

Written this way the two G terms are matrix products of (image·angle·shift) rows with
(direction) columns, and so is the gradient (Aᵀ P and Qᵀ Σ_s P), all in the working dtype
(float32 by default) with a max-shifted log-sum-exp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ctf import CTFParams, evaluate_ctf
from .fourier import complex_dtype, cube_frequencies, dft_matrix, half_disk
from .interpolate import gather_images
from .quadrature import Quadrature
from .slicing import SliceOperator


@dataclass(frozen=True)
class ImageSpectra:
    """Images prepared for the likelihood: oversampled low-frequency spectra and CTF rows."""

    patches: np.ndarray      # (n, P, P) complex: Î/σ on the grid freqs², index [ky, kx]
    half_norms: np.ndarray   # (n,) float64: ½ Σ_q w_q |Î(q)|² on the integer half disk
    ctf: CTFParams
    inv_sigma: np.ndarray    # (n,) 1/σ_i, applied to the CTF

    def __len__(self) -> int:
        return len(self.half_norms)


class Likelihood:
    """−log p(I | θ, V) for a fixed box, pixel size, r_max and quadrature."""

    def __init__(self, box: int, pixel_size: float, rmax: float, quadrature: Quadrature,
                 oversampling: int = 2, dtype=np.float32):
        self.box, self.pixel_size, self.rmax = int(box), float(pixel_size), float(rmax)
        self.quadrature, self.oversampling, self.dtype = quadrature, oversampling, np.dtype(dtype)
        self.points, weights = half_disk(rmax)
        self.point_weights = weights.astype(self.dtype)
        self.slicer = SliceOperator(box, self.points, quadrature.rotations, oversampling, dtype)
        self.patch_freqs = cube_frequencies(rmax, oversampling)
        centre = (len(self.patch_freqs) - 1) // 2
        psi = quadrature.inplane_angles
        c, s = np.cos(psi)[:, None], np.sin(psi)[:, None]
        qx, qy = self.points[None, :, 0], self.points[None, :, 1]
        self.rotated_points = np.stack([qx * c + qy * s, -qx * s + qy * c], axis=-1)  # (Na,Np,2)
        self._patch_coords = np.ascontiguousarray(
            self.rotated_points[..., ::-1] * oversampling + centre)               # (y, x) index
        phase = 2 * np.pi * np.einsum("apk,sk->asp", self.rotated_points, quadrature.shifts)
        self._shift_phase = np.exp(1j * phase / box).astype(complex_dtype(dtype))  # (Na,Ns,Np)
        self._log_w = quadrature.log_weights().astype(dtype)                      # (Na,Ns,Nd)
        self.constant = (len(self.points) - 1) * np.log(np.pi) + 0.5 * np.log(2 * np.pi)
        self._integer_index = (self.points[:, ::-1] * oversampling + centre).astype(int)

    # ------------------------------------------------------------------ data
    def prepare(self, images: np.ndarray, ctf: CTFParams, sigma) -> ImageSpectra:
        """Spectra of real images (n, D, D) divided by their noise σ (scalar or per image)."""
        n, d = images.shape[0], self.box
        if images.shape[1:] != (d, d):
            raise ValueError(f"images are {images.shape[1:]}, the likelihood expects {(d, d)}")
        sigma = np.broadcast_to(np.asarray(sigma, float), (n,))
        f = dft_matrix(self.patch_freqs, d, complex_dtype(self.dtype))
        patches = np.empty((n, len(f), len(f)), f.dtype)
        for lo in range(0, n, 256):
            block = (np.asarray(images[lo:lo + 256], self.dtype)
                     / sigma[lo:lo + 256, None, None].astype(self.dtype))
            patches[lo:lo + 256] = (f @ block) @ f.T / d
        iy, ix = self._integer_index[:, 0], self._integer_index[:, 1]
        on_grid = patches[:, iy, ix]
        half_norms = 0.5 * (np.abs(on_grid.astype(complex)) ** 2 @ self.point_weights.astype(float))
        return ImageSpectra(patches, half_norms, ctf, 1.0 / sigma)

    def subset(self, data: ImageSpectra, index) -> ImageSpectra:
        """The prepared images selected by ``index``."""
        return ImageSpectra(data.patches[index], data.half_norms[index], data.ctf.subset(index),
                            data.inv_sigma[index])

    # ---------------------------------------------------------------- kernel
    def _rows(self, data: ImageSpectra):
        """A = w C [Re Y, Im Y] per (image, angle, shift) and Q = w C² per (image, angle)."""
        b, na, np_ = len(data), len(self.quadrature.inplane_angles), len(self.points)
        y = gather_images(data.patches, self._patch_coords,
                          np.empty((b, na, np_), data.patches.dtype))
        freq = self.rotated_points / (self.box * self.pixel_size)
        ctf = evaluate_ctf(data.ctf, freq[..., 0], freq[..., 1]) * data.inv_sigma[:, None, None]
        wc = (ctf * self.point_weights).astype(self.dtype)                       # (B,Na,Np)
        ys = y[:, :, None, :] * self._shift_phase[None]                          # (B,Na,Ns,Np)
        a = np.concatenate([ys.real, ys.imag], axis=-1) * np.concatenate([wc, wc], -1)[:, :, None]
        q = (wc * ctf.astype(self.dtype)).reshape(b * na, np_)
        return a.reshape(-1, 2 * np_), q

    def nll(self, volume: np.ndarray, data: ImageSpectra) -> np.ndarray:
        """−log p(I_i | θ_i, V) for each prepared image (float64, shape (n,))."""
        return self._evaluate(volume, data, gradient=False)[0]

    def nll_and_grad(self, volume: np.ndarray, data: ImageSpectra):
        """(−log p(I_i | θ_i, V) per image, ∂/∂V of their sum) for the prepared images."""
        return self._evaluate(volume, data, gradient=True)

    def _evaluate(self, volume, data: ImageSpectra, gradient: bool):
        b = len(data)
        na, ns, nd = self._log_w.shape
        slices = self.slicer.forward(volume)                                      # (Nd, Np)
        s_mat = np.concatenate([slices.real, slices.imag], axis=1).T              # (2Np, Nd)
        s_pow = (slices.real**2 + slices.imag**2).T                               # (Np, Nd)
        a, q = self._rows(data)
        g = (a @ s_mat).reshape(b, na, ns, nd)
        g -= 0.5 * (q @ s_pow).reshape(b, na, 1, nd)
        g += self._log_w
        gmax = g.reshape(b, -1).max(axis=1)
        g -= gmax[:, None, None, None]
        np.exp(g, out=g)                                                          # unnormalised P
        total = g.reshape(b, -1).sum(axis=1, dtype=np.float64)
        nll = data.half_norms + self.constant - (np.log(total) + gmax)
        if not gradient:
            return nll, None
        g /= total.astype(self.dtype)[:, None, None, None]                       # responsibilities
        grad_s = -(a.T @ g.reshape(-1, nd))                                       # (2Np, Nd)
        p_as = g.sum(axis=2).reshape(b * na, nd)
        grad_s += np.tile(q.T @ p_as, (2, 1)) * s_mat
        np_ = len(self.points)
        g_complex = (grad_s[:np_] + 1j * grad_s[np_:]).T                          # (Nd, Np)
        return nll, self.slicer.adjoint(g_complex)

    def flops_per_image(self) -> int:
        """Flops of the matrix products per image for value and gradient."""
        na, ns, nd = self._log_w.shape
        np_ = len(self.points)
        return 2 * (2 * na * ns * 2 * np_ * nd) + 2 * (2 * na * np_ * nd)
