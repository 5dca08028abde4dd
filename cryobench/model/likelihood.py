"""The marginal negative log-likelihood of particle images and its gradient (paper eqs. 2–4).

For image i (spectrum Î_i and CTF C_i already divided by the noise σ_i, so σ = 1), the
quadrature points j = (a, s, d) of :mod:`cryobench.model.quadrature` and the half-disk frequencies
q (|q| ≤ r_max, Hermitian weights w_q):

    −log p(I_i | θ_i, V) = ½ Σ_q w_q |Î_i(q)|² + c − log Σ_{a,s,d} w_asd exp(G_iasd)
    G_iasd = Re Σ_q w_q Y_ias(q)* C_ia(q) S_d(q) − ½ Σ_q w_q C_ia(q)² |S_d(q)|²

where S_d = P_{R_d} V̂ is the central slice of direction d, and the image and CTF are
rotated in-plane instead of the slice: with k = R_z(−ψ_a) q, C_ia(q) = C_i(k) and
Y_ias(q) = Î_i(k) e^{+2πi k·t_s/D} (Î_i interpolated bicubically from its spectrum oversampled
×2). c = (N_q − 1) log π + ½ log 2π is the Gaussian normaliser of the retained coefficients.

Written this way the two G terms are matrix products of (image·angle·shift) rows with
(direction) columns, and so is the gradient (Pᵀ A and (Σ_s P)ᵀ Q), all in the working dtype
(float32 by default) with a max-shifted log-sum-exp. Everything between the four products —
the rows A and Q (image gather, CTF, shift phases) and the log-sum-exp — is one compiled pass
each (:mod:`cryobench.model.kernels`), writing into work arrays that are reused across calls.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from cryobench.base.blocks import image_blocks
from cryobench.model.ctf import CTFParams
from cryobench.model.fourier import complex_dtype, dft_matrix, half_disk
from cryobench.model.interpolate import cubic_taps
from cryobench.model.kernels import build_rows, ctf_terms, posterior, scale_rows
from cryobench.model.quadrature import Quadrature
from cryobench.model.slicing import SliceOperator
from cryobench.model.weights import FourierGridding


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
        m = int(np.floor(oversampling * rmax)) + 2           # the bicubic taps reach |index| ≤ m
        self.patch_freqs = np.arange(-m, m + 1) / oversampling
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
        # bicubic taps of the rotated points in the patches, and the CTF geometry per (angle, point)
        self._tap_index, self._tap_weight = cubic_taps(self._patch_coords, self.dtype)  # 2, 8
        self._s2 = (self.points**2).sum(1) / (self.box * self.pixel_size) ** 2   # |s|², Å⁻²
        azimuth = 2 * np.arctan2(self.rotated_points[..., 1], self.rotated_points[..., 0])
        self._cos2, self._sin2 = np.cos(azimuth), np.sin(azimuth)               # (Na, Np)
        self._local = threading.local()                                          # work arrays

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _work(self, name: str, shape) -> np.ndarray:
        """A work array of this thread, reused while its shape stays the same (no page faults)."""
        arrays = self._local.__dict__.setdefault("arrays", {})
        shape = tuple(int(k) for k in shape)
        if name not in arrays or arrays[name].shape != shape:
            arrays[name] = np.empty(shape, self.dtype)
        return arrays[name]

    # ------------------------------------------------------------------ data
    def prepare(self, images: np.ndarray, ctf: CTFParams, sigma) -> ImageSpectra:
        """Spectra of real images (n, D, D) divided by their noise σ (scalar or per image).

        ``images`` may be a memory-mapped stack: it is read in blocks (see
        :func:`cryobench.base.blocks.image_blocks`). Each block is two real and one complex GEMM.
        """
        n, d = images.shape[0], self.box
        if images.shape[1:] != (d, d):
            raise ValueError(f"images are {images.shape[1:]}, the likelihood expects {(d, d)}")
        sigma = np.broadcast_to(np.asarray(sigma, float), (n,))
        f = dft_matrix(self.patch_freqs, d, complex_dtype(self.dtype))        # (P, D)
        m = len(f)
        fr_t, fi_t = np.ascontiguousarray(f.real.T), np.ascontiguousarray(f.imag.T)
        patches = np.empty((n, m, m), f.dtype)
        for lo, block in image_blocks(images, 256):
            k = len(block)
            block = (np.asarray(block, self.dtype)
                     / sigma[lo:lo + k, None, None].astype(self.dtype)).reshape(k * d, d)
            t = np.empty((d, k, m), f.dtype)                                 # [y, image, kx]
            t.real = (block @ fr_t).reshape(k, d, m).transpose(1, 0, 2)
            t.imag = (block @ fi_t).reshape(k, d, m).transpose(1, 0, 2)
            out = (f @ t.reshape(d, k * m)).reshape(m, k, m)                 # [ky, image, kx]
            patches[lo:lo + k] = out.transpose(1, 0, 2) / d
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
        """A = w C (Re Y, Im Y) interleaved per (image, angle, shift) — a complex row viewed as
        reals, shape (B·Na·Ns, 2Np) — and Q = w C² per (image, angle), shape (B·Na, Np).

        With one shift, A and Q have the same rows and are the two column blocks of one array
        [A | Q] (B·Na, 3Np), returned third (else None): the kernel then does one GEMM for both
        terms of G and one for both gradient products.
        """
        b, np_ = len(data), len(self.points)
        na, ns, _ = self._log_w.shape
        if ns == 1:
            aq = self._work("aq", (b, na, 3 * np_))
            a, q = aq[:, :, None, :2 * np_], aq[:, :, 2 * np_:]
        else:
            aq, a, q = None, self._work("a", (b, na, ns, 2 * np_)), self._work("q", (b, na, np_))
        patches = data.patches.transpose(1, 2, 0)                                 # image last
        re = np.ascontiguousarray(patches.real, self.dtype)
        im = np.ascontiguousarray(patches.imag, self.dtype)
        build_rows(re, im, self._tap_index, self._tap_weight, self._cos2, self._sin2,
                   *ctf_terms(data.ctf, data.inv_sigma, self._s2), self.point_weights,
                   self._shift_phase, a, q)
        return (a.reshape(-1, 2 * np_), q.reshape(b * na, np_),
                None if aq is None else aq.reshape(b * na, 3 * np_))

    def nll(self, volume: np.ndarray, data: ImageSpectra) -> np.ndarray:
        """−log p(I_i | θ_i, V) for each prepared image (float64, shape (n,))."""
        return self._evaluate(volume, data, gradient=False)[0]

    def nll_and_grad(self, volume: np.ndarray, data: ImageSpectra):
        """(−log p(I_i | θ_i, V) per image, ∂/∂V of their sum) for the prepared images."""
        return self._evaluate(volume, data, gradient=True)

    def nll_grad_weights(self, volume: np.ndarray, data: ImageSpectra, hard: bool = False,
                         exact_diagonal: bool = False):
        """(−log p per image, ∂/∂V of the sum, W, B): :meth:`nll_and_grad` plus EM's statistics.

        W (float64) and B (complex128) on the rfft half grid (D, D, D//2 + 1) are the weights
        (Gauss–Newton Hessian diagonal of the summed data term) and the back-projected data in
        the orthonormal Fourier basis of :mod:`cryobench.model.weights`, gridded from the
        kernel's own pq = (Σ_s P)ᵀ Q and pa = Pᵀ A (no extra matrix product). With ``hard`` the
        posterior is replaced by its most probable pose (one-hot at the first argmax over
        (a, s, d) of G + log w, in the working dtype) for the gradient, W and B; the returned
        values stay the marginal −log p (the benchmark's objective). The soft outputs are
        bit-identical to :meth:`nll_and_grad`'s. W is the only diagonal this likelihood has
        (its exact Hessian diagonal would need the posterior's covariance): ``exact_diagonal``
        changes nothing.
        """
        nll, grad, pq, pa = self._evaluate(volume, data, gradient=True, extras=True, hard=hard)
        gridding = self.__dict__.get("_gridding")
        if gridding is None:
            gridding = self._gridding = FourierGridding(self.box, self.points,
                                                        self.quadrature.rotations)
        return nll, grad, gridding.weights(pq), gridding.backprojection(pa)

    def _hard_products(self, g, qs, a, q, shape):
        """pa, pq of the one-hot posterior at argmax_(a,s,d) (G + log w) of each image, from the
        cross terms g (before the posterior overwrites them) and the rows a, q."""
        b, na, ns, nd = shape
        joint = g.reshape(b, na, ns, nd) + self._log_w[None]
        if qs.size:
            joint += qs[:, :, None, :]
        ia, is_, id_ = np.unravel_index(joint.reshape(b, -1).argmax(axis=1), (na, ns, nd))
        pa = np.zeros((nd, a.shape[1]))
        pq = np.zeros((nd, q.shape[1]))
        img = np.arange(b)
        np.add.at(pa, id_, a[(img * na + ia) * ns + is_])
        np.add.at(pq, id_, q[img * na + ia])
        return pa.astype(self.dtype), pq.astype(self.dtype)

    def nll_grad_marginals(self, volume: np.ndarray, data: ImageSpectra, hard: bool = False,
                           slices: np.ndarray | None = None, adjoint: bool = True):
        """(−log p per image, ∂/∂V of the sum, pq, pa, (posterior marginals over angles (B, Na),
        shifts (B, Ns) and directions (B, Nd))): :meth:`nll_grad_weights`'s kernel products
        before gridding, and the marginals of the soft posterior the importance sampler keeps
        (:mod:`cryobench.model.importance`). ``slices``: P V if already computed; without
        ``adjoint`` the gradient is None (the caller applies the slice adjoint to pq, pa).
        The other outputs are bit-identical to :meth:`nll_and_grad`'s."""
        return self._evaluate(volume, data, gradient=True, extras=True, hard=hard, marginals=True,
                              slices=slices, adjoint=adjoint)

    def _evaluate(self, volume, data: ImageSpectra, gradient: bool, extras: bool = False,
                  hard: bool = False, marginals: bool = False, slices=None, adjoint: bool = True):
        b, np_ = len(data), len(self.points)
        na, ns, nd = self._log_w.shape
        if slices is None:
            slices = self.slicer.forward(volume)                                  # (Nd, Np)
        s_mat = slices.view(self.dtype)                                           # (Nd, 2Np)
        s_pow = -0.5 * (slices.real**2 + slices.imag**2)                          # (Nd, Np)
        a, q, aq = self._rows(data)
        g = self._work("g", (b * na * ns, nd))
        if aq is not None:                               # one shift: G = [A | Q] [S | −½|S|²]ᵀ
            s_all = self._work("s", (nd, 3 * np_))
            s_all[:, :2 * np_], s_all[:, 2 * np_:] = s_mat, s_pow
            np.matmul(aq, s_all.T, out=g)
            qs = g[:0].reshape(0, 0, 0)                                           # (included)
        else:
            np.matmul(a, s_mat.T, out=g)                                          # A Sᵀ
            qs = np.matmul(q, s_pow.T, out=self._work("qs", (b * na, nd)))       # −½ Q |S|²ᵀ
            qs = qs.reshape(b, na, nd)
        if hard:
            hard_pa, hard_pq = self._hard_products(g, qs, a, q, (b, na, ns, nd))
        many = gradient and ns > 1
        p_as = self._work("p_as", (b, na, nd) if many else (1, 1, 1))
        row_factor = np.empty((b, na, ns) if gradient else (1, 1, 1))
        ang_factor = np.empty((b, na) if gradient else (1, 1))
        gmax, log_total = np.empty(b), np.empty(b)
        posterior(g.reshape(b, na, ns, nd), qs, self._log_w, self.dtype == np.float32, gradient,
                  p_as, row_factor, ang_factor, gmax, log_total)
        nll = data.half_norms + self.constant - (log_total + gmax)
        if not gradient:
            return nll, None
        margins = _marginals(g, row_factor, (b, na, ns, nd)) if marginals else None
        # responsibilities P = row_factor · E and Σ_s P = ang_factor · p_as: scale A and Q instead
        if hard:
            pa, pq = hard_pa, hard_pq
        elif aq is not None:
            scale_rows(aq, row_factor.reshape(-1).astype(self.dtype))
            r = g.T @ aq                                                          # Pᵀ [A | Q]
            pa, pq = r[:, :2 * np_], r[:, 2 * np_:]
        else:
            scale_rows(a, row_factor.reshape(-1).astype(self.dtype))
            scale_rows(q, ang_factor.reshape(-1).astype(self.dtype))
            pa = g.T @ a                                                          # Pᵀ A
            pq = p_as.reshape(b * na, nd).T @ q                                   # (Σ_s P)ᵀ Q
        grad = self.slicer.adjoint(pq * slices - pa.view(slices.dtype)) if adjoint else None
        out = (nll, grad, pq, pa.view(slices.dtype)) if extras else (nll, grad)
        return out + (margins,) if marginals else out

    def gemm_shapes(self, batch: int) -> list[tuple[str, int, int, int]]:
        """The matrix products of a value+gradient evaluation of ``batch`` images, as
        (layout, m, k, n): "AB^T" is X (m, k) @ Y (n, k)ᵀ, "A^TB" is X (k, m)ᵀ @ Y (k, n).

        Their flops sum to :meth:`flops_per_image` · batch. With one shift the two terms of G
        share their rows, so they are one product (and so are the two gradient products).
        """
        na, ns, nd = self._log_w.shape
        np_ = len(self.points)
        rows = batch * na * ns
        if ns == 1:
            return [("AB^T", rows, 3 * np_, nd), ("A^TB", nd, rows, 3 * np_)]
        return [("AB^T", rows, 2 * np_, nd), ("AB^T", batch * na, np_, nd),
                ("A^TB", nd, rows, 2 * np_), ("A^TB", nd, batch * na, np_)]

    def terms_per_image(self) -> int:
        """Likelihood terms G_iasd an exact evaluation computes per image (the quadrature's size)."""
        return int(self.quadrature.size)

    def flops_per_image(self) -> int:
        """Flops of the matrix products per image for value and gradient."""
        na, ns, nd = self._log_w.shape
        np_ = len(self.points)
        return 2 * (2 * na * ns * 2 * np_ * nd) + 2 * (2 * na * np_ * nd)


def _marginals(e, row_factor, shape):
    """Marginals over angles, shifts and directions of the responsibilities P = row_factor · E
    (E the kernel's exp(G − m_ias) rows, still in the cross-term array after the posterior pass)."""
    b, na, ns, nd = shape
    e = e.reshape(b, na * ns, nd)
    rf = row_factor.reshape(b, na * ns)
    direction = np.matmul(rf[:, None, :].astype(e.dtype), e)[:, 0].astype(float)
    mass = e.sum(axis=2, dtype=float).reshape(b, na, ns) * row_factor
    return mass.sum(axis=2), mass.sum(axis=1), direction
