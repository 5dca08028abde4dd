"""The importance-sampled oracle (cryobench.model.importance, cryobench.importance): its estimate
against the exact kernel, convergence, its own gradient, determinism, the option's errors and
the terms the oracles tally."""
import numpy as np
import pytest

from cryobench.errors import InputError
from cryobench.harness.plan import Planner
from cryobench.harness.record import RunSpec
from cryobench.harness.registry import resolve
from cryobench.harness.run import execute
from cryobench.importance import ImportanceOracle
from cryobench.model.ctf import CTFParams
from cryobench.model.importance import (ImportanceSettings, PoseSampler, draw_factor,
                                        exact_triples, oracle_settings, sampled_nll, schedule)
from cryobench.model.likelihood import Likelihood
from cryobench.model.quadrature import quadrature_for

D, PIXEL, RMAX = 16, 4.0, 3.0


@pytest.fixture(scope="module")
def tiny():
    """Float64 likelihood with several directions, angles and shifts; 5 images, a volume."""
    quad = quadrature_for(RMAX, D, shift_sigma_px=1.5)
    lik = Likelihood(D, PIXEL, RMAX, quad, 2, np.float64)
    rng = np.random.default_rng(0)
    n = 5
    ctf = CTFParams(defocus_u=rng.uniform(1e4, 2e4, n), defocus_v=rng.uniform(1e4, 2e4, n),
                    defocus_angle=rng.uniform(0, 180, n), voltage=np.full(n, 300.0),
                    cs=np.full(n, 2.7), amplitude_contrast=np.full(n, 0.1),
                    phase_shift=np.zeros(n), bfactor=np.zeros(n))
    vol = rng.normal(size=(D, D, D)) * 0.3
    data = lik.prepare(rng.normal(size=(n, D, D)) * 2.0, ctf, 1.0)
    return lik, data, vol


def full_draws(lik, n):
    """Every point of every factor, ω = 1."""
    logs = [np.full(lik._log_w.shape[0], -np.log(lik._log_w.shape[0])),
            np.log(lik.quadrature.shift_weights), np.log(lik.quadrature.direction_weights)]
    return [tuple((np.arange(len(lw)), lw, np.zeros(len(lw))) for lw in logs)] * n


def drawn(lik, margins, rng, num, uniform=0.2):
    """Draws of ``num`` points per factor from (1 − u) · the exact marginals + u / n."""
    logs = [np.full(lik._log_w.shape[0], -np.log(lik._log_w.shape[0])),
            np.log(lik.quadrature.shift_weights), np.log(lik.quadrature.direction_weights)]
    out = []
    for j in range(len(margins[0])):
        parts = []
        for f in range(3):
            q = (1 - uniform) * margins[f][j] / margins[f][j].sum() + uniform / len(logs[f])
            idx, lo = draw_factor(rng, q / q.sum(), 10.0, num=num[f])
            parts.append((idx, logs[f][idx] + lo, lo))
        out.append(tuple(parts))
    return out


def test_tiny_quadrature_has_every_factor(tiny):
    lik = tiny[0]
    assert all(n > 1 for n in lik._log_w.shape)         # angles, shifts, directions


def test_full_draw_is_the_exact_value_gradient_and_marginals(tiny):
    lik, data, vol = tiny
    nll, grad, pq, pa, margins = lik.nll_grad_marginals(vol, data)
    est, (g, q, a, triples) = sampled_nll(lik, vol, data, full_draws(lik, len(data)), True)
    np.testing.assert_allclose(est, nll, rtol=1e-12)
    np.testing.assert_allclose(g, grad, rtol=1e-9, atol=1e-12 * np.abs(grad).max())
    np.testing.assert_allclose(q, pq, rtol=1e-9, atol=1e-12)
    for f in range(3):
        np.testing.assert_allclose(np.array([t[f][1] for t in triples]), margins[f], atol=1e-12)
    assert np.allclose(np.array([t[2][1] for t in triples]).sum(1), 1.0)


def test_proposal_equal_to_the_posterior_gives_the_exact_value_when_it_factorises(tiny):
    """With a one-direction, one-shift quadrature the posterior is the angle marginal; drawn
    from it, every sampled term w f / q equals p: the value is exact for any sample."""
    lik, data, vol = tiny
    nll, _, _, _, margins = lik.nll_grad_marginals(vol, data)
    na, ns, nd = lik._log_w.shape
    # restrict to direction 0 and shift 0 by the draw itself: the exact value of that sub-sum
    sub = [((np.arange(na), np.full(na, -np.log(na)), np.zeros(na)), (np.array([0]), np.zeros(1),
            np.zeros(1)), (np.array([0]), np.zeros(1), np.zeros(1)))] * len(data)
    exact_sub, (_, _, _, tri) = sampled_nll(lik, vol, data, sub, True)
    rng = np.random.default_rng(1)
    for j in range(len(data)):
        post = tri[j][0][1] / tri[j][0][1].sum()
        idx, lo = draw_factor(rng, post, 10.0, num=7)
        draw = [((idx, -np.log(na) + lo, lo), sub[0][1], sub[0][2])]
        est = sampled_nll(lik, vol, lik.subset(data, [j]), draw, False)[0]
        assert est[0] == pytest.approx(exact_sub[j], rel=1e-12)


def test_estimate_converges_to_the_exact_as_the_sample_grows(tiny):
    lik, data, vol = tiny
    nll, grad, _, _, margins = lik.nll_grad_marginals(vol, data)
    na, ns, nd = lik._log_w.shape
    rng = np.random.default_rng(2)
    errors = []
    for num in (2, 8, 64, 1024):
        v_err, g_err = [], []
        for _ in range(12):
            draws = drawn(lik, margins, rng, (num, num, num))
            est, (g, *_rest) = sampled_nll(lik, vol, data, draws, True)
            v_err.append(np.abs(est - nll).mean())
            g_err.append(np.linalg.norm(g - grad) / np.linalg.norm(grad))
        errors.append((np.mean(v_err), np.mean(g_err)))
    values, grads = np.array(errors).T
    assert np.all(np.diff(values) < 0) and np.all(np.diff(grads) < 0)
    # measured on this task: 1024 draws per factor put the value within 0.05 nats and the
    # gradient within 10 % (relative norm); 2 draws are several times further off
    assert values[-1] < 0.05 and grads[-1] < 0.1
    assert values[0] > 4 * values[-1] and grads[0] > 4 * grads[-1]


def test_gradient_of_the_estimate_is_the_derivative_of_the_estimate(tiny):
    lik, data, vol = tiny
    _, _, _, _, margins = lik.nll_grad_marginals(vol, data)
    draws = drawn(lik, margins, np.random.default_rng(3), (5, 3, 9))
    est, (g, *_rest) = sampled_nll(lik, vol, data, draws, True)
    v = np.random.default_rng(4).normal(size=vol.shape)
    eps = 1e-5
    plus = sampled_nll(lik, vol + eps * v, data, draws, False)[0].sum()
    minus = sampled_nll(lik, vol - eps * v, data, draws, False)[0].sum()
    assert (plus - minus) / (2 * eps) == pytest.approx(float((g * v).sum()), rel=1e-6)


def test_hard_assignment_uses_one_sampled_term(tiny):
    lik, data, vol = tiny
    _, _, _, _, margins = lik.nll_grad_marginals(vol, data)
    draws = drawn(lik, margins, np.random.default_rng(5), (5, 3, 9))
    soft = sampled_nll(lik, vol, data, draws, True)
    hard = sampled_nll(lik, vol, data, draws, True, hard=True)
    np.testing.assert_array_equal(soft[0], hard[0])                  # the value stays p̂
    for triple in hard[1][3]:                                        # one pose per image
        assert all(np.count_nonzero(values) == 1 for _, values in triple)
    assert not np.allclose(soft[1][0], hard[1][0])


@pytest.mark.parametrize("value, part", [
    ("bogus", "unknown oracle 'bogus'"),
    ("importance:uniform=0", "uniform = 0.0: must be a number in (0, 1]"),
    ("importance:uniform=1.5", "uniform = 1.5: must be a number in (0, 1]"),
    ("importance:ess_scale=-1", "ess_scale = -1.0: must be a number > 0"),
    ("importance:ess_scale=abc", "ess_scale = 'abc' is not a number"),
    ("importance:nope=1", "has no parameter 'nope'"),
    ("exact:ess_scale=2", "the exact oracle has no parameters"),
    (3, "an oracle is a name"),
])
def test_bad_oracle_options_get_one_clear_line(value, part):
    with pytest.raises(InputError) as err:
        oracle_settings(value, "--oracle")
    assert part in str(err.value) and str(err.value).startswith("--oracle: ")
    assert "\n" not in str(err.value)


def test_oracle_option_parses_to_full_settings():
    assert oracle_settings(None) is None and oracle_settings("exact") is None
    s = oracle_settings("importance:ess_scale=5")
    assert s == ImportanceSettings(ess_scale=5.0)
    assert oracle_settings(s.to_dict()) == s


def test_exact_runs_keep_their_cell_ids_and_is_runs_get_their_own(cylinder, data_dir):
    planner = Planner(data_dir, tuned=None)
    ref = planner.task("synthetic-cylinder", "ci")
    plain = planner.plan(ref, "sgd", {}, 0, 400)
    exact = planner.plan(ref, "sgd", {}, 0, 400, oracle="exact")
    sampled = planner.plan(ref, "sgd", {}, 0, 400, oracle="importance")
    assert plain.cell == exact.cell and "oracle" not in plain.spec.to_dict()
    assert sampled.cell != plain.cell and sampled.spec.label == "sgd [IS]"
    assert RunSpec.from_dict(sampled.spec.to_dict()) == sampled.spec
    with pytest.raises(InputError, match="unknown oracle"):
        planner.plan(ref, "sgd", {}, 0, 400, oracle="fast")


def test_terms_column_of_the_exact_oracle(cylinder):
    spec = RunSpec("synthetic-cylinder", "ci", "sgd", {"lr": 1.0, "decay": 0.01,
                                                       "batch_size": 100}, 0, 300)
    out = execute(spec, cylinder, resolve("sgd"), compare=False)
    trace = out.trace
    assert (trace["terms"] == trace["evals"] * cylinder.likelihood.quadrature.size).all()
    assert trace["terms"].iloc[-1] == 300 * cylinder.likelihood.terms_per_image()


def run_epochs(task, optimizer, epochs=2, settings="importance"):
    oracle = task.oracle(10**6, 0, settings, optimizer)
    x = task.init.copy()
    out = []
    for _ in range(epochs * (task.n_train // 100)):
        batch = oracle.next_batch(100)
        value, grad = oracle.value_and_grad(x, batch)
        out.append((value, grad))
        x = x - 0.1 * grad
    return oracle, out


def test_first_visit_is_exact_later_ones_are_sampled_and_draws_are_seeded(cylinder):
    # without annealing, so that the second visit samples (annealed, at ci scale the second
    # visit's proposal is too broad to save terms: test_annealing_delays_the_saving)
    a, first = run_epochs(cylinder, "sgd", settings="importance:anneal=0")
    exact = cylinder.oracle(10**6, 0)
    x = cylinder.init.copy()
    v0, g0 = exact.value_and_grad(x, cylinder.stream(0, 100))
    assert first[0][0] == v0 and np.array_equal(first[0][1], g0)     # first visit: exact
    assert isinstance(a, ImportanceOracle)
    per_exact = cylinder.likelihood.terms_per_image()
    assert a.terms < a.evaluations * per_exact                       # later visits: sampled
    b, again = run_epochs(cylinder, "sgd", settings="importance:anneal=0")
    assert b.terms == a.terms
    assert all(u[0] == v[0] and np.array_equal(u[1], v[1]) for u, v in zip(first, again))
    c, other = run_epochs(cylinder, "adam", settings="importance:anneal=0")
    assert any(u[0] != v[0] for u, v in zip(first, other))           # another run's draws


def test_value_and_hvp_reuse_the_visits_draw(cylinder):
    oracle = cylinder.oracle(10**6, 0, "importance", "sgd")
    x = cylinder.init.copy()
    for _ in range(cylinder.n_train // 100 + 1):
        batch = oracle.next_batch(100)
        v, g = oracle.value_and_grad(x, batch)
    assert oracle.value(x, batch) == v                               # the same estimate
    h = oracle.hvp(x, np.zeros_like(x) + 1e-3, batch, grad=g)
    assert np.all(np.isfinite(h))


def test_em_weights_under_importance_sampling(cylinder):
    oracle = cylinder.oracle(10**6, 0, "importance", "em")
    exact = cylinder.oracle(10**6, 0)
    x = cylinder.init.copy()
    batch = cylinder.stream(0, 50)
    got, want = oracle.value_grad_weights(x, batch), exact.value_grad_weights(x, batch)
    for u, v in zip(got, want):                                      # first visit: exact
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6 * np.abs(v).max())
    for _ in range(cylinder.n_train // 50 + 1):
        value, grad, w, b = oracle.value_grad_weights(x, oracle.next_batch(50))
    assert np.all(np.isfinite(w)) and np.all(w >= 0) and np.all(np.isfinite(b))


def test_schedule_values_by_hand():
    s = ImportanceSettings(uniform=0.05, anneal=4.0)
    u, t = schedule(s, [0, 1, 2, 4, 8])
    # u = max(0.05, 0.05^(k/4)); T = max(1, 2^(c · 4 / k)), c = 750 / (log2(20) / 0.005)
    c = 750.0 / (np.log2(20.0) / 0.005)
    assert u == pytest.approx([1.0, 0.05**0.25, 0.05**0.5, 0.05, 0.05])
    assert u[1] == pytest.approx(0.472871, abs=1e-6) and u[2] == pytest.approx(0.223607, abs=1e-6)
    assert t[0] == np.inf
    assert t[1:] == pytest.approx([2**(4 * c), 2**(2 * c), 2**c, 2**(c / 2)])
    assert t[2] == pytest.approx(3.329572, abs=1e-5) and t[4] == pytest.approx(1.350819, abs=1e-5)
    # off: the constants at every visit
    u, t = schedule(ImportanceSettings(uniform=0.1, temperature=2.0, anneal=0), [0, 1, 50])
    assert list(u) == [0.1] * 3 and list(t) == [2.0] * 3


def test_schedule_with_the_codes_horizon_is_the_codes_formula():
    """exp/shared/importance_sampler.params with k = iteration − 50."""
    s = ImportanceSettings(anneal=np.log2(20.0) / 0.005)
    k = np.array([1, 10, 100, 500, 749, 751, 863, 865, 2000])
    u, t = schedule(s, k)
    assert u == pytest.approx(np.maximum(0.05, 2 ** (-0.005 * k)))
    assert t == pytest.approx(np.maximum(1.0, 2 ** (750.0 / k)))


def test_anneal_option_parses_and_labels():
    s = oracle_settings("importance:anneal=4")
    assert s.anneal == 4.0 and s.uniform == 0.05 and ImportanceSettings().anneal == 2.0
    assert oracle_settings("importance:anneal=0").anneal == 0.0
    with pytest.raises(InputError, match="anneal"):
        oracle_settings("importance:anneal=-1")


def test_uniform_proposal_is_unbiased_in_expectation(tiny):
    """u = 1: the sampler evaluates every point (the code: a uniform proposal saves nothing);
    a fixed-size uniform sample's gradient averages to the exact one over many draws."""
    lik, data, vol = tiny
    nll, grad, _, _, margins = lik.nll_grad_marginals(vol, data)
    sampler = PoseSampler(lik.quadrature, 5, ImportanceSettings(uniform=1.0, anneal=0), 7,
                          lik.box / (4.0 * lik.rmax))
    sampler.draws(np.arange(5), True)
    sampler.record(np.arange(5), exact_triples(margins))
    assert all(d is None for d in sampler.draws(np.arange(5), True))   # exact at u = 1
    # fixed-size uniform samples (one draw per point on average): p̂ = exp(−nll̂) is unbiased,
    # E p̂ / p = 1 (within 4 standard errors of the mean of 200 draws); the gradient of −log p̂
    # is a ratio (self-normalised) and only consistent: its mean is nearer the exact gradient
    # than one draw is, and nearer with larger samples
    flat = [np.ones_like(m) for m in margins]
    na, ns, nd = lik._log_w.shape
    errors = []
    for size in (1, 2):
        rng = np.random.default_rng(11)
        ratios, grads = [], []
        for _ in range(200):
            draws = drawn(lik, flat, rng, (size * na, size * ns, size * nd), uniform=1.0)
            est, (g, *_rest) = sampled_nll(lik, vol, data, draws, True)
            ratios.append(np.exp(nll - est))
            grads.append(g)
        ratios, grads = np.array(ratios), np.array(grads)
        se = ratios.std(0) / np.sqrt(len(ratios))
        assert np.all(np.abs(ratios.mean(0) - 1) < 4 * se) and np.all(se < 0.15)
        one = np.mean([np.linalg.norm(g - grad) for g in grads]) / np.linalg.norm(grad)
        mean = np.linalg.norm(grads.mean(0) - grad) / np.linalg.norm(grad)
        assert mean < one / 2
        errors.append(mean)
    assert errors[1] < errors[0]


def test_annealed_first_sampled_visit_is_exact_and_later_ones_sample(tiny):
    lik, data, vol = tiny
    *_, margins = lik.nll_grad_marginals(vol, data)
    s = ImportanceSettings(anneal=3.0, exact_above=1.0)
    sampler = PoseSampler(lik.quadrature, 5, s, 7, lik.box / (4.0 * lik.rmax))
    images = np.arange(5)
    assert all(d is None for d in sampler.draws(images, True))          # unseen: exact
    sampler.record(images, exact_triples(margins))                      # T(1) = 2^(0.868·3)
    q = sampler.proposals(2, images)
    u = schedule(s, 1)[0]
    assert np.all(q >= u / q.shape[1] - 1e-12)
    a = PoseSampler(lik.quadrature, 5, s, 7, lik.box / (4.0 * lik.rmax))
    a.draws(images, True)
    a.record(images, exact_triples(margins))
    assert [str(x) for x in a.draws(images, True)] == [str(x) for x in sampler.draws(images, True)]


def test_annealing_delays_the_saving(cylinder):
    """Annealed (A = 2): the second visit (u = 0.05^½, T = 2^1.74) computes more terms than
    without annealing (here, at ci scale from the initial density, every one: exact)."""
    off, _ = run_epochs(cylinder, "sgd", settings="importance:anneal=0")
    on, _ = run_epochs(cylinder, "sgd")
    assert on.terms > off.terms
