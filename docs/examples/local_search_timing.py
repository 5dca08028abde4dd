"""Time the local-search refinement likelihood against the known-pose one on the same images:
seconds per image of value-and-gradient (batch of 100, float32) and the epoch time it implies.

    PYTHONPATH=. python docs/examples/local_search_timing.py ci small
"""
import sys
import time

import numpy as np

from cryobench.model.refinement import RefinementLikelihood
from cryobench.task import load_task

BATCH, REPEAT = 100, 3


def per_image(lik, spectra, volume, index):
    """Median seconds per image of nll_and_grad over ``REPEAT`` batches of ``BATCH``."""
    times = []
    for r in range(REPEAT):
        part = lik.subset(spectra, index[r * BATCH:(r + 1) * BATCH])
        start = time.perf_counter()
        lik.nll_and_grad(volume, part)
        times.append((time.perf_counter() - start) / BATCH)
    return float(np.median(times))


for scale in sys.argv[1:] or ["ci"]:
    task = load_task("tasks/refinement-local.toml", scale)
    lik, spectra, n = task.likelihood, task.spectra, task.n_train
    known = RefinementLikelihood(lik.box, lik.pixel_size, lik.rmax, lik.rotations, lik.shifts,
                                 lik.dtype)
    index = task.splits["train"]
    t_local = per_image(lik, spectra, task.init, index)
    t_known = per_image(known, spectra, task.init, index)
    print(f"{scale}: box {lik.box}, {n} training images, {lik.slices_per_image()} slices and "
          f"{lik.terms_per_image()} grid points per image; local {t_local * 1e3:.2f} ms/image "
          f"(epoch {t_local * n:.1f} s), known-pose {t_known * 1e3:.2f} ms/image "
          f"(epoch {t_known * n:.1f} s), ratio {t_local / t_known:.1f}")
