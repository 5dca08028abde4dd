"""Online L-BFGS: stochastic quasi-Newton with curvature pairs measured on one minibatch."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, dot64, method
from cryobench.schedules import annealed_lr


def two_loop(g, S, Y, order):
    """−H g by the L-BFGS two-loop recursion over the pairs S[i], Y[i], i in ``order`` (oldest
    first), with H₀ = (1/n) Σ_i s_iᵀy_i / y_iᵀy_i (the online scaling; 1 without pairs)."""
    q, alpha = g.astype(np.float64), {}
    for i in reversed(order):
        alpha[i] = dot64(S[i], q) / dot64(S[i], Y[i])
        q -= alpha[i] * Y[i]
    q *= np.mean([dot64(S[i], Y[i]) / dot64(Y[i], Y[i]) for i in order]) if order else 1.0
    for i in order:
        q += (alpha[i] - dot64(Y[i], q) / dot64(S[i], Y[i])) * S[i]
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
    costs 2 |B| gradient evaluations.
    """
    def init(x0, *, budget, rng):
        buf = np.zeros((memory, *x0.shape), x0.dtype)
        return {"x": x0.copy(), "t": 0, "S": buf, "Y": buf.copy(), "n": 0, "head": 0}

    def step(state, oracle):
        x, t, n, head = state["x"], state["t"], state["n"], state["head"]
        batch = oracle.next_batch(batch_size)
        _, g = oracle.value_and_grad(x, batch)
        order = [(head - n + i) % memory for i in range(n)]
        p = two_loop(g, state["S"], state["Y"], order)
        x_new = (x + annealed_lr(lr, t, decay) * p).astype(x.dtype)
        _, g_new = oracle.value_and_grad(x_new, batch)
        s = x_new - x
        y = g_new - g + np.asarray(damping, x.dtype) * s
        S, Y = state["S"], state["Y"]
        if dot64(s, y) > 0:
            S, Y = S.copy(), Y.copy()
            S[head], Y[head] = s, y
            head, n = (head + 1) % memory, min(n + 1, memory)
        return {"x": x_new, "t": t + 1, "S": S, "Y": Y, "n": n, "head": head}

    return GradientMethod(init, step)
