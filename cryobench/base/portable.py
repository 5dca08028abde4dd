"""Elementary functions and a discrete Fourier transform whose bits do not depend on the machine.

NumPy's float32/float64 ``exp``, ``log``, ``sin``, ``cos``, ``tanh``… are vectorised differently
for AVX-512, AVX2 and SSE (its runtime SIMD dispatch), glibc's ``libm`` picks FMA or SSE2 builds
of ``sin``, ``cos``, ``exp``, ``atan`` by CPU (its ifuncs: they disagree in the last bit on a
fraction of arguments, see ``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA``), and a BLAS product's
rounding follows the kernel the BLAS picks for the CPU. What IEEE 754 fixes everywhere is the
correctly rounded result of ``+ − × ÷`` and ``sqrt`` on float64, so everything here is built
from those alone, in a fixed order:

* compiled with numba *without* ``fastmath``: LLVM then neither reassociates a sum nor contracts
  ``a*b + c`` into a fused multiply-add (checked: no ``vfmadd`` in the generated code on an
  AVX-512 CPU), and vectorises only across independent outputs, which does not change a bit;
* no call into ``libm`` (numba lowers ``math.sin`` and friends to it), no BLAS, no NumPy
  transcendental ufunc;
* transcendental functions by exact argument reduction and a truncated Taylor series whose
  remainder is far below the last bit (so about one ulp of error, the same ulp on every CPU).

The price is speed, not accuracy: these run at a few ns per call, which the simulator can afford.

Functions: :func:`exp`, :func:`log`, :func:`log2` and :func:`sincos_turns` (compiled, scalar;
array forms :func:`exp_array`, :func:`log_array`, :func:`power_array`,
:func:`sincos_turns_array`), :func:`atan` and :func:`cbrt` (Python scalars), and
:func:`inverse_fft_axis0` / :func:`irfft2_centred`, a mixed-radix Stockham FFT (the radix-2
decimation-in-frequency form of OK Ojisan's OTFFT notes, "Stockham Algorithm",
http://wwwa.pippi.jp/~okojisan/otfft-en/stockham1.html, with a plain DFT butterfly for every
factor) whose twiddle factors come from :func:`sincos_turns`. The split of log 2 is fdlibm's.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_JIT = dict(cache=True)          # no fastmath: see the module docstring

TWO_PI = 6.283185307179586
LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of log 2: LN2_HI has 11 trailing
LN2_LO = 1.90821492927058770002e-10      # zero bits, so k·LN2_HI is exact for |k| < 2¹¹
INV_LN2 = 1.44269504088896338700e+00
EXP_MAX = 709.782712893384               # exp overflows above, and is 0 below EXP_MIN
EXP_MIN = -745.1332191019412

# 1/k! rounded once (Python's int/int division is correctly rounded)
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(20))
E2, E3, E4, E5, E6, E7, E8, E9, E10, E11, E12, E13, E14 = _INV_FACT[2:15]
# sin x = x − x³/3! + …, cos x = 1 − x²/2! + …, to x¹⁹ and x¹⁸: for |x| ≤ π/4 the first
# omitted term is below 2⁻⁶⁰ |result|
S3, S5, S7, S9, S11, S13, S15, S17, S19 = (-_INV_FACT[3], _INV_FACT[5], -_INV_FACT[7],
                                           _INV_FACT[9], -_INV_FACT[11], _INV_FACT[13],
                                           -_INV_FACT[15], _INV_FACT[17], -_INV_FACT[19])
C2, C4, C6, C8, C10, C12, C14, C16, C18 = (-_INV_FACT[2], _INV_FACT[4], -_INV_FACT[6],
                                           _INV_FACT[8], -_INV_FACT[10], _INV_FACT[12],
                                           -_INV_FACT[14], _INV_FACT[16], -_INV_FACT[18])


@nb.njit(**_JIT)
def exp(x: float) -> float:
    """e**x for a float64: x = k log 2 + r with |r| ≤ ½ log 2 (Cody–Waite, exact for |k| < 2¹¹),
    e**r by its Taylor polynomial to r¹⁴ (remainder < 10⁻¹⁸), times 2**k exactly."""
    if x != x:
        return x
    if x > EXP_MAX:
        return np.inf
    if x < EXP_MIN:
        return 0.0
    k = np.rint(x * INV_LN2)
    r = (x - k * LN2_HI) - k * LN2_LO
    p = E14
    p = E13 + r * p
    p = E12 + r * p
    p = E11 + r * p
    p = E10 + r * p
    p = E9 + r * p
    p = E8 + r * p
    p = E7 + r * p
    p = E6 + r * p
    p = E5 + r * p
    p = E4 + r * p
    p = E3 + r * p
    p = E2 + r * p
    p = 1.0 + r * p
    p = 1.0 + r * p
    return _times_pow2(p, int(k))


POW2 = np.ldexp(1.0, np.arange(-1022, 1024))   # 2**k for k = −1022 … 1023 (exact)


@nb.njit(**_JIT)
def _times_pow2(p: float, k: int) -> float:
    """p · 2**k for p near 1 and k in [−1075, 1024]: exact, or one rounding into the
    subnormals (the power of two is split off so that every product but the last is exact)."""
    if k > 1000:
        p *= POW2[1022 + 200]
        k -= 200
    elif k < -1000:
        p *= POW2[1022 - 200]
        k += 200
    return p * POW2[1022 + k]


@nb.njit(**_JIT)
def sincos_turns(t: float):
    """(sin 2πt, cos 2πt) of an angle t in turns. t − q/4 with q = rint(4t) is exact, so the
    reduction to |r| ≤ ⅛ turn costs no accuracy; then x = 2πr and Taylor series to x¹⁹."""
    q = np.rint(4.0 * t)
    x = (t - 0.25 * q) * TWO_PI
    x2 = x * x
    s = S19
    s = S17 + x2 * s
    s = S15 + x2 * s
    s = S13 + x2 * s
    s = S11 + x2 * s
    s = S9 + x2 * s
    s = S7 + x2 * s
    s = S5 + x2 * s
    s = S3 + x2 * s
    s = x + x * (x2 * s)
    c = C18
    c = C16 + x2 * c
    c = C14 + x2 * c
    c = C12 + x2 * c
    c = C10 + x2 * c
    c = C8 + x2 * c
    c = C6 + x2 * c
    c = C4 + x2 * c
    c = C2 + x2 * c
    c = 1.0 + x2 * c
    quadrant = np.int64(q) & 3            # 2πt = x + quadrant·π/2 (mod 2π); selects, no branch
    odd = (quadrant & 1) == 1
    sin = c if odd else s
    cos = s if odd else c
    sin = -sin if quadrant >= 2 else sin
    cos = -cos if (quadrant == 1 or quadrant == 2) else cos
    return sin, cos


SQRT_HALF = 0.7071067811865476
INV_LN10 = 0.43429448190325176
LN10 = 2.302585092994046
# log m = 2 atanh s = 2 (s + s³/3 + s⁵/5 + …), s = (m − 1)/(m + 1), |s| ≤ 0.1716 for m in [√½, √2):
# the first omitted term (s²⁹/29) is below 2⁻⁷⁴
_ODD = tuple(1.0 / k for k in range(3, 29, 2))
A3, A5, A7, A9, A11, A13, A15, A17, A19, A21, A23, A25, A27 = _ODD


@nb.njit(**_JIT)
def _log_parts(x: float):
    """(e, log m) with x = m·2^e, m in [√½, √2) (exact, by frexp), log m by its atanh series."""
    m, e = math.frexp(x)
    if m < SQRT_HALF:
        m *= 2.0
        e -= 1
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    p = A27
    p = A25 + s2 * p
    p = A23 + s2 * p
    p = A21 + s2 * p
    p = A19 + s2 * p
    p = A17 + s2 * p
    p = A15 + s2 * p
    p = A13 + s2 * p
    p = A11 + s2 * p
    p = A9 + s2 * p
    p = A7 + s2 * p
    p = A5 + s2 * p
    p = A3 + s2 * p
    return e, 2.0 * s + (2.0 * s) * (s2 * p)


@nb.njit(**_JIT)
def log(x: float) -> float:
    """The natural logarithm of a float64: e·log 2 (split as for :func:`exp`) + log m."""
    if x != x or x < 0.0:
        return np.nan
    if x == 0.0:
        return -np.inf
    if x == np.inf:
        return x
    e, lm = _log_parts(x)
    return e * LN2_HI + (e * LN2_LO + lm)


@nb.njit(**_JIT)
def log2(x: float) -> float:
    """log₂ x = e + log m / log 2: exact at the powers of two."""
    if x != x or x < 0.0:
        return np.nan
    if x == 0.0:
        return -np.inf
    if x == np.inf:
        return x
    e, lm = _log_parts(x)
    return e + lm * INV_LN2


@nb.njit(**_JIT)
def log_array(x: np.ndarray, base: float) -> np.ndarray:
    """log_base of every element (float64, same shape); base 2 by :func:`log2`, base e by
    :func:`log`, any other base as log x / log base (log 10 a constant)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.size)
    if base == 2.0:
        for i in range(flat.size):
            out[i] = log2(flat[i])
    else:
        inv = INV_LN10 if base == 10.0 else 1.0 / log(base)
        for i in range(flat.size):
            out[i] = log(flat[i]) if base == np.e else log(flat[i]) * inv
    return out.reshape(x.shape)


@nb.njit(**_JIT)
def power_array(base: float, v: np.ndarray) -> np.ndarray:
    """base**v for every element (float64, same shape): 2**v = 2**k · e^{(v − k) log 2} with
    k = rint(v) (exact at integers), other bases e^{v log base} (log 10 a constant)."""
    flat = np.ascontiguousarray(v).reshape(-1)
    out = np.empty(flat.size)
    lb = LN10 if base == 10.0 else log(base)
    for i in range(flat.size):
        t = flat[i]
        if base == 2.0 and abs(t) < 1e9:
            k = np.rint(t)
            out[i] = _times_pow2(exp((t - k) * (LN2_HI + LN2_LO)), int(k)) if abs(k) < 1020 \
                else exp(t * (LN2_HI + LN2_LO))
        else:
            out[i] = exp(t * lb)
    return out.reshape(v.shape)


@nb.njit(**_JIT)
def exp_array(x: np.ndarray) -> np.ndarray:
    """:func:`exp` of every element (float64, same shape)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.size)
    for i in range(flat.size):
        out[i] = exp(flat[i])
    return out.reshape(x.shape)


@nb.njit(**_JIT)
def sincos_turns_array(t: np.ndarray):
    """:func:`sincos_turns` of every element: (sin 2πt, cos 2πt), float64, same shape."""
    flat = np.ascontiguousarray(t).reshape(-1)
    s, c = np.empty(flat.size), np.empty(flat.size)
    for i in range(flat.size):
        s[i], c[i] = sincos_turns(flat[i])
    return s.reshape(t.shape), c.reshape(t.shape)


def atan(x: float) -> float:
    """arctan x (radians) of a Python float with + − × ÷ and sqrt only: atan x = π/2 − atan(1/x)
    for |x| > 1, two half-angle steps atan x = 2 atan(x / (1 + √(1 + x²))) to |x| ≤ tan(π/16),
    then 24 terms of the alternating series (remainder < 10⁻³⁵)."""
    x = float(x)
    if x != x:
        return x
    if x < 0:
        return -atan(-x)
    if x > 1.0:
        return 1.5707963267948966 - atan(1.0 / x)
    for _ in range(2):
        x = x / (1.0 + math.sqrt(1.0 + x * x))
    x2, term, total = x * x, x, 0.0
    for k in range(24):
        total += term / (2 * k + 1) if k % 2 == 0 else -term / (2 * k + 1)
        term *= x2
    return 4.0 * total


def cbrt(u: float) -> float:
    """The real cube root of a Python float with + − × ÷ only: u = m·2^(3e) with m in [½, 4)
    (exact), then 8 Newton steps y ← y − (y³ − m)/(3y²) from y = 1 (quadratic convergence from
    within a factor 1.6 of the root), times 2^e."""
    u = float(u)
    if u == 0.0 or u != u or u in (math.inf, -math.inf):
        return u
    if u < 0:
        return -cbrt(-u)
    m, e = math.frexp(u)
    r = e % 3
    m, e = math.ldexp(m, r), (e - r) // 3
    y = 1.0
    for _ in range(8):
        y = y - (y * y * y - m) / (3.0 * y * y)
    return math.ldexp(y, e)


# ----------------------------------------------------------------------------- Fourier transform

def factors(n: int) -> np.ndarray:
    """The prime factors of n ≥ 1 in increasing order (int64), 4s kept apart from 2s."""
    out, k = [], n
    for p in (4, 2):
        while k % p == 0:
            out.append(p)
            k //= p
    p = 3
    while p * p <= k:
        while k % p == 0:
            out.append(p)
            k //= p
        p += 2
    if k > 1:
        out.append(k)
    return np.array(out, np.int64)


def unit_roots(n: int, sign: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(Re, Im) of exp(sign·2πi j / n) for j = 0 … n−1, from :func:`sincos_turns`."""
    s, c = sincos_turns_array(np.arange(n, dtype=np.float64) / n)
    return c, sign * s


@nb.njit(**_JIT)
def inverse_fft_axis0(xr, xi, yr, yi, wr, wi, radices):
    """Unnormalised inverse DFT along axis 0 of the complex array (xr + i·xi) of shape (n, m),
    Σ_k x[k] e^{+2πi jk/n}, for all m columns at once; (wr, wi) = :func:`unit_roots` (n, +1),
    radices = :func:`factors` (n). (yr, yi) is work space of the same shape; the result is
    returned as (Re, Im), each one of the two pairs of buffers (both are overwritten).

    Stockham autosort, decimation in frequency: a stage of radix p over sub-transforms of length
    L (stride s = n/L) computes, for each position q < L/p and offset k < s,
    y[k + s(pq + j)] = (Σ_r x[k + s(q + rL/p)] ω_p^{jr}) · ω_L^{qj}, with ω_N = e^{2πi/N}; after
    the last stage the output is in natural order. Sums run over r in increasing order.
    """
    n, m = xr.shape
    s, length = 1, n
    for p in radices:
        sub = length // p
        for q in range(sub):
            for k in range(s):
                for j in range(p):
                    out = k + s * (p * q + j)
                    for c in range(m):
                        yr[out, c] = 0.0
                        yi[out, c] = 0.0
                    for r in range(p):
                        src = k + s * (q + r * sub)
                        t = (j * r * (n // p)) % n
                        ar, ai = wr[t], wi[t]
                        for c in range(m):
                            vr, vi = xr[src, c], xi[src, c]
                            yr[out, c] += vr * ar - vi * ai
                            yi[out, c] += vr * ai + vi * ar
                    t = (q * j * s) % n
                    if t != 0:
                        br, bi = wr[t], wi[t]
                        for c in range(m):
                            vr, vi = yr[out, c], yi[out, c]
                            yr[out, c] = vr * br - vi * bi
                            yi[out, c] = vr * bi + vi * br
        xr, xi, yr, yi = yr, yi, xr, xi
        s *= p
        length = sub
    return xr, xi


@nb.njit(**_JIT)
def irfft2_centred_one(sr, si, wr, wi, radices, out):
    """One real image from its rfft-layout spectrum, the bits of
    ``fftshift(irfft2(S, s=(D, D), norm="ortho"))`` up to rounding: S = sr + i·si of shape
    (D, D//2 + 1) (ky in FFT order, kx = 0 … D//2); out (D, D) float64 [y, x].

    The ky axis is inverted as a complex transform for every kx; each row y is then extended
    Hermitian-symmetrically in kx (only the real part of kx = 0 and, for even D, kx = D/2 is
    used, as a c2r transform does) and inverted; 1/D normalises both axes (ortho)."""
    d, h = sr.shape
    ur, ui = inverse_fft_axis0(sr.copy(), si.copy(), np.empty((d, h)), np.empty((d, h)),
                               wr, wi, radices)                                # [y, kx]
    vr, vi = np.empty((d, d)), np.empty((d, d))                                # [kx, y]
    for y in range(d):
        for kx in range(h):
            vr[kx, y] = ur[y, kx]
            vi[kx, y] = ui[y, kx]
        vi[0, y] = 0.0
        if d % 2 == 0:
            vi[d // 2, y] = 0.0
        for kx in range(1, (d + 1) // 2):
            vr[d - kx, y] = ur[y, kx]
            vi[d - kx, y] = -ui[y, kx]
    zr, _ = inverse_fft_axis0(vr, vi, np.empty((d, d)), np.empty((d, d)), wr, wi, radices)
    c = d // 2
    scale = 1.0 / d
    for x in range(d):
        for y in range(d):
            out[(y + c) % d, (x + c) % d] = zr[x, y] * scale


def irfft2_centred(spectra: np.ndarray) -> np.ndarray:
    """:func:`irfft2_centred_one` of each (D, D//2+1) complex spectrum in ``spectra`` (…, D, H):
    real images (…, D, D) float64, the same bits on every machine."""
    spectra = np.asarray(spectra, np.complex128)
    d = spectra.shape[-2]
    wr, wi = unit_roots(d, +1)
    radices = factors(d)
    flat = spectra.reshape(-1, d, spectra.shape[-1])
    out = np.empty((len(flat), d, d))
    for i in range(len(flat)):
        irfft2_centred_one(np.ascontiguousarray(flat[i].real), np.ascontiguousarray(flat[i].imag),
                           wr, wi, radices, out[i])
    return out.reshape(spectra.shape[:-2] + (d, d))
