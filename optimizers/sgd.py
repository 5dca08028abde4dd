"""Stochastic gradient descent with the paper's annealed step size."""
from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr


@method(lr=Hyper(1.0, 1e-3, 1e2), decay=Hyper(1e-2, 1e-4, 1.0),
        batch_size=Hyper(100, 10, 1000, integer=True))
def sgd(lr, decay, batch_size):
    """SGD (Robbins & Monro 1951), as in Brubaker & Punjani (2015):

        x_{t+1} = x_t − η_t ∇f_{B_t}(x_t),   η_t = η₀ (1 + λ t)^(−0.75)

    with η₀ = ``lr``, λ = ``decay`` and minibatches B_t of ``batch_size`` images.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0}

    def step(state, oracle):
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(batch_size))
        x = state["x"] - annealed_lr(lr, state["t"], decay) * g
        return {"x": x, "t": state["t"] + 1}

    return GradientMethod(init, step)
