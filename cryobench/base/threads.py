"""Thread counts for BLAS and numba, set together, and a description of them for provenance.

The kernel is BLAS matrix products plus numba loops; both pools must agree or a 2-core machine
is oversubscribed. ``set_threads(n)`` sets both; a grid worker calls it with its share of cores.

The two pools take turns many times per kernel call, so a pool must not busy-wait for work
after its turn: OpenBLAS workers spin for ~0.1 s after each call by default and numba's OpenMP
workers spin too, each holding a core the other pool needs (on 2 cores this halved the speed of
every numba loop). Importing this module — ``cryobench/__init__.py`` does so first — sets
``OPENBLAS_THREAD_TIMEOUT=4`` and ``OMP_WAIT_POLICY=PASSIVE`` unless already set, so idle
workers sleep. Both are read when the libraries load: they have no effect if numpy or numba
were imported before cryobench; then set them in the environment.
"""
from __future__ import annotations

import contextlib
import os
import platform

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llvmlite.binding  # noqa: E402
import numba  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: all cores) for BLAS and numba in this process; returns n."""
    n = max(1, int(n or os.cpu_count() or 1))
    threadpool_limits(limits=n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


@contextlib.contextmanager
def using_threads(n: int):
    """BLAS and numba use ``n`` threads inside the block; the previous counts are restored."""
    before = numba.get_num_threads()
    with threadpool_limits(limits=n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:
            yield n
        finally:
            numba.set_num_threads(before)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where available, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_info() -> dict:
    """CPU, core count, BLAS library/version/threads (numpy's, if several are loaded) and numba
    threads of this process."""
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    blas.sort(key=lambda p: "numpy" not in str(p.get("filepath", "")))     # numpy's first
    first = blas[0] if blas else {}
    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "blas": f"{first.get('internal_api', 'unknown')} {first.get('version', '')}".strip(),
            "blas_architecture": first.get("architecture"),
            "blas_threads": first.get("num_threads"), "numba_threads": numba.get_num_threads()}


def machine() -> str:
    """The platform: CPU, the kernels OpenBLAS and LLVM chose for it, the BLAS build, NumPy,
    numba and Python versions — what besides the code decides the bits a run computes (two
    machines alike in these compute alike)."""
    info = thread_info()
    return (f"{info.get('cpu')} | {info.get('blas')} {info.get('blas_architecture')} | llvm "
            f"{llvmlite.binding.get_host_cpu_name()} | numpy {np.__version__} | numba "
            f"{numba.__version__} | python {platform.python_version()}")
