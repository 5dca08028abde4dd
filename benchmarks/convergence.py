"""Test NLL reached at a fixed budget: tracks results, not speed."""
from . import common
from cryobench.base.seeding import rng_for
from cryobench.harness.registry import discover
from cryobench.optim import minimize

BUDGET = 2000        # gradient evaluations (20 minibatches of 100; the ci budget is 3,500)


class TestNLLAtBudget:
    """Σ over the 100 test images of −log p(I_i | θ_i, V) after ``minimize`` with default
    hyper-parameters and a budget of 2,000 gradient evaluations, from the task's initial density,
    on the shared training stream, optimizer seed rng_for(task, optimizer, 0). Deterministic for
    a given thread count (float32 BLAS; the same value run after run)."""

    params = (["sgd", "nesterov", "adagrad"], common.TASKS)
    param_names = ["optimizer", "task"]
    unit = "test NLL"
    timeout = 300

    def setup(self, opt_name, name):
        self.task = common.task(name)
        self.method = discover()[opt_name]

    def track_test_nll(self, opt_name, name):
        opt, oracle = self.method.configure(), self.task.oracle(budget=BUDGET)
        state = minimize(opt, self.task.init, oracle, rng_for(name, opt_name, 0))
        return self.task.test_nll(opt.iterate(state))
