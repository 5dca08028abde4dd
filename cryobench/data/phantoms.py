"""Analytic phantoms: sums of isotropic 3-D Gaussian blobs.

A :class:`Phantom` is ρ(r) = Σ_j a_j exp(−|r − c_j|² / (2 s_j²)) with centres c_j = (x, y, z) in Å
measured from the particle centre, widths s_j in Å and amplitudes a_j. Its Fourier transform is
known in closed form, which lets :mod:`cryobench.data.simulate` form images without any slicing or
interpolation operator (no "inverse crime"). All phantoms are deterministic, and their bits do
not depend on the machine (angles and Gaussians from :mod:`cryobench.base.portable`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from cryobench.base.portable import exp_array, sincos_turns, sincos_turns_array


@dataclass(frozen=True)
class Phantom:
    """Isotropic Gaussian blobs: centres (n, 3) Å as (x, y, z), sigmas (n,) Å, amplitudes (n,)."""

    centres: np.ndarray
    sigmas: np.ndarray
    amplitudes: np.ndarray

    def __post_init__(self):
        c = np.asarray(self.centres, dtype=float).reshape(-1, 3)
        s = np.asarray(self.sigmas, dtype=float).reshape(-1)
        a = np.asarray(self.amplitudes, dtype=float).reshape(-1)
        if not len(c) == len(s) == len(a) or len(c) == 0:
            raise ValueError(f"phantom needs n ≥ 1 blobs with matching shapes, got "
                             f"{c.shape}, {s.shape}, {a.shape}")
        if np.any(s <= 0) or not np.all(np.isfinite(c)) or not np.all(np.isfinite(a)):
            raise ValueError("phantom sigmas must be positive and all values finite")
        for name, arr in (("centres", c), ("sigmas", s), ("amplitudes", a)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.sigmas)

    @property
    def radius(self) -> float:
        """A radius (Å) containing essentially all the mass: max_j |c_j| + 3 s_j."""
        return float(np.max(np.linalg.norm(self.centres, axis=1) + 3.0 * self.sigmas))

    def scaled(self, factor: float) -> "Phantom":
        """The same phantom with every amplitude multiplied by ``factor``."""
        return Phantom(self.centres, self.sigmas, self.amplitudes * float(factor))

    def to_volume(self, box: int, pixel_size: float) -> np.ndarray:
        """ρ sampled at voxel centres as float32 V[z, y, x]; voxel i ↔ (i − box//2)·pixel_size Å.

        Evaluated separably, V = Σ_j (g_j(z) g_j(y)) (a_j g_j(x)), summed over j in index order in
        float64 with :func:`cryobench.base.portable.exp` (the same bits on every machine).
        """
        r = (np.arange(box) - box // 2) * float(pixel_size)
        d = r[None, None, :] - self.centres.T[:, :, None]                  # (3 axes, n, box)
        g = exp_array(-(d * d) / (2.0 * (self.sigmas * self.sigmas))[None, :, None])
        return _blob_volume(g[2], g[1], self.amplitudes[:, None] * g[0]).astype(np.float32)


@nb.njit(cache=True)
def _blob_volume(gz, gy, agx):
    """V[z, y, x] = Σ_j gz[j, z] gy[j, y] agx[j, x] (float64), j in index order (no BLAS)."""
    n, box = agx.shape
    vol = np.zeros((box, box, box))
    for z in range(box):
        for y in range(box):
            for j in range(n):
                zy = gz[j, z] * gy[j, y]
                for x in range(box):
                    vol[z, y, x] += zy * agx[j, x]
    return vol


def _ring(n: int, radius: float, z: float, phase_deg: float = 0.0) -> np.ndarray:
    """n points evenly spaced on a circle of the given radius (Å) in the plane at height z."""
    sin, cos = sincos_turns_array(phase_deg / 360.0 + np.arange(n) / n)
    return np.stack([radius * cos, radius * sin, np.full(n, float(z))], axis=1)


def _chain(points, spacing: float) -> np.ndarray:
    """Points every ~``spacing`` Å along the polyline through ``points`` (endpoints included)."""
    points = np.asarray(points, dtype=float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, arc[-1], int(np.ceil(arc[-1] / spacing)) + 1)
    return np.stack([np.interp(t, arc, points[:, i]) for i in range(3)], axis=1)


def _cyl(radius: float, azimuth_deg: float, z: float) -> list[float]:
    """Cartesian (x, y, z) of a point given in cylindrical coordinates (Å, degrees, Å)."""
    sin, cos = sincos_turns(azimuth_deg / 360.0)
    return [radius * cos, radius * sin, z]


def _assemble(parts) -> Phantom:
    """A phantom from (centres, sigma, amplitude) groups with one sigma/amplitude per group."""
    centres = np.concatenate([np.atleast_2d(c) for c, _, _ in parts])
    sigmas = np.concatenate([np.full(len(np.atleast_2d(c)), s, float) for c, s, _ in parts])
    amps = np.concatenate([np.full(len(np.atleast_2d(c)), a, float) for c, _, a in parts])
    return Phantom(centres, sigmas, amps)


def synthetic_cylinder() -> Phantom:
    """A hollow cylinder (~250 Å long, ~100 Å diameter, axis z) with four weak asymmetric knobs.

    17 staggered rings of 12 blobs (σ = 10 Å) at radius 40 Å for z ∈ [−120, 120] Å, plus knobs at
    different heights and azimuths whose peak density is ~10–20 % of the wall's, so that the
    density is unique up to handedness while its shape stays strongly cylindrical.
    """
    wall = np.concatenate([_ring(12, 40.0, z, 15.0 * (i % 2))
                           for i, z in enumerate(np.linspace(-120.0, 120.0, 17))])
    return _assemble([
        (wall, 10.0, 1.0),
        ([_cyl(58.0, 20.0, 75.0)], 9.0, 0.35),
        ([_cyl(56.0, 135.0, -20.0), _cyl(60.0, 140.0, -8.0)], 7.0, 0.3),
        ([_cyl(57.0, 250.0, -85.0)], 8.0, 0.3),
        ([_cyl(20.0, 300.0, 110.0)], 8.0, 0.25),
    ])


def thermus_style() -> Phantom:
    """An asymmetric V/A-ATPase-like phantom, ~250 Å long along z (head up, membrane down).

    A3B3 head (6 alternating large lobes, ~100 Å wide, z ≈ 40–100 Å), a slightly bent central
    stalk, a c-ring of 12 subunits (~80 Å wide) in a weaker detergent/membrane disc at z ≈ −85 Å,
    an a-subunit beside the c-ring, two dissimilar peripheral stalks rising from the membrane
    region to the top of the head at azimuths 30° and 165°, and a collar (subunit C) on one side.
    All σ ≥ 6 Å.
    """
    lobes = []
    for i in range(6):
        big = i % 2 == 0                                      # A (large) / B alternate
        az, rad, sig = 60.0 * i, 36.0 if big else 33.0, 12.0 if big else 10.5
        pts = [_cyl(rad + dr, az + da, z) for z in (42.0, 68.0, 94.0)
               for dr, da in ((-6.0, -8.0), (6.0, 8.0))]
        lobes.append((pts, sig, 1.0 if big else 0.85))
    stalk = _chain([[0, 0, -70], [4, 2, -30], [6, -2, 10], [2, 0, 50]], 8.0)
    c_ring = np.concatenate([_ring(12, 34.0, -95.0), _ring(12, 34.0, -75.0, 7.5)])
    disc = np.concatenate([_ring(16, 58.0, -85.0, 11.25), _ring(8, 48.0, -85.0)])
    a_sub = [_cyl(62.0, 95.0, -95.0), _cyl(64.0, 110.0, -80.0), _cyl(60.0, 80.0, -70.0)]
    stator1 = _chain([_cyl(62.0, 95.0, -62.0), _cyl(60.0, 30.0, -40.0), _cyl(58.0, 30.0, 30.0),
                      _cyl(50.0, 25.0, 108.0)], 7.0)
    stator2 = _chain([_cyl(64.0, 110.0, -60.0), _cyl(64.0, 160.0, -35.0),
                      _cyl(56.0, 170.0, 50.0), _cyl(42.0, 160.0, 112.0)], 7.0)
    collar = [_cyl(28.0, az, -55.0) for az in (60.0, 95.0, 130.0)] + [_cyl(40.0, 100.0, -62.0)]
    return _assemble(lobes + [
        (stalk, 7.0, 0.9),
        (c_ring, 7.0, 0.9),
        (disc, 10.0, 0.3),
        (a_sub, 10.0, 0.8),
        (stator1, 6.0, 0.7),
        (stator2, 6.0, 0.6),
        (collar, 8.0, 0.8),
        ([[0.0, 0.0, 118.0]], 9.0, 0.5),                        # cap on top of the head
    ])


def junk_particle(rng: np.random.Generator) -> Phantom:
    """A random cluster of 20–60 blobs (σ 6–14 Å, ~100–150 Å across): an outlier particle."""
    n = int(rng.integers(20, 61))
    offset = rng.normal(0.0, 15.0, 3)
    centres = offset + rng.normal(0.0, 30.0, (n, 3)) * rng.uniform(0.5, 1.5, 3)
    return Phantom(centres, rng.uniform(6.0, 14.0, n), rng.uniform(0.3, 1.2, n))


PROTEIN_ATOMS_PER_A3 = 1 / 17.0   # non-hydrogen atoms per Å³ of protein (1.35 g/cm³, ~14 Da each)


def pseudo_atoms(seed: int = 0) -> Phantom:
    """A random protein-like particle whose spectrum carries signal to high resolution.

    The envelope is the union of 6 balls (radii 11–17 Å, centres within 12 Å of the origin, drawn
    from ``seed``), filled with pseudo-atoms at protein density (:data:`PROTEIN_ATOMS_PER_A3`,
    the count from the envelope's volume estimated on the 0.5 Å lattice): centres uniform in
    the envelope, Gaussian widths σ uniform in [0.5, 0.7] Å (FWHM 1.2–1.6 Å, about an atom's
    electron scattering blurred by a small B), amplitudes uniform in [0.8, 1.2] (C/N/O-like
    weights). About 1,500–3,000 atoms, 50–60 Å across. The draws use + − × ÷ and comparisons only
    (the same bits on every machine); the generator is ``SeedSequence(seed, spawn_key=(6,))``,
    the stream after the simulator's six (:mod:`cryobench.data.simulate`).
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(6,)))
    centres = rng.uniform(-1.0, 1.0, (6, 3)) * 12.0 / np.sqrt(3.0)
    radii = rng.uniform(11.0, 17.0, 6)

    def inside(p):
        d2 = ((p[:, None, :] - centres[None]) ** 2).sum(-1)
        return (d2 <= radii[None] ** 2).any(1)

    lo, hi = (centres - radii[:, None]).min(0), (centres + radii[:, None]).max(0)
    axes = [np.arange(a, b + 0.5, 0.5) for a, b in zip(lo, hi)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    n_atoms = int(round(inside(lattice).sum() * 0.125 * PROTEIN_ATOMS_PER_A3))
    atoms = np.empty((0, 3))
    while len(atoms) < n_atoms:
        p = lo + rng.uniform(0.0, 1.0, (4 * n_atoms, 3)) * (hi - lo)
        atoms = np.concatenate([atoms, p[inside(p)]])
    atoms = atoms[:n_atoms]
    return Phantom(atoms, rng.uniform(0.5, 0.7, n_atoms), rng.uniform(0.8, 1.2, n_atoms))


PHANTOMS = {"cylinder": synthetic_cylinder, "v-atpase": thermus_style, "pseudo-atoms": pseudo_atoms}
SEEDED = {"pseudo-atoms"}     # phantoms drawn from the simulation's seed


def make_phantom(name: str, seed: int) -> Phantom:
    """Phantom ``name``; the seeded ones (:data:`SEEDED`) are drawn from ``seed``."""
    return PHANTOMS[name](seed) if name in SEEDED else PHANTOMS[name]()
