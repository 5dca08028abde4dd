"""The conformance suite every registered optimizer must pass.

Run it against your own optimizer with
    pytest tests/test_conformance.py --optimizer path/to/my_method.py:my_method
"""
import numpy as np
import pytest

import cryobench
from cryobench.base.seeding import rng_for
from cryobench.optim import minimize
from cryobench.toy import QuadraticOracle

CI_BUDGET = 2000
# (method, ci task) pairs whose failure to improve the test NLL is the method's documented
# behaviour, not a bug. strict: if one starts to pass, the test says so.
KNOWN_CI_FAILURES = {
    ("projection-matching", "synthetic-cylinder"):
        "hard assignment of 350 images at SNR 0.05 fits noise: test NLL 3182.5 → 3194.7 after "
        "5 iterations (it improves on thermus-style ci and on both small-scale tasks)",
}


def signature(state):
    """Keys, and shape/dtype of every array, of a state dict."""
    return {k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v).__name__
            for k, v in state.items()}


def run(method, oracle, x0, seed=0):
    opt = method.configure()
    return opt, minimize(opt, x0, oracle, rng_for("conformance", method.name, seed))


def test_converges_on_an_ill_conditioned_quadratic_without_nan(method):
    oracle = QuadraticOracle(budget=20000, condition=100.0)
    x0 = oracle.initial_point()
    opt = method.configure()
    finite = []
    state = minimize(opt, x0, oracle, rng_for("conformance", method.name, 0),
                     lambda st, _: finite.append(bool(np.all(np.isfinite(opt.iterate(st))))))
    assert finite and all(finite)
    assert oracle.suboptimality(opt.iterate(state)) < 0.1 * oracle.suboptimality(x0)


def test_state_shapes_and_dtypes_are_stable(method):
    oracle = QuadraticOracle(budget=20000)
    opt = method.configure()
    state = opt.init(oracle.initial_point(), budget=oracle.budget, rng=rng_for("stable", method.name))
    first = signature(state)
    for _ in range(30):
        if oracle.remaining <= 0:
            break
        try:
            state = opt.step(state, oracle)
        except cryobench.BudgetExhausted:
            break
        assert signature(state) == first
    assert opt.iterate(state).dtype == np.float32 and opt.iterate(state).shape == (50,)


def test_same_seed_same_iterates_and_budget_respected(method):
    finals = []
    for _ in range(2):
        oracle = QuadraticOracle(budget=3000)
        opt, state = run(method, oracle, oracle.initial_point(), seed=7)
        assert oracle.evaluations <= oracle.budget
        finals.append(opt.iterate(state))
    assert np.array_equal(finals[0], finals[1])


@pytest.mark.parametrize("task_name", ["synthetic-cylinder", "thermus-style"])
def test_improves_the_test_nll_on_ci_tasks(method, task_name, data_dir, request):
    if (method.name, task_name) in KNOWN_CI_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_CI_FAILURES[method.name, task_name],
                                              strict=True))
    task = cryobench.load_task(task_name, "ci", data_dir=data_dir, progress=False)
    oracle = task.oracle(budget=CI_BUDGET)
    opt, state = run(method, oracle, task.init)
    assert oracle.evaluations <= CI_BUDGET
    x = opt.iterate(state)
    assert x.dtype == task.init.dtype and np.all(np.isfinite(x))
    assert task.test_nll(x) < task.test_nll(task.init)
