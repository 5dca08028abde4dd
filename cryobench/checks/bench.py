"""``cryobench bench``: how fast this machine runs a task's kernel, next to its own SGEMM.

In one process, per task: this machine's single-precision GEMM throughput on the kernel's own
matrix products (same shapes and layouts, random float32 operands), the kernel's throughput —
value and gradient of a minibatch of 100 prepared training images, counting only the flops of
the matrix products (:meth:`cryobench.model.likelihood.Likelihood.flops_per_image`) — and their
ratio; the time of an epoch of plain SGD through the counted oracle (measured on N minibatches
and extrapolated where asked, which the report says) and, beside it, through the
importance-sampled oracle (:func:`importance_epoch`), of the test NLL, of loading the task, and
the process's peak memory; and the cost of running the optimizer in a process of its own
(:mod:`cryobench.harness.isolation`): the same SGD steps there; per step, the time not spent in the
oracle's evaluations there (messages, shared-memory copies, the update) less the same time in
this process (the update), as a share of the in-process step; and the
same difference on a free oracle (:func:`transport_floor`), which the kernel's variations on a
busy machine do not blur. Thread counts are set with :func:`cryobench.base.threads.set_threads`.
"""
from __future__ import annotations

import gc
import math
import resource
import time
from pathlib import Path

import numpy as np

from cryobench.base.threads import set_threads, thread_info
from cryobench.data.datasets import default_data_dir, simulated_dir
from cryobench.data.spec import load_spec
from cryobench.harness.isolation import OptimizerProcess
from cryobench.optim import GradientMethod, Hyper, method
from cryobench.oracle import CountedOracle
from cryobench.task import load_task

DEFAULT_TASKS = ("synthetic-cylinder", "thermus-style")
MINIBATCH = 100
SGD_LR = 0.1              # constant step: finite at every shipped scale (1.0 diverges at paper)
PAPER_EPOCH_BATCHES = 50  # minibatches timed at paper scale by default (then extrapolated)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (getrusage ru_maxrss), in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _best(fn, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_products(shapes, dtype=np.float32, seed: int = 0):
    """Callables computing products given as (layout, m, k, n) (see Likelihood.gemm_shapes) on
    random operands of that layout — "AB^T": X (m, k) @ Y (n, k)ᵀ, "A^TB": X (k, m)ᵀ @ Y (k, n),
    output C-contiguous — yielded one at a time as ((layout, m, k, n), fn), so a caller that
    drops each before the next holds one product's operands at a time."""
    rng = np.random.default_rng(seed)
    for layout, m, k, n in shapes:
        out = np.empty((m, n), dtype)
        if layout == "AB^T":
            x, y = rng.standard_normal((m, k), dtype), rng.standard_normal((n, k), dtype)
            fn = lambda x=x, y=y, out=out: np.matmul(x, y.T, out=out)  # noqa: E731
        elif layout == "A^TB":
            x, y = rng.standard_normal((k, m), dtype), rng.standard_normal((k, n), dtype)
            fn = lambda x=x, y=y, out=out: np.matmul(x.T, y, out=out)  # noqa: E731
        else:
            raise ValueError(f"unknown GEMM layout {layout!r}")
        yield (layout, m, k, n), fn
        del x, y, out, fn


def gemm_rate(shapes, repeats: int = 5, dtype=np.float32, seed: int = 0) -> dict:
    """SGEMM throughput on products given as (layout, m, k, n) (see :func:`gemm_products`),
    each timed best of ``repeats``. The rate is the products' total flops over the sum of their
    best times.
    """
    rows, flops, seconds = [], 0, 0.0
    for (layout, m, k, n), fn in gemm_products(shapes, dtype, seed):
        fn()
        t = _best(fn, repeats)
        rows.append({"layout": layout, "m": m, "k": k, "n": n, "seconds": t,
                     "gflops": 2 * m * k * n / t / 1e9})
        flops += 2 * m * k * n
        seconds += t
        del fn
    return {"gflops": flops / seconds / 1e9, "products": rows}


def _dataset_cached(spec, scale_name: str, data_dir: Path) -> bool:
    if spec.section("dataset").get("kind") != "simulated":
        return True
    return (simulated_dir(spec, spec.scale(scale_name), data_dir) / "manifest.json").is_file()


@method(lr=Hyper(SGD_LR, 1e-3, 10))
def bench_sgd(lr):
    """x ← x − lr ∇f_B(x) on minibatches of :data:`MINIBATCH`, as the in-process SGD epoch."""
    def init(x0, *, budget, rng):
        return {"x": x0.copy()}

    def step(state, oracle):
        _, g = oracle.value_and_grad(state["x"], oracle.next_batch(MINIBATCH))
        state["x"] -= lr * g
        return state
    return GradientMethod(init, step)


def isolated_steps(task, x0: np.ndarray, steps: int, threads: int) -> dict:
    """``steps`` SGD steps (after one warm-up) with the optimizer in its own process: seconds
    per step, and per step the seconds not spent in the oracle's evaluations."""
    oracle = task.oracle(budget=(steps + 1) * MINIBATCH)
    with OptimizerProcess(bench_sgd, {}, oracle.view(), x0, threads, [], float("inf")) as proc:
        proc.init(x0.copy(), oracle.budget, np.random.default_rng(0))
        proc.step()
        elapsed, in_oracle = proc.elapsed, proc.oracle_s
        for _ in range(steps):
            proc.step()
        return {"isolated_minibatch_s": (proc.elapsed - elapsed) / steps,
                "isolation_transport_s": (proc.elapsed - elapsed - proc.oracle_s + in_oracle) / steps}


class _NullOracle(CountedOracle):
    """A counted oracle whose gradient is a constant of the iterate's shape, at no cost: what
    remains of an SGD step is the update and, isolated, the transport."""

    n_train = 10 * MINIBATCH
    train_indices = property(lambda self: np.arange(self.n_train))

    def _is_train(self, batch) -> bool:
        return True

    def _stream(self, position: int, size: int) -> np.ndarray:
        return np.arange(position, position + size) % self.n_train

    def _evaluate(self, x, batch, gradient: bool):
        self._work(len(batch))
        return 0.0, np.full_like(x, 1e-6)


def transport_floor(x0: np.ndarray, steps: int, threads: int) -> float:
    """Seconds per SGD step that the optimizer's own process adds, on a free oracle with
    iterates of ``x0``'s shape: isolated step less in-process step (best of two passes)."""
    oracle = _NullOracle(10**12)
    opt = bench_sgd.configure()
    state = opt.init(x0, budget=oracle.budget, rng=None)
    view = oracle.view()
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(steps):
            state = opt.step(state, view)
        here = (time.perf_counter() - t0) / steps
        with OptimizerProcess(bench_sgd, {}, view, x0, threads, [], float("inf")) as proc:
            proc.init(x0.copy(), oracle.budget, None)
            proc.step()
            start = proc.elapsed
            for _ in range(steps):
                proc.step()
            best = min(best, (proc.elapsed - start) / steps - here)
    return max(0.0, best)


def run_bench(task_name: str, scale: str = "ci", data_dir=None, *, threads: int | None = None,
              epoch_batches: int | None = None, repeats: int = 5, log=None) -> dict:
    """Measure one task at one scale (see the module docstring); returns the report as a dict.

    ``epoch_batches``: time that many SGD minibatches and extrapolate to the epoch (default:
    the whole epoch, except 50 minibatches at paper scale). ``log``: a callable for progress
    lines (e.g. that the dataset is being simulated first), or None.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    n_threads = set_threads(threads)
    gc.collect()
    peak_reset = reset_peak_rss()
    spec = load_spec(task_name)
    if log and not _dataset_cached(spec, scale, data_dir):
        log(f"{spec.name}: simulating the {scale}-scale dataset first (cached in {data_dir})")
    t0 = time.perf_counter()
    task = load_task(task_name, scale, data_dir, progress=False)
    load_s = time.perf_counter() - t0
    peak_load = peak_rss_gb()
    lik = task.likelihood
    quad = lik.quadrature
    na, ns, nd = len(quad.inplane_angles), len(quad.shifts), len(quad.directions)

    # the kernel: value and gradient of the first minibatch of the training stream
    data = lik.subset(task.spectra, task.stream(0, MINIBATCH))
    x0 = task.init
    lik.nll_and_grad(x0, data)                                 # compile / warm the work arrays
    kernel_s = _best(lambda: lik.nll_and_grad(x0, data), repeats)
    value_s = _best(lambda: lik.nll(x0, data), repeats)
    flops = lik.flops_per_image() * MINIBATCH
    gemm = gemm_rate(lik.gemm_shapes(MINIBATCH), repeats)

    epoch = sgd_epoch(task, scale, epoch_batches)
    measured, n_batches = epoch["epoch_batches_measured"], epoch["epoch_batches"]
    outside_s = epoch.pop("outside_oracle_s")
    isolated = isolated_steps(task, x0, measured, n_threads)
    isolated["isolation_floor_s"] = transport_floor(x0, 20, n_threads)
    importance = importance_epoch(task, measured, n_batches)
    task.test_nll(x0)
    test_s = _best(lambda: task.test_nll(x0), repeats)
    report = {
        "task": task.name, "scale": scale, "threads": n_threads, **thread_info(),
        "images": len(task.spectra), "n_train": task.n_train, "box": lik.box,
        "fourier_points": len(lik.points), "quadrature": [na, ns, nd],
        "load_s": load_s, "peak_rss_after_load_gb": peak_load, "peak_rss_reset": peak_reset,
        "gemm_gflops": gemm["gflops"], "gemm_products": gemm["products"],
        "kernel_flops": flops, "kernel_s": kernel_s, "kernel_gflops": flops / kernel_s / 1e9,
        "ratio": flops / kernel_s / 1e9 / gemm["gflops"], "value_only_s": value_s, **epoch,
        "test_nll_s": test_s, "test_images": len(task.splits["test"]),
        "peak_rss_gb": peak_rss_gb(), "repeats": repeats, **isolated, **importance,
        "outside_oracle_s": outside_s,
        "isolation_overhead": (isolated["isolation_transport_s"] - outside_s) / epoch["minibatch_s"],
    }
    del task, data, lik
    gc.collect()
    return report


def sgd_epoch(task, scale: str, epoch_batches: int | None) -> dict:
    """An epoch of plain SGD (constant step ``SGD_LR``) from the task's initial density through
    the counted oracle: ``epoch_batches`` minibatches timed (default: all; 50 at paper scale)
    after one warm-up step, extrapolated to the epoch; ``outside_oracle_s`` is the time per
    step not spent in the oracle (the update)."""
    n_batches = math.ceil(task.n_train / MINIBATCH)
    if epoch_batches is None:
        epoch_batches = PAPER_EPOCH_BATCHES if scale == "paper" else n_batches
    measured = max(1, min(int(epoch_batches), n_batches))
    oracle = task.oracle(budget=(measured + 1) * MINIBATCH)
    x = task.init.copy()
    value, g = oracle.value_and_grad(x, oracle.next_batch(MINIBATCH))   # warm-up step
    x -= SGD_LR * g
    t0, in_oracle = time.perf_counter(), 0.0
    for _ in range(measured):
        start = time.perf_counter()
        value, g = oracle.value_and_grad(x, oracle.next_batch(MINIBATCH))
        in_oracle += time.perf_counter() - start
        x -= SGD_LR * g
    measured_s = time.perf_counter() - t0
    return {"epoch_s": measured_s / measured * n_batches, "epoch_batches": n_batches,
            "epoch_batches_measured": measured, "epoch_extrapolated": measured < n_batches,
            "minibatch_s": measured_s / measured, "sgd_lr": SGD_LR,
            "last_minibatch_objective": float(value),
            "outside_oracle_s": (measured_s - in_oracle) / measured}


def importance_epoch(task, measured: int, n_batches: int) -> dict:
    """The SGD epoch through the importance-sampled oracle (:mod:`cryobench.importance`, its
    default settings), in the same process as the exact one: the first ``measured`` minibatches
    of the stream are visited once (first visits are exact; timed as ``is_first_s``), then the
    same minibatches again (sampled; timed and extrapolated as ``is_epoch_s``), from the
    initial density with the same constant step. ``is_terms_fraction``: the terms the second
    visits computed over an exact evaluation's."""
    batches = [task.stream(i * MINIBATCH, MINIBATCH) for i in range(measured)]
    warm = task.oracle(4 * MINIBATCH, 0, "importance", "bench")
    for _ in range(2):                                   # compile / load the sampled pass
        warm.value_and_grad(task.init, batches[0])
    oracle = task.oracle((2 * measured + 1) * MINIBATCH, 0, "importance", "sgd")
    x, times, terms = task.init.copy(), [], []
    for _ in range(2):
        start, t0 = oracle.terms, time.perf_counter()
        for batch in batches:
            value, g = oracle.value_and_grad(x, batch)
            x -= SGD_LR * g
        times.append(time.perf_counter() - t0)
        terms.append(oracle.terms - start)
    exact_terms = measured * MINIBATCH * task.likelihood.terms_per_image()
    return {"is_first_s": times[0] / measured * n_batches, "is_epoch_s": times[1] / measured
            * n_batches, "is_minibatch_s": times[1] / measured,
            "is_terms_fraction": terms[1] / exact_terms, "is_last_objective": float(value)}


def format_report(r: dict) -> list[str]:
    """The lines printed for one task's report."""
    na, ns, nd = r["quadrature"]
    gemms = ", ".join(f"{p['m']}×{p['k']}×{p['n']} {p['gflops']:.1f}" for p in r["gemm_products"])
    if r["epoch_extrapolated"]:
        epoch = (f"{r['epoch_s']:.1f} s (extrapolated from {r['epoch_batches_measured']} of "
                 f"{r['epoch_batches']} minibatches, {1e3 * r['minibatch_s']:.0f} ms each)")
    else:
        epoch = (f"{r['epoch_s']:.2f} s ({r['epoch_batches']} minibatches, "
                 f"{1e3 * r['minibatch_s']:.1f} ms each)")
    peak = "since loading began" if r["peak_rss_reset"] else "of the process so far"
    return [
        f"{r['task']} at {r['scale']} scale",
        f"  machine        {r['cpu']}, {r['cores']} cores; {r['blas']} "
        f"({r['blas_threads']} threads), numba {r['numba_threads']} threads",
        f"  task           {r['images']:,} images of {r['box']} px, {r['n_train']:,} for training; "
        f"{r['fourier_points']} Fourier points; {na} in-plane × {ns} shifts × {nd} directions",
        f"  load           {r['load_s']:.1f} s, peak memory {r['peak_rss_after_load_gb']:.2f} GB "
        f"({peak})",
        f"  SGEMM          {r['gemm_gflops']:.1f} GFLOP/s on the kernel's products m×k×n "
        f"[{gemms}] (best of {r['repeats']})",
        f"  kernel         {r['kernel_gflops']:.1f} GFLOP/s: value+gradient of {MINIBATCH} images, "
        f"{r['kernel_flops'] / 1e9:.3g} GFLOP in {1e3 * r['kernel_s']:.1f} ms (best of "
        f"{r['repeats']}); value only {1e3 * r['value_only_s']:.1f} ms",
        f"  kernel/GEMM    {r['ratio']:.2f}",
        f"  SGD epoch      {epoch}; lr {r['sgd_lr']:g}, last minibatch objective "
        f"{r['last_minibatch_objective']:.6g}" + ("" if math.isfinite(r["last_minibatch_objective"])
                                                 else " (diverged: not representative)"),
        f"  IS epoch       {r['is_epoch_s']:.2f} s{' (extrapolated)' if r['epoch_extrapolated'] else ''}"
        f" on the second visits ({1e3 * r['is_minibatch_s']:.1f} ms per minibatch), "
        f"{r['is_terms_fraction']:.3g} of the exact terms; first visits (exact) "
        f"{r['is_first_s']:.2f} s; exact/IS epoch {r['epoch_s'] / r['is_epoch_s']:.2f}×",
        f"  isolated step  {1e3 * r['isolated_minibatch_s']:.1f} ms with the optimizer in its own "
        f"process; outside the oracle {1e3 * r['isolation_transport_s']:.2f} ms there, "
        f"{1e3 * r['outside_oracle_s']:.2f} ms in-process: the isolation costs "
        f"{100 * r['isolation_overhead']:.2f} % of the in-process step; on a free oracle "
        f"{1e3 * r['isolation_floor_s']:.2f} ms ({100 * r['isolation_floor_s'] / r['minibatch_s']:.2f} %)",
        f"  test NLL       {1e3 * r['test_nll_s']:.1f} ms ({r['test_images']} test images)",
        f"  peak memory    {r['peak_rss_gb']:.2f} GB ({peak})",
    ]
