"""Adam."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method


@method(lr=Hyper(1e-3, 1e-6, 1.0), beta1=Hyper(0.9, 0.5, 0.999, log=False),
        beta2=Hyper(0.999, 0.9, 0.99999, log=False), eps=Hyper(1e-10, 1e-14, 1e-4),
        batch_size=Hyper(100, 10, 1000, integer=True))
def adam(lr, beta1, beta2, eps, batch_size):
    """Adam (Kingma & Ba 2015):

        m_t = β₁ m_{t−1} + (1 − β₁) g_t,   v_t = β₂ v_{t−1} + (1 − β₂) g_t ⊙ g_t
        x_{t+1} = x_t − η m̂_t / (√v̂_t + ε),   m̂_t = m_t / (1 − β₁ᵗ),   v̂_t = v_t / (1 − β₂ᵗ)

    with g_t = ∇f_{B_t}(x_t) and η = ``lr`` in density units. ε is small because the gradients
    of the per-image objective are small (≈ 1e-5 per voxel).
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "m": 0 * x0, "v": 0 * x0, "t": 0}

    def step(state, oracle):
        t = state["t"] + 1
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        m = beta1 * state["m"] + (1 - beta1) * g
        v = beta2 * state["v"] + (1 - beta2) * g * g
        update = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        return {"x": (state["x"] - lr * update).astype(g.dtype), "m": m, "v": v, "t": t}

    return GradientMethod(init, step)
