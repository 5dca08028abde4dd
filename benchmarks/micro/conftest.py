"""Fixtures of the pytest-benchmark micro-benchmarks (run: docs/benchmarks.md).

This folder has no ``__init__.py`` on purpose: asv imports every package under ``benchmarks/``
during discovery, and would otherwise import these pytest modules too.
"""
import os

import numpy as np
import pytest

import cryobench
from cryobench.base.threads import set_threads

TASKS = ["synthetic-cylinder", "thermus-style"]


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory):
    """$CRYOBENCH_DATA if set (reuses its ci datasets), else a fresh folder for this session."""
    env = os.environ.get("CRYOBENCH_DATA")
    return env if env else tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session", autouse=True)
def threads():
    """BLAS and numba threads: $CRYOBENCH_BENCH_THREADS, default 1 (stable on a shared machine)."""
    return set_threads(int(os.environ.get("CRYOBENCH_BENCH_THREADS", "1")))


@pytest.fixture(scope="session", params=TASKS)
def task(request, bench_data_dir, threads):
    """Each task at the ci scale, with the numba kernels already compiled."""
    t = cryobench.load_task(request.param, scale="ci", data_dir=bench_data_dir, progress=False)
    t.likelihood.nll_and_grad(t.init, t.likelihood.subset(t.spectra, t.splits["train"][:2]))
    return t


@pytest.fixture(scope="session")
def minibatch(task):
    """The first 100 images of the training stream, prepared."""
    return task.likelihood.subset(task.spectra, task.stream(0, 100))


@pytest.fixture(scope="session")
def slice_gradient(task):
    rng = np.random.default_rng(0)
    shape = task.likelihood.slicer.shape
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
