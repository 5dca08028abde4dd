"""Batch expectation–maximisation (EM), the reconstruction method of RELION's refinement."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.oracle import BudgetExhausted


@method(damping=Hyper(1e-2, 1e-4, 1.0), chunk=Hyper(500, 10, 10000, integer=True))
def em(damping, chunk):
    """Batch EM (Dempster, Laird & Rubin 1977; for cryo-EM: Sigworth 1998, J Struct Biol
    122:328; Scheres 2012, J Struct Biol 180:519 — RELION), one iteration = one pass over all
    K training images:

        E-step + statistics:  W = K⁻¹ Σ_i W_i(V),   B = K⁻¹ Σ_i B_i(V)   (``value_grad_weights``)
        M-step:  V̂ ← B / (W + ε max W)

    in the oracle's Fourier basis (``to_fourier`` / ``from_fourier``), ε = ``damping``. W is
    the back-projected CTF² weighted by the pose posterior (EM's "weights", the Gauss–Newton
    Hessian diagonal of the data term) and B the back-projected CTF × image (minus the prior's
    gradient), both gridded onto the volume's DFT grid with trilinear weights as in RELION's
    back-projector: for a fixed posterior B / W is the data term's minimiser in that gridding
    approximation (the maximisation step). The prior enters to first order through B (the
    oracle subtracts F(∇ prior) from it); the curvature of the paper's prior is zero (β = 1),
    and the Gaussian prior of refinement tasks has its α/K in W (``cryobench.oracle.em_statistics``).

    From the source: the form V̂ = B / (W + 1/τ²) is RELION's regularised M-step (Scheres 2012,
    eq. 16–17, τ² the per-shell signal power). A guess: 1/τ² replaced by one constant ε max W
    (no shell-wise power estimate), which keeps the division finite and damps the band edge,
    where few slice points reach a node. Frequencies the data never reach (W = 0, beyond the
    band) have B = 0 and are zeroed (EM's new iterate depends on the old one only through the
    posterior). Not the gradient identity F(∇f) ≈ W V̂ − B: dividing the model's gradient by
    the gridded W blows up at nodes where W is tiny (measured in tests/test_em.py).

    The statistics are accumulated in chunks of ``chunk`` training images (sums weighted by
    chunk size, float64); a step costs K gradient evaluations, and raises BudgetExhausted
    before evaluating anything when less budget remains than a pass needs.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "t": 0}

    def step(state, oracle):
        x = state["x"]
        idx = np.asarray(oracle.train_indices)
        if oracle.remaining < len(idx):
            raise BudgetExhausted(f"an EM iteration needs {len(idx)} evaluations, "
                                  f"{oracle.remaining} remain")
        b, w = 0.0, 0.0
        for lo in range(0, len(idx), chunk):
            part = idx[lo:lo + chunk]
            _, _, w_b, b_b = oracle.value_grad_weights(x, part)
            b = b + len(part) * b_b.astype(np.complex128)
            w = w + len(part) * w_b.astype(np.float64)
        denom = (w + damping * w.max()) / len(idx)
        x_hat = np.where(denom > 0, b / len(idx) / np.where(denom > 0, denom, 1.0), 0.0)
        x = oracle.from_fourier(x_hat).astype(x.dtype)
        return {"x": x, "t": state["t"] + 1}

    return GradientMethod(init, step)
