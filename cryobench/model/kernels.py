"""Compiled (numba) loops of the likelihood kernel: everything around its four matrix products.

* :func:`build_rows` — per (image, in-plane angle, shift), the GEMM rows A = w C Y (Re/Im
  interleaved, so A's row is a complex row viewed as reals) and Q = w C²: the bicubic gather of
  the rotated image spectrum, the CTF (RELION convention, see :mod:`cryobench.model.ctf`, with a
  vectorisable sine) and the shift phases, in one pass that writes the working dtype directly.
* :func:`posterior` — the max-shifted log-sum-exp over the poses of each image, and the
  responsibilities P (in place, as E times a factor per row) and their sums over shifts, in
  one pass over the cross terms.

Each output element is computed by one thread in a fixed order (no parallel reductions), so
results do not depend on the number of threads or on scheduling. In float32 the exponential
is a vectorisable polynomial (:func:`_exp_shifted`, relative error < 3e-7); in float64 it is
``math.exp``.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)
from cryobench.model.ctf import electron_wavelength

# Fast-math without 'reassoc': with reassociation allowed, the code a process compiles and the
# code it later loads from numba's cache round differently (measured: the probe of
# cryobench.harness.fingerprint gave other bits in the compiling process than in every later one), so a
# fresh clone's first cells would not reproduce. No NaN, no infinity and no signed zero keep the
# max and exp loops vectorised; measured speed is that of fastmath=True within noise.
DETERMINISTIC_FASTMATH = {"nnan", "ninf", "nsz"}
_JIT = dict(cache=True)
_FAST = dict(cache=True, fastmath=DETERMINISTIC_FASTMATH)


def ctf_terms(ctf, inv_sigma, s2: np.ndarray):
    """The CTF of every image at radii |s|² = s2 (Np,) (Å⁻²), split for :func:`build_rows`.

    χ = iso + aniso · cos 2(α_s − α_ast) and C = env · sin χ, with iso, aniso, env of shape
    (Np, B) and cos 2α_ast, sin 2α_ast of shape (B,): :func:`cryobench.model.ctf.evaluate_ctf` term by
    term, times 1/σ (float64).
    """
    lam = electron_wavelength(ctf.voltage)
    q = ctf.amplitude_contrast
    k_def = -np.pi * lam
    s2 = np.asarray(s2, float)[:, None]
    iso = (k_def * 0.5 * (ctf.defocus_u + ctf.defocus_v) * s2
           + 0.5 * np.pi * ctf.cs * 1e7 * lam**3 * s2**2
           - np.deg2rad(ctf.phase_shift) - np.arctan(q / np.sqrt(1.0 - q**2)))
    aniso = k_def * 0.5 * (ctf.defocus_u - ctf.defocus_v) * s2
    env = -np.exp(-ctf.bfactor * s2 / 4.0) * np.asarray(inv_sigma, float)
    ast = 2.0 * np.deg2rad(ctf.defocus_angle)
    return (np.ascontiguousarray(iso), np.ascontiguousarray(aniso), np.ascontiguousarray(env),
            np.cos(ast), np.sin(ast))


_PI_A, _PI_B = 3.141592653589793, 1.2246467991473532e-16     # π = _PI_A + _PI_B (+ O(1e-32))
_SIN = (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800, 1 / 6227020800,
        -1 / 1307674368000, 1 / 355687428096000, -1 / 121645100408832000)


@nb.njit(**_JIT)
def _sin(x):
    """sin x (float64) as a vectorisable loop body: x = kπ + r, |r| ≤ π/2, Taylor to r¹⁹
    (truncation < 3e-16), times (−1)ᵏ."""
    k = np.rint(x * (1.0 / _PI_A))
    r = (x - k * _PI_A) - k * _PI_B
    r2 = r * r
    p = _SIN[8]
    p = p * r2 + _SIN[7]
    p = p * r2 + _SIN[6]
    p = p * r2 + _SIN[5]
    p = p * r2 + _SIN[4]
    p = p * r2 + _SIN[3]
    p = p * r2 + _SIN[2]
    p = p * r2 + _SIN[1]
    p = p * r2 + _SIN[0]
    odd = k - 2.0 * np.floor(0.5 * k)
    return (r + r * r2 * p) * (1.0 - 2.0 * odd)


@nb.njit(parallel=True, **_JIT)
def build_rows(re, im, tap_index, tap_weight, cos2, sin2, iso, aniso, env, cos_ast, sin_ast,
               weights, phase, a, q):
    """Fill a[i, a, s, 2p:2p+2] = w_p C_ia(p) (Re, Im) Y_ia(p) e^{iφ_asp} and q[i, a, p] = w_p C².

    re, im (P, P, B): the patches' real and imaginary parts, image index last (the loops over
    images vectorise); tap_index (Na, Np, 2): (y, x) of the first of the 4×4 bicubic taps;
    tap_weight (Na, Np, 8): the 4 y- then 4 x-weights; cos2, sin2 (Na, Np): cos/sin of twice
    the azimuth of the rotated frequency; iso, aniso, env, cos_ast, sin_ast from
    :func:`ctf_terms`; weights (Np,) Hermitian weights w; phase (Na, Ns, Np) complex.
    One in-plane angle per task of the parallel loop.
    """
    n_img, n_ang, n_pts, n_sh = re.shape[2], tap_index.shape[0], tap_index.shape[1], phase.shape[1]
    for ang in nb.prange(n_ang):
        yr = np.zeros((n_pts, n_img), re.dtype)
        yi = np.zeros((n_pts, n_img), re.dtype)
        wc = np.empty((n_pts, n_img))
        for p in range(n_pts):
            y0, x0 = tap_index[ang, p, 0], tap_index[ang, p, 1]
            tw = tap_weight[ang, p]
            ypr, ypi = yr[p], yi[p]
            for b in range(4):
                for c in range(4):
                    w = tw[b] * tw[4 + c]
                    rr, ri = re[y0 + b, x0 + c], im[y0 + b, x0 + c]
                    for i in range(n_img):
                        ypr[i] += w * rr[i]
                        ypi[i] += w * ri[i]
            cc, ss, wp = cos2[ang, p], sin2[ang, p], weights[p]
            for i in range(n_img):
                chi = iso[p, i] + aniso[p, i] * (cc * cos_ast[i] + ss * sin_ast[i])
                wc[p, i] = wp * env[p, i] * _sin(chi)
        wyr = np.empty(n_pts, a.dtype)
        wyi = np.empty(n_pts, a.dtype)
        for i in range(n_img):
            for p in range(n_pts):
                w = wc[p, i]
                q[i, ang, p] = w * w / weights[p]
                wyr[p], wyi[p] = w * yr[p, i], w * yi[p, i]
            for s in range(n_sh):
                row, ph = a[i, ang, s], phase[ang, s]
                for p in range(n_pts):
                    e = ph[p]
                    row[2 * p] = wyr[p] * e.real - wyi[p] * e.imag
                    row[2 * p + 1] = wyr[p] * e.imag + wyi[p] * e.real
    return a, q


@nb.njit(**_FAST)
def _exp_shifted(row, shift, scale, scale_bits):
    """row ← exp(row − shift) for row ≤ shift, float32, and returns its sum (float32): Cephes'
    expf as a vectorisable loop.

    exp(x) = 2ᵏ · e^r with k = round(x / ln 2), |r| ≤ ln2 / 2 and a degree-7 polynomial for
    e^r; 2ᵏ is built from its exponent bits in ``scale_bits`` (an int32 view of ``scale``).
    Arguments below −40 give 0 (e⁻⁴⁰ ≈ 4e−18, ten orders below float32's resolution of the
    row's sum, which holds its maximum e⁰ = 1). Kept (down to e⁻⁸⁷ ≈ 1.6e−38), such entries
    made their products in the gradient's GEMMs (Pᵀ A, Pᵀ [A | Q]) subnormal — a microcode
    assist per multiply-add on x86, which made a paper-scale gradient 4–6× slower. The
    numerics fingerprint and the committed small-scale cells are bit-identical with the cut.
    """
    log2e = np.float32(1.4426950408889634)
    ln2_hi, ln2_lo = np.float32(0.693359375), np.float32(-2.12194440e-4)
    lo, cut = np.float32(-87.0), np.float32(-40.0)
    for d in range(row.shape[0]):
        x = np.float32(row[d] - shift)
        keep = x >= cut
        x = max(x, lo)
        k = np.floor(x * log2e + np.float32(0.5))
        r = x - k * ln2_hi - k * ln2_lo
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        row[d] = p * r * r + r + np.float32(1.0)
        scale_bits[d] = ((np.int32(k) + np.int32(127)) << 23) if keep else np.int32(0)
    total = row[0] - row[0]
    for d in range(row.shape[0]):
        e = row[d] * scale[d]
        row[d] = e
        total += e
    return total


@nb.njit(**_FAST)
def _row_max(row):
    """max(row) with 8 independent running maxima (a single one does not vectorise)."""
    n = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    d = 0
    while d + 8 <= n:
        m0, m1 = max(m0, row[d]), max(m1, row[d + 1])
        m2, m3 = max(m2, row[d + 2]), max(m3, row[d + 3])
        m4, m5 = max(m4, row[d + 4]), max(m5, row[d + 5])
        m6, m7 = max(m6, row[d + 6]), max(m7, row[d + 7])
        d += 8
    while d < n:
        m0 = max(m0, row[d])
        d += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@nb.njit(**_FAST)
def _add_shift_exp(row, add, add2, fast_exp, scale, scale_bits):
    """row ← exp(G − max G) with G = row + add + add2, in place; returns max G and
    Σ exp(G − max G)."""
    for d in range(row.shape[0]):
        row[d] += add[d] + add2[d]
    m = _row_max(row)
    if fast_exp:
        return m, _exp_shifted(row, m, scale, scale_bits)
    total = 0.0
    for d in range(row.shape[0]):
        row[d] = math.exp(row[d] - m)
        total += row[d]
    return m, total


@nb.njit(**_FAST)
def _flushed(x):
    """x, or 0 if x < 1e−30: a responsibility factor that small scales rows of A into the
    subnormal range (slow products, see :func:`_exp_shifted`) and adds nothing a float32 sum keeps."""
    return x if x >= 1e-30 else 0.0


@nb.njit(parallel=True, **_FAST)
def posterior(g, qs, log_w, fast_exp, gradient, p_as, row_factor, ang_factor, gmax, log_total):
    """Log-sum-exp over the poses of each image and, for the gradient, the responsibilities.

    g (B, Na, Ns, Nd) holds the cross terms A·S and qs (B, Na, Nd) the terms −½ Q·|S|² (or qs
    is empty when g already includes them), so the log-joint is G = g + qs + log_w. Each row
    (i, a, s) of g is replaced by E = exp(G − m_ias) with its own maximum m_ias (one pass from
    memory; the row stays in L1 cache). gmax and log_total (B,) receive m_i = max G and
    log Σ exp(G − m_i). With ``gradient``:

    * row_factor (B, Na, Ns) = exp(m_ias − m_i) / Σ, so the responsibilities are
      P = row_factor · E (the caller scales the rows of A instead of touching E again);
    * p_as (B, Na, Nd) and ang_factor (B, Na) with Σ_s P = ang_factor · p_as (for Ns = 1 the
      caller uses E itself and p_as is not written).

    ``fast_exp`` selects the float32 polynomial exponential.
    """
    n_img, n_ang, n_sh, n_dir = g.shape
    for i in nb.prange(n_img):
        scale = np.empty(n_dir, np.float32)
        scale_bits = scale.view(np.int32)
        zero = np.zeros(n_dir, g.dtype)
        row_max = np.empty((n_ang, n_sh))
        row_sum = np.empty((n_ang, n_sh))
        ang_max = np.empty(n_ang)
        f = np.empty(n_sh, g.dtype)
        for ang in range(n_ang):
            qrow = qs[i, ang] if qs.shape[0] else zero
            for s in range(n_sh):
                row_max[ang, s], row_sum[ang, s] = _add_shift_exp(
                    g[i, ang, s], qrow, log_w[ang, s], fast_exp, scale, scale_bits)
            ang_max[ang] = row_max[ang].max()
            if gradient and n_sh > 1:
                pa = p_as[i, ang]
                for s in range(n_sh):
                    f[s] = _flushed(math.exp(row_max[ang, s] - ang_max[ang]))
                row = g[i, ang, 0]
                for d in range(n_dir):
                    pa[d] = f[0] * row[d]
                for s in range(1, n_sh):
                    row = g[i, ang, s]
                    for d in range(n_dir):
                        pa[d] += f[s] * row[d]
                for d in range(n_dir):
                    if pa[d] < 1e-30:
                        pa[d] = 0.0
        m = ang_max.max()
        total = 0.0
        for ang in range(n_ang):
            for s in range(n_sh):
                total += row_sum[ang, s] * math.exp(row_max[ang, s] - m)
        gmax[i] = m
        log_total[i] = math.log(total)
        if gradient:
            for ang in range(n_ang):                 # factors below 1e−30 are 0 (see _exp_shifted)
                ang_factor[i, ang] = _flushed(math.exp(ang_max[ang] - m) / total)
                for s in range(n_sh):
                    row_factor[i, ang, s] = _flushed(math.exp(row_max[ang, s] - m) / total)
    return gmax, log_total


@nb.njit(parallel=True, **_JIT)
def scale_rows(x, factor):
    """x[r, :] *= factor[r] for a 2-D array, in place."""
    for r in nb.prange(x.shape[0]):
        f = factor[r]
        row = x[r]
        for k in range(row.shape[0]):
            row[k] *= f
    return x
