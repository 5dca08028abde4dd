"""Sizes a task file asks for, refused before anything is allocated when they cannot be meant.

Two kinds of value are refused in one line naming the file and the key:

* a shift distribution wider than the image: ``shift_sigma × shift_truncation`` (the simulated
  shifts of ``[dataset]``, the quadrature's shift prior of ``[objective]``) beyond half the box
  moves the particle out of its image;
* sizes whose arrays cannot fit in this machine's memory: the simulated volume and its
  oversampled transform (``box``), and the likelihood's per-minibatch arrays, whose size is
  (minibatch × in-plane angles × shifts) × directions (``rmax``, ``shift_sigma``, ``batch_size``).
  The counts follow :func:`cryobench.model.quadrature.quadrature_for` without building the
  quadrature (its shift lattice alone can be larger than the memory).
"""
from __future__ import annotations

import math
import os

import numpy as np

from cryobench.data.spec import Scale, TaskSpec
from cryobench.errors import InputError

#: bytes per voxel of the simulator's and the slicer's working volumes: the float64 map, its
#: complex128 transform oversampled ×2 in each dimension (16 · 8 bytes), and room for a copy
VOLUME_BYTES_PER_VOXEL = 8 + 2 * 16 * 8
#: float32 work arrays of one likelihood evaluation per (row, direction) entry: G and the
#: posterior (the kernel overwrites G in place; one more for the gradient products)
KERNEL_BYTES_PER_ENTRY = 3 * 4


def physical_memory() -> int:
    """Bytes of memory this machine has (``SC_PHYS_PAGES`` × page size)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def quadrature_counts(rmax: float, box: int, shift_sigma_px: float,
                      truncation: float) -> tuple[int, int, int]:
    """(directions, in-plane angles, shifts) of :func:`quadrature_for`'s quadrature, counted
    (the Lebedev rule has at least the asked-for number of directions; the shift lattice of step
    box / 4 r_max is counted row by row, or as π (radius / step)² points when it has more than
    10⁵ rows)."""
    theta = math.atan(1.0 / rmax)
    directions = math.ceil((3.6 / theta) ** 2)
    angles = math.ceil(2 * math.pi / theta)
    if shift_sigma_px <= 0:
        return directions, angles, 1
    ratio = truncation * shift_sigma_px / (box / (4.0 * rmax))      # radius in lattice steps
    m = math.floor(ratio)
    if m > 10**5:
        return directions, angles, round(math.pi * ratio * ratio)
    rows = np.arange(-m, m + 1, dtype=float)
    half_widths = np.floor(np.sqrt(np.maximum(ratio**2 + 1e-9 - rows**2, 0.0)))
    return directions, angles, int((2 * half_widths + 1).sum())


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_sizes(spec: TaskSpec, scale: Scale, box: int | None = None,
                pixel_size: float | None = None, memory: int | None = None) -> None:
    """Refuse, in one :class:`InputError` line naming the file and key, shifts wider than half
    the image and sizes whose arrays exceed ``memory`` (default: :func:`physical_memory`).
    ``box``/``pixel_size`` default to the scale's (a STAR task's come from its images)."""
    box = box or scale.box
    pixel_size = pixel_size or scale.pixel_size
    if not box or not pixel_size:
        return
    memory = physical_memory() if memory is None else memory
    where = f"[scales.{scale.name}]"
    half = box * pixel_size / 2
    for section in ("dataset", "objective"):
        values = spec.section(section)
        sigma, trunc = values.get("shift_sigma", 0.0), values.get("shift_truncation", 2.0)
        if sigma * trunc > half:
            raise InputError(f"{spec.path}: [{section}] shift_sigma = {sigma:g} Å with "
                             f"shift_truncation = {trunc:g} reaches {sigma * trunc:g} Å, beyond "
                             f"half the image ({half:g} Å at scale {scale.name!r}); a shift that "
                             "large moves the particle out of its image")
    volume = VOLUME_BYTES_PER_VOXEL * float(box) ** 3
    if volume > memory:
        raise InputError(f"{spec.path}: {where} box = {box}: a {box}³ volume needs about "
                         f"{_gib(volume)} of memory to simulate and slice; this machine has "
                         f"{_gib(memory)}")
    objective = spec.section("objective")
    rmax = scale.rmax_px(box)
    if not 0 < rmax < box / 2:
        return                      # refused with its own message where the likelihood is built
    nd, na, ns = quadrature_counts(rmax, box, objective.get("shift_sigma", 0.0) / pixel_size,
                                   objective.get("shift_truncation", 2.0))
    batch = int(spec.section("protocol").get("batch_size", 100))
    kernel = KERNEL_BYTES_PER_ENTRY * float(batch) * na * ns * nd
    if kernel > memory:
        radius = (f"{where} rmax = {scale.rmax:g}" if scale.rmax is not None else
                  f"{where} rmax_fraction = {scale.rmax_fraction:g}")
        shifts = (f" and [objective] shift_sigma = {objective['shift_sigma']:g} Å"
                  if ns > 1 else "")
        raise InputError(f"{spec.path}: {radius}{shifts}: the quadrature has {nd:,} directions × {na:,} "
                         f"in-plane angles × {ns:,} shifts, so a minibatch of {batch} images "
                         f"needs about {_gib(kernel)} of memory; this machine has {_gib(memory)}")


def rmax_line(rmax: float, box: int, pixel: float) -> str:
    """r_max as ``cryobench info`` says it: in pixels, as a resolution and as a share of Nyquist."""
    return (f"{rmax:.4g} px = 1/{box * pixel / rmax:.4g} Å "
            f"({100 * rmax / (box / 2):.3g} % of Nyquist)")
