"""RELION STAR particle tables and their MRC stacks: reading and writing.

Particles are written as RELION 3.1 (a ``data_optics`` table plus ``data_particles``) with the
stack in one ``.mrcs`` file; RELION 3.0 STAR files (one table, optics columns per particle) are
read as well (the tables: :mod:`cryobench.data.startables`). Every problem with an input is
reported as one :class:`InputError` whose message names the file, the field and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryobench.base.blocks import image_blocks, release_pages
from cryobench.base.messages import warn_once
from cryobench.data.duplicates import IdenticalImages, repeated_names
from cryobench.data.mrc import atomic_target, fixed_label
from cryobench.data.startables import (PARTICLE_COLUMNS, ctf_from_table, join_optics, numeric,
                                       origins_in_pixels, read_star, stack_locations,
                                       star_origins, star_pixel_size)
from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams


@dataclass(frozen=True)
class Particles:
    """A particle stack with its CTFs: images[n, y, x] (float32), pixel size in Å."""

    images: np.ndarray
    ctf: CTFParams
    pixel_size: float
    source: str = ""
    origins: np.ndarray | None = None   # (n, 2) RELION origins (x, y) in pixels, or None


STAR_FLOAT_FORMAT = "%.12g"  # 12 significant digits: CTF values round-trip to ~1e-12 relative


def write_particles(star_path, stack_path, images: np.ndarray, ctf: CTFParams,
                    pixel_size: float, poses: tuple | None = None) -> None:
    """Write a RELION 3.1 particle STAR file and its ``.mrcs`` stack (both atomically).

    One optics group is written per distinct (voltage, Cs, amplitude contrast). ``poses`` =
    (angles (n, 3) as RELION's rot, tilt, psi in degrees, origins (n, 2) in Å) adds the columns
    rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst (:mod:`cryobench.data.euler`); without it the
    file has no pose columns (as every dataset simulated before refinement tasks).
    """
    star_path, stack_path = Path(star_path), Path(stack_path)
    n, d, d2 = images.shape
    if d != d2 or len(ctf) != n:
        raise ValueError(f"write_particles: images {images.shape} need square images and "
                         f"one CTF per image (got {len(ctf)} CTFs)")
    tmp = atomic_target(stack_path)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = float(pixel_size)
        fixed_label(mrc)
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
    if poses is not None:
        angles, origins = (np.asarray(a, float) for a in poses)
        for j, col in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            particles[col] = angles[:, j]
        particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = origins[:, 0], origins[:, 1]
    tmp = atomic_target(star_path)
    starfile.write({"optics": optics, "particles": particles}, tmp, overwrite=True,
                   float_format=STAR_FLOAT_FORMAT)
    lines = tmp.read_text().split("\n")   # starfile stamps the time in its first comment
    if lines and lines[0].startswith("# Created by the starfile"):
        tmp.write_text("\n".join(["# Created by cryobench (RELION 3.1 layout)"] + lines[1:]))
    os.replace(tmp, star_path)


READ_CHUNK = 1024   # images copied from a stack per step
# A STAR pixel size and an MRC header voxel size closer than this are one value, rounded (STAR
# files are often written with 3-4 significant digits); further apart, loading says so once.
PIXEL_SIZE_RTOL = 1e-3
COMPLEX_MODES = {3: "complex int16", 4: "complex float32"}


def _check_finite(name, block, wanted, rows, star) -> None:
    finite = np.isfinite(block).all(axis=(1, 2))
    if not finite.all():
        j = int(np.argmin(finite))
        raise InputError(f"{name}: image {wanted[j] + 1} has NaN or infinite pixels "
                         f"(column rlnImageName, row {rows[j] + 1} of {star.name})")


def _complex_stack(name, mode: int | None = None) -> InputError | None:
    """The error for a stack of complex values (MRC mode 3 or 4, which mrcfile either cannot
    read or would have to make real), or None; ``mode`` None: read it from the header."""
    if mode is None:
        try:
            with mrcfile.open(name, header_only=True, permissive=True) as mrc:
                mode = int(mrc.header.mode)
        except Exception:  # not even a header: the caller's error says so
            return None
    if mode not in COMPLEX_MODES:
        return None
    return InputError(f"{name}: MRC mode {mode} ({COMPLEX_MODES[mode]}) holds complex values; "
                      f"particle images are real (MRC modes 0, 1, 2, 6 or 12)")


def _check_image_size(star, sizes, where, rows, name, d) -> None:
    """Refuse images whose size is not the rlnImageSize their rows declare (if they do)."""
    if sizes is None:
        return
    bad = sizes[rows] != d
    if bad.any():
        r = int(rows[np.argmax(bad)])
        raise InputError(f"{star}: column rlnImageSize{where} is {sizes[r]:g} for row {r + 1}, "
                         f"but the images of {name} are {d}×{d} pixels")


def _pixel_size(star, star_px, headers: dict, first) -> float:
    """The STAR file's pixel size (a header that disagrees by more than PIXEL_SIZE_RTOL is said
    once: RELION uses the STAR file's too), else the first stack's MRC header's."""
    header = next((v for v in headers.values() if v > 0), 0.0)
    if star_px is None:
        if not header > 0:
            raise InputError(f"{star}: pixel size is missing: no rlnImagePixelSize, rlnPixelSize "
                             f"or rlnDetectorPixelSize+rlnMagnification column, and the MRC header "
                             f"of {first} has voxel size {header:g}")
        return header
    px, col = star_px
    odd = next(((n, v) for n, v in headers.items() if v > 0 and abs(v - px) > PIXEL_SIZE_RTOL * px),
               None)
    if odd:
        warn_once(f"cryobench: warning: {star}: pixel size {px:g} Å ({col}) differs from the voxel "
                  f"size {odd[1]:g} Å in the MRC header of {odd[0]}; using the STAR file's "
                  f"{px:g} Å, as RELION does")
    return px


def read_particles(star_path, *, max_images: int | None = None,
                   memory_map: bool = False, check_images: bool = True) -> Particles:
    """Read a RELION 3.0 or 3.1 particle STAR file and its stacks (the first ``max_images`` rows).

    Images come back float32 (n, D, D) in STAR order. The pixel size is taken from the STAR file
    (rlnImagePixelSize, rlnPixelSize or rlnDetectorPixelSize·1e4/rlnMagnification; a stack's MRC
    header that disagrees by more than 0.1 % gets one warning), else from the first stack's MRC
    header. Origins (RELION 3.1 rlnOriginX/YAngst in Å, or 3.0 rlnOriginX/Y in pixels; both
    pairs must agree) come back in pixels as ``Particles.origins``, unapplied (see
    :func:`cryobench.data.realdata.recentre`). Stacks are found beside the STAR file, or a path
    with folders under a folder above it (a RELION project). CTF values must be plausible
    (:data:`cryobench.data.startables.PLAUSIBLE`), a value in both data_particles and
    data_optics the same in both, rlnImageSize the stacks' size, and stacks real-valued. Any
    problem raises one :class:`InputError`.

    With ``memory_map=True``, images that are the first rows of one float32 stack in order (as
    :func:`write_particles` writes them) come back as a read-only memory map instead of a copy.
    Stacks are read in blocks of ``READ_CHUNK`` images, so reading needs no memory beyond the
    result. Every image is checked to be finite and unlike every other (a duplicated particle
    could fall into two splits) — except a memory-mapped stack read with ``check_images=False``,
    which the caller vouches for (a simulated dataset: its stack is the simulator's, and matches
    the SHA-256 its folder's manifest recorded; checking it read all 3.3 GB of a paper-scale
    stack on every load); ``check_images=False`` also checks the CTF values against only the
    ranges the CTF formula needs (voltage > 0, amplitude contrast in [0, 1)), the simulator
    having checked its own.
    """
    star = Path(star_path)
    particles, optics = read_star(star)
    if max_images is not None:
        if max_images < 1:
            raise InputError(f"{star}: max_images must be ≥ 1, got {max_images}")
        particles = particles.iloc[:max_images]
    table = join_optics(star, particles, optics, plausible=check_images)
    ctf = ctf_from_table(star, table, plausible=check_images)
    star_px = star_pixel_size(star, table)
    found_origins = star_origins(star, table)
    origins = origins_in_pixels(star, found_origins, star_px[0]) if star_px else None
    sizes = numeric(star, table, "rlnImageSize") if "rlnImageSize" in table.columns else None
    size_where = (" of data_optics" if optics is not None and "rlnImageSize" in optics.columns
                  else "")
    index, paths = stack_locations(star, table)
    pair = repeated_names(star, index, paths)
    if pair:
        raise InputError(f"{star}: rows {pair[0] + 1} and {pair[1] + 1} both name image "
                         f"{index[pair[0]] + 1} of {paths[pair[0]].name} (column rlnImageName); "
                         f"a particle listed twice could fall into two splits")
    identical = IdenticalImages()
    groups: dict[Path, list[int]] = {}
    for row, path in enumerate(paths):
        groups.setdefault(path, []).append(row)
    images, first, headers = None, None, {}
    for name, rows in groups.items():
        try:
            with mrcfile.mmap(name, mode="r", permissive=False) as mrc:
                data = mrc.data
                if data is None or data.ndim not in (2, 3):
                    raise ValueError(f"expected an image stack, got data of shape "
                                     f"{None if data is None else data.shape}")
                if data.dtype.kind == "c":
                    raise (_complex_stack(name, int(mrc.header.mode))
                           or InputError(f"{name}: holds complex values ({data.dtype}); particle "
                                         f"images are real"))
                data = data[None] if data.ndim == 2 else data
                headers[name] = float(mrc.voxel_size.x)
                count, h, w = data.shape
                if h != w:
                    raise InputError(f"{name}: images are {h}×{w} pixels (y×x); image size must "
                                     f"be square")
                rows = np.asarray(rows)
                _check_image_size(star, sizes, size_where, rows, name, h)
                wanted = index[rows]
                if wanted.max() >= count:
                    raise InputError(f"{name}: stack has {count} images but {star.name} refers "
                                     f"to image {wanted.max() + 1} (column rlnImageName)")
                if (memory_map and len(groups) == 1 and data.dtype == np.dtype(np.float32)
                        and np.array_equal(wanted, np.arange(len(wanted)))):
                    images, first = data[:len(wanted)], name
                    for lo, block in image_blocks(images, READ_CHUNK) if check_images else ():
                        _check_finite(name, block, wanted[lo:], rows[lo:], star)
                        identical.add(block, rows[lo:lo + len(block)])
                    continue
                if images is None:
                    images, first = np.empty((len(paths), h, w), dtype=np.float32), name
                elif images.shape[1:] != (h, w):
                    raise InputError(f"{name}: image size {h}×{w} differs from "
                                     f"{images.shape[1]}×{images.shape[2]} in {first}")
                order = np.argsort(wanted, kind="stable")
                for lo in range(0, len(order), READ_CHUNK):
                    part = order[lo:lo + READ_CHUNK]
                    block = np.asarray(data[wanted[part]], dtype=np.float32)
                    _check_finite(name, block, wanted[part], rows[part], star)
                    identical.add(block, rows[part])
                    images[rows[part]] = block
                    release_pages(data)
        except InputError:
            raise
        except Exception as exc:  # mrcfile raises ValueError and friends for malformed files
            raise (_complex_stack(name)
                   or InputError(f"{name}: not a readable MRC stack ({exc})")) from None
    pair = identical.first(images)
    if pair:
        a, b = pair
        raise InputError(f"{star}: rows {a + 1} and {b + 1} hold identical images (image "
                         f"{index[a] + 1} of {paths[a].name} and image {index[b] + 1} of "
                         f"{paths[b].name}); a duplicated particle could fall into two splits")
    pixel_size = _pixel_size(star, star_px, headers, first)
    if origins is None:
        origins = origins_in_pixels(star, found_origins, pixel_size)
    return Particles(images=images, ctf=ctf, pixel_size=pixel_size, source=str(star),
                     origins=origins)


def count_particles(star_path, max_images: int | None = None) -> int:
    """Rows of a STAR file's particle table (at most ``max_images``), without reading stacks."""
    particles, _ = read_star(Path(star_path))
    return len(particles) if max_images is None else min(len(particles), max_images)
