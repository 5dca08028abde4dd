"""Prodigy: Adam with learning-rate-free step sizes."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, dot64, method
from cryobench.schedules import annealed_lr


@method(lr=Hyper(1.0, 0.1, 10.0), decay=Hyper(1e-2, 1e-4, 1.0), d0=Hyper(1e-6, 1e-9, 1e-3),
        d_coef=Hyper(1.0, 0.1, 10.0),
        beta1=Hyper(0.9, 0.5, 0.999, log=False), beta2=Hyper(0.999, 0.9, 0.99999, log=False),
        eps=Hyper(1e-8, 1e-14, 1e-4), batch_size=Hyper(100, 10, 1000, integer=True))
def prodigy(lr, decay, d0, d_coef, beta1, beta2, eps, batch_size):
    """Prodigy (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner", ICML 2024), Adam form, as in the authors' ``prodigyopt`` (no bias correction,
    no weight decay, unbounded growth):

        m_k = β₁ m_{k−1} + (1 − β₁) d_k g_k
        v_k = β₂ v_{k−1} + (1 − β₂) d_k² g_k ⊙ g_k
        r_k = β₃ r_{k−1} + (d_k/d₀) d_k η_k ⟨g_k, x₀ − x_k⟩
        s_k = β₃ s_{k−1} + (d_k/d₀) d_k η_k g_k
        d̂_k = c r_k / ‖s_k‖₁,   d_{k+1} = max(d_k, d̂_k)
        x_{k+1} = x_k − d_k η_k m_k / (√v_k + d_{k+1} ε)

    with g_k = ∇f_{B_k}(x_k), β₃ = √β₂, c = ``d_coef`` and η_k = η₀ (1 + λ k)^(−0.75) the
    benchmark's annealing as the multiplier (η₀ = ``lr``, leave at 1; λ = ``decay``; the
    authors pair Prodigy with a schedule such as cosine; λ = 0 gives the bare method).
    d_k estimates the distance to the solution per voxel (in density units) from below: it
    starts at d₀ = ``d0`` and grows geometrically (≈ ×2.5 a step on the ci tasks, whose voxels are
    ~1e-2–1, reaching ≈ 7e-3 in ~12 steps) until the gradients stop correlating with x₀ − x.
    Each step costs |B| gradient evaluations.
    """
    beta3 = float(np.sqrt(beta2))

    def init(x0, *, budget, rng):
        z = np.zeros_like(x0)
        return {"x": x0.copy(), "x0": x0.copy(), "m": z, "v": z.copy(), "s": z.copy(),
                "d": float(d0), "r": 0.0, "k": 0}

    def step(state, oracle):
        x, d = state["x"], state["d"]
        _, g = oracle.value_and_grad(x, oracle.next_batch(batch_size))
        dlr = d * annealed_lr(lr, state["k"], decay)
        corr = dot64(g, state["x0"] - x)
        r = beta3 * state["r"] + (d / d0) * dlr * corr
        m = (beta1 * state["m"] + d * (1 - beta1) * g).astype(x.dtype)
        v = (beta2 * state["v"] + d * d * (1 - beta2) * g * g).astype(x.dtype)
        s = (beta3 * state["s"] + (d / d0) * dlr * g).astype(x.dtype)
        s_norm = float(np.abs(s).sum(dtype=np.float64))
        d = max(d, d_coef * r / s_norm) if s_norm > 0 else d      # no gradient yet: d stays
        x = (x - dlr * m / (np.sqrt(v) + d * eps)).astype(x.dtype)
        return {**state, "x": x, "m": m, "v": v, "s": s, "d": float(d),
                "r": float(r), "k": state["k"] + 1}

    return GradientMethod(init, step)
