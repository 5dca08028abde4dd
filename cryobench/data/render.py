"""Rendering clean particle images of a Gaussian-blob phantom, with the same bits on every machine.

The image of orientation R is the projection of the phantom; a blob centred at c (pixels)
projects to u = (Rᵀc)[:2], and by the Fourier slice theorem its spectrum is the closed-form
transform of the blobs, separable in kx and ky, displaced in-plane by the shift (a phase ramp)
and multiplied by the CTF, then inverse-transformed. Every floating-point step runs in float64
in a fixed order with :mod:`cryobench.base.portable`'s functions, compiled without fastmath
(see :mod:`cryobench.data.simulate` for why).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from cryobench.base.portable import (TWO_PI, atan, exp, factors, irfft2_centred_one, sincos_turns,
                                     unit_roots)
from cryobench.data.phantoms import Phantom, _blob_volume
from cryobench.model.ctf import CTFParams, electron_wavelength


_JIT = dict(cache=True)          # no fastmath: the bits must not depend on the CPU (portable.py)
TWO_PI_SQUARED = 19.739208802178716


@nb.njit(**_JIT)
def _gauss_table(s, k, box):
    """exp(−2π² s_b² k² / D²) (float64, (nb, K)): the blobs' Gaussian envelopes at the integer
    frequencies k, 0 on and beyond the Nyquist line (2|k| ≥ D)."""
    out = np.zeros((len(s), len(k)))
    for b in range(len(s)):
        for i in range(len(k)):
            if 2 * abs(k[i]) < box:
                v = s[b] * k[i] / box
                out[b, i] = exp(-TWO_PI_SQUARED * (v * v))
    return out


@nb.njit(**_JIT)
def _spectrum_one(c, w, gx, gy, r, t, kx, ky, box, sr, si):
    """The CTF-free spectrum Î[ky, kx] of one image into (sr, si) (float64, (len(ky), len(kx))).

    Blob b projects to u = (Rᵀc_b)[:2] + t and contributes
    (w_b g_b(kx) e^{−2πi kx u_x/D}) (g_b(ky) e^{−2πi ky u_y/D}); the phases are evaluated
    directly for every k (turns k·u/D, exact reduction), the sum over blobs runs in index order."""
    nb_, nx, ny = len(w), len(kx), len(ky)
    ax_r, ax_i = np.empty((nb_, nx)), np.empty((nb_, nx))
    ay_r, ay_i = np.empty((nb_, ny)), np.empty((nb_, ny))
    for b in range(nb_):
        ux = c[b, 0] * r[0, 0] + c[b, 1] * r[1, 0] + c[b, 2] * r[2, 0] + t[0]
        uy = c[b, 0] * r[0, 1] + c[b, 1] * r[1, 1] + c[b, 2] * r[2, 1] + t[1]
        for i in range(nx):
            sn, cs = sincos_turns(ux * kx[i] / box)
            g = w[b] * gx[b, i]
            ax_r[b, i] = g * cs
            ax_i[b, i] = -(g * sn)
        for j in range(ny):
            sn, cs = sincos_turns(uy * ky[j] / box)
            ay_r[b, j] = gy[b, j] * cs
            ay_i[b, j] = -(gy[b, j] * sn)
    acc_r, acc_i = np.empty(nx), np.empty(nx)
    for j in range(ny):
        acc_r[:] = 0.0
        acc_i[:] = 0.0
        for b in range(nb_):
            pr, pi = ay_r[b, j], ay_i[b, j]
            xr, xi = ax_r[b], ax_i[b]
            for i in range(nx):
                acc_r[i] += pr * xr[i] - pi * xi[i]
                acc_i[i] += pr * xi[i] + pi * xr[i]
        sr[j] = acc_r
        si[j] = acc_i


@nb.njit(**_JIT)
def _ctf_terms(row, lam, offset):
    """The per-image constants of :func:`_ctf_at` from a row of ``CTFParams.as_matrix()``."""
    du, dv, angle, cs, phase, bfac = row[0], row[1], row[2], row[4], row[6], row[7]
    sin2a, cos2a = sincos_turns(angle / 180.0)
    return (0.5 * (du + dv), 0.5 * (du - dv), cos2a, sin2a, 0.5 * lam,
            0.25 * (cs * 1e7) * (lam * lam * lam), phase / 360.0 + offset, bfac)


@nb.njit(**_JIT)
def _ctf_at(terms, fx, fy):
    """RELION's CTF (:func:`cryobench.model.ctf.evaluate_ctf`, same formula) at (fx, fy) in 1/Å,
    in turns: χ/2π = −½λΔf s² + ¼ Cs λ³ s⁴ − φ/360 − offset with offset = arctan(Q/√(1−Q²))/2π,
    and C = −sin χ · exp(−B s²/4). The astigmatic cos 2(α − α_ast) is cos 2α cos 2α_ast +
    sin 2α sin 2α_ast with cos 2α = (fx² − fy²)/s², sin 2α = 2 fx fy / s² (no arctan)."""
    mean, dev, cos2a, sin2a, a2, a4, const, bfac = terms
    s2 = fx * fx + fy * fy
    if s2 > 0.0:
        cos2, sin2 = (fx * fx - fy * fy) / s2, (2.0 * fx * fy) / s2
    else:
        cos2, sin2 = 1.0, 0.0
    defocus = mean + dev * (cos2 * cos2a + sin2 * sin2a)
    sn, _ = sincos_turns(a4 * (s2 * s2) - a2 * defocus * s2 - const)
    env = 1.0 if bfac == 0.0 else exp(-(bfac * s2) / 4.0)
    return -sn * env


@nb.njit(**_JIT)
def _ctf_one(row, lam, offset, kx, ky, f, out):
    """:func:`_ctf_at` of one image at the frequencies (kx, ky)·f into out[ky, kx]."""
    terms = _ctf_terms(row, lam, offset)
    for j in range(len(ky)):
        for i in range(len(kx)):
            out[j, i] = _ctf_at(terms, kx[i] * f, ky[j] * f)


@nb.njit(**_JIT)
def _ctf_points(rows, lam, offset, fx, fy):
    """:func:`_ctf_at` of every image (rows) at the points (fx[p], fy[p]): (n, P) float64."""
    out = np.empty((rows.shape[0], len(fx)))
    for n in range(rows.shape[0]):
        terms = _ctf_terms(rows[n], lam[n], offset[n])
        for p in range(len(fx)):
            out[n, p] = _ctf_at(terms, fx[p], fy[p])
    return out


def portable_ctf(ctf: CTFParams, freq_x, freq_y) -> np.ndarray:
    """C_θ(s) of every image at the points (freq_x, freq_y) (1/Å, 1-D): ``evaluate_ctf(ctf,
    freq_x, freq_y)`` up to rounding, (n, P) float64, the same bits on every machine."""
    rows, lam, offset = _ctf_inputs(ctf)
    return _ctf_points(rows, lam, offset, np.ascontiguousarray(freq_x, float),
                       np.ascontiguousarray(freq_y, float))


@nb.njit(parallel=True, **_JIT)
def _render_chunk(c, w, gx, gy, rot, shifts, ctf_rows, lam, offset, box, pixel_size, kx, ky,
                  wr, wi, radices, out):
    """Clean images out[n, y, x] (float32) of the rfft-layout spectra (kx = 0 … D/2, ky in FFT
    order), times the CTF unless ``ctf_rows`` has no rows, inverted by
    :func:`cryobench.base.portable.irfft2_centred_one`. Every image is computed on its own, so
    the thread count changes no bit."""
    f = 1.0 / (box * pixel_size)
    for n in nb.prange(rot.shape[0]):
        sr, si = np.empty((len(ky), len(kx))), np.empty((len(ky), len(kx)))
        ctf = np.empty((len(ky), len(kx)))
        _spectrum_one(c, w, gx, gy, rot[n], shifts[n], kx, ky, box, sr, si)
        if ctf_rows.shape[0] > 0:
            _ctf_one(ctf_rows[n], lam[n], offset[n], kx, ky, f, ctf)
            for j in range(len(ky)):
                for i in range(len(kx)):
                    sr[j, i] *= ctf[j, i]
                    si[j, i] *= ctf[j, i]
        image = np.empty((box, box))
        irfft2_centred_one(sr, si, wr, wi, radices, image)
        for y in range(box):
            for x in range(box):
                out[n, y, x] = np.float32(image[y, x])


@nb.njit(**_JIT)
def scaled(images, factor):
    """float32(float64(image) × factor) of every pixel."""
    out = np.empty_like(images)
    flat, res = images.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        res[i] = np.float32(np.float64(flat[i]) * factor)
    return out


@nb.njit(**_JIT)
def masked_variance(images, mask):
    """Per image, the variance (float64, two passes in pixel order) of the pixels where mask."""
    out = np.empty(images.shape[0])
    count = 0
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            count += mask[y, x]
    for n in range(images.shape[0]):
        total = 0.0
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x]:
                    total += np.float64(images[n, y, x])
        mean = total / count
        sq = 0.0
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x]:
                    v = np.float64(images[n, y, x]) - mean
                    sq += v * v
        out[n] = sq / count
    return out


def _blob_terms(phantom: Phantom, box: int, pixel_size: float):
    """Centres (px), widths (px) and weights a·(2πs²)^{3/2}/D of the blobs (+ − × ÷ √ only)."""
    c = phantom.centres / pixel_size
    s = phantom.sigmas / pixel_size
    v = TWO_PI * (s * s)
    return np.ascontiguousarray(c), s, phantom.amplitudes * (v * np.sqrt(v)) / box


def _ctf_inputs(ctf: CTFParams):
    """Per image: the CTF parameters as rows (n, 8), λ (Å) and arctan(Q/√(1−Q²))/2π in turns."""
    q = np.asarray(ctf.amplitude_contrast, float)
    turns = {v: atan(v / math.sqrt(1.0 - v * v)) / TWO_PI for v in np.unique(q).tolist()}
    offset = np.array([turns[v] for v in q.tolist()], float)
    return (np.ascontiguousarray(ctf.as_matrix()), electron_wavelength(ctf.voltage),
            offset)


def _render_spectra(phantom, rotations, shifts, ctf, box, pixel_size, kx, ky):
    """Spectra (complex128, [n, ky, kx]) at the integer frequencies ky × kx, CTF applied if
    ``ctf`` is not None (one image at a time through the compiled kernels)."""
    kx, ky = np.asarray(kx, np.int64), np.asarray(ky, np.int64)
    rot = np.ascontiguousarray(rotations, float).reshape(-1, 3, 3)
    t = np.zeros((len(rot), 2)) if shifts is None else np.ascontiguousarray(shifts, float)
    c, s, w = _blob_terms(phantom, box, pixel_size)
    gx, gy = _gauss_table(s, kx, box), _gauss_table(s, ky, box)
    out = np.empty((len(rot), len(ky), len(kx)), np.complex128)
    sr, si, grid = np.empty((len(ky), len(kx))), np.empty((len(ky), len(kx))), None
    if ctf is not None:
        rows, lam, offset = _ctf_inputs(ctf)
        grid = np.empty((len(ky), len(kx)))
    for n in range(len(rot)):
        _spectrum_one(c, w, gx, gy, rot[n], t[n], kx, ky, box, sr, si)
        out[n] = sr + 1j * si
        if ctf is not None:
            _ctf_one(rows[n], lam[n], offset[n], kx, ky, 1.0 / (box * pixel_size), grid)
            out[n] *= grid
    return out


def clean_spectra(phantom: Phantom, rotations, shifts, ctf, box: int,
                  pixel_size: float) -> np.ndarray:
    """Noise-free centred spectra (complex64, [n, ky + D//2, kx + D//2]) of the phantom.

    rotations (n, 3, 3); shifts (n, 2) pixels as (x, y) or None; ctf a CTFParams or None (C = 1).
    """
    k = np.arange(box) - box // 2
    return _render_spectra(phantom, rotations, shifts, ctf, box, pixel_size, k, k
                           ).astype(np.complex64)


def _half_grid(box: int):
    """The rfft layout: kx = 0 … D//2, ky in FFT order (0 … ⌈D/2⌉−1, −⌊D/2⌋ … −1)."""
    return (np.arange(box // 2 + 1),
            np.concatenate([np.arange((box + 1) // 2), np.arange(-(box // 2), 0)]))


def clean_images(phantom: Phantom, rotations, shifts, ctf, box: int,
                 pixel_size: float) -> np.ndarray:
    """Noise-free images I[n, y, x] (float32): ``centered_idft2(clean_spectra(...))`` (C = 1 when
    ``ctf`` is None) via the rfft layout, the same bits on every machine."""
    kx, ky = _half_grid(box)
    rot = np.ascontiguousarray(rotations, float).reshape(-1, 3, 3)
    t = np.zeros((len(rot), 2)) if shifts is None else np.ascontiguousarray(shifts, float)
    c, s, w = _blob_terms(phantom, box, pixel_size)
    rows, lam, offset = _ctf_inputs(ctf) if ctf is not None else (np.zeros((0, 8)),) + (
        np.zeros(0),) * 2
    wr, wi = unit_roots(box, +1)
    out = np.empty((len(rot), box, box), np.float32)
    _render_chunk(c, w, _gauss_table(s, kx, box), _gauss_table(s, ky, box), rot, t, rows, lam,
                  offset, box, float(pixel_size), kx, ky, wr, wi, factors(box), out)
    return out


def particle_mask(phantom: Phantom, box: int, pixel_size: float) -> np.ndarray:
    """Boolean [y, x] disc of radius min(phantom.radius / pixel_size, box/2 − 1) about D//2."""
    r = min(phantom.radius / pixel_size, box / 2 - 1)
    y, x = np.mgrid[:box, :box] - box // 2
    return x * x + y * y <= r * r


@nb.njit(**_JIT)
def _band_profiles(c, g, box):
    """h_b(x) = g_b(0) + 2 Σ_{k=1}^{D/2−1} g_b(k) cos 2πk(x − c_b)/D at x = i − D//2 (float64,
    (n, D)): blob b's Gaussian profile band-limited to the box's frequencies, periodic."""
    n, kmax = len(c), (box + 1) // 2
    out = np.empty((n, box))
    for b in range(n):
        for i in range(box):
            x = (i - box // 2) - c[b]
            acc = g[b, 0]
            for k in range(1, kmax):
                if g[b, k] != 0.0:
                    acc += 2.0 * g[b, k] * sincos_turns(k * x / box)[1]
            out[b, i] = acc
    return out


def band_limited_volume(phantom: Phantom, box: int, pixel_size: float) -> np.ndarray:
    """The phantom band-limited to the box, float32 V[z, y, x]: the volume whose spectrum
    V̂(k) (:mod:`cryobench.model.fourier`) is the phantom's closed-form transform at the integer
    frequencies |k_x|, |k_y|, |k_z| < D/2 and 0 beyond — the one the rendered images are
    projections of (their spectra are its central slices). Unlike :meth:`Phantom.to_volume`
    it does not alias blobs narrower than a voxel. V = D⁻² Σ_b w_b h_b(z) h_b(y) h_b(x)
    (:func:`_band_profiles`), with the same bits on every machine."""
    c, s, w = _blob_terms(phantom, box, pixel_size)
    k = np.arange(box // 2 + 1, dtype=np.float64)
    g = _gauss_table(s, k, box)
    h = [_band_profiles(np.ascontiguousarray(c[:, a]), g, box) for a in range(3)]
    return (_blob_volume(h[2], h[1], (w / (box * box))[:, None] * h[0])).astype(np.float32)
