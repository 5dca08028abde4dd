"""Hutchinson-preconditioned SGD, SVRG, schedule-free SGD and Prodigy: method-specific checks."""
import numpy as np
import pytest

from cryobench.harness.registry import discover
from cryobench.optim import minimize
from cryobench.oracle import BudgetExhausted, CountedOracle, stream_slice
from cryobench.toy import QuadraticOracle

METHODS = discover()
MODERN = ["hutchinson", "svrg", "schedule-free", "prodigy"]


def rademacher(rng, n, dtype=np.float32):
    return rng.choice(np.array([-1.0, 1.0], dtype=dtype), size=n)


class DenseQuadratic(CountedOracle):
    """f_i(x) = ½ (x − b_i)ᵀ A (x − b_i) with a dense SPD A: off-diagonal curvature."""

    def __init__(self, budget, dim=20, n=200, seed=0):
        super().__init__(budget)
        rng = np.random.default_rng(seed)
        q = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        self.A = q @ q.T + np.diag(np.linspace(0.5, 2.0, dim))
        self.b = rng.normal(size=(n, dim))
        self._n = n

    n_train = property(lambda self: self._n)
    train_indices = property(lambda self: np.arange(self._n))

    def _is_train(self, batch):
        return bool(batch.min() >= 0 and batch.max() < self._n)

    def _stream(self, position, size):
        order = lambda e: np.random.default_rng(e).permutation(self._n)      # noqa: E731
        return stream_slice(position, size, self._n, order)

    def _evaluate(self, x, batch, gradient):
        r = x[None, :] - self.b[batch]
        value = float(0.5 * np.mean(np.sum(r * (r @ self.A), axis=1)))
        return value, (r.mean(0) @ self.A) if gradient else None


# ---- Hutchinson -----------------------------------------------------------------------------

def test_hutchinson_estimator_averages_to_the_diagonal_of_the_toy_hessian():
    oracle = QuadraticOracle(budget=10**6)
    x, rng = oracle.initial_point(), np.random.default_rng(0)
    batch = oracle.next_batch(100)
    g = oracle.value_and_grad(x, batch)[1]
    samples = [(z := rademacher(rng, x.size)) * oracle.hvp(x, z, batch, grad=g) for _ in range(200)]
    assert np.allclose(np.mean(samples, 0), oracle.h, rtol=0.03)


def test_hutchinson_running_average_recovers_a_dense_hessians_diagonal():
    oracle = DenseQuadratic(budget=10**7)
    opt = METHODS["hutchinson"].configure(precond_every=1, beta=0.999, lr=1e-3)
    state = opt.init(np.zeros(20), budget=oracle.budget, rng=np.random.default_rng(0))
    for _ in range(3000):
        state = opt.step(state, oracle)
    d_hat = state["d"] / (1 - 0.999 ** state["k"])
    off = np.sqrt((oracle.A ** 2).sum(1) - np.diag(oracle.A) ** 2)      # one sample's sd
    assert off.mean() > 0.3 * np.diag(oracle.A).mean()                  # not trivially diagonal
    assert np.allclose(d_hat, np.diag(oracle.A), rtol=0.08)


def test_hutchinson_charges_the_hvp_evaluations_of_a_refresh():
    oracle = QuadraticOracle(budget=10**5)
    opt = METHODS["hutchinson"].configure(precond_every=3, batch_size=40)
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=np.random.default_rng(0))
    state = opt.step(state, oracle)                                      # t = 0: refresh
    assert oracle.counts == {"grad": 40, "value": 0, "hvp": 40}
    state = opt.step(opt.step(state, oracle), oracle)                    # t = 1, 2: gradient only
    assert oracle.counts == {"grad": 120, "value": 0, "hvp": 40}
    opt.step(state, oracle)                                              # t = 3: refresh
    assert oracle.counts == {"grad": 160, "value": 0, "hvp": 80}


# ---- SVRG -----------------------------------------------------------------------------------

def test_svrg_full_gradient_pass_costs_K_and_is_the_true_mean_gradient():
    oracle = QuadraticOracle(budget=10**5)
    opt = METHODS["svrg"].configure(chunk=150)                           # chunks 150, 150, 100
    x0 = oracle.initial_point()
    state = opt.step(opt.init(x0, budget=oracle.budget, rng=np.random.default_rng(0)), oracle)
    assert oracle.counts == {"grad": oracle.n_train, "value": 0, "hvp": 0}
    assert np.array_equal(state["x"], x0) and np.array_equal(state["snapshot"], x0)
    mu = (oracle.h * (x0.astype(np.float64) - oracle.b).mean(0))
    assert np.allclose(state["mu"], mu, rtol=1e-5, atol=1e-9)
    opt.step(state, oracle)                                              # an inner step: 2|B|
    assert oracle.counts["grad"] == oracle.n_train + 2 * 100


def test_svrg_converges_linearly_on_the_finite_sum():
    oracle = QuadraticOracle(budget=100_000)
    x0 = oracle.initial_point()
    opt = METHODS["svrg"].configure()
    subs = []

    def outer_end(s, o):
        if s["left"] == 0:
            subs.append(o.suboptimality(s["x"]))

    state = minimize(opt, x0, oracle, np.random.default_rng(0), outer_end)
    assert oracle.suboptimality(state["x"]) <= 1e-4 * oracle.suboptimality(x0)
    rates = np.array(subs[1:]) / np.array(subs[:-1])                     # per outer loop
    assert len(rates) > 20 and rates.max() < 0.95
    assert np.ptp(rates[-10:]) < 0.01      # a constant rate, ≈ (1 − η h_min)^(2m) = 0.99⁸


# ---- schedule-free --------------------------------------------------------------------------

def test_schedule_free_reports_the_average_of_the_z_sequence():
    oracle = QuadraticOracle(budget=10**5)
    opt = METHODS["schedule-free"].configure()
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=np.random.default_rng(0))
    zs = []
    for _ in range(25):
        state = opt.step(state, oracle)
        zs.append(state["z"].astype(np.float64))
    assert opt.iterate(state) is state["x"]
    assert np.allclose(state["x"], np.mean(zs, 0), rtol=1e-5, atol=1e-7)
    assert np.allclose(state["y"], 0.1 * state["z"] + 0.9 * state["x"], rtol=1e-6, atol=1e-8)


def test_schedule_free_converges_on_a_deterministic_toy():
    oracle = QuadraticOracle(budget=20_000, noise=0.0)
    x0 = oracle.initial_point()
    opt = METHODS["schedule-free"].configure()
    state = minimize(opt, x0, oracle, np.random.default_rng(0))
    assert oracle.suboptimality(opt.iterate(state)) < 1e-3 * oracle.suboptimality(x0)


# ---- Prodigy --------------------------------------------------------------------------------

def test_prodigy_d_estimate_grows_from_d0_and_the_toy_converges_with_defaults():
    oracle = QuadraticOracle(budget=20_000)
    x0 = oracle.initial_point()
    opt, ds = METHODS["prodigy"].configure(), []
    state = minimize(opt, x0, oracle, np.random.default_rng(0), lambda s, o: ds.append(s["d"]))
    assert ds[0] == pytest.approx(1e-6) and np.all(np.diff(ds) >= 0)
    assert ds[-1] > 1e3 * ds[0]
    assert ds[-1] < 10 * np.abs(x0 - oracle.x_star).max()               # a lower estimate
    assert oracle.suboptimality(state["x"]) < 1e-2 * oracle.suboptimality(x0)


# ---- all four -------------------------------------------------------------------------------

SMALL = {"hutchinson": {"precond_every": 3}, "svrg": {"batch_size": 50}}


def run_steps(name, seed, steps=30):
    oracle = QuadraticOracle(budget=10**5, n=200)
    opt = METHODS[name].configure(**SMALL.get(name, {}))
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=np.random.default_rng(seed))
    states = [state]
    for _ in range(steps):
        states.append(opt.step(states[-1], oracle))
    return opt, states


def signature(state):
    return {k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v)
            for k, v in state.items()}


@pytest.mark.parametrize("name", MODERN)
def test_state_is_stable_and_not_mutated(name):
    opt, states = run_steps(name, 0)
    assert all(signature(s) == signature(states[0]) for s in states)
    assert opt.iterate(states[-1]).dtype == np.float32
    _, again = run_steps(name, 0, steps=0)                       # the initial state is untouched
    for k, v in again[0].items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(states[0][k], v)


@pytest.mark.parametrize("name", MODERN)
def test_same_seed_same_iterates(name):
    (opt, a), (_, b) = run_steps(name, 3), run_steps(name, 3)
    assert all(np.array_equal(opt.iterate(s), opt.iterate(t)) for s, t in zip(a, b))


def test_hutchinson_depends_on_its_rng_only():
    (opt, a), (_, b) = run_steps("hutchinson", 3), run_steps("hutchinson", 4)
    assert not np.array_equal(opt.iterate(a[-1]), opt.iterate(b[-1]))


def test_svrg_raises_when_a_full_pass_does_not_fit():
    oracle = QuadraticOracle(budget=300)                          # n = 400
    opt = METHODS["svrg"].configure()
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=np.random.default_rng(0))
    with pytest.raises(BudgetExhausted):
        opt.step(state, oracle)
