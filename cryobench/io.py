"""Reading and writing the cryo-EM formats: RELION STAR particle tables, MRC stacks and maps.

Particles are written as RELION 3.1 (a ``data_optics`` table plus ``data_particles``) with the
stack in one ``.mrcs`` file; RELION 3.0 STAR files (one table, optics columns per particle) are
read as well. Every problem with an input is reported as one :class:`InputError` whose message
names the file, the field and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from .ctf import CTFParams


class InputError(ValueError):
    """Bad input: the message names the file, the field and the problem."""


@dataclass(frozen=True)
class Particles:
    """A particle stack with its CTFs: images[n, y, x] (float32), pixel size in Å."""

    images: np.ndarray
    ctf: CTFParams
    pixel_size: float
    source: str = ""


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_volume(path, volume: np.ndarray, pixel_size: float) -> None:
    """Write a map V[z, y, x] as MRC (mode 2, float32) with the voxel size in Å, atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = float(pixel_size)
    os.replace(tmp, path)


def read_volume(path) -> tuple[np.ndarray, float]:
    """Read a cubic MRC map; returns (V[z, y, x] float32, voxel size in Å)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.array(mrc.data, dtype=np.float32)
            voxel = float(mrc.voxel_size.x)
    except Exception as exc:  # mrcfile raises ValueError and friends for malformed headers
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: map must be a cube, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: map contains NaN or infinite values")
    return data, voxel


OPTICS_COLUMNS = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
                  "rlnAmplitudeContrast": "amplitude_contrast"}
PARTICLE_COLUMNS = {"rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v",
                    "rlnDefocusAngle": "defocus_angle", "rlnPhaseShift": "phase_shift",
                    "rlnCtfBFactor": "bfactor"}


def write_particles(star_path, stack_path, images: np.ndarray, ctf: CTFParams,
                    pixel_size: float) -> None:
    """Write a RELION 3.1 particle STAR file and its ``.mrcs`` stack (both atomically).

    One optics group is written per distinct (voltage, Cs, amplitude contrast).
    """
    star_path, stack_path = Path(star_path), Path(stack_path)
    n, d, _ = images.shape
    tmp = _atomic_target(stack_path)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = float(pixel_size)
    os.replace(tmp, stack_path)

    optics_keys = np.stack([ctf.voltage, ctf.cs, ctf.amplitude_contrast], axis=1)
    unique, group = np.unique(optics_keys, axis=0, return_inverse=True)
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(unique) + 1),
        "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(unique))],
        "rlnVoltage": unique[:, 0], "rlnSphericalAberration": unique[:, 1],
        "rlnAmplitudeContrast": unique[:, 2],
        "rlnImagePixelSize": float(pixel_size), "rlnImageSize": d, "rlnImageDimensionality": 2,
    })
    rel = os.path.relpath(stack_path, star_path.parent)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{rel}" for i in range(n)],
        **{col: getattr(ctf, attr) for col, attr in PARTICLE_COLUMNS.items()},
        "rlnOpticsGroup": group.reshape(-1) + 1,
    })
    tmp = _atomic_target(star_path)
    starfile.write({"optics": optics, "particles": particles}, tmp, overwrite=True)
    os.replace(tmp, star_path)
