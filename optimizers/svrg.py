"""Stochastic variance-reduced gradient (SVRG)."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.oracle import BudgetExhausted


@method(lr=Hyper(1.0, 1e-3, 1e2), inner_epochs=Hyper(1.0, 0.1, 10.0),
        batch_size=Hyper(100, 10, 1000, integer=True), chunk=Hyper(500, 10, 10000, integer=True))
def svrg(lr, inner_epochs, batch_size, chunk):
    """SVRG (Johnson & Zhang 2013), option I (the snapshot is the last inner iterate):

        outer loop:  x̃ = x,   μ = ∇f(x̃) = K⁻¹ Σ_{i=1..K} ∇f_i(x̃)
        inner loop, m steps:  x ← x − η (∇f_B(x) − ∇f_B(x̃) + μ)

    with η = ``lr`` constant, minibatches B of ``batch_size`` images from the shared stream and
    m = max(1, round(``inner_epochs`` · K / |B|)) inner steps. μ is computed through the oracle
    in chunks of ``chunk`` training images (chunk means weighted by chunk size).

    A step is either a full-gradient pass (K gradient evaluations, x unchanged) or an inner step
    (2|B| gradient evaluations). If less budget remains than a pass needs, the step raises
    BudgetExhausted before evaluating anything. SAGA's table of per-image gradients is
    infeasible here: x has up to 128³ ≈ 2·10⁶ entries, times K ≈ 5·10⁴ images.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "snapshot": x0.copy(), "mu": np.zeros_like(x0), "left": 0, "t": 0}

    def full_gradient(x, oracle):
        idx = np.asarray(oracle.train_indices)
        if oracle.remaining < len(idx):          # do not spend evaluations on a partial pass
            raise BudgetExhausted(f"a full-gradient pass needs {len(idx)} evaluations, "
                                  f"{oracle.remaining} remain")
        mu = np.zeros(x.shape, dtype=np.float64)
        for lo in range(0, len(idx), chunk):
            part = idx[lo:lo + chunk]
            mu += len(part) * oracle.value_and_grad(x, part)[1]
        return (mu / len(idx)).astype(x.dtype)

    def step(state, oracle):
        x, t = state["x"], state["t"]
        if state["left"] == 0:
            m = max(1, round(inner_epochs * oracle.n_train / batch_size))
            return {"x": x, "snapshot": x.copy(), "mu": full_gradient(x, oracle), "left": m, "t": t}
        batch = oracle.next_batch(batch_size)
        g = oracle.value_and_grad(x, batch)[1]
        g_snap = oracle.value_and_grad(state["snapshot"], batch)[1]
        x = (x - lr * (g - g_snap + state["mu"])).astype(x.dtype)
        return {**state, "x": x, "left": state["left"] - 1, "t": t + 1}

    return GradientMethod(init, step)
