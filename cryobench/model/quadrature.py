"""The quadrature over poses: Lebedev directions × uniform in-plane angles × a shift grid.

    p(I | θ, V) ≈ Σ_j w_j N(I | S_tj C_θ P_Rj V, 1),   R_j = R_d(j) R_z(ψ_a(j))

Sizes follow r_max (in Fourier pixels) automatically: with θ = arctan(1 / r_max),
the smallest Lebedev rule with at least (3.6/θ)² points (and positive weights) and ⌈2π/θ⌉ in-plane angles. Shifts
lie on a square lattice of spacing D / (4 r_max) pixels (a quarter of the period of the
highest frequency used) inside the truncation radius of an isotropic Gaussian shift prior,
weighted by its density. Every factor's weights sum to 1, so the joint weights do too.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.integrate import lebedev_rule

LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35, 41, 47, 53, 59,
                  65, 71, 77, 83, 89, 95, 101, 107, 113, 119, 125, 131)


@lru_cache(maxsize=None)
def _lebedev(order: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = lebedev_rule(order)
    return np.ascontiguousarray(x.T), w / w.sum()


def lebedev_directions(min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (n, 3) and weights (sum 1) of the smallest Lebedev rule with ≥ min_points.

    Rules with a negative weight (74, 230 and 266 points) are skipped: the weights are mixture
    weights of the marginal likelihood and must be positive.
    """
    for order in LEBEDEV_ORDERS:
        x, w = _lebedev(order)
        if len(w) >= min_points and np.all(w > 0):
            return x, w
    raise ValueError(f"no Lebedev rule has {min_points} points (largest: {len(_lebedev(131)[1])})")


def direction_rotations(directions: np.ndarray) -> np.ndarray:
    """R_d = R_z(α) R_y(β) for each unit vector d = (sinβ cosα, sinβ sinα, cosβ); R_d e_z = d."""
    x, y, z = directions.T
    alpha, beta = np.arctan2(y, x), np.arccos(np.clip(z, -1.0, 1.0))
    ca, sa, cb, sb = np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta)
    rot = np.empty((len(directions), 3, 3))
    rot[:, 0] = np.stack([ca * cb, -sa, ca * sb], axis=1)
    rot[:, 1] = np.stack([sa * cb, ca, sa * sb], axis=1)
    rot[:, 2] = np.stack([-sb, np.zeros_like(sb), cb], axis=1)
    return rot


def shift_grid(box: int, rmax: float, sigma_px: float, truncation: float):
    """Lattice shifts (n, 2) in pixels within truncation·σ and their Gaussian weights (sum 1)."""
    if sigma_px <= 0:
        return np.zeros((1, 2)), np.ones(1)
    step = box / (4.0 * rmax)
    radius = truncation * sigma_px
    m = int(np.floor(radius / step))
    gy, gx = np.mgrid[-m:m + 1, -m:m + 1] * step
    keep = gx**2 + gy**2 <= radius**2 + 1e-9
    shifts = np.stack([gx[keep], gy[keep]], axis=1)
    w = np.exp(-0.5 * (shifts**2).sum(1) / sigma_px**2)
    return shifts, w / w.sum()


@dataclass(frozen=True)
class Quadrature:
    """Weighted pose points: rotations R_d R_z(ψ_a) and shifts t_s, weights w_d w_a w_s."""

    directions: np.ndarray          # (Nd, 3)
    direction_weights: np.ndarray   # (Nd,)
    inplane_angles: np.ndarray      # (Na,) radians
    shifts: np.ndarray              # (Ns, 2) pixels (x, y)
    shift_weights: np.ndarray       # (Ns,)

    @property
    def rotations(self) -> np.ndarray:
        """R_d for every direction, (Nd, 3, 3)."""
        return direction_rotations(self.directions)

    @property
    def n_rotations(self) -> int:
        return len(self.directions) * len(self.inplane_angles)

    @property
    def size(self) -> int:
        return self.n_rotations * len(self.shifts)

    def log_weights(self) -> np.ndarray:
        """log(w_a w_s w_d) with shape (Na, Ns, Nd), the layout used by the likelihood."""
        na = len(self.inplane_angles)
        return (np.log(np.full(na, 1.0 / na))[:, None, None]
                + np.log(self.shift_weights)[None, :, None]
                + np.log(self.direction_weights)[None, None, :])


def quadrature_for(rmax: float, box: int, shift_sigma_px: float = 0.0,
                   shift_truncation: float = 2.0) -> Quadrature:
    """The quadrature the benchmark prescribes for a likelihood using frequencies |k| ≤ rmax (pixels)."""
    if rmax <= 0:
        raise ValueError(f"r_max must be positive, got {rmax}")
    theta = np.arctan(1.0 / rmax)
    directions, dw = lebedev_directions(int(np.ceil((3.6 / theta) ** 2)))
    n_angles = int(np.ceil(2 * np.pi / theta))
    shifts, sw = shift_grid(box, rmax, shift_sigma_px, shift_truncation)
    return Quadrature(directions, dw, 2 * np.pi * np.arange(n_angles) / n_angles, shifts, sw)
