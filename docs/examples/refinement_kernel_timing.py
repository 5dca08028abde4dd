"""Time the known-pose refinement kernel at any box size without simulating a dataset: 100
random images, poses, shifts and CTFs, r_max at Nyquist; value + gradient, value + gradient +
weights + back-projection, and the floor
(:func:`cryobench.checks.bench_refinement.kernel_and_floor`), best of 5, in ms.

    PYTHONPATH=. python docs/examples/refinement_kernel_timing.py 128
"""
import sys

import numpy as np
from scipy.spatial.transform import Rotation

from cryobench.checks.bench import _best
from cryobench.checks.bench_refinement import kernel_and_floor
from cryobench.model.ctf import CTFParams
from cryobench.model.refinement import RefinementLikelihood

N = 100
box = int(sys.argv[1]) if len(sys.argv) > 1 else 128
rng = np.random.default_rng(0)
rot = Rotation.random(N, random_state=1).as_matrix()
ctf = CTFParams(rng.uniform(5e3, 2.5e4, N), rng.uniform(5e3, 2.5e4, N), rng.uniform(0, 180, N),
                300.0, 2.7, 0.1, 0.0, 30.0)
lik = RefinementLikelihood(box, 1.0, box / 2, rot, rng.normal(size=(N, 2)))
data = lik.prepare(rng.normal(size=(N, box, box)).astype(np.float32), ctf, 1.0)
volume = rng.normal(size=(box,) * 3).astype(np.float32)
lik.nll_grad_weights(volume, data)
grad, floor = kernel_and_floor(lik, data, volume, 5)
weights = _best(lambda: lik.nll_grad_weights(volume, data), 5)
print(f"box {box}, {len(lik.points)} Fourier points, {N} images: value+gradient "
      f"{1e3 * grad:.0f} ms, with weights and back-projection {1e3 * weights:.0f} ms, floor "
      f"{1e3 * floor:.0f} ms, kernel/floor {grad / floor:.2f}")
