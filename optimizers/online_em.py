"""Online (stochastic) EM on running averages of EM's sufficient statistics."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method


@method(kappa=Hyper(0.6, 0.5, 1.0, log=False), t0=Hyper(10.0, 1.0, 1000.0),
        damping=Hyper(1e-2, 1e-4, 1.0), batch_size=Hyper(100, 10, 1000, integer=True))
def online_em(kappa, t0, damping, batch_size):
    """Online EM (Sato 2000, Neural Comput 12:407; Cappé & Moulines 2009, JRSS-B 71:593) with
    the statistics of batch EM (optimizers/em.py):

        (W_t, B_t) from ``value_grad_weights`` on the minibatch B_t at V_t
        s_W ← (1 − γ_t) s_W + γ_t W_t,   s_B ← (1 − γ_t) s_B + γ_t B_t,   γ_t = (t + t₀)^(−κ)
        V̂_{t+1} = s_B / (s_W + ε max s_W)

    with κ = ``kappa``, t₀ = ``t0``, ε = ``damping`` and minibatches of ``batch_size`` images
    from the shared stream; a step costs |B| gradient evaluations.

    From the sources: the stochastic-approximation update of the expected sufficient statistics
    and the M-step applied to them (Cappé & Moulines, eq. 8–9), γ_t = γ₀ t^(−κ)-type step sizes
    with κ ∈ (½, 1] (their condition Σγ = ∞, Σγ² < ∞). Here the sufficient statistics are
    EM's gridded weights W and back-projected data B (a data term Gaussian in V̂ for a fixed
    posterior), so the M-step is EM's V̂ = B / W. Guesses: t₀ = 10 and κ = 0.6 (the first step
    is the one-minibatch reconstruction B_0 / W_0 whatever t₀, since the statistics start at 0);
    the damping ε max s_W in place of RELION's 1/τ² (Scheres 2012, see em); no Polyak
    averaging of the iterates. The prior enters to first order through B (see em); frequencies
    with s_W = 0 (beyond the band) are zeroed.

    The running averages are kept as real volumes F⁻¹ s_W and F⁻¹ s_B (the map is linear, so
    averaging commutes with it; W is even and B Hermitian, so both are real): the state then
    has the iterate's shape and dtype from ``init`` on, whatever the oracle's Fourier basis.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "r_b": np.zeros_like(x0), "r_w": np.zeros_like(x0), "t": 0}

    def step(state, oracle):
        x, t = state["x"], state["t"]
        _, _, w, b = oracle.value_grad_weights(x, oracle.next_batch(batch_size))
        gamma = (t + t0) ** -kappa
        s_w = (1 - gamma) * oracle.to_fourier(state["r_w"]).real + gamma * w
        s_b = (1 - gamma) * oracle.to_fourier(state["r_b"]) + gamma * b
        denom = s_w + damping * s_w.max()
        x_hat = np.where(denom > 0, s_b / np.where(denom > 0, denom, 1.0), 0.0)
        x = oracle.from_fourier(x_hat).astype(x.dtype)
        r_w, r_b = oracle.from_fourier(s_w), oracle.from_fourier(s_b)
        return {"x": x, "r_b": r_b.astype(x.dtype), "r_w": r_w.astype(x.dtype), "t": t + 1}

    return GradientMethod(init, step)
