"""The compiled pass of the importance-sampled likelihood: only the sampled terms.

For each image i the sampler (:mod:`cryobench.model.importance`) gives index sets A_i (in-plane
angles), S_i (shifts) and D_i (directions), each with log weights log(w_x ω_x): the quadrature
weight w_x times the importance weight ω_x = c_x / (q_x N) of a point drawn c_x times out of N
from the proposal q (ω = 1 for a factor evaluated in full). The terms computed are the product
set A_i × S_i × D_i only:

    G_iasd = Re Σ_q w_q Y_ias(q)* C_ia(q) S_d(q) − ½ Σ_q w_q C_ia(q)² |S_d(q)|²
    log p̂_i = log Σ_{a∈A_i, s∈S_i, d∈D_i} w_a ω_a w_s ω_s w_d ω_d exp(G_iasd)

with the rows of the exact kernel (:func:`cryobench.model.kernels.build_rows`, the same
bicubic gather, CTF and shift phases) built for the sampled (a, s) only and the slices S_d
gathered for the sampled d only. With the gradient, the self-normalised responsibilities
P̂_iasd = w ω exp(G_iasd) / p̂_i accumulate pa[d] += Σ_{a,s} P̂ A_ias and pq[d] += Σ_a (Σ_s P̂) Q_ia,
exactly the exact kernel's Pᵀ A and (Σ_s P)ᵀ Q restricted to the sampled terms, so the caller
finishes with the same slice adjoint.

Images are split into a fixed number of parts (:data:`PARTS`, by position in the batch), each
accumulated in order into its own buffer and the buffers summed in order, so the result does
not depend on the number of threads.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)
from cryobench.model.kernels import DETERMINISTIC_FASTMATH, _sin

PARTS = 4
_FAST = dict(cache=True, fastmath=DETERMINISTIC_FASTMATH)


@nb.njit(**_FAST)
def _image_rows(re, im, i, angles, shifts, tap_index, tap_weight, cos2, sin2, iso, aniso, env,
                cos_ast, sin_ast, weights, ph_re, ph_im, rows, qrows):
    """rows[k, t] (2Np) = A of (angle angles[k], shift shifts[t]) and qrows[k] (Np) = Q of angle
    angles[k], for image i: :func:`cryobench.model.kernels.build_rows` on the sampled points."""
    n_pts = tap_index.shape[1]
    for k in range(angles.shape[0]):
        ang = angles[k]
        for p in range(n_pts):
            y0, x0 = tap_index[ang, p, 0], tap_index[ang, p, 1]
            tw = tap_weight[ang, p]
            yr = re[i, 0, 0] - re[i, 0, 0]
            yi = yr
            for b in range(4):
                for c in range(4):
                    w = tw[b] * tw[4 + c]
                    yr += w * re[i, y0 + b, x0 + c]
                    yi += w * im[i, y0 + b, x0 + c]
            chi = iso[p, i] + aniso[p, i] * (cos2[ang, p] * cos_ast[i] + sin2[ang, p] * sin_ast[i])
            wc = weights[p] * env[p, i] * _sin(chi)
            qrows[k, p] = wc * wc / weights[p]
            wyr, wyi = wc * yr, wc * yi
            for t in range(shifts.shape[0]):
                er, ei = ph_re[ang, shifts[t], p], ph_im[ang, shifts[t], p]
                rows[k, t, 2 * p] = wyr * er - wyi * ei
                rows[k, t, 2 * p + 1] = wyr * ei + wyi * er


@nb.njit(parallel=True, **_FAST)
def sampled_terms(re, im, tap_index, tap_weight, cos2, sin2, iso, aniso, env, cos_ast, sin_ast,
                  weights, ph_re, ph_im, slices, spow,
                  a_ptr, a_idx, a_lw, s_ptr, s_idx, s_lw, d_ptr, d_idx, d_lw,
                  gradient, hard, log_total, pa_parts, pq_parts, a_marg, s_marg, d_marg):
    """Log p̂_i (into log_total), and with ``gradient`` the sampled Pᵀ A, (Σ_s P)ᵀ Q (into
    pa_parts, pq_parts (PARTS, Nd, ·), summed by the caller) and the posterior marginals of the
    sampled angles, shifts and directions (a_marg, s_marg, d_marg, laid out like a_idx, …).

    re, im (B, P, P): the images' oversampled spectra; slices (Nd, 2Np) the slices as
    interleaved reals and spow (Nd, Np) = −½|S|²; x_ptr, x_idx, x_lw: per image i the sampled
    points x_idx[x_ptr[i]:x_ptr[i+1]] and their log(w ω). With ``hard`` the responsibilities are
    one-hot at the sampled term of largest w ω exp(G) (the value stays log p̂).
    """
    n_img = log_total.shape[0]
    n_pts = spow.shape[1]
    dt = slices.dtype
    for part in nb.prange(PARTS):
        pa, pq = pa_parts[part], pq_parts[part]
        for i in range(part, n_img, PARTS):
            angles, shifts, dirs = (a_idx[a_ptr[i]:a_ptr[i + 1]], s_idx[s_ptr[i]:s_ptr[i + 1]],
                                    d_idx[d_ptr[i]:d_ptr[i + 1]])
            na, ns, nd = angles.shape[0], shifts.shape[0], dirs.shape[0]
            rows = np.empty((na, ns, 2 * n_pts), dt)
            qrows = np.empty((na, n_pts), dt)
            _image_rows(re, im, i, angles, shifts, tap_index, tap_weight, cos2, sin2, iso, aniso,
                        env, cos_ast, sin_ast, weights, ph_re, ph_im, rows, qrows)
            st = np.empty((2 * n_pts, nd), dt)               # sampled slices, direction last
            pt = np.empty((n_pts, nd), dt)
            for e in range(nd):
                for k in range(2 * n_pts):
                    st[k, e] = slices[dirs[e], k]
                for k in range(n_pts):
                    pt[k, e] = spow[dirs[e], k]
            joint = np.empty((na, ns, nd))
            acc = np.empty(nd, dt)
            for k in range(na):
                qacc = np.zeros(nd, dt)
                for p in range(n_pts):
                    v = qrows[k, p]
                    for e in range(nd):
                        qacc[e] += v * pt[p, e]
                for t in range(ns):
                    acc[:] = 0.0
                    row = rows[k, t]
                    for m in range(2 * n_pts):
                        v = row[m]
                        for e in range(nd):
                            acc[e] += v * st[m, e]
                    base = a_lw[a_ptr[i] + k] + s_lw[s_ptr[i] + t]
                    for e in range(nd):
                        joint[k, t, e] = float(acc[e] + qacc[e]) + base + d_lw[d_ptr[i] + e]
            top = joint.max()
            total = 0.0
            for k in range(na):
                for t in range(ns):
                    for e in range(nd):
                        total += math.exp(joint[k, t, e] - top)
            log_total[i] = top + math.log(total)
            if not gradient:
                continue
            resp = np.empty((na, ns, nd), dt)
            if hard:
                resp[:] = 0.0
                best = joint.argmax()
                resp.reshape(-1)[best] = 1.0
            else:
                for k in range(na):
                    for t in range(ns):
                        for e in range(nd):
                            resp[k, t, e] = math.exp(joint[k, t, e] - log_total[i])
            for k in range(na):
                for t in range(ns):
                    for e in range(nd):
                        r = resp[k, t, e]
                        a_marg[a_ptr[i] + k] += r
                        s_marg[s_ptr[i] + t] += r
                        d_marg[d_ptr[i] + e] += r
            for e in range(nd):
                dst_a, dst_q = pa[dirs[e]], pq[dirs[e]]
                for k in range(na):
                    rq = resp[0, 0, 0] - resp[0, 0, 0]
                    for t in range(ns):
                        r = resp[k, t, e]
                        rq += r
                        if r != 0.0:
                            row = rows[k, t]
                            for m in range(2 * n_pts):
                                dst_a[m] += r * row[m]
                    if rq != 0.0:
                        qrow = qrows[k]
                        for m in range(n_pts):
                            dst_q[m] += rq * qrow[m]
    return log_total
