"""Hessian-free optimization: truncated CG on a damped minibatch Hessian (finite-difference Hv)."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, dot64, method


def conjugate_gradient(matvec, b, x0, iters):
    """At most ``iters`` CG iterations on A x = b from x0 (A x0 costs one more ``matvec``
    unless x0 = 0); stops early at a zero residual or when dᵀAd ≤ 0 (negative curvature),
    returning the last iterate. Returns (x, q) with q = ½xᵀAx − bᵀx tracked by the CG
    recurrences (q(x0) − Σ ½ α_i r_iᵀr_i), robust to a slightly nonlinear finite-difference A."""
    x = x0.copy()
    r = b - matvec(x) if np.any(x0) else b.copy()
    q = -0.5 * dot64(x, b + r)
    d, rr = r.copy(), dot64(r, r)
    for _ in range(iters):
        if rr == 0:
            break
        Ad = matvec(d)
        dAd = dot64(d, Ad)
        if dAd <= 0:
            break
        a = rr / dAd
        x, r, q = x + a * d, r - a * Ad, q - 0.5 * a * rr
        rr, rr_old = dot64(r, r), rr
        d = r + (rr / rr_old) * d
    return x, q


@method(lr=Hyper(1.0, 1e-2, 1e1), damping=Hyper(0.1, 1e-4, 1e2),
        batch_size=Hyper(300, 10, 3000, integer=True), cg_iters=Hyper(5, 1, 50, integer=True),
        cg_decay=Hyper(0.95, 0.0, 1.0, log=False))
def hessian_free(lr, damping, batch_size, cg_iters, cg_decay):
    """Hessian-free optimization (Martens, ICML 2010), as in Brubaker & Punjani (2015):

        g = ∇f_B(x),   p ≈ argmin_p q(p) = gᵀp + ½ pᵀ(H_B + λI)p   (CG on (H_B + λI)p = −g),
        x_{t+1} = x_t + α p,

    B a fresh minibatch of ``batch_size`` images, ``cg_iters`` CG iterations started from
    ``cg_decay`` × the previous solution (Martens: 0.95), H_B v by directional finite difference
    of gradients on B (``oracle.hvp``), fixed damping λ = ``damping`` (the paper: tuned by hand;
    no Levenberg–Marquardt adaptation, so no extra function values), α = ``lr`` (not annealed).
    CG stops at negative curvature; if the model predicts no decrease (q(p) ≥ 0) the step is
    skipped and the warm start reset. Cost per iteration: |B| gradients + ``cg_iters`` × |B| Hv
    products, + |B| Hv for the warm-start residual A p₀ when p₀ ≠ 0.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0, "p": np.zeros_like(x0)}

    def step(state, oracle):
        x = state["x"]
        batch = oracle.next_batch(batch_size)
        _, g = oracle.value_and_grad(x, batch)

        def matvec(v):
            return oracle.hvp(x, v.astype(x.dtype), batch, grad=g) + damping * v

        p0 = cg_decay * state["p"].astype(np.float64)
        p, q = conjugate_gradient(matvec, -g.astype(np.float64), p0, cg_iters)
        if q >= 0:                                   # the model predicts no decrease: no step
            p = np.zeros_like(p)
        return {"x": (x + lr * p).astype(x.dtype), "t": state["t"] + 1, "p": p.astype(x.dtype)}

    return GradientMethod(init, step)
