"""SGD with a diagonal preconditioner from Hutchinson's estimator in the real-space voxel basis
(after Toader, Brubaker & Lederman, whose estimator is in the Fourier basis: see
``precond_sgd_fourier``). The name ``hutchinson`` is kept for the committed results."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method
from cryobench.schedules import annealed_lr


@method(lr=Hyper(1.0, 1e-3, 1e2), decay=Hyper(1e-2, 1e-4, 1.0),
        precond_every=Hyper(10, 1, 100, integer=True), beta=Hyper(0.9, 0.0, 0.999, log=False),
        floor=Hyper(0.1, 1e-3, 1.0), batch_size=Hyper(100, 10, 1000, integer=True))
def hutchinson(lr, decay, precond_every, beta, floor, batch_size):
    """The real-space voxel variant: preconditioned SGD with Hutchinson's diagonal estimator of
    the Hessian in the voxel basis, where a known-pose Hessian is a convolution, not near-diagonal
    (their method, diagonal in the Fourier basis, is ``precond_sgd_fourier``) (Toader, Brubaker & Lederman,
    "Efficient high-resolution refinement in cryo-EM with stochastic gradient descent"; the
    estimator: Hutchinson 1989, Bekas, Kokiopoulou & Saad 2007; averaging as in OASIS,
    Jahani et al. 2021):

        diag(H) = E_z[z ⊙ H z],   z Rademacher
        D_k = β D_{k−1} + (1 − β) z_k ⊙ H_{B_t} z_k,   D̂_k = D_k / (1 − β^k)
        D̃ = max(D̂, floor · max|D̂|),   P = D̃ · mean(1/D̃)
        x_{t+1} = x_t − η_t P⁻¹ ∇f_{B_t}(x_t),   η_t = η₀ (1 + λ t)^(−0.75)

    A new sample z ⊙ H_B z is taken every ``precond_every`` steps (first at t = 0) on that
    step's minibatch, with ``oracle.hvp`` given the gradient already computed: such a step costs
    |B| gradient + |B| Hessian-vector evaluations, the others |B| gradient evaluations.

    Units: P is normalised so that mean(P⁻¹) = 1 (D̃ divided by its harmonic mean), so η₀ =
    ``lr`` is in SGD's units: the preconditioner redistributes the step among voxels without
    changing its average size. The harmonic mean is insensitive to the very large "curvature"
    that the finite-difference Hv reports at voxels on the kink of the prior at 0. The floor,
    relative to the largest estimate, keeps P positive despite noisy (negative) estimates.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "d": np.zeros_like(x0), "p_inv": np.ones_like(x0),
                "k": 0, "t": 0, "rng": rng}

    def step(state, oracle):
        x, t, k, d, p_inv = state["x"], state["t"], state["k"], state["d"], state["p_inv"]
        batch = oracle.next_batch(batch_size)
        _, g = oracle.value_and_grad(x, batch)
        if t % precond_every == 0:
            z = state["rng"].choice(np.array([-1.0, 1.0], dtype=x.dtype), size=x.shape)
            hz = oracle.hvp(x, z, batch, grad=g)
            k += 1
            d = (beta * d + (1 - beta) * z * hz).astype(x.dtype)
            d_hat = d / (1 - beta**k)
            d_tilde = np.maximum(d_hat, floor * np.abs(d_hat).max())
            if not np.all(d_tilde > 0):                       # all estimates zero: plain SGD
                d_tilde = np.ones_like(d_tilde)
            p_inv = (1 / d_tilde / np.mean(1 / d_tilde)).astype(x.dtype)
        x = (x - annealed_lr(lr, t, decay) * p_inv * g).astype(x.dtype)
        return {"x": x, "d": d, "p_inv": p_inv, "k": k, "t": t + 1, "rng": state["rng"]}

    return GradientMethod(init, step)
