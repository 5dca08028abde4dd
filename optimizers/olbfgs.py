"""Online L-BFGS: stochastic quasi-Newton with curvature pairs measured on one minibatch."""
from typing import NamedTuple

import numpy as np

from cryobench.optim import GradientMethod, Hyper, dot64, method
from cryobench.schedules import annealed_lr


class Pair(NamedTuple):
    """A curvature pair (s, y), kept with its float64 copies and its inner products sᵀy, yᵀy."""

    s: np.ndarray
    y: np.ndarray
    s64: np.ndarray
    y64: np.ndarray
    sy: float
    yy: float


def curvature_pair(s: np.ndarray, y: np.ndarray) -> Pair:
    """A :class:`Pair` of (s, y); its products are :func:`~cryobench.optim.dot64`'s."""
    s64, y64 = s.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
    return Pair(s, y, s64, y64, dot64(s, y), dot64(y, y))


def two_loop(g, pairs):
    """−H g by the L-BFGS two-loop recursion over ``pairs`` (oldest first), with
    H₀ = (1/n) Σ_i s_iᵀy_i / y_iᵀy_i (the online scaling; 1 without pairs). Inner products are
    accumulated in float64 against the pairs' float64 copies (no conversion per product)."""
    q, alpha = g.astype(np.float64), []
    flat = q.reshape(-1)
    for p in reversed(pairs):
        alpha.append(float(np.dot(p.s64, flat)) / p.sy)
        q -= alpha[-1] * p.y
    q *= np.mean([p.sy / p.yy for p in pairs]) if pairs else 1.0
    for p, a in zip(pairs, reversed(alpha)):
        q += (a - float(np.dot(p.y64, flat)) / p.sy) * p.s
    return (-q).astype(g.dtype)


@method(lr=Hyper(0.1, 1e-3, 1e1), decay=Hyper(1e-2, 1e-4, 1.0),
        damping=Hyper(0.0, 0.0, 1.0, log=False), batch_size=Hyper(100, 10, 1000, integer=True),
        memory=Hyper(30, 1, 100, integer=True))
def olbfgs(lr, decay, damping, batch_size, memory):
    """Online L-BFGS (Schraudolph, Yu & Günter, AISTATS 2007), as in Brubaker & Punjani (2015):

        g_t = ∇f_{B_t}(x_t),   p_t = −H_t g_t (two-loop recursion, m = ``memory`` pairs),
        x_{t+1} = x_t + η_t p_t,   η_t = η₀ (1 + λ t)^(−0.75),
        s_t = x_{t+1} − x_t,   y_t = ∇f_{B_t}(x_{t+1}) − g_t + λ_reg s_t,

    with η₀ = ``lr``, λ = ``decay``, λ_reg = ``damping``; H_t's initial scaling is the mean of
    s_iᵀy_i / y_iᵀy_i over the stored pairs (1 with none), and pairs with s_tᵀy_t ≤ 0 are not
    stored. The second gradient is on the SAME minibatch B_t and is charged: each iteration
    costs 2 |B| gradient evaluations. The pairs are an immutable tuple (a step shares the
    arrays of the pairs it keeps), each with float64 copies: 6 volumes of memory per pair.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0, "pairs": ()}

    def step(state, oracle):
        x, t, pairs = state["x"], state["t"], state["pairs"]
        batch = oracle.next_batch(batch_size)
        _, g = oracle.value_and_grad(x, batch)
        x_new = (x + annealed_lr(lr, t, decay) * two_loop(g, pairs)).astype(x.dtype)
        _, g_new = oracle.value_and_grad(x_new, batch)
        s = x_new - x
        pair = curvature_pair(s, g_new - g + np.asarray(damping, x.dtype) * s)
        if pair.sy > 0:
            pairs = (pairs + (pair,))[-memory:]
        return {"x": x_new, "t": t + 1, "pairs": pairs}

    return GradientMethod(init, step)
