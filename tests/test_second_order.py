"""TONGA, online L-BFGS and Hessian-free: what they are charged, their linear algebra, their state."""
import importlib.util

import numpy as np
import pytest

from cryobench.base.seeding import rng_for
from cryobench.harness.registry import OPTIMIZERS_DIR, resolve
from cryobench.optim import minimize
from cryobench.oracle import CountedOracle
from cryobench.toy import QuadraticOracle


def load(stem):
    spec = importlib.util.spec_from_file_location(f"second_order_{stem}", OPTIMIZERS_DIR / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tonga_mod, olbfgs_mod, hf_mod = (load(s) for s in ("tonga", "olbfgs", "hessian_free"))
TONGA, OLBFGS, HF = tonga_mod.tonga, olbfgs_mod.olbfgs, hf_mod.hessian_free


def steps(opt, oracle, n, x0=None, seed=0):
    state = opt.init(oracle.initial_point() if x0 is None else x0, budget=oracle.budget,
                     rng=rng_for("second-order", seed))
    out = [state]
    for _ in range(n):
        out.append(opt.step(out[-1], oracle))
    return out


def signature(state):
    return {k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v) for k, v in state.items()}


# ----------------------------------------------------------------------------- evaluation costs
def test_tonga_costs_one_minibatch_gradient_per_step():
    oracle = QuadraticOracle(budget=10**6)
    steps(TONGA.configure(refresh=2, rank=3), oracle, 5)
    assert oracle.counts == {"grad": 5 * 100, "value": 0, "hvp": 0}


def test_olbfgs_is_charged_for_its_second_gradient_on_the_same_batch():
    oracle = QuadraticOracle(budget=10**6)
    steps(OLBFGS.configure(), oracle, 1)
    assert oracle.counts == {"grad": 2 * 100, "value": 0, "hvp": 0}
    assert oracle.position == 100                       # one minibatch, used twice
    steps(OLBFGS.configure(batch_size=40), oracle, 3)
    assert oracle.counts == {"grad": 200 + 3 * 2 * 40, "value": 0, "hvp": 0}


def test_hessian_free_is_charged_for_its_hessian_vector_products():
    oracle = QuadraticOracle(budget=10**6)
    opt = HF.configure()
    first = opt.step(opt.init(oracle.initial_point(), budget=oracle.budget, rng=None), oracle)
    assert oracle.counts == {"grad": 300, "value": 0, "hvp": 5 * 300}
    assert np.any(first["p"])                           # so the next CG is warm-started:
    opt.step(first, oracle)                             # + one Hv for the residual A p₀
    assert oracle.counts == {"grad": 600, "value": 0, "hvp": 5 * 300 + 6 * 300}
    cold = QuadraticOracle(budget=10**6)
    steps(HF.configure(cg_decay=0.0, cg_iters=3, batch_size=50), cold, 2)
    assert cold.counts == {"grad": 100, "value": 0, "hvp": 2 * 3 * 50}


# ----------------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("filled", [5, 3])
def test_tonga_woodbury_solve_equals_the_dense_solve(filled):
    rng = np.random.default_rng(0)
    G = rng.normal(size=(5, 4, 3))                      # k = 5 gradients of a (4, 3) iterate
    g, gamma = rng.normal(size=(4, 3)), 0.3
    U, lam = tonga_mod.lowrank_covariance(G, filled)
    flat = G.reshape(5, -1)[:filled]
    C = flat.T @ flat / filled
    dense = np.linalg.solve(C + gamma * np.eye(12), g.reshape(-1)).reshape(4, 3)
    assert U.shape == G.shape and lam.shape == (5,)
    assert np.allclose(tonga_mod.woodbury_solve(U, lam, gamma, g), dense, atol=1e-10)
    assert np.allclose(np.einsum("i,ij,ik->jk", lam, U.reshape(5, -1), U.reshape(5, -1)), C)
    assert np.all(lam[filled:] == 0) and np.all(U[filled:] == 0)


def test_tonga_is_sgd_until_the_first_refresh_then_the_regularised_natural_gradient():
    oracle, gamma = QuadraticOracle(budget=10**6), 1e-3
    states = steps(TONGA.configure(refresh=4, rank=4, decay=0.0, gamma=gamma), oracle, 5)
    assert all(np.all(s["lam"] == 0) for s in states[:4]) and np.any(states[4]["lam"] > 0)
    replay = QuadraticOracle(budget=10**6)                 # the same gradients, by hand
    x, grads = replay.initial_point().astype(np.float64), []
    for _ in range(4):
        grads.append(replay.value_and_grad(x.astype(np.float32), replay.next_batch(100))[1])
        x = x - grads[-1] if len(grads) < 4 else x         # SGD steps (lr 1) before the refresh
    assert np.allclose(states[3]["x"], x, atol=1e-6)
    G = np.array(grads, np.float64)
    natural = gamma * np.linalg.solve(G.T @ G / 4 + gamma * np.eye(50), G[3])
    assert np.allclose(states[4]["x"] - states[3]["x"], -natural, rtol=1e-3, atol=1e-6)
    assert np.linalg.norm(natural - G[3]) > 0.3 * np.linalg.norm(G[3])   # not the SGD step


def test_hf_conjugate_gradient_solves_a_small_spd_system_exactly():
    rng = np.random.default_rng(1)
    M = rng.normal(size=(8, 8))
    A, b, calls = M @ M.T + 0.5 * np.eye(8), rng.normal(size=8), []
    matvec = lambda v: calls.append(1) or A @ v                                   # noqa: E731
    x, q = hf_mod.conjugate_gradient(matvec, b, np.zeros(8), 8)
    assert np.allclose(x, np.linalg.solve(A, b), atol=1e-8) and len(calls) == 8
    assert q == pytest.approx(0.5 * x @ A @ x - b @ x)
    calls.clear()
    x, q = hf_mod.conjugate_gradient(matvec, b, rng.normal(size=8), 8)   # warm start: one more
    assert np.allclose(x, np.linalg.solve(A, b), atol=1e-8) and len(calls) == 9
    assert q == pytest.approx(0.5 * x @ A @ x - b @ x)


def test_hf_conjugate_gradient_stops_at_negative_curvature():
    A = np.diag([1.0, -1.0])
    x, q = hf_mod.conjugate_gradient(lambda v: A @ v, np.array([0.0, 1.0]), np.zeros(2), 5)
    assert np.all(x == 0) and q == 0                    # first direction has dᵀAd < 0
    x, q = hf_mod.conjugate_gradient(lambda v: A @ v, np.array([1.0, 1e-3]), np.zeros(2), 5)
    assert np.all(np.isfinite(x)) and q < 0             # one positive-curvature step, then stop


def test_olbfgs_two_loop_satisfies_the_secant_equation():
    rng = np.random.default_rng(2)
    A = np.diag(np.geomspace(1, 0.01, 6))
    S = rng.normal(size=(3, 6))
    pairs = tuple(olbfgs_mod.curvature_pair(s, s @ A) for s in S)          # oldest first
    for newest in range(3):
        assert np.allclose(olbfgs_mod.two_loop(pairs[newest].y, pairs[:newest + 1]), -S[newest])
    g = rng.normal(size=6)
    assert np.allclose(olbfgs_mod.two_loop(g, ()), -g)                     # H₀ = I without pairs


def test_olbfgs_keeps_the_newest_memory_pairs_and_shares_their_arrays():
    oracle = QuadraticOracle(budget=10**6)
    opt = OLBFGS.configure(memory=3)
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=None)
    history = [state]
    for _ in range(5):
        history.append(opt.step(history[-1], oracle))
    kept = history[-1]["pairs"]
    assert len(kept) == 3 and kept == history[-2]["pairs"][1:] + kept[-1:]
    assert all(a is b for a, b in zip(kept[:2], history[-2]["pairs"][1:]))   # shared, not copied
    for t, state in enumerate(history[1:], 1):                              # s = x_t − x_{t−1}
        assert np.array_equal(state["pairs"][-1].s, state["x"] - history[t - 1]["x"])


class ConcaveOracle(CountedOracle):
    """f(x) = −½‖x‖² for every example: sᵀy < 0 on every step."""
    n_train, train_indices = 10, np.arange(10)

    def _stream(self, position, size):
        return np.arange(position, position + size) % 10

    def _is_train(self, batch):
        return True

    def _evaluate(self, x, batch, gradient):
        return -0.5 * float(x @ x), -x if gradient else None


def test_olbfgs_skips_pairs_without_positive_curvature():
    oracle = ConcaveOracle(budget=1000)
    states = steps(OLBFGS.configure(batch_size=5), oracle, 3, x0=np.ones(4, np.float32))
    assert all(s["pairs"] == () for s in states)


# ----------------------------------------------------------------------------- convergence
def test_olbfgs_beats_sgd_on_a_noiseless_quadratic_with_equal_evaluations():
    results = {}
    for name, opt in [("sgd", resolve("sgd").configure(lr=1.0, decay=0.0, batch_size=50)),
                      ("olbfgs", OLBFGS.configure(lr=1.0, decay=0.0, batch_size=50))]:
        oracle = QuadraticOracle(budget=4000, noise=0.0)   # every minibatch is the full batch
        state = minimize(opt, oracle.initial_point(), oracle, rng_for("noiseless"))
        assert oracle.evaluations == 4000
        results[name] = oracle.suboptimality(state["x"])
    assert results["olbfgs"] < 1e-3 * results["sgd"]


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("opt", [TONGA.configure(rank=3, refresh=2), OLBFGS.configure(memory=3),
                                 HF.configure(batch_size=40)], ids=["tonga", "olbfgs", "hf"])
def test_state_is_stable_not_mutated_and_deterministic(opt):
    runs = []
    for _ in range(2):
        oracle = QuadraticOracle(budget=10**6)
        states = [opt.init(oracle.initial_point(), budget=oracle.budget, rng=rng_for("s", 3))]
        first = signature(states[0])
        for _ in range(7):                              # past the ring buffers' wrap-around
            before = {k: v.copy() for k, v in states[-1].items() if isinstance(v, np.ndarray)}
            states.append(opt.step(states[-1], oracle))
            assert signature(states[-1]) == first
            assert all(np.array_equal(states[-2][k], v) for k, v in before.items())
        assert states[-1]["x"].dtype == np.float32 and np.all(np.isfinite(states[-1]["x"]))
        runs.append(states)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(*runs))
