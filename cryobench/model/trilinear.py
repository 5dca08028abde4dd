"""Trilinear slicing of a real volume's rfft half grid, compiled with numba.

The known-pose likelihood (:mod:`cryobench.model.refinement`) reads its slices at points
ξ = R (q, 0)ᵀ of the half grid (D, D, D//2 + 1) that ``scipy.fft.rfftn`` returns (integer
frequencies, indices modulo D along z and y). A point with ξx < 0 is read at −ξ and
conjugated (V̂(−ξ) = conj V̂(ξ) for a real volume), so the points arrive folded into ξx ≥ 0
with a flag. Each kernel computes the 8 trilinear weights of a point from ξ itself, so no
(points × 8) index and weight arrays are built:

* :func:`gather` — S(ξ) = Σ_k t(ξ − k) V̂(k), the slice;
* :func:`scatter` — its exact adjoint Pᵀ G on the half grid;
* :func:`scatter_weights` — Σ c t(ξ − k)² at each node k and at its Hermitian partner −k
  on the full grid (the Hessian diagonal of :meth:`RefinementLikelihood.weights`), or
  Σ c t(ξ − k) (EM's gridded weights, the Hessian's row sums).

The scatters split the points into P = ``PARTS`` fixed consecutive chunks, each accumulated in
float64 into its own grid in parallel, and :func:`sum_parts` adds the grids in the order 0, 1, …: the result does
not depend on the number of threads or their scheduling. No BLAS and no reassociation
(numba's default, no ``fastmath``), so the bits are the same on every x86-64 machine.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)

_JIT = dict(cache=True)
# The number of partial grids of a scatter: fixed, not the thread count. One is fastest where a
# grid runs one cell per core (one thread each): at 128 px, 100 images, the adjoint took 33 ms
# with 1, 42 ms with 2 and 72 ms with 4 on 2 busy cores (the partial grids' zeroing, summing
# and cache misses); more pay where one process has many idle cores.
PARTS = 1


@nb.njit(parallel=True, **_JIT)
def slice_points(points, rotations, xi, flip):
    """ξ = R_i (q, 0)ᵀ for every rotation R_i (n, 3, 3) and point q (Np, 2), image by image,
    folded into ξx ≥ 0: xi (n·Np, 3) float64 and flip (n·Np,) bool, filled and returned."""
    n_pts = points.shape[0]
    for i in nb.prange(rotations.shape[0]):
        r = rotations[i]
        for j in range(n_pts):
            qx, qy = points[j, 0], points[j, 1]
            x = qx * r[0, 0] + qy * r[0, 1]
            y = qx * r[1, 0] + qy * r[1, 1]
            z = qx * r[2, 0] + qy * r[2, 1]
            m = i * n_pts + j
            flip[m] = x < 0
            if x < 0:
                x, y, z = -x, -y, -z
            xi[m, 0], xi[m, 1], xi[m, 2] = x, y, z
    return xi, flip


@nb.njit(inline="always")
def _stencil(x, y, z, d):
    """The trilinear stencil of (x, y, z), x ≥ 0: node indices (x0, x1, y0, y1, z0, z1),
    modulo D along y and z (x1 may pass the half grid's last plane D//2: see
    :func:`_half_node`), and the offsets t from the lower nodes (weights 1 − t and t)."""
    bx, by, bz = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
    tx, ty, tz = x - bx, y - by, z - bz
    x1 = bx + 1
    y0, z0 = by % d, bz % d
    y1, z1 = (y0 + 1) % d, (z0 + 1) % d
    return bx, x1, y0, y1, z0, z1, tx, ty, tz


@nb.njit(inline="always")
def _corner(stencil, c):
    """Node (kz, ky, kx) and weight of corner c = 4 cz + 2 cy + cx of a :func:`_stencil`."""
    x0, x1, y0, y1, z0, z1, tx, ty, tz = stencil
    kz, wz = (z1, tz) if c & 4 else (z0, 1.0 - tz)
    ky, wy = (y1, ty) if c & 2 else (y0, 1.0 - ty)
    kx, wx = (x1, tx) if c & 1 else (x0, 1.0 - tx)
    return kz, ky, kx, (wx * wy) * wz


@nb.njit(inline="always")
def _half_node(kz, ky, kx, d):
    """Node (kz, ky, kx) on the half grid: itself, or where kx > D//2 its Hermitian partner
    (−kz, −ky, D − kx) modulo D, read conjugated (flag True)."""
    if kx > d // 2:
        return (d - kz) % d, (d - ky) % d, d - kx, True
    return kz, ky, kx, False


@nb.njit(parallel=True, **_JIT)
def gather(volume_hat, xi, flip, out):
    """out[m] = Σ_k t(ξ_m − k) V̂(k), conjugated where flip[m]; V̂ complex (D, D, D//2 + 1),
    accumulated in float64."""
    d = volume_hat.shape[0]
    for m in nb.prange(xi.shape[0]):
        stencil = _stencil(xi[m, 0], xi[m, 1], xi[m, 2], d)
        re = 0.0
        im = 0.0
        for c in range(8):
            kz, ky, kx, w = _corner(stencil, c)
            hz, hy, hx, conj = _half_node(kz, ky, kx, d)
            v = volume_hat[hz, hy, hx]
            re += w * v.real
            im += -w * v.imag if conj else w * v.imag
        out[m] = complex(re, -im if flip[m] else im)
    return out


@nb.njit(parallel=True, **_JIT)
def scatter(values, xi, flip, parts):
    """Adjoint of :func:`gather`: Σ_m t(ξ_m − k) G_m (G conjugated where flip) on the half grid.
    parts (P, D, D, D//2 + 1) complex128, zeroed, one partial sum each (:func:`sum_parts`)."""
    n_parts, n_pts, d = parts.shape[0], xi.shape[0], parts.shape[1]
    for p in nb.prange(n_parts):
        grid = parts[p]
        for m in range(p * n_pts // n_parts, (p + 1) * n_pts // n_parts):
            stencil = _stencil(xi[m, 0], xi[m, 1], xi[m, 2], d)
            gr, gi = values[m].real, values[m].imag
            if flip[m]:
                gi = -gi
            for c in range(8):
                kz, ky, kx, w = _corner(stencil, c)
                hz, hy, hx, conj = _half_node(kz, ky, kx, d)
                grid[hz, hy, hx] += complex(w * gr, -w * gi if conj else w * gi)
    return parts


@nb.njit(parallel=True, **_JIT)
def scatter_weights(values, xi, parts, squared):
    """Σ_m c_m t(ξ_m − k)² (``squared``) or Σ_m c_m t(ξ_m − k) at each node k and at −k
    (modulo D) of the full grid. parts (P, D, D, D) float64, zeroed, one partial sum each
    (:func:`sum_parts`)."""
    n_parts, n_pts, d = parts.shape[0], xi.shape[0], parts.shape[1]
    for p in nb.prange(n_parts):
        grid = parts[p]
        for m in range(p * n_pts // n_parts, (p + 1) * n_pts // n_parts):
            stencil = _stencil(xi[m, 0], xi[m, 1], xi[m, 2], d)
            for c in range(8):
                kz, ky, kx, w = _corner(stencil, c)
                v = values[m] * (w * w if squared else w)
                grid[kz, ky, kx] += v
                grid[(d - kz) % d, (d - ky) % d, (d - kx) % d] += v
    return parts


def sum_parts(parts: np.ndarray) -> np.ndarray:
    """parts[0] + parts[1] + … in that order, element by element (into parts[0])."""
    _sum_in_order(parts.reshape(len(parts), -1))
    return parts[0]


@nb.njit(parallel=True, **_JIT)
def _sum_in_order(flat):
    for j in nb.prange(flat.shape[1]):
        acc = flat[0, j]
        for k in range(1, flat.shape[0]):
            acc += flat[k, j]
        flat[0, j] = acc
