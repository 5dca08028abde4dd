"""The task's random-sphere initial density, with the same bits on every machine.

:func:`cryobench.task.random_spheres` and :func:`cryobench.task.match_power` define the initial
density (paper Fig. 5), but their bits follow the machine: ``tanh`` and ``**`` are NumPy's
SIMD-dispatched or libm's FMA-dependent functions, and the power matching runs through the
likelihood's float32 BLAS products. They stay as they are — the numerics fingerprint
(:mod:`cryobench.harness.fingerprint`) probes them — and :func:`spheres` and :func:`power_scale`
compute the same quantities here with :mod:`cryobench.base.portable` (float64, + − × ÷ √ only,
a fixed order, no BLAS), so every machine builds the same ``init.mrc`` for a task:

* :func:`spheres` — the same random draws as ``random_spheres``, the soft edge
  ½(1 − tanh((d − r)/½)) written as 1 / (1 + e^{4(d − r)}), the cube root by Newton steps;
* :func:`power_scale` — the factor a of ``match_power``, E_R Σ_q w C² |a P_R V̂|² = Σ_q w (|Î|² − 1)
  over the images given: V̂ exactly on the oversampled low-frequency cube (three DFT passes),
  tricubically (Keys) interpolated at the quadrature's central slices as the slicer does, the
  images' spectra by direct DFT at the half-disk frequencies, and the CTF of
  :func:`cryobench.data.simulate.portable_ctf`.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from cryobench.base.portable import cbrt, exp, unit_roots
from cryobench.data.render import portable_ctf

_JIT = dict(cache=True)          # no fastmath (see cryobench.base.portable)


@nb.njit(**_JIT)
def _add_sphere(vol, cx, cy, cz, radius):
    """vol[z, y, x] += 1 / (1 + e^{4(d − radius)}), d the distance of voxel (x, y, z) − box//2 to
    (cx, cy, cz) in voxels: ½(1 − tanh((d − radius)/½)), a ball with a 1-voxel soft edge."""
    box = vol.shape[0]
    c = box // 2
    for z in range(box):
        dz = (z - c) - cz
        for y in range(box):
            dy = (y - c) - cy
            for x in range(box):
                dx = (x - c) - cx
                d = math.sqrt(dx * dx + dy * dy + dz * dz)
                vol[z, y, x] += 1.0 / (1.0 + exp(2.0 * ((d - radius) / 0.5)))


def spheres(box: int, pixel_size: float, radius: float, rng: np.random.Generator,
            n_spheres: int, radius_min: float, radius_max: float) -> np.ndarray:
    """Σ of ``n_spheres`` unit-density soft-edged balls (edge width 1 voxel), V[z, y, x] float32:
    :func:`cryobench.task.random_spheres` (the same draws from ``rng``, in the same order), with
    the same bits on every machine (module doc).

    Centres are uniform in the ball of radius 0.7·``radius`` (Å) and radii uniform in
    [radius_min, radius_max]·``radius``; all lengths are converted to voxels.
    """
    r_px = radius / pixel_size
    vol = np.zeros((box, box, box))
    for _ in range(n_spheres):
        u = rng.normal(size=3)
        norm = math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        reach = cbrt(rng.uniform())
        centre = [u[i] / norm * 0.7 * r_px * reach for i in range(3)]
        rad = rng.uniform(radius_min, radius_max) * r_px
        _add_sphere(vol, centre[0], centre[1], centre[2], rad)
    return vol.astype(np.float32)


def _twiddles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Re, Im) of e^{−2πi j/n}, j = 0 … n−1."""
    return unit_roots(n, -1)


@nb.njit(**_JIT)
def _cube(vol, m, oversampling, tr, ti):
    """V̂(ξ) = D⁻¹ Σ_x V(x) e^{−2πi ξ·(x − c)/D} on ξ = (j − m)/oversampling, j = 0 … 2m, per
    axis: (Re, Im) of C[jz, jy, jx]. (tr, ti) = e^{−2πi t/(oversampling·D)}; x, then y, then z,
    each summed in increasing order."""
    d = vol.shape[0]
    n, period, c = 2 * m + 1, oversampling * d, d // 2
    ar, ai = np.zeros((d, d, n)), np.zeros((d, d, n))             # [z, y, jx]
    for z in range(d):
        for y in range(d):
            for j in range(n):
                sr, si = 0.0, 0.0
                for x in range(d):
                    t = ((j - m) * (x - c)) % period
                    v = vol[z, y, x]
                    sr += v * tr[t]
                    si += v * ti[t]
                ar[z, y, j] = sr
                ai[z, y, j] = si
    br, bi = np.zeros((d, n, n)), np.zeros((d, n, n))             # [z, jy, jx]
    for z in range(d):
        for jy in range(n):
            for y in range(d):
                t = ((jy - m) * (y - c)) % period
                wr, wi = tr[t], ti[t]
                for jx in range(n):
                    vr, vi = ar[z, y, jx], ai[z, y, jx]
                    br[z, jy, jx] += wr * vr - wi * vi
                    bi[z, jy, jx] += wr * vi + wi * vr
    cr, ci = np.zeros((n, n, n)), np.zeros((n, n, n))             # [jz, jy, jx]
    for jz in range(n):
        for z in range(d):
            t = ((jz - m) * (z - c)) % period
            wr, wi = tr[t], ti[t]
            for jy in range(n):
                for jx in range(n):
                    vr, vi = br[z, jy, jx], bi[z, jy, jx]
                    cr[jz, jy, jx] += wr * vr - wi * vi
                    ci[jz, jy, jx] += wr * vi + wi * vr
    for jz in range(n):
        for jy in range(n):
            for jx in range(n):
                cr[jz, jy, jx] /= d
                ci[jz, jy, jx] /= d
    return cr, ci


@nb.njit(**_JIT)
def _keys(t):
    """The 4 Keys (a = −½) cubic weights of a point at fraction t past its floor sample
    (as :func:`cryobench.model.interpolate.cubic_taps`)."""
    t2, t3 = t * t, t * t * t
    return (-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0,
            -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2)


@nb.njit(**_JIT)
def _mean_slice_power(cr, ci, m, oversampling, directions, weights, points):
    """Σ_d w_d |V̂(R_d (q, 0))|² for every point q (Np,), V̂ interpolated tricubically from the
    cube; R_d = R_z(α) R_y(β) of direction d (its first two columns from d with + − × ÷ √:
    (cos α cos β, sin α cos β, −sin β) and (−sin α, cos α, 0)); directions summed in order."""
    out = np.zeros(points.shape[0])
    for p in range(points.shape[0]):
        qx, qy = points[p, 0], points[p, 1]
        for d in range(directions.shape[0]):
            x, y, z = directions[d, 0], directions[d, 1], directions[d, 2]
            rho = math.sqrt(x * x + y * y)
            ca, sa = (x / rho, y / rho) if rho > 0.0 else (1.0, 0.0)
            cb = min(max(z, -1.0), 1.0)
            xi = (qx * (ca * cb) + qy * (-sa), qx * (sa * cb) + qy * ca, qx * (-rho))
            base = np.empty(3, np.int64)
            w = np.empty((3, 4))
            for a in range(3):
                coord = xi[a] * oversampling + m
                f = math.floor(coord)
                base[a] = np.int64(f) - 1
                w[a, 0], w[a, 1], w[a, 2], w[a, 3] = _keys(coord - f)
            vr, vi = 0.0, 0.0
            for a in range(4):                       # z
                for b in range(4):                   # y
                    wab = w[2, a] * w[1, b]
                    for c in range(4):               # x
                        wt = wab * w[0, c]
                        vr += wt * cr[base[2] + a, base[1] + b, base[0] + c]
                        vi += wt * ci[base[2] + a, base[1] + b, base[0] + c]
            out[p] += weights[d] * (vr * vr + vi * vi)
    return out


@nb.njit(**_JIT)
def _image_power(images, inv_sigma, points, weights, tr, ti):
    """Per image, Σ_q w_q |Î(q)/σ|² over the integer points q, Î(q) = D⁻¹ Σ_x I(x)
    e^{−2πi q·(x − c)/D} by direct DFT (x first, then y, in increasing order)."""
    n, d = images.shape[0], images.shape[1]
    c = d // 2
    r = 0
    for p in range(points.shape[0]):
        r = max(r, abs(np.int64(points[p, 0])))
    out = np.empty(n)
    rows_r, rows_i = np.empty((d, 2 * r + 1)), np.empty((d, 2 * r + 1))
    for i in range(n):
        for y in range(d):
            for k in range(2 * r + 1):
                sr, si = 0.0, 0.0
                for x in range(d):
                    t = ((k - r) * (x - c)) % d
                    v = np.float64(images[i, y, x])
                    sr += v * tr[t]
                    si += v * ti[t]
                rows_r[y, k] = sr
                rows_i[y, k] = si
        total = 0.0
        for p in range(points.shape[0]):
            kx, ky = np.int64(points[p, 0]), np.int64(points[p, 1])
            sr, si = 0.0, 0.0
            for y in range(d):
                t = (ky * (y - c)) % d
                vr, vi = rows_r[y, kx + r], rows_i[y, kx + r]
                sr += tr[t] * vr - ti[t] * vi
                si += tr[t] * vi + ti[t] * vr
            sr, si = sr / d * inv_sigma[i], si / d * inv_sigma[i]
            total += weights[p] * (sr * sr + si * si)
        out[i] = total
    return out


def power_scale(volume: np.ndarray, likelihood, images: np.ndarray, ctf, sigma) -> float:
    """The scale a of :func:`cryobench.task.match_power` for ``images`` (n, D, D) with their
    CTFs and noise σ: a² = Σ_i Σ_q w_q (|Î_i(q)|²/σ_i² − 1) / Σ_i Σ_q w_q (C_i(q)/σ_i)²
    Σ_d w_d |P_{R_d} V̂(q)|², over the likelihood's half-disk frequencies q and quadrature
    directions d; 1 if the denominator is 0. The same bits on every machine (module doc)."""
    vol = np.ascontiguousarray(volume, np.float64)
    box, os_ = likelihood.box, int(likelihood.oversampling)
    points = np.ascontiguousarray(likelihood.points, np.float64)
    weights = np.where((points[:, 0] == 0) & (points[:, 1] == 0), 1.0, 2.0)
    kmax = max(math.sqrt(px * px + py * py) for px, py in points.tolist())
    m = int(math.floor(os_ * kmax)) + 2
    tr, ti = _twiddles(os_ * box)
    cr, ci = _cube(vol, m, os_, tr, ti)
    quad = likelihood.quadrature
    mean_power = _mean_slice_power(cr, ci, m, float(os_), np.ascontiguousarray(quad.directions),
                                   np.ascontiguousarray(quad.direction_weights, np.float64),
                                   points)
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (len(images),))
    inv_sigma = 1.0 / sigma
    tr, ti = _twiddles(box)
    power = _image_power(np.asarray(images), inv_sigma, points, weights, tr, ti)
    f = 1.0 / (box * likelihood.pixel_size)
    c = portable_ctf(ctf, points[:, 0] * f, points[:, 1] * f) * inv_sigma[:, None]
    c2 = c * c
    terms = (c2 * (mean_power * weights)[None, :]).reshape(-1)
    model = math.fsum(terms.tolist())
    excess = math.fsum(power.tolist()) - len(images) * math.fsum(weights.tolist())
    return math.sqrt(max(excess, 0.0) / model) if model > 0 else 1.0
