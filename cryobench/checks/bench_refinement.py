"""``cryobench bench`` on a refinement task: the known-pose kernel next to its unavoidable part.

A refinement evaluation (:mod:`cryobench.model.refinement`) has no quadrature and no large
matrix product, so its speed is not a share of SGEMM. It is the value and gradient of a
minibatch of 100 prepared training images beside their floor, measured in the same process on
the same minibatch: the two FFTs of the box (V̂ = F V and the adjoint back to real space), the
slice points of the minibatch's poses, the trilinear gather of the slices and its adjoint scatter
(:mod:`cryobench.model.trilinear`) — every slice an evaluation reads, one per image with known
poses, one per rotation offset with a local search. The ratio kernel / floor says what the rest
(CTFs, residuals, the likelihood's sums) costs on top. Beside them: an epoch of plain SGD through
the counted oracle (:func:`cryobench.checks.bench.sgd_epoch`), the test NLL, loading, peak memory.
"""
from __future__ import annotations

import gc
import time

import numpy as np

from cryobench.base.threads import set_threads, thread_info
from cryobench.checks.bench import (MINIBATCH, _best, peak_rss_gb, reset_peak_rss, sgd_epoch)
from cryobench.data.datasets import default_data_dir
from cryobench.task import load_task


def floor_step(lik, data, volume):
    """A callable doing the floor of one minibatch ``data``: the FFTs and the slicing (module
    docstring)."""
    rotations = lik.slice_rotations(data)
    g = np.ones(len(rotations) * len(lik.points), np.complex128)

    def floor():
        points = lik.slice_points(rotations)
        lik.slices(lik.transform(volume), points)
        lik.transform_adjoint(lik.slices_adjoint(g, points))
    return floor


def kernel_and_floor(lik, data, volume, repeats: int) -> tuple[float, float]:
    """Best times of value+gradient of ``data`` and of its floor, timed alternately (a busy
    machine's slow spells then fall on both)."""
    kernel, floor = (lambda: lik.nll_and_grad(volume, data)), floor_step(lik, data, volume)
    kernel(), floor()                                              # compile / warm
    pairs = [(_best(kernel, 1), _best(floor, 1)) for _ in range(repeats)]
    return min(k for k, _ in pairs), min(f for _, f in pairs)


def run_refinement_bench(task_name: str, scale: str = "ci", data_dir=None, *,
                         threads: int | None = None, epoch_batches: int | None = None,
                         repeats: int = 5, log=None) -> dict:
    """Measure one refinement task at one scale (module docstring); the report as a dict."""
    data_dir = default_data_dir() if data_dir is None else data_dir
    n_threads = set_threads(threads)
    gc.collect()
    peak_reset = reset_peak_rss()
    if log:
        log(f"{task_name}: loading the {scale}-scale task (simulated and its optimum solved "
            f"first if not cached in {data_dir})")
    t0 = time.perf_counter()
    task = load_task(task_name, scale, data_dir, progress=False)
    load_s = time.perf_counter() - t0
    lik, x0 = task.likelihood, task.init
    data = lik.subset(task.spectra, task.stream(0, MINIBATCH))
    kernel_s, floor_s = kernel_and_floor(lik, data, x0, repeats)
    value_s = _best(lambda: lik.nll(x0, data), repeats)
    epoch = sgd_epoch(task, scale, epoch_batches)
    task.test_nll(x0)
    test_s = _best(lambda: task.test_nll(x0), repeats)
    report = {
        "kind": "refinement", "task": task.name, "scale": scale, "threads": n_threads,
        **thread_info(), "images": len(task.spectra), "n_train": task.n_train, "box": lik.box,
        "fourier_points": len(lik.points), "slices_per_image": len(lik.slice_rotations(data))
        // len(data), "terms_per_image": lik.terms_per_image(), "load_s": load_s,
        "peak_rss_reset": peak_reset, "kernel_s": kernel_s, "value_only_s": value_s,
        "floor_s": floor_s, "floor_ratio": kernel_s / floor_s, **epoch,
        "test_nll_s": test_s, "test_images": len(task.splits["test"]),
        "peak_rss_gb": peak_rss_gb(), "repeats": repeats,
    }
    del task, data, lik
    gc.collect()
    return report


def format_refinement_report(r: dict) -> list[str]:
    """The lines printed for one refinement task's report."""
    epoch = (f"{r['epoch_s']:.3g} s ({'extrapolated from ' if r['epoch_extrapolated'] else ''}"
             f"{r['epoch_batches_measured']} of {r['epoch_batches']} minibatches, "
             f"{1e3 * r['minibatch_s']:.1f} ms each)")
    peak = "since loading began" if r["peak_rss_reset"] else "of the process so far"
    return [
        f"{r['task']} at {r['scale']} scale (refinement)",
        f"  machine        {r['cpu']}, {r['cores']} cores; numba {r['numba_threads']} threads",
        f"  task           {r['images']:,} images of {r['box']} px, {r['n_train']:,} for training; "
        f"{r['fourier_points']} Fourier points; {r['slices_per_image']} slice(s) and "
        f"{r['terms_per_image']} likelihood term(s) per image",
        f"  load           {r['load_s']:.1f} s",
        f"  kernel         value+gradient of {MINIBATCH} images {1e3 * r['kernel_s']:.1f} ms, value "
        f"only {1e3 * r['value_only_s']:.1f} ms (best of {r['repeats']})",
        f"  floor          {1e3 * r['floor_s']:.1f} ms (timed alternately with the kernel): the "
        f"two FFTs of the box, the slice points, the trilinear gather and its adjoint scatter of "
        f"the same minibatch",
        f"  kernel/floor   {r['floor_ratio']:.2f}",
        f"  SGD epoch      {epoch}; lr {r['sgd_lr']:g}, last minibatch objective "
        f"{r['last_minibatch_objective']:.6g}",
        f"  test NLL       {1e3 * r['test_nll_s']:.1f} ms ({r['test_images']} test images)",
        f"  peak memory    {r['peak_rss_gb']:.2f} GB ({peak})",
    ]
