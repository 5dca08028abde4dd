"""MRC maps: writing (atomically) and reading a density with its pixel size."""
from __future__ import annotations

import io
import os
from pathlib import Path

import mrcfile
import numpy as np

from cryobench.base.files import remove_dead_temporaries_of, temporary_prefix
from cryobench.errors import InputError


def atomic_target(path: Path) -> Path:
    """A temporary name beside ``path`` (written, then renamed onto it), carrying this process's
    pid and host; a killed writer's temporary of ``path`` is removed first."""
    remove_dead_temporaries_of(path)
    return path.with_name(temporary_prefix(path) + "w")


def fixed_label(mrc) -> None:
    """Replace mrcfile's timestamped label so equal data give byte-identical files."""
    mrc.header.label[0] = b"Created by cryobench".ljust(80)
    mrc.header.nlabl = 1


def write_volume(path, volume: np.ndarray, pixel_size: float) -> None:
    """Write a map V[z, y, x] as MRC (mode 2, float32) with the voxel size in Å, atomically."""
    path = Path(path)
    tmp = atomic_target(path)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = float(pixel_size)
            fixed_label(mrc)
        os.replace(tmp, path)
    except BaseException:           # a full disk, an interrupt: no half-written temporary stays
        tmp.unlink(missing_ok=True)
        raise


def volume_bytes(volume: np.ndarray, pixel_size: float) -> bytes:
    """The bytes :func:`write_volume` would write, made in anonymous memory (a memfd): no file
    name exists for a kill to leave behind."""
    fd = os.memfd_create("cryobench-volume", os.MFD_CLOEXEC)
    with io.open(fd, "rb") as fh:
        with mrcfile.new(f"/proc/self/fd/{fd}", overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = float(pixel_size)
            fixed_label(mrc)
        return fh.read()


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
