"""RELION's Euler angles ↔ cryobench's rotations, and the poses of a STAR file.

RELION (``src/euler.cpp``, ``Euler_angles2matrix``; the RELION conventions page) stores per
particle rlnAngleRot φ, rlnAngleTilt θ, rlnAnglePsi ψ (degrees, ZYZ) and builds

    A = [[ cψcθcφ − sψsφ,   cψcθsφ + sψcφ,  −cψsθ],
         [−sψcθcφ − cψsφ,  −sψcθsφ + cψcφ,   sψsθ],
         [ sθcφ,            sθsφ,            cθ  ]],

the rotation that maps the reference to the particle's view: the image at pixel (x, y) is the
projection ∫ V(Aᵀ (x, y, z)ᵀ) dz. cryobench's R maps image coordinates to map coordinates
(:mod:`cryobench.data.simulate`: I(u) = ∫ V(R·(u, z)) dz), so R = Aᵀ, which is SciPy's
``Rotation.from_euler("ZYZ", [φ, θ, ψ])`` (intrinsic Rz(φ) Ry(θ) Rz(ψ)).

Origins: rlnOriginX/YAngst is the shift that re-centres the particle (tasks/README.md), so a
particle displaced by +t pixels has origin −t · pixel size.
"""
from __future__ import annotations

import math

import numpy as np

from cryobench.base.portable import atan
from cryobench.data.startables import numeric, read_star
from cryobench.errors import InputError

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_ANGST_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's A(φ, θ, ψ) (degrees), written out as in ``Euler_angles2matrix``."""
    f, t, p = np.radians([rot, tilt, psi])
    cf, sf, ct, st, cp, sp = np.cos(f), np.sin(f), np.cos(t), np.sin(t), np.cos(p), np.sin(p)
    return np.array([[cp * ct * cf - sp * sf, cp * ct * sf + sp * cf, -cp * st],
                     [-sp * ct * cf - cp * sf, -sp * ct * sf + cp * cf, sp * st],
                     [st * cf, st * sf, ct]])


def rotations_from_angles(angles: np.ndarray) -> np.ndarray:
    """cryobench's R = Aᵀ (n, 3, 3) from RELION angles (n, 3) = (rot, tilt, psi) in degrees."""
    a = np.asarray(angles, float).reshape(-1, 3)
    return np.stack([relion_matrix(*row).T for row in a]) if len(a) else np.zeros((0, 3, 3))


def _atan2(y: float, x: float) -> float:
    """atan2 from :func:`cryobench.base.portable.atan` (+ − × ÷ √ only)."""
    if x > 0:
        return atan(y / x)
    if x < 0:
        return atan(y / x) + (math.pi if y >= 0 else -math.pi)
    return math.pi / 2 if y > 0 else -math.pi / 2 if y < 0 else 0.0


def angles_from_rotations(rotations: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) in degrees (n, 3) of rotations R = Aᵀ, with the same bits on
    every machine (portable arctan). R = Rz(φ) Ry(θ) Rz(ψ): R₂₂ = cos θ, (R₀₂, R₁₂) = sin θ
    (cos φ, sin φ), (R₂₀, R₂₁) = sin θ (−cos ψ, sin ψ); at θ = 0 or 180° ψ = 0 and φ takes
    the in-plane angle."""
    out = []
    for r in np.asarray(rotations, float).reshape(-1, 3, 3):
        s = math.sqrt(r[0, 2] * r[0, 2] + r[1, 2] * r[1, 2])
        tilt = _atan2(s, r[2, 2])
        if s > 1e-12:
            rot, psi = _atan2(r[1, 2], r[0, 2]), _atan2(r[2, 1], -r[2, 0])
        else:                             # R = Rz(φ ± ψ): put it all in φ
            rot, psi = _atan2(r[1, 0], r[0, 0]), 0.0
        out.append([rot * 180.0 / math.pi, tilt * 180.0 / math.pi, psi * 180.0 / math.pi])
    return np.array(out).reshape(-1, 3)


def star_angles(star_path, max_images: int | None = None) -> np.ndarray:
    """RELION angles (n, 3) = (rot, tilt, psi) of the particles of a STAR file (the first
    ``max_images``); a file without the three columns is one :class:`InputError`."""
    particles, _ = read_star(star_path)
    if max_images is not None:
        particles = particles.iloc[:max_images]
    missing = [c for c in ANGLE_COLUMNS if c not in particles.columns]
    if missing:
        raise InputError(f"{star_path}: has no pose column {missing[0]} (a refinement task needs "
                         f"{', '.join(ANGLE_COLUMNS)} per particle, as RELION's Refine3D writes)")
    return np.stack([numeric(star_path, particles, c) for c in ANGLE_COLUMNS], axis=1)
