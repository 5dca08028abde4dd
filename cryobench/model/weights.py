"""EM's "weights": the Gauss–Newton Hessian diagonal of the data term in a Fourier basis.

The gradient of the data term is ∂f/∂V = Pᵀ (pq ⊙ S − pa) (:mod:`cryobench.model.likelihood`),
where pq (Nd, Np) = Σ_{i,a,s} r_iasd w_q C_ia(q)² is the CTF²-weighted back-projection of the
pose posterior at the slice points (direction d, half-disk point q). For a fixed posterior the
data term is quadratic in the slices with Hessian diag(pq), so the Gauss–Newton Hessian of the
data term is H = Pᵀ diag(pq) P (P the real Jacobian V ↦ (Re S, Im S)).

**Basis.** The orthonormal real DFT of the volume's own integer grid, ``to_fourier(V) =
scipy.fft.rfftn(V, norm="ortho")`` (:meth:`cryobench.oracle.Oracle.to_fourier`) (index [kz, ky, kx] in FFT order, kx = 0 … D//2) and its
inverse ``irfftn(…, s=V.shape, norm="ortho")``. It differs from the model's convention
(:mod:`cryobench.model.fourier`: centred at c = D//2 and normalised by D⁻¹) by a phase ramp
e^{2πik·c/D} and the factor D^{1/2}; neither changes a diagonal operator's action, so
``from_fourier(to_fourier(g) / W)`` is the same step in either. In this basis the unit real
modes cos and sin of frequency k have uᵀ H u = (D/2) Σ_{d,q} pq(d,q) (|K(ξ_dq − k)|² +
|K(ξ_dq + k)|²) up to a cross term, with K the Dirichlet kernel of the box (K(0) = 1) and
ξ_dq = R_d (q, 0)ᵀ the slice point's 3-D frequency (cycles per box); the factor D/2 is
|V̂(k)|² of a unit cos mode in the model's convention.

**Approximation (gridding).** |K(t)|² is replaced by the trilinear hat (both integrate to 1
per axis): W(k) = (D/2) Σ_{d,q} pq(d,q) [tri(ξ_dq − k) + tri(ξ_dq + k)], i.e. the slice-point
values scattered with trilinear weights at ξ and at −ξ (Hermitian symmetrisation), kept on the
rfft half grid. It is the standard "weights" of Fourier back-projection (e.g. RELION) scaled to
be the Hessian diagonal in the orthonormal basis; it ignores the model's tricubic slicing from
the ×2 oversampled cube and the sinc tails (measured against a brute-force Hessian diagonal in
tests/test_em.py). The factor 2 of the half-disk weights w_q is inside pq, which is why the
Hermitian half gets (D/2), not D.

**Back-projected data.** The same gridding of pa = Σ_{i,a,s} r_iasd w_q C_ia Y_ias (conjugated
at −ξ), converted to the orthonormal basis, is EM's B: for a fixed posterior the data term's
minimiser in the gridding approximation is V̂ = B / W (a weighted average of the per-point
least-squares values pa / pq), and F(∇f) ≈ W V̂ − B.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def slice_points(points: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """3-D frequencies ξ_dq = R_d (q₁, q₂, 0)ᵀ (cycles per box) as (x, y, z), shape (Nd, Np, 3)."""
    points, rot = np.asarray(points, float), np.asarray(rotations, float)
    return (points[None, :, 0, None] * rot[:, None, :, 0]
            + points[None, :, 1, None] * rot[:, None, :, 1])


class FourierGridding:
    """The linear maps of the module doc onto the rfft half grid (D, D, D//2 + 1): pq (Nd, Np)
    ↦ W and pa (Nd, Np) complex ↦ B, each as sparse matrices built once (for ξ and for −ξ);
    applying them is a deterministic sparse product."""

    def __init__(self, box: int, points: np.ndarray, rotations: np.ndarray):
        d = int(box)
        self.box, self.shape = d, (d, d, d // 2 + 1)
        xi = slice_points(points, rotations).reshape(-1, 3)
        self._plus, self._minus = (self._trilinear(sign * xi) for sign in (1.0, -1.0))
        k = [np.fft.fftfreq(d, 1.0 / d)] * 2 + [np.arange(d // 2 + 1)]
        kz, ky, kx = np.meshgrid(*k, indexing="ij")
        # model convention → orthonormal rfft: V̂_orth(k) = V̂_model(k) e^{−2πik·c/D} / √D
        self._phase = np.exp(-2j * np.pi * (kx + ky + kz) * (d // 2) / d) / np.sqrt(d)

    def _trilinear(self, p: np.ndarray):
        d, (_, _, nx) = self.box, self.shape
        base = np.floor(p)
        t = p - base
        base = base.astype(np.int64)
        rows, cols, vals = [], [], []
        for corner in np.ndindex(2, 2, 2):
            c = np.array(corner)
            node = base + c                                               # (x, y, z)
            w = np.prod(np.where(c == 1, t, 1.0 - t), axis=1)
            keep = (node[:, 0] >= 0) & (node[:, 0] <= d // 2) & (w > 0)
            if np.any(np.abs(node[keep]) > d // 2):
                raise ValueError(f"slice points reach beyond the box's Nyquist ({d // 2})")
            rows.append((node[keep, 2] % d * d + node[keep, 1] % d) * nx + node[keep, 0])
            cols.append(np.flatnonzero(keep))
            vals.append(w[keep])
        return sp.csr_matrix((d / 2.0 * np.concatenate(vals),
                              (np.concatenate(rows), np.concatenate(cols))),
                             shape=(int(np.prod(self.shape)), len(p)))

    def weights(self, pq: np.ndarray) -> np.ndarray:
        """W (float64, ``self.shape``) from the slice-point values pq (Nd, Np)."""
        v = np.asarray(pq, np.float64).reshape(-1)
        return (self._plus @ v + self._minus @ v).reshape(self.shape)

    def backprojection(self, pa: np.ndarray) -> np.ndarray:
        """B (complex128, ``self.shape``) from pa (Nd, Np) complex, in the orthonormal basis:
        the same trilinear scatter at ξ and (conjugated) at −ξ, times the phase and D^(−1/2)
        that take the model's convention to rfftn's, so that B / W is a volume's coefficients."""
        v = np.asarray(pa, np.complex128).reshape(-1)
        return (self._plus @ v + self._minus @ v.conj()).reshape(self.shape) * self._phase
