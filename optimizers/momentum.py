"""SGD with classical momentum (CM)."""
from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr, sutskever_momentum


@method(lr=Hyper(0.3, 1e-3, 1e2), decay=Hyper(1e-2, 1e-4, 1.0),
        momentum=Hyper(0.9, 0.5, 0.999, log=False), batch_size=Hyper(100, 10, 1000, integer=True))
def momentum(lr, decay, momentum, batch_size):
    """Classical momentum (Polyak 1964), with the schedules of Sutskever et al. (2013):

        v_{t+1} = μ_t v_t − η_t ∇f_{B_t}(x_t),   x_{t+1} = x_t + v_{t+1}
        η_t = η₀ (1 + λ t)^(−0.75),   μ_t = min{μ_max, 1 − 2^(−1 − log₂(⌊t/100⌋ + 1))}

    with η₀ = ``lr``, λ = ``decay``, μ_max = ``momentum``.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "v": 0 * x0, "t": 0}

    def step(state, oracle):
        t = state["t"]
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        v = sutskever_momentum(t, momentum) * state["v"] - annealed_lr(lr, t, decay) * g
        return {"x": state["x"] + v, "v": v, "t": t + 1}

    return GradientMethod(init, step)
