"""Epochs each method needs to reach the outer shells of a refinement task's optimum, and the
FSC per shell per epoch against the optimum as a heat map per method (Toader, Brubaker &
Lederman 2025, their Figs. of FSC per epoch). A quick look, one seed, not a tuned grid.

    python docs/examples/refinement_epochs.py SCALE EPOCHS OUT.png METHOD[:k=v,...] ...
    e.g.  ... small 10 epochs.png sgd:lr=0.3 precond-sgd-fourier:lr=0.05 exact-diag-sgd:lr=0.05

An epoch is K evaluations of any kind (the budget's unit: a Hessian-vector product costs as much
as a gradient). "Outer shells": the lowest FSC over the outer 20 % of shells up to r_max
(:func:`cryobench.data.refinement.outer_fsc`).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cryobench  # noqa: E402
from cryobench.data.refinement import outer_fsc  # noqa: E402
from cryobench.harness.registry import resolve  # noqa: E402
from cryobench.model.fsc import fsc  # noqa: E402
from cryobench.oracle import BudgetExhausted  # noqa: E402

scale, epochs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
task = cryobench.load_task("refinement-atoms", scale, progress=False)
opt = task.optimum()
n_shells = int(task.likelihood.rmax) + 1
curves = {}
for arg in sys.argv[4:]:
    name, _, sets = arg.partition(":")
    params = {k: float(v) for k, v in (kv.split("=") for kv in sets.split(",") if kv)}
    method = resolve(name)
    params = {k: int(v) if method.hypers[k].integer else v for k, v in params.items()}
    gm = method.configure(**params)
    oracle = task.oracle(budget=epochs * task.n_train)
    state = gm.init(task.init.copy(), budget=oracle.budget, rng=np.random.default_rng(0))
    rows, reached, x = [fsc(task.init, opt)[1][:n_shells]], {}, task.init
    view = oracle.view()
    while oracle.remaining > 0:
        try:
            state = gm.step(state, view)
        except BudgetExhausted:
            break
        x = gm.iterate(state)
        if not np.all(np.isfinite(x)):
            break
        while oracle.evaluations >= len(rows) * task.n_train:
            rows.append(fsc(x, opt)[1][:n_shells])
            low = outer_fsc(x, opt, task.likelihood.rmax)
            for th in (0.5, 0.8, 0.95):
                if low >= th and th not in reached:
                    reached[th] = len(rows) - 1
    curves[arg] = np.array(rows)
    print(json.dumps({"method": arg, "epochs_to_outer_fsc": reached,
                      "subopt": task.suboptimality(x) if np.all(np.isfinite(x)) else None,
                      "subopt_init": task.suboptimality(task.init)}))
fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), squeeze=False)
for ax, (label, c) in zip(axes[0], curves.items()):
    im = ax.imshow(c.T, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set_title(label, fontsize=8)
    ax.set_xlabel("epoch (K evaluations)")
    ax.set_ylabel("shell (Fourier pixels)")
fig.colorbar(im, ax=axes[0].tolist(), label="FSC vs the CG optimum")
fig.savefig(out, dpi=110)
print(f"wrote {out}")
