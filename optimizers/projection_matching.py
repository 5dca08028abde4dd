"""Projection matching: batch EM with hard assignment (each image at its most probable pose)."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.oracle import BudgetExhausted


@method(damping=Hyper(1e-2, 1e-4, 1.0), chunk=Hyper(500, 10, 10000, integer=True))
def projection_matching(damping, chunk):
    """Projection matching (Penczek, Grassucci & Frank 1994, Ultramicroscopy 53:251; the
    baseline of Brubaker & Punjani 2015, Figure 6): batch EM (optimizers/em.py) with hard
    assignment, one iteration = one pass over all K training images:

        each image i at its best pose j*(i) = argmax_j (G_ij + log w_j) (the first on ties)
        W = K⁻¹ Σ_i W_i^hard(V),   B = K⁻¹ Σ_i B_i^hard(V)   (``value_grad_weights(…, hard=True)``)
        V̂ ← B / (W + ε max W)

    i.e. the (gridded, regularised) least-squares reconstruction from the images at their
    matched poses. Everything else — the prior to first order through B, ε = ``damping``
    (a guess standing in for RELION's 1/τ², see em), W = 0 frequencies zeroed, ``chunk`` — is
    as in em. Its fixed points are those of the hard-assignment objective, not of the marginal
    NLL the benchmark scores.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0}

    def step(state, oracle):
        x = state["x"]
        idx = np.asarray(oracle.train_indices)
        if oracle.remaining < len(idx):
            raise BudgetExhausted(f"a projection-matching iteration needs {len(idx)} evaluations, "
                                  f"{oracle.remaining} remain")
        b, w = 0.0, 0.0
        for lo in range(0, len(idx), chunk):
            part = idx[lo:lo + chunk]
            _, _, w_b, b_b = oracle.value_grad_weights(x, part, hard=True)
            b = b + len(part) * b_b.astype(np.complex128)
            w = w + len(part) * w_b.astype(np.float64)
        denom = (w + damping * w.max()) / len(idx)
        x_hat = np.where(denom > 0, b / len(idx) / np.where(denom > 0, denom, 1.0), 0.0)
        x = oracle.from_fourier(x_hat).astype(x.dtype)
        return {"x": x, "t": state["t"] + 1}

    return GradientMethod(init, step)
