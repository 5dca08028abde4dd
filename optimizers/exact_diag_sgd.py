"""SGD preconditioned by the exact Hessian diagonal in the Fourier basis (the oracle's weights)."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method


@method(lr=Hyper(0.2, 1e-3, 1e2), alpha=Hyper(0.01, 1e-8, 1e1),
        batch_size=Hyper(100, 10, 1000, integer=True))
def exact_diag_sgd(lr, alpha, batch_size):
    """SGD with the diagonal preconditioner of Toader, Brubaker & Lederman ("Efficient
    high-resolution refinement in cryo-EM with stochastic gradient descent", 2025) computed
    exactly instead of by Hutchinson's estimator: ``value_grad_weights(…, exact_diagonal=True)``
    returns W_B, the Hessian diagonal of the minibatch's objective in the oracle's Fourier
    basis (exact for a refinement task's trilinear model, :mod:`cryobench.model.refinement`,
    with the Gaussian prior's α/K; not EM's gridded weights, which are larger; for an
    ab-initio task EM's gridded weights, the only diagonal there). Per step t on minibatch B_t:

        W̄_t = W̄_{t−1} (t−1)/t + W_{B_t} / t        (running mean: → the full data's diagonal)
        V_{t+1} = V_t − η F⁻¹[F(∇f_{B_t}(V_t)) / max(W̄_t, α)]

    η = ``lr`` (fixed, as their default), α = ``alpha`` their floor (the prior's own curvature
    α_prior / K is in W, so the floor only matters above it). W̄ is kept in real space
    (F⁻¹W̄ is real: W is even), so the state has the iterate's shape and dtype. Cost: |B|
    gradient evaluations per step (W comes with the gradient).
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "w": np.zeros_like(x0), "t": 0}

    def step(state, oracle):
        x, t = state["x"], state["t"] + 1
        _, g, w, _ = oracle.value_grad_weights(x, oracle.next_batch(batch_size), exact_diagonal=True)
        w_bar = oracle.to_fourier(state["w"]).real * (t - 1) / t + w / t
        direction = oracle.from_fourier(oracle.to_fourier(g) / np.maximum(w_bar, alpha))
        return {"x": (x - lr * direction).astype(x.dtype),
                "w": oracle.from_fourier(w_bar.astype(np.result_type(w_bar, np.complex64))),
                "t": t}

    return GradientMethod(init, step)
