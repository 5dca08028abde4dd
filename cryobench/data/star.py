"""RELION STAR particle tables and their MRC stacks: reading and writing.

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

from cryobench.base.blocks import image_blocks, release_pages
from cryobench.data.duplicates import IdenticalImages, repeated_names
from cryobench.data.mrc import atomic_target, fixed_label
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


OPTICS_COLUMNS = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
                  "rlnAmplitudeContrast": "amplitude_contrast"}
PARTICLE_COLUMNS = {"rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v",
                    "rlnDefocusAngle": "defocus_angle", "rlnPhaseShift": "phase_shift",
                    "rlnCtfBFactor": "bfactor"}
REQUIRED_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration",
                        "rlnAmplitudeContrast")
STAR_FLOAT_FORMAT = "%.12g"  # 12 significant digits: CTF values round-trip to ~1e-12 relative


def write_particles(star_path, stack_path, images: np.ndarray, ctf: CTFParams,
                    pixel_size: float) -> None:
    """Write a RELION 3.1 particle STAR file and its ``.mrcs`` stack (both atomically).

    One optics group is written per distinct (voltage, Cs, amplitude contrast).
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
    tmp = atomic_target(star_path)
    starfile.write({"optics": optics, "particles": particles}, tmp, overwrite=True,
                   float_format=STAR_FLOAT_FORMAT)
    lines = tmp.read_text().split("\n")   # starfile stamps the time in its first comment
    if lines and lines[0].startswith("# Created by the starfile"):
        tmp.write_text("\n".join(["# Created by cryobench (RELION 3.1 layout)"] + lines[1:]))
    os.replace(tmp, star_path)


def _read_star(star: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(particle table, optics table or None) of a RELION 3.0 or 3.1 STAR file."""
    if not star.is_file():
        raise InputError(f"{star}: STAR file not found")
    try:
        blocks = starfile.read(star, always_dict=True)
    except Exception as exc:  # starfile/pandas raise ValueError, IndexError, ... on bad text
        raise InputError(f"{star}: not a readable STAR file ({exc})") from None
    blocks = {k: pd.DataFrame([v]) if isinstance(v, dict) else v for k, v in blocks.items()}
    tables = [v for k, v in blocks.items() if k != "optics"]
    named = [t for t in tables if "rlnImageName" in t.columns]
    particles = blocks.get("particles", named[0] if named else
                           tables[0] if len(tables) == 1 else None)
    if particles is None:
        raise InputError(f"{star}: no particle table (a data_particles or data_ block with "
                         f"column rlnImageName) among data blocks {sorted(blocks)}")
    if len(particles) == 0:
        raise InputError(f"{star}: the particle table has no rows")
    return particles.reset_index(drop=True), blocks.get("optics")


def _numeric(star, table: pd.DataFrame, col: str, where: str = "") -> np.ndarray:
    """A column as float64, with an error naming the first non-numeric, NaN or infinite row."""
    vals = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{star}: column {col}{where} has a non-numeric, NaN or infinite value "
                         f"{table[col].iloc[i]!r} in row {i + 1}")
    return vals


def _join_optics(star, particles: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """The particle table with the columns of its optics group appended (RELION 3.1)."""
    if optics is None or len(optics) == 0:
        return particles
    if "rlnOpticsGroup" in particles.columns:
        if "rlnOpticsGroup" not in optics.columns:
            raise InputError(f"{star}: column rlnOpticsGroup is missing from data_optics")
        groups = _numeric(star, particles, "rlnOpticsGroup")
        known = {g: i for i, g in enumerate(_numeric(star, optics, "rlnOpticsGroup",
                                                     " of data_optics"))}
        unknown = [g for g in groups if g not in known]
        if unknown:
            raise InputError(f"{star}: column rlnOpticsGroup refers to optics group "
                             f"{unknown[0]:g}, which data_optics does not define")
        rows = np.array([known[g] for g in groups])
    elif len(optics) == 1:
        rows = np.zeros(len(particles), dtype=int)
    else:
        raise InputError(f"{star}: column rlnOpticsGroup is missing from data_particles "
                         f"(data_optics has {len(optics)} groups)")
    joined = optics.iloc[rows].reset_index(drop=True)
    extra = [c for c in joined.columns if c not in particles.columns]
    return pd.concat([particles, joined[extra]], axis=1)


def _ctf_from_table(star, table: pd.DataFrame) -> CTFParams:
    """CTFParams from the (joined) particle table; optional columns default to 0."""
    for col in REQUIRED_CTF_COLUMNS:
        if col not in table.columns:
            raise InputError(f"{star}: column {col} is missing (needed for the CTF)")
    values = {attr: (_numeric(star, table, col) if col in table.columns
                     else np.zeros(len(table)))
              for col, attr in {**PARTICLE_COLUMNS, **OPTICS_COLUMNS}.items()}
    for col, attr, ok, rule in [
            ("rlnVoltage", "voltage", lambda v: v > 0, "must be > 0 kV"),
            ("rlnAmplitudeContrast", "amplitude_contrast", lambda q: (q >= 0) & (q < 1),
             "must lie in [0, 1)")]:
        bad = ~ok(values[attr])
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{star}: column {col} has value {values[attr][i]:g} in row "
                             f"{i + 1}; it {rule}")
    return CTFParams(**values)


def _star_pixel_size(star, table: pd.DataFrame) -> float | None:
    """Å/px from rlnImagePixelSize, rlnPixelSize or rlnDetectorPixelSize·1e4/rlnMagnification."""
    names = [c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in table.columns]
    if names:
        col, vals = names[0], _numeric(star, table, names[0])
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        col = "rlnDetectorPixelSize·1e4/rlnMagnification"
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = (_numeric(star, table, "rlnDetectorPixelSize") * 1e4
                    / _numeric(star, table, "rlnMagnification"))
    else:
        return None
    if not np.all(np.isfinite(vals) & (vals > 0)):
        raise InputError(f"{star}: pixel size {col} must be > 0, got {vals.min():g}")
    if not np.allclose(vals, vals[0], rtol=1e-6):
        raise InputError(f"{star}: pixel size {col} varies from {vals.min():g} to "
                         f"{vals.max():g} Å; one pixel size per data set is supported")
    return float(vals[0])


ORIGIN_COLUMNS = {"Å": ("rlnOriginXAngst", "rlnOriginYAngst"), "px": ("rlnOriginX", "rlnOriginY")}


def _star_origins(star, table: pd.DataFrame) -> tuple[np.ndarray, str] | None:
    """(origins (n, 2) as (x, y), unit "Å" or "px") from RELION 3.1's rlnOriginX/YAngst (Å) or
    RELION 3.0's rlnOriginX/Y (pixels); None when the table has neither pair."""
    for unit, cols in ORIGIN_COLUMNS.items():
        present = [c for c in cols if c in table.columns]
        if len(present) == 1:
            raise InputError(f"{star}: column {present[0]} is present but "
                             f"{(set(cols) - set(present)).pop()} is missing")
        if present:
            return np.stack([_numeric(star, table, c) for c in cols], axis=1), unit
    return None


def _stack_locations(star: Path, table: pd.DataFrame) -> tuple[np.ndarray, list[Path]]:
    """0-based image indices and resolved stack paths from column rlnImageName."""
    if "rlnImageName" not in table.columns:
        raise InputError(f"{star}: column rlnImageName is missing (needed to find the images)")
    index, paths, resolved = np.empty(len(table), dtype=np.int64), [], {}
    for i, name in enumerate(table["rlnImageName"].astype(str)):
        num, sep, rel = name.strip().partition("@")
        if not (sep and num.isdigit() and int(num) >= 1 and rel):
            raise InputError(f"{star}: column rlnImageName has malformed entry {name!r} in row "
                             f"{i + 1} (expected NNNNNN@stack.mrcs, 1-based)")
        if rel not in resolved:
            candidates = [star.parent / rel, Path(rel)]  # STAR-relative first, then cwd
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise InputError(f"{star}: stack {rel} (column rlnImageName, row {i + 1}) not "
                                 f"found next to the STAR file or in the current directory")
            resolved[rel] = found[0]
        index[i] = int(num) - 1
        paths.append(resolved[rel])
    return index, paths


READ_CHUNK = 1024   # images copied from a stack per step


def _check_finite(name, block, wanted, rows, star) -> None:
    finite = np.isfinite(block).all(axis=(1, 2))
    if not finite.all():
        j = int(np.argmin(finite))
        raise InputError(f"{name}: image {wanted[j] + 1} has NaN or infinite pixels "
                         f"(column rlnImageName, row {rows[j] + 1} of {star.name})")


def read_particles(star_path, *, max_images: int | None = None,
                   memory_map: bool = False, check_images: bool = True) -> Particles:
    """Read a RELION 3.0 or 3.1 particle STAR file and its stacks (the first ``max_images`` rows).

    Images come back float32 (n, D, D) in STAR order. The pixel size is taken from the STAR file
    (rlnImagePixelSize, rlnPixelSize or rlnDetectorPixelSize·1e4/rlnMagnification), else from
    the first stack's MRC header. Origins (RELION 3.1 rlnOriginX/YAngst in Å, or 3.0
    rlnOriginX/Y in pixels) come back in pixels as ``Particles.origins``, unapplied (see
    :func:`cryobench.data.realdata.recentre`). Any problem raises one :class:`InputError`.

    With ``memory_map=True``, images that are the first rows of one float32 stack in order (as
    :func:`write_particles` writes them) come back as a read-only memory map instead of a copy.
    Stacks are read in blocks of ``READ_CHUNK`` images, so reading needs no memory beyond the
    result. Every image is checked to be finite and unlike every other (a duplicated particle
    could fall into two splits) — except a memory-mapped stack read with ``check_images=False``,
    which the caller vouches for (a simulated dataset: its stack is the simulator's, and matches
    the SHA-256 its folder's manifest recorded; checking it read all 3.3 GB of a paper-scale
    stack on every load).
    """
    star = Path(star_path)
    particles, optics = _read_star(star)
    if max_images is not None:
        if max_images < 1:
            raise InputError(f"{star}: max_images must be ≥ 1, got {max_images}")
        particles = particles.iloc[:max_images]
    table = _join_optics(star, particles, optics)
    ctf = _ctf_from_table(star, table)
    pixel_size = _star_pixel_size(star, table)
    origins = _star_origins(star, table)
    index, paths = _stack_locations(star, table)
    pair = repeated_names(star, index, paths)
    if pair:
        raise InputError(f"{star}: rows {pair[0] + 1} and {pair[1] + 1} both name image "
                         f"{index[pair[0]] + 1} of {paths[pair[0]].name} (column rlnImageName); "
                         f"a particle listed twice could fall into two splits")
    identical = IdenticalImages()
    groups: dict[Path, list[int]] = {}
    for row, path in enumerate(paths):
        groups.setdefault(path, []).append(row)
    images, first, header_pixel = None, None, 0.0
    for name, rows in groups.items():
        try:
            with mrcfile.mmap(name, mode="r", permissive=False) as mrc:
                data = mrc.data
                if data is None or data.ndim not in (2, 3):
                    raise ValueError(f"expected an image stack, got data of shape "
                                     f"{None if data is None else data.shape}")
                data = data[None] if data.ndim == 2 else data
                header_pixel = header_pixel or float(mrc.voxel_size.x)
                count, h, w = data.shape
                if h != w:
                    raise InputError(f"{name}: images are {h}×{w} pixels (y×x); image size must "
                                     f"be square")
                rows = np.asarray(rows)
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
            raise InputError(f"{name}: not a readable MRC stack ({exc})") from None
    pair = identical.first(images)
    if pair:
        a, b = pair
        raise InputError(f"{star}: rows {a + 1} and {b + 1} hold identical images (image "
                         f"{index[a] + 1} of {paths[a].name} and image {index[b] + 1} of "
                         f"{paths[b].name}); a duplicated particle could fall into two splits")
    if pixel_size is None and not header_pixel > 0:
        raise InputError(f"{star}: pixel size is missing: no rlnImagePixelSize, rlnPixelSize or "
                         f"rlnDetectorPixelSize+rlnMagnification column, and the MRC header of "
                         f"{first} has voxel size {header_pixel:g}")
    pixel_size = pixel_size or header_pixel
    if origins is not None:
        origins = origins[0] / pixel_size if origins[1] == "Å" else origins[0]
    return Particles(images=images, ctf=ctf, pixel_size=pixel_size, source=str(star),
                     origins=origins)


def count_particles(star_path, max_images: int | None = None) -> int:
    """Rows of a STAR file's particle table (at most ``max_images``), without reading stacks."""
    particles, _ = _read_star(Path(star_path))
    return len(particles) if max_images is None else min(len(particles), max_images)
