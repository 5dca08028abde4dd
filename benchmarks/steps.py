"""One step of every registered optimizer (``cryobench.harness.registry.discover()``), defaults."""
from . import common
from cryobench.base.seeding import rng_for
from cryobench.harness.registry import discover

OPTIMIZERS = sorted(discover())
WARMUP = 23          # steps taken before the timed one (see OptimizerStep)


class OptimizerStep:
    """``step(state, oracle)`` of each registered optimizer (default hyper-parameters) on a
    ci task, including its oracle evaluations (minibatch of its own ``batch_size``).

    The timed step is a representative one, not the first: the state is the one after
    ``WARMUP`` = 23 steps from the task's initial density, made once by ``setup_cache`` (with an
    oracle on the shared training stream). At t = 23: TONGA has refreshed its covariance at
    t = 19 and does not refresh (every 20 steps) now; the Hutchinson preconditioner is not
    resampled (every 10 steps); oLBFGS holds its curvature pairs (up to 23 of 30); SVRG
    (4 inner steps per full pass on ci) is inside its inner loop, so the step is an inner step
    (2 minibatch gradients), not a full-gradient pass; Hessian-free warm-starts CG. Every timed
    call starts from that same state with a fresh, effectively unlimited oracle.
    """

    params = (OPTIMIZERS, common.TASKS)
    param_names = ["optimizer", "task"]
    timeout = 300

    def setup_cache(self):
        methods, states = discover(), {}
        for name in common.TASKS:
            t = common.task(name)
            for opt_name in OPTIMIZERS:
                opt = methods[opt_name].configure()
                oracle = t.oracle(budget=10**12)
                state = opt.init(t.init, budget=oracle.budget, rng=rng_for(name, opt_name, 0))
                for _ in range(WARMUP):
                    state = opt.step(state, oracle)
                states[name, opt_name] = state
        return states

    def setup(self, states, opt_name, name):
        self.task = common.task(name)
        self.opt = discover()[opt_name].configure()
        self.state = states[name, opt_name]
        self.oracle = self.task.oracle(budget=10**12)

    def time_step(self, states, opt_name, name):
        self.opt.step(self.state, self.oracle)

    def track_step_evaluations(self, states, opt_name, name):
        """What the timed step costs in oracle evaluations (gradient + value + Hv, per image)."""
        self.opt.step(self.state, self.oracle)
        return self.oracle.evaluations

    track_step_evaluations.unit = "evaluations"
