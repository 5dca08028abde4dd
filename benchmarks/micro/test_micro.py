"""pytest-benchmark micro-benchmarks: the kernel, slicing, test NLL, one SGD step (ci tasks).

Not part of the default test run (testpaths = ["tests"], and addopts has --benchmark-skip);
run with ``pytest benchmarks/micro --benchmark-only`` (see docs/benchmarks.md).
"""
import numpy as np

from cryobench.harness.registry import resolve
from cryobench.base.seeding import rng_for


def test_kernel_nll_and_grad(benchmark, task, minibatch):
    """Value and gradient of the data term on a minibatch of 100 images."""
    nll, grad = benchmark(task.likelihood.nll_and_grad, task.init, minibatch)
    assert nll.shape == (100,) and np.all(np.isfinite(nll)) and grad.shape == task.init.shape


def test_slice_forward(benchmark, task):
    """Central slices at every quadrature direction."""
    slices = benchmark(task.likelihood.slicer.forward, task.init)
    assert slices.shape == task.likelihood.slicer.shape


def test_slice_adjoint(benchmark, task, slice_gradient):
    """The adjoint of slicing (slices → volume)."""
    vol = benchmark(task.likelihood.slicer.adjoint, slice_gradient)
    assert vol.shape == task.init.shape


def test_test_nll(benchmark, task):
    """Σ −log p over the 100 test images at the initial density."""
    value = benchmark(task.test_nll, task.init)
    assert np.isfinite(value)


def test_sgd_step(benchmark, task):
    """One SGD step (default hyper-parameters: a minibatch of 100) from a warm state (3 steps in),
    including the oracle's subset, prior and counting."""
    opt = resolve("sgd").configure()
    oracle = task.oracle(budget=10**12)
    state = opt.init(task.init, budget=oracle.budget, rng=rng_for(task.name, "sgd", 0))
    for _ in range(3):
        state = opt.step(state, oracle)
    new = benchmark(opt.step, state, oracle)
    assert new["x"].shape == task.init.shape
