"""TONGA: natural gradient with a low-rank covariance of recent minibatch gradients."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr


def lowrank_covariance(G, n):
    """C = Σ_{i<n} g_i g_iᵀ / n (g_i = G[i]) as (U, λ) with C = Σ_j λ_j u_j u_jᵀ, ‖u_j‖ = 1,
    from the eigen-decomposition of the n × n Gram matrix; unused rows are 0."""
    flat = G.reshape(len(G), -1)
    gram = (flat[:n] @ flat[:n].T).astype(np.float64) / n
    if not np.all(np.isfinite(gram)):                # diverged: no preconditioning, let it show
        return np.zeros_like(G), np.zeros(len(G))
    w, V = np.linalg.eigh(gram)
    keep = w > 1e-10 * max(w.max(), 1e-300)
    lam = np.where(keep, w, 0.0)
    scale = np.where(keep, 1 / np.sqrt(n * np.where(keep, w, 1.0)), 0.0)   # u_j = Gᵀv_j / √(n w_j)
    U = np.zeros_like(flat)
    U[:n] = (V * scale).T.astype(flat.dtype) @ flat[:n]
    return U.reshape(G.shape), np.pad(lam, (0, len(G) - n))


def woodbury_solve(U, lam, gamma, g):
    """(Σ_j λ_j u_j u_jᵀ + γ I)⁻¹ g = (g − Σ_j u_j λ_j/(λ_j + γ) u_jᵀ g) / γ (orthonormal u_j)."""
    flat = U.reshape(len(U), -1)
    coef = (flat @ g.reshape(-1)).astype(np.float64) * lam / (lam + gamma)
    return ((g.reshape(-1) - coef.astype(flat.dtype) @ flat) / gamma).reshape(g.shape)


@method(lr=Hyper(1.0, 1e-3, 1e2), decay=Hyper(1e-2, 1e-4, 1.0), gamma=Hyper(0.1, 1e-5, 1e2),
        batch_size=Hyper(100, 10, 1000, integer=True), rank=Hyper(20, 1, 100, integer=True),
        refresh=Hyper(20, 1, 200, integer=True))
def tonga(lr, decay, gamma, batch_size, rank, refresh):
    """TONGA (Le Roux, Manzagol & Bengio, NIPS 2008), as in Brubaker & Punjani (2015):

        x_{t+1} = x_t − η_t γ (C_t + γ I)⁻¹ g_t,   η_t = η₀ (1 + λ t)^(−0.75),

    g_t = ∇f_{B_t}(x_t) on ``batch_size`` images, C_t ≈ (1/k) Σ g_i g_iᵀ the uncentred covariance
    of the last k = ``rank`` minibatch gradients, re-factored (eigen-decomposition of their
    k × k Gram matrix) after every ``refresh`` iterations and applied by Woodbury; before the
    first refresh C = 0 (an SGD step). The factor γ (= ``gamma``) makes the step equal to SGD's
    in directions where C ≪ γ and shrinks it along directions of large gradient covariance, so
    η₀ = ``lr`` is on SGD's scale. One minibatch gradient per iteration. C is a sliding window
    of the last k gradients (Le Roux et al. also discount older ones; not done here).
    """
    def init(x0, *, budget, rng):
        buf = np.zeros((rank, *x0.shape), x0.dtype)
        return {"x": x0.copy(), "t": 0, "G": buf, "U": buf.copy(), "lam": np.zeros(rank)}

    def step(state, oracle):
        x, t = state["x"], state["t"]
        _, g = oracle.value_and_grad(x, oracle.next_batch(batch_size))
        G, U, lam = state["G"].copy(), state["U"], state["lam"]
        G[t % rank] = g
        if (t + 1) % refresh == 0:
            U, lam = lowrank_covariance(G, min(t + 1, rank))
        d = gamma * woodbury_solve(U, lam, gamma, g)
        x = (x - annealed_lr(lr, t, decay) * d).astype(x.dtype)
        return {"x": x, "t": t + 1, "G": G, "U": U, "lam": lam}

    return GradientMethod(init, step)
