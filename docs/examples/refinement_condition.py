"""The conditioning of a refinement task: the exact Hessian diagonal in the Fourier basis and
its condition number against r_max, with and without the CTF (Toader, Brubaker & Lederman,
"Efficient high-resolution refinement in cryo-EM with stochastic gradient descent", 2025,
their condition-number figure).

    python docs/examples/refinement_condition.py [SCALE] [OUT.png]   (default small)

For each radius r (Fourier pixels) κ(r) = max W / min W over the voxels with |k| ≤ r, W the
exact diagonal of the data term summed over all training images (with nearest-neighbour
slicing this would be H's whole spectrum; with the task's trilinear slicing it is the
diagonal's spread, the quantity a diagonal preconditioner removes), and κ_α(r) with the
prior's α added (the objective's own curvature). "Without CTF" replaces C/σ by 1/σ.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cryobench  # noqa: E402

scale = sys.argv[1] if len(sys.argv) > 1 else "small"
out = sys.argv[2] if len(sys.argv) > 2 else f"refinement-condition-{scale}.png"
task = cryobench.load_task("refinement-atoms", scale, progress=False)
lik, train = task.likelihood, task.splits["train"]
w = {"with CTF": 0.0, "without CTF": 0.0}
for lo in range(0, len(train), 500):
    part = lik.subset(task.spectra, train[lo:lo + 500])
    stencil = lik.stencils(part.rotations)
    w["with CTF"] = w["with CTF"] + lik.weights(part, stencil)
    flat = np.broadcast_to(part.inv_sigma[:, None], (len(part), len(lik.points)))
    w["without CTF"] = w["without CTF"] + lik.weights(part, stencil, flat)
d = lik.box
k = [np.fft.fftfreq(d, 1 / d)] * 2 + [np.arange(d // 2 + 1)]
kz, ky, kx = np.meshgrid(*k, indexing="ij")
radius = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)
radii = np.arange(1, int(lik.rmax) + 1)
alpha = task.prior.alpha
fig, ax = plt.subplots(figsize=(6, 4))
for name, diag in w.items():
    kappa = [diag[radius <= r].max() / diag[radius <= r].min() for r in radii]
    kappa_a = [(diag[radius <= r].max() + alpha) / (diag[radius <= r].min() + alpha) for r in radii]
    ax.semilogy(radii, kappa, label=f"κ, {name}")
    ax.semilogy(radii, kappa_a, "--", label=f"κ with prior α = {alpha:g}, {name}")
    print(f"{name}: κ at r = {radii[len(radii) // 2]}: {kappa[len(radii) // 2]:.3g}, "
          f"at r_max = {radii[-1]}: {kappa[-1]:.3g} (with α: {kappa_a[-1]:.3g})")
ax.set_xlabel("radius r (Fourier pixels)")
ax.set_ylabel("max W / min W over |k| ≤ r")
ax.set_title(f"refinement-atoms ({scale}): {len(train):,} images, box {d}")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"wrote {out}")
