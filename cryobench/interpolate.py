"""Cubic (Keys, a = −½) interpolation of complex spectra, compiled with numba.

Coordinates are in array-index units of the sampled grid. The stencil is 4 points per axis,
so a point needs two samples of margin on each side; the grids built by
:func:`cryobench.fourier.cube_frequencies` leave that margin. The adjoint of the 3-D gather is
the scatter, so the slicing operator and its transpose are exact transposes of each other.
"""
from __future__ import annotations

import numba as nb
import numpy as np

_JIT = dict(cache=True)


@nb.njit(**_JIT)
def _keys(t):
    """Weights of the 4 samples at offsets −1, 0, 1, 2 for a point at fraction t ∈ [0, 1)."""
    t2 = t * t
    t3 = t2 * t
    w0 = -0.5 * t3 + t2 - 0.5 * t
    w1 = 1.5 * t3 - 2.5 * t2 + 1.0
    w2 = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w3 = 0.5 * t3 - 0.5 * t2
    return w0, w1, w2, w3


@nb.njit(parallel=True, **_JIT)
def gather_cube(cube, coords, out):
    """out[m] = Σ w · cube[z, y, x] over the 4³ stencil at coords[m] = (z, y, x)."""
    for m in nb.prange(coords.shape[0]):
        z, y, x = coords[m, 0], coords[m, 1], coords[m, 2]
        iz, iy, ix = int(np.floor(z)), int(np.floor(y)), int(np.floor(x))
        wz = _keys(z - iz)
        wy = _keys(y - iy)
        wx = _keys(x - ix)
        acc = 0j
        for a in range(4):
            for b in range(4):
                wab = wz[a] * wy[b]
                for c in range(4):
                    acc += wab * wx[c] * cube[iz - 1 + a, iy - 1 + b, ix - 1 + c]
        out[m] = acc
    return out


@nb.njit(**_JIT)
def scatter_cube(values, coords, cube):
    """Adjoint of :func:`gather_cube`: cube[stencil of m] += w · values[m] (accumulates)."""
    for m in range(coords.shape[0]):
        z, y, x = coords[m, 0], coords[m, 1], coords[m, 2]
        iz, iy, ix = int(np.floor(z)), int(np.floor(y)), int(np.floor(x))
        wz = _keys(z - iz)
        wy = _keys(y - iy)
        wx = _keys(x - ix)
        v = values[m]
        for a in range(4):
            for b in range(4):
                wab = wz[a] * wy[b]
                for c in range(4):
                    cube[iz - 1 + a, iy - 1 + b, ix - 1 + c] += wab * wx[c] * v
    return cube


@nb.njit(parallel=True, **_JIT)
def gather_images(patches, coords, out):
    """out[i, a, p] = bicubic value of patches[i] at coords[a, p] = (y, x) (in-plane rotation)."""
    n_img = patches.shape[0]
    n_ang, n_pts = coords.shape[0], coords.shape[1]
    for i in nb.prange(n_img):
        for a in range(n_ang):
            for p in range(n_pts):
                y, x = coords[a, p, 0], coords[a, p, 1]
                iy, ix = int(np.floor(y)), int(np.floor(x))
                wy = _keys(y - iy)
                wx = _keys(x - ix)
                acc = 0j
                for b in range(4):
                    for c in range(4):
                        acc += wy[b] * wx[c] * patches[i, iy - 1 + b, ix - 1 + c]
                out[i, a, p] = acc
    return out
