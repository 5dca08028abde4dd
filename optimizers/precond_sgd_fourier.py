"""Toader, Brubaker & Lederman's preconditioned SGD: Hutchinson's estimate of the Hessian
diagonal in the Fourier basis (their Algorithm 1, as their code ``precon_sgd`` runs it)."""
import numpy as np

from cryobench.optim import GradientMethod, Hyper, method


def hermitian_rademacher(rng, shape):
    """Real ±1 entries on the rfft half grid (kz, ky, kx), made Hermitian in the planes kx = 0
    and kx = D/2 (z(−k) = z(k) there), so that ``from_fourier`` keeps every entry: then
    E[z(k) (F H Fᴴ z)(k)] is the diagonal entry h(k) (plus h(k, −k), non-zero only within one
    voxel of the origin). Any other shape of basis gets plain ±1 entries."""
    z = rng.choice(np.array([-1.0, 1.0]), size=shape)
    if len(shape) != 3 or shape[2] != shape[0] // 2 + 1:      # not an rfft grid: plain ±1
        return z
    d = shape[0]
    idx = np.arange(d)
    kz, ky = np.meshgrid(idx, idx, indexing="ij")
    pz, py = (-kz) % d, (-ky) % d
    keep = (kz < pz) | ((kz == pz) & (ky <= py))           # one of each pair (k, −k) in a plane
    for plane in {0, shape[2] - 1} if d % 2 == 0 else {0}:
        p = z[:, :, plane]
        z[:, :, plane] = np.where(keep, p, p[pz, py])
    return z


@method(lr=Hyper(0.2, 1e-3, 1e2), beta=Hyper(0.9, 0.0, 0.999, log=False),
        alpha=Hyper(0.1, 1e-8, 1e1), armijo=Hyper(0, 0, 1, integer=True),
        batch_size=Hyper(100, 10, 1000, integer=True))
def precond_sgd_fourier(lr, beta, alpha, armijo, batch_size):
    """Preconditioned SGD with Hutchinson's diagonal estimator in the Fourier basis (Toader,
    Brubaker & Lederman, "Efficient high-resolution refinement in cryo-EM with stochastic
    gradient descent", Acta Cryst. D 81:327–343, 2025, Algorithm 1; their code
    ``simplecryoem/optimization/precon_sgd.py``, function ``precon_sgd``). Per step k on the
    minibatch B_k, with ẑ the Fourier coordinates (``to_fourier``) and H_B the minibatch Hessian:

        z_k Rademacher in Fourier coordinates,   s_k = Re(z_k ⊙ F H_B Fᴴ z_k)
        D̄_k = D̄_{k−1} (k−1)/k + s_k / k                (running mean of all samples so far)
        D_k = β D_{k−1} + (1 − β) D̄_k                    (exponential average with D_0)
        D̂_k = max(|D_k|, α)
        V_{k+1} = V_k − η F⁻¹[F(∇f_B(V_k)) / D̂_k]

    η = ``lr`` fixed, β = ``beta``, α = ``alpha`` (absolute, in the oracle's units: a per-image
    mean Hessian). With ``armijo`` = 1 their adaptive step: η ← 1.2 η each step (reset to
    ``lr`` at each epoch's start), then halved until F_B(V_{k+1}) ≤ F_B(V_k) − c η gᵀP⁻¹g with
    c = ½ (their default), on the same minibatch.

    From their code: one Rademacher vector per step (``h_steps = 1``), the running mean over
    all samples of the run, its exponential average with the previous D (D0 ← D1), the
    threshold max(|D|, α), the Armijo rule (×1.2, halving, c = 0.5, reset per epoch) and the
    fixed-step default (``adaptive_step_size=False``). Guesses, said here: D_0 (theirs is an
    input; here the first step's sample s_1, so D_1 = s_1); z real ±1 on the rfft half grid made
    Hermitian where the grid holds both k and −k (:func:`hermitian_rademacher`; their z is
    ±1 in every entry of a full complex Fourier volume); α's default (the issue reads the paper
    as α = 1 / (points in the largest shell); not checked against the paper's text here); H_B z
    by the oracle's finite-difference ``hvp`` (theirs: forward-mode autodiff; exact for this
    quadratic up to rounding). D and D̄ are kept in real space (``from_fourier``; they are
    real and even, so the round trip only averages the estimates at k and −k where the half
    grid holds both), so the state has the iterate's shape and dtype. Cost per step: |B| gradient + |B| Hessian-vector evaluations,
    plus |B| value evaluations per Armijo trial.
    """
    def init(x0, *, budget, rng):
        return {"x": x0.copy(), "d": np.zeros_like(x0), "d_bar": np.zeros_like(x0), "k": 0,
                "t": 0, "lr": float(lr), "rng": rng}

    def step(state, oracle):
        x, k = state["x"], state["k"] + 1
        batch = oracle.next_batch(batch_size)
        f0, g = oracle.value_and_grad(x, batch)
        gf = oracle.to_fourier(g)
        z = hermitian_rademacher(state["rng"], gf.shape)
        hz = oracle.hvp(x, oracle.from_fourier(z.astype(gf.dtype)), batch, grad=g)
        sample = (z * oracle.to_fourier(hz)).real
        d_bar = oracle.to_fourier(state["d_bar"]).real * (k - 1) / k + sample / k
        d = d_bar if k == 1 else beta * oracle.to_fourier(state["d"]).real + (1 - beta) * d_bar
        d_hat = np.maximum(np.abs(d), alpha)
        direction = oracle.from_fourier(gf / d_hat)
        eta = state["lr"]
        if armijo:
            epoch_len = max(1, oracle.n_train // batch_size)
            eta = float(lr) if state["t"] % epoch_len == 0 else 1.2 * eta
            decrease = 0.5 * float(np.dot(g.reshape(-1).astype(np.float64),
                                          direction.reshape(-1).astype(np.float64)))
            while True:
                x1 = (x - eta * direction).astype(x.dtype)
                if oracle.remaining < 2 * batch_size or oracle.value(x1, batch) <= f0 - eta * decrease:
                    break
                eta /= 2
        x1 = (x - eta * direction).astype(x.dtype)
        keep = lambda a: oracle.from_fourier(a.astype(gf.dtype))  # noqa: E731  (real, even)
        return {"x": x1, "d": keep(d), "d_bar": keep(d_bar), "k": k, "t": state["t"] + 1,
                "lr": eta, "rng": state["rng"]}

    return GradientMethod(init, step)
