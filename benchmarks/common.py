"""Shared set-up for the asv benchmarks: where the ci datasets live, threads, loaded tasks.

* Datasets: ``$CRYOBENCH_DATA`` if set, else ``.asv/data`` beside ``asv.conf.json``. The ci
  datasets are simulated there once (about a second each) and reused by every later run; a
  change of the simulator changes their hash and so their folder.
* Threads: ``$CRYOBENCH_BENCH_THREADS`` (default 1) BLAS and numba threads, set by
  :func:`task` (so by every benchmark's ``setup``): a single thread is the most stable on a
  shared machine; set it to the core count to measure the parallel kernel.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

import cryobench
from cryobench.base.threads import set_threads

TASKS = ["synthetic-cylinder", "thermus-style"]
SCALE = "ci"
BATCH = 100
THREADS = int(os.environ.get("CRYOBENCH_BENCH_THREADS", "1"))


def data_dir() -> Path:
    """The dataset cache of the benchmarks."""
    env = os.environ.get("CRYOBENCH_DATA")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / ".asv" / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def task(name: str):
    """Task ``name`` at the ci scale, with threads set and the numba kernels compiled."""
    set_threads(THREADS)
    return _load(name)


@functools.lru_cache(maxsize=None)
def _load(name: str):
    t = cryobench.load_task(name, scale=SCALE, data_dir=data_dir(), progress=False)
    warm = t.likelihood.subset(t.spectra, t.splits["train"][:2])
    t.likelihood.nll_and_grad(t.init, warm)                       # JIT / caches, not timed
    return t


def minibatch(t, size: int = BATCH):
    """The first ``size`` images of the training stream, prepared (a fixed minibatch)."""
    return t.likelihood.subset(t.spectra, t.stream(0, size))


def slice_gradient(t) -> np.ndarray:
    """A fixed complex array shaped like the slices, for the adjoint."""
    rng = np.random.default_rng(0)
    shape = t.likelihood.slicer.shape
    g = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return g.astype(np.complex64 if t.likelihood.dtype == np.float32 else np.complex128)
