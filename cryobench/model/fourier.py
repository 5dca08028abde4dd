"""Fourier conventions shared by the model, the simulator and the tests.

Array order follows mrcfile: an image is ``I[y, x]``, a volume ``V[z, y, x]``. Physical
coordinates are vectors ``(x, y, z)`` in pixels measured from the centre pixel ``c = D // 2``.
Frequencies ``k`` are in cycles per box (Fourier pixels); ``k / (D * pixel_size)`` is in 1/Å.

Images (unitary, so Parseval holds and white noise of variance σ² stays white with variance σ²):

    Î(k) = D⁻¹ Σ_x I(x) exp(−2πi k·(x − c) / D)

Volumes (normalised by D⁻¹, not D^(-3/2), so that the Fourier slice theorem is exact with the
images' convention — the projection along z of V has Î(k₁, k₂) = V̂(k₁, k₂, 0)):

    V̂(ξ) = D⁻¹ Σ_x V(x) exp(−2πi ξ·(x − c) / D)

Both are evaluated at arbitrary (also non-integer) frequencies through explicit DFT matrices,
which makes the low-frequency part of a volume three small matrix products (BLAS speed).
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft


def complex_dtype(real_dtype) -> np.dtype:
    """The complex dtype matching a real floating dtype (float32 → complex64)."""
    return np.result_type(np.dtype(real_dtype), np.complex64)


def centered_dft2(images: np.ndarray) -> np.ndarray:
    """Î = D⁻¹ Σ_x I(x) e^{−2πi k·(x−c)/D} on the integer grid, index k + D//2 (last two axes)."""
    axes = (-2, -1)
    shifted = sfft.ifftshift(images, axes=axes)
    return sfft.fftshift(sfft.fft2(shifted, axes=axes, norm="ortho"), axes=axes)


def centered_idft2(spectra: np.ndarray) -> np.ndarray:
    """Inverse of :func:`centered_dft2` (real part; the input is assumed Hermitian)."""
    axes = (-2, -1)
    shifted = sfft.ifftshift(spectra, axes=axes)
    return sfft.fftshift(sfft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes).real


def dft_matrix(freqs: np.ndarray, n: int, dtype=np.complex128) -> np.ndarray:
    """F[j, x] = exp(−2πi f_j (x − n//2) / n): one axis of the centred DFT, at any frequencies."""
    x = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(np.asarray(freqs, float), x) / n).astype(dtype)


def cube_frequencies(kmax: float, oversampling: int) -> np.ndarray:
    """Frequencies ``j / oversampling`` covering [−kmax − 2, kmax + 2] (room for cubic stencils)."""
    m = int(np.ceil(oversampling * (kmax + 2)))
    return np.arange(-m, m + 1) / oversampling


def volume_to_cube(volume: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """V̂ on the grid freqs³ (index order [ξz, ξy, ξx]) as three DFT-matrix products."""
    d = volume.shape[0]
    if volume.shape != (d, d, d):
        raise ValueError(f"volume must be a cube, got shape {volume.shape}")
    f = dft_matrix(freqs, d, complex_dtype(volume.dtype))
    n = len(freqs)
    a = (volume.reshape(d * d, d) @ f.real.T + 1j * (volume.reshape(d * d, d) @ f.imag.T))
    a = a.astype(f.dtype).reshape(d, d, n)                       # [z, y, ξx]
    b = np.matmul(f, a)                                         # [z, ξy, ξx]
    c = f @ b.reshape(d, n * n)                                 # [ξz, ξy·ξx]
    return (c / d).reshape(n, n, n)


def cube_to_volume_adjoint(cube_grad: np.ndarray, freqs: np.ndarray, d: int,
                           real_dtype=np.float32) -> np.ndarray:
    """Adjoint of :func:`volume_to_cube` for a real variable: Re(Fᴴ G) / D.

    For a real function f of V̂, pass G = ∂f/∂Re V̂ + i ∂f/∂Im V̂ to obtain ∂f/∂V.
    """
    n = len(freqs)
    fh = dft_matrix(freqs, d, complex_dtype(real_dtype)).conj().T   # (d, n)
    b = fh @ cube_grad.reshape(n, n * n)                           # [z, ξy·ξx]
    a = np.matmul(fh, b.reshape(d, n, n))                          # [z, y, ξx]
    a = a.reshape(d * d, n)
    out = a.real @ fh.real.T - a.imag @ fh.imag.T                  # Re(a · fhᵀ) over ξx
    return (out.reshape(d, d, d) / d).astype(real_dtype)


class HalfCubeDFT:
    """V ↦ V̂ of a real volume on the cube freqs³ restricted to ξx ≥ freqs[centre − margin], and
    the adjoint of that map; the rest of the cube is V̂(−ξ) = conj V̂(ξ).

    The half cube is stored as C[ξy, ξz, ξx] (y first: that order makes each step one GEMM).
    Steps: x as a real GEMM whose output columns alternate Re/Im, so it *is* the complex array
    [z, y, ξx]; z (with the 1/D of V̂); a transpose of the small [ξz, y, ξx] array; y. The
    adjoint takes the same steps in reverse. The DFT matrices are built once.
    """

    def __init__(self, box: int, freqs: np.ndarray, margin: int, real_dtype=np.float32):
        self.box, self.dtype = int(box), np.dtype(real_dtype)
        self.cdtype = complex_dtype(real_dtype)
        centre = (len(freqs) - 1) // 2
        self.x_freqs = np.asarray(freqs)[centre - margin:]
        self.shape = (len(freqs), len(freqs), len(self.x_freqs))      # [ξy, ξz, ξx]
        f = dft_matrix(freqs, self.box)                                 # (n, D), complex128
        fx = dft_matrix(self.x_freqs, self.box)
        wx = np.empty((self.box, 2 * len(fx)))
        wx[:, 0::2], wx[:, 1::2] = fx.real.T, fx.imag.T
        self._wx = wx.astype(self.dtype)                                # (D, 2 nx)
        self._wx_t = np.ascontiguousarray(self._wx.T)                   # (2 nx, D)
        self._fy = f.astype(self.cdtype)                                # (n, D)
        self._fz = (f / self.box).astype(self.cdtype)                   # with the 1/D of V̂
        self._fy_h = np.ascontiguousarray(f.conj().T).astype(self.cdtype)          # (D, n)
        self._fz_h = np.ascontiguousarray(f.conj().T / self.box).astype(self.cdtype)

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """V̂ on the half cube, shape ``self.shape`` [ξy, ξz, ξx], complex."""
        d, (n, _, nx) = self.box, self.shape
        v = np.ascontiguousarray(volume, self.dtype).reshape(d * d, d)
        a = (v @ self._wx).view(self.cdtype).reshape(d, d * nx)         # [z, y·ξx]
        b = (self._fz @ a).reshape(n, d, nx)                            # [ξz, y, ξx]
        b = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(d, n * nx)  # [y, ξz·ξx]
        return (self._fy @ b).reshape(self.shape)                       # [ξy, ξz, ξx]

    def adjoint(self, cube_grad: np.ndarray) -> np.ndarray:
        """∂f/∂V (real, D³) from G = ∂f/∂Re V̂ + i ∂f/∂Im V̂ on the half cube [ξy, ξz, ξx]."""
        d, (n, _, nx) = self.box, self.shape
        g = np.ascontiguousarray(cube_grad, self.cdtype).reshape(n, n * nx)
        b = (self._fy_h @ g).reshape(d, n, nx)                          # [y, ξz, ξx]
        b = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(n, d * nx)  # [ξz, y·ξx]
        a = (self._fz_h @ b).reshape(d * d, nx)                         # [z·y, ξx]
        return (a.view(self.dtype) @ self._wx_t).reshape(d, d, d)


def half_disk(rmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer frequencies (kx, ky) with |k| ≤ rmax in one half-plane, and their weights.

    A real image's spectrum is Hermitian, Î(−k) = conj Î(k), so the sum over the full disk
    Σ_k |·|² equals Σ_{half disk} w_k |·|² with w = 1 at k = 0 and w = 2 elsewhere.
    Returns ``points`` of shape (Np, 2) as (kx, ky) and ``weights`` of shape (Np,).
    """
    r = int(np.floor(rmax))
    ky, kx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = (kx**2 + ky**2 <= rmax**2) & ((ky > 0) | ((ky == 0) & (kx >= 0)))
    pts = np.stack([kx[keep], ky[keep]], axis=1).astype(float)
    w = np.where((pts[:, 0] == 0) & (pts[:, 1] == 0), 1.0, 2.0)
    return pts, w
