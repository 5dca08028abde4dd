"""Refinement with approximately known poses (``[objective] kind = "refinement"`` with a
``local_search`` table): the given poses are the true ones perturbed at load time, and the
likelihood is marginalised over a local grid around them
(:class:`cryobench.model.local_refinement.LocalSearchLikelihood`).

The pose error belongs to the objective, not the dataset: the images (and the dataset cache)
are those of the known-pose task; ``[objective] pose_error_deg`` / ``pose_error_A`` perturb each
image's pose with a rotation by an angle ~ N(0, pose_error_deg²) about a uniformly random axis
(applied in the image frame, R_i ΔR) and a shift ~ N(0, pose_error_A²) per axis, drawn from
``rng_for(task name, task seed, "pose-error")`` — deterministic for the task.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cryobench.base.seeding import rng_for
from cryobench.errors import InputError
from cryobench.model.local_refinement import LocalSearchLikelihood, validate_local_search

LOCAL_KEYS = ("rotation_deg", "rotation_steps", "shift_A", "shift_steps")


def has_local_search(spec) -> bool:
    """Whether the task's objective asks for a local search over approximately known poses."""
    return "local_search" in spec.section("objective")


def local_settings(spec) -> tuple[dict, float, float]:
    """(local_search keys, pose_error_deg, pose_error_A), or one InputError naming the key."""
    obj = spec.section("objective")
    grid = obj["local_search"]
    if not isinstance(grid, dict):
        raise InputError(f"{spec.path}: [objective] local_search must be a table of "
                         f"{', '.join(LOCAL_KEYS)}")
    unknown = sorted(set(grid) - set(LOCAL_KEYS))
    missing = [k for k in LOCAL_KEYS if k not in grid]
    if unknown or missing:
        raise InputError(f"{spec.path}: [objective] local_search: "
                         + (f"unknown key(s) {', '.join(unknown)}" if unknown else
                            f"missing key(s) {', '.join(missing)}"))
    try:
        validate_local_search(*(grid[k] for k in LOCAL_KEYS))
    except (ValueError, TypeError) as err:
        raise InputError(f"{spec.path}: [objective] {err}") from None
    errors = []
    for key in ("pose_error_deg", "pose_error_A"):
        v = obj.get(key, 0.0)
        if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise InputError(f"{spec.path}: [objective] {key} = {v!r} must be a number >= 0")
        errors.append(float(v))
    return dict(grid), errors[0], errors[1]


def perturb_poses(rotations, shifts, error_deg: float, error_px: float, rng):
    """(R_i ΔR_i, t_i + δ_i): ΔR_i a rotation by θ ~ N(0, error_deg²) about a uniform random
    axis, δ_i ~ N(0, error_px²) per axis."""
    n = len(rotations)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.deg2rad(error_deg) * rng.normal(size=(n, 1))
    delta = Rotation.from_rotvec(axes * angles).as_matrix()
    return np.asarray(rotations) @ delta, np.asarray(shifts) + error_px * rng.normal(size=(n, 2))


def local_likelihood(spec, rot, shifts, box, pixel_size, rmax, dtype) -> LocalSearchLikelihood:
    """The local-search likelihood of a task at the perturbed (given) poses."""
    grid, err_deg, err_a = local_settings(spec)
    rng = rng_for(spec.name, spec.seed, "pose-error")
    rot, shifts = perturb_poses(rot, shifts, err_deg, err_a / pixel_size, rng)
    return LocalSearchLikelihood(box, pixel_size, rmax, rot, shifts, dtype, **grid)
