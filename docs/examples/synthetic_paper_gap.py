"""Why a map can beat the truth's test NLL yet score a poor FSC (synthetic-cylinder, paper scale).

    python docs/examples/synthetic_paper_gap.py [MAP.mrc ...]     (1 thread: a few minutes)

Issue 24 item 5 (docs/paper-findings.md). Prints, on the paper-scale task:

1. the truth's test NLL in its own orientation, turned about its axis (z), tilted about x, and
   at five random orientations: the NLL is not invariant under rotation of the map, because the
   pose quadrature is a fixed finite grid;
2. for each map: its test NLL, the NLL after the best global scale (is it the amplitude?), after
   a 4° tilt (is it tuned to the grid?); the FSC per shell against the truth after `align`
   (shells of 1/358.4 Å; the band limit r_max = 6.4 is shell 6) with the NCC and the hand;
   its power per shell over the truth's; the share of the initial density's error it still
   carries per shell, |V − T|/|init − T| with T the truth moved into the map's frame (SGD and
   EM start from the same init); and its axial mass profile over the truth's at the ends
   (z = ±126 Å) and the centre (a rotationally blurred map is a spindle: ends < centre).
"""
import sys

import numpy as np
from scipy import optimize
from scipy.spatial.transform import Rotation

import cryobench
from cryobench.data.mrc import read_volume
from cryobench.model import fsc as F

task = cryobench.load_task("synthetic-cylinder", scale="paper", progress=False)
truth = np.asarray(task.dataset.ground_truth, dtype=np.float32)
D, ps = truth.shape[0], task.dataset.pixel_size
k = np.fft.fftfreq(D) * D
radius = np.sqrt(k[:, None, None]**2 + k[None, :, None]**2 + k[None, None, :]**2)
shell = np.rint(radius).astype(int)
NS = 9                                                     # shells 0..8 (band limit: 6.4)


def nll(v):
    return task.test_nll(np.asarray(v, dtype=np.float32))


def turned(v, axis, deg):
    r = Rotation.from_rotvec(np.deg2rad(deg) * np.asarray(axis, float)).as_matrix()
    return F.transform(v, r, np.zeros(3))


def per_shell(x):
    return np.bincount(shell.ravel(), x.ravel(), minlength=D)[:NS]


def power(v):
    return per_shell(np.abs(np.fft.fftn(np.asarray(v, float)))**2)


def axial(v):                     # mass per z slab of the map low-passed to the band
    f = np.where(radius < 6.5, np.fft.fftn(np.asarray(v, float)), 0)
    return np.fft.ifftn(f).real.sum((1, 2))


row = " ".join
print("truth test NLL: own orientation %.1f | about z 8° %.1f | tilted 8° %.1f | random: %s"
      % (nll(truth), nll(turned(truth, [0, 0, 1], 8)), nll(turned(truth, [1, 0, 0], 8)),
         row("%.1f" % nll(F.transform(truth, Rotation.random(random_state=s).as_matrix(),
                                      np.zeros(3))) for s in range(1, 6))))
p_truth, a_truth = power(truth), axial(truth)
for path in sys.argv[1:]:
    v = read_volume(path)[0].astype(np.float32)
    best = optimize.minimize_scalar(lambda s: nll(np.exp(s) * v), bounds=(-0.7, 0.7),
                                    method="bounded", options={"xatol": 0.01})
    a = F.align(v, truth)
    fr, curve = F.fsc(F.transform(v, a.rotation, a.shift, a.mirrored), truth)
    inv = np.array(a.rotation).T                           # the inverse transform (fsc.py)
    s = np.diag([1.0, 1.0, -1.0]) if a.mirrored else np.eye(3)
    t_here = F.transform(truth, s @ inv @ s, -(s @ inv @ np.asarray(a.shift)), a.mirrored)
    left = np.sqrt(power(v - t_here) / power(task.init - t_here))
    ratio = axial(F.transform(v, a.rotation, a.shift, a.mirrored)) / a_truth
    print(f"\n{path}\n  test NLL {nll(v):.1f} | best scale ×{np.exp(best.x):.3f}: {best.fun:.1f}"
          f" | tilted 4°: {nll(turned(v, [1, 0, 0], 4)):.1f}")
    print(f"  FSC-0.5 {F.resolution(fr, curve, ps):.1f} Å, NCC {a.score:.3f}, "
          f"mirrored {a.mirrored}; per shell 1..8: " + row("%.2f" % c for c in curve[1:NS]))
    print("  power / truth's, shells 1..8:  " + row("%.2f" % c for c in (power(v) / p_truth)[1:]))
    print("  init error left, shells 1..8:  " + row("%.2f" % c for c in left[1:]))
    print("  axial mass / truth's at z = -126, 0, +126 Å: "
          + row("%.2f" % ratio[D // 2 + z] for z in (-45, 0, 45)))
