"""RMSprop, as a worked example of adding an optimizer to cryobench."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr


@method(lr=Hyper(1e-3, 1e-6, 1.0), rho=Hyper(0.9, 0.5, 0.999, log=False),
        batch_size=Hyper(100, 10, 1000, integer=True))
def rmsprop(lr, rho, batch_size):
    """RMSprop (Tieleman & Hinton 2012) with the paper's annealing:

        s_t = ρ s_{t−1} + (1 − ρ) g_t ⊙ g_t,   x_{t+1} = x_t − η_t g_t / (√s_t + 10⁻¹⁰)
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "s": 0 * x0, "t": 0}

    def step(state, oracle):
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        s = rho * state["s"] + (1 - rho) * g * g
        x = state["x"] - annealed_lr(lr, state["t"]) * g / (np.sqrt(s) + 1e-10)
        return {"x": x.astype(g.dtype), "s": s, "t": state["t"] + 1}

    return GradientMethod(init, step)
