"""Schedule-free SGD."""
from cryobench.optim import GradientMethod, Hyper, method


@method(lr=Hyper(1.0, 1e-3, 1e2), beta=Hyper(0.9, 0.0, 0.99, log=False),
        warmup=Hyper(0, 0, 1000, log=False, integer=True),
        batch_size=Hyper(100, 10, 1000, integer=True))
def schedule_free(lr, beta, warmup, batch_size):
    """Schedule-free SGD (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
    Scheduled", NeurIPS 2024, Algorithm 1 without weight decay):

        y_t = (1 − β) z_t + β x_t
        z_{t+1} = z_t − γ_t ∇f_{B_t}(y_t)
        x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = γ_t² / Σ_{i≤t} γ_i²

    for t = 0, 1, …, with x_0 = z_0 the start, γ_t = ``lr`` · min(1, (t + 1)/``warmup``) (a
    linear warm-up; without it c_{t+1} = 1/(t + 1) and x_T = (z_1 + … + z_T)/T, the uniform
    average) and β = ``beta``. There is no decay schedule. The reported iterate is the average:
    ``state["x"]``; gradients are taken at y, kept as ``state["y"]``. Each step costs |B|
    gradient evaluations.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "z": x0.copy(), "y": x0.copy(), "weight_sum": 0.0, "t": 0}

    def step(state, oracle):
        t, x, z = state["t"], state["x"], state["z"]
        _, g = oracle.value_and_grad(state["y"], oracle.next_batch(batch_size))
        gamma = lr * min(1.0, (t + 1) / warmup) if warmup > 0 else lr
        weight_sum = state["weight_sum"] + gamma**2
        c = gamma**2 / weight_sum
        z = (z - gamma * g).astype(x.dtype)
        x = ((1 - c) * x + c * z).astype(x.dtype)
        y = ((1 - beta) * z + beta * x).astype(x.dtype)
        return {"x": x, "z": z, "y": y, "weight_sum": weight_sum, "t": t + 1}

    return GradientMethod(init, step)
