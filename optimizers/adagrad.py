"""AdaGrad."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method


@method(lr=Hyper(1e-2, 1e-5, 1.0), eps=Hyper(1e-10, 1e-14, 1e-4),
        batch_size=Hyper(100, 10, 1000, integer=True))
def adagrad(lr, eps, batch_size):
    """AdaGrad (Duchi, Hazan & Singer 2011), diagonal form, no annealing (as in the paper):

        G_t = G_{t−1} + g_t ⊙ g_t,   x_{t+1} = x_t − η g_t / (√G_t + ε)

    with g_t = ∇f_{B_t}(x_t), η = ``lr`` (in density units: the first step moves each voxel by ≈ η).
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "sum_sq": 0 * x0, "t": 0}

    def step(state, oracle):
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        sum_sq = state["sum_sq"] + g * g
        x = state["x"] - lr * g / (np.sqrt(sum_sq) + eps)
        return {"x": x.astype(g.dtype), "sum_sq": sum_sq, "t": state["t"] + 1}

    return GradientMethod(init, step)
