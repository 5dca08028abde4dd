"""Cubic (Keys, a = −½) interpolation of complex spectra, compiled with numba.

Coordinates are in array-index units of the sampled grid. The stencil is 4 samples per axis
(offsets −1 … 2 from the floor), precomputed once per point by :func:`cubic_taps`; the grids
the slicer and the likelihood build hold every sample their stencils reach. The 3-D gather
(:func:`gather_half_cube`) and the scatter (:func:`scatter_half_cube`) are exact transposes,
so the slicing operator's adjoint is exact. (The 2-D gather of the rotated image spectra is
part of :func:`cryobench.model.kernels.build_rows`.)
"""
from __future__ import annotations

import numba as nb
import numpy as np

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)

_JIT = dict(cache=True)


def cubic_taps(coords: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The 4ᵏ-sample stencils of points ``coords`` (…, k) in index units: the index of each
    stencil's first sample (…, k) and the 4 weights per axis, axis by axis (…, 4k)."""
    coords = np.asarray(coords, float)
    base = np.floor(coords)
    t = coords - base
    t2, t3 = t * t, t * t * t
    w = np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0,
                  -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2], axis=-1)   # (…, k, 4)
    return (base.astype(np.int64) - 1,
            np.ascontiguousarray(w.reshape(coords.shape[:-1] + (-1,)), dtype))


@nb.njit(parallel=True, **_JIT)
def gather_half_cube(cube, base, weights, flip, out):
    """Tricubic interpolation at precomputed stencils, conjugated where flip[m].

    cube (n0, n1, 2·n2) is a complex cube viewed as reals (Re, Im alternating along the last
    axis); base, weights from :func:`cubic_taps`. A point's 4 x-samples are 8 consecutive
    reals, summed over the 16 (axis 0, axis 1) rows with weight w0·w1 as 8 running sums, then
    combined with the x-weights. For a real volume V̂(−ξ) = conj V̂(ξ), so the slicer stores
    only the half cube ξx ≥ −margin and a point with ξx < 0 is looked up at −ξ, conjugated.
    """
    for m in nb.prange(base.shape[0]):
        i0, i1, j = base[m, 0], base[m, 1], 2 * base[m, 2]
        w = weights[m]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = w[0] - w[0]
        for a in range(4):
            for b in range(4):
                wab = w[a] * w[4 + b]
                r = cube[i0 + a, i1 + b]
                s0 += wab * r[j]
                s1 += wab * r[j + 1]
                s2 += wab * r[j + 2]
                s3 += wab * r[j + 3]
                s4 += wab * r[j + 4]
                s5 += wab * r[j + 5]
                s6 += wab * r[j + 6]
                s7 += wab * r[j + 7]
        re = w[8] * s0 + w[9] * s2 + w[10] * s4 + w[11] * s6
        im = w[8] * s1 + w[9] * s3 + w[10] * s5 + w[11] * s7
        out[m] = complex(re, -im if flip[m] else im)
    return out


@nb.njit(parallel=True, **_JIT)
def scatter_half_cube(values, base, weights, flip, parts):
    """Adjoint of :func:`gather_half_cube`; returns the cube parts[0] (overwritten).

    parts (K, n0, n1, 2·n2) are K zeroed cubes viewed as reals. The points are split into K
    fixed consecutive chunks, each scattered into its own cube in parallel, and the cubes are
    summed in order k = 0, 1, …: the result does not depend on the number of threads or on
    their scheduling.
    """
    n_parts, n_pts = parts.shape[0], base.shape[0]
    for k in nb.prange(n_parts):
        cube = parts[k]
        for m in range(k * n_pts // n_parts, (k + 1) * n_pts // n_parts):
            i0, i1, j = base[m, 0], base[m, 1], 2 * base[m, 2]
            w = weights[m]
            vr, vi = values[m].real, values[m].imag
            if flip[m]:
                vi = -vi
            t0, t1, t2, t3 = w[8] * vr, w[8] * vi, w[9] * vr, w[9] * vi
            t4, t5, t6, t7 = w[10] * vr, w[10] * vi, w[11] * vr, w[11] * vi
            for a in range(4):
                for b in range(4):
                    wab = w[a] * w[4 + b]
                    r = cube[i0 + a, i1 + b]
                    r[j] += wab * t0
                    r[j + 1] += wab * t1
                    r[j + 2] += wab * t2
                    r[j + 3] += wab * t3
                    r[j + 4] += wab * t4
                    r[j + 5] += wab * t5
                    r[j + 6] += wab * t6
                    r[j + 7] += wab * t7
    flat = parts.reshape(n_parts, -1)
    for j in nb.prange(flat.shape[1]):
        acc = flat[0, j]
        for k in range(1, n_parts):
            acc += flat[k, j]
        flat[0, j] = acc
    return parts[0]
