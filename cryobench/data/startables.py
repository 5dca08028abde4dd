"""The tables of a RELION STAR file (3.0 or 3.1): particles and optics groups, the CTF values and
the ranges they must lie in, the pixel size, the origins, and where each image's stack is.

:func:`cryobench.data.star.read_particles` reads the images with these. Every problem is one
:class:`InputError` naming the STAR file, the column and the first bad row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams

OPTICS_COLUMNS = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
                  "rlnAmplitudeContrast": "amplitude_contrast"}
PARTICLE_COLUMNS = {"rlnDefocusU": "defocus_u", "rlnDefocusV": "defocus_v",
                    "rlnDefocusAngle": "defocus_angle", "rlnPhaseShift": "phase_shift",
                    "rlnCtfBFactor": "bfactor"}
REQUIRED_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration",
                        "rlnAmplitudeContrast")
RELION_BFACTOR = "rlnCtfBfactor"   # RELION's spelling; cryobench has written rlnCtfBFactor
PIXEL_COLUMNS = ("rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification")
# Every numeric column cryobench reads that may sit in data_optics, data_particles or both.
USED_COLUMNS = (*PARTICLE_COLUMNS, RELION_BFACTOR, *OPTICS_COLUMNS, *PIXEL_COLUMNS, "rlnImageSize")

# Values no microscope or CTF fit gives, refused with the first bad row (generous on purpose:
# real defocus lies between a few hundred Å and ~1e5 Å, positive for underfocus in RELION's
# convention; voltages are 60–300 kV, Cs −0.1…10 mm, amplitude contrast 0.04–0.2).
PLAUSIBLE = {
    "rlnDefocusU": (lambda v: (v > 0) & (v <= 1e6),
                    "must lie in (0, 1e6] Å (RELION's defocus is positive for underfocus)"),
    "rlnDefocusV": (lambda v: (v > 0) & (v <= 1e6),
                    "must lie in (0, 1e6] Å (RELION's defocus is positive for underfocus)"),
    "rlnVoltage": (lambda v: (v > 0) & (v <= 1e4), "must lie in (0, 1e4] kV"),
    "rlnSphericalAberration": (lambda v: np.abs(v) <= 100, "must lie in [-100, 100] mm"),
    "rlnAmplitudeContrast": (lambda q: (q >= 0) & (q < 1), "must lie in [0, 1)"),
    "rlnCtfBFactor": (lambda b: np.abs(b) <= 1e4, "must lie in [-1e4, 1e4] Å²"),
    RELION_BFACTOR: (lambda b: np.abs(b) <= 1e4, "must lie in [-1e4, 1e4] Å²"),
}
# What the CTF formula itself needs: the only ranges checked on a dataset the caller vouches for.
NEEDED = {col: PLAUSIBLE[col] for col in ("rlnVoltage", "rlnAmplitudeContrast")}

ORIGIN_COLUMNS = {"Å": ("rlnOriginXAngst", "rlnOriginYAngst"), "px": ("rlnOriginX", "rlnOriginY")}
ORIGIN_TOLERANCE_PX = 0.01   # Å and px origins agree when within this (STAR files round them)


def read_star(star: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
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


def numeric(star, table: pd.DataFrame, col: str, where: str = "") -> np.ndarray:
    """A column as float64, with an error naming the first non-numeric, NaN or infinite row."""
    vals = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.argmax(bad))
        value = table[col].iloc[i]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise InputError(f"{star}: column {col}{where} has a non-numeric, NaN or infinite value "
                         f"{shown} in row {i + 1}")
    return vals


def check_values(star, table: pd.DataFrame, where: str = "", plausible: bool = True) -> None:
    """Every used column of ``table`` finite, and the CTF columns within :data:`PLAUSIBLE` (only
    :data:`NEEDED` when not ``plausible``); the error names the column and the first bad row."""
    ranges = PLAUSIBLE if plausible else NEEDED
    for col in USED_COLUMNS:
        if col not in table.columns:
            continue
        vals = numeric(star, table, col, where)
        if col in ranges:
            ok, rule = ranges[col]
            bad = ~ok(vals)
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"{star}: column {col}{where} has value {vals[i]:g} in row "
                                 f"{i + 1}; it {rule}")


def join_optics(star, particles: pd.DataFrame, optics: pd.DataFrame | None,
                plausible: bool = True) -> pd.DataFrame:
    """The particle table with the columns of its optics group appended (RELION 3.1).

    A column in both tables must hold the same value: RELION would take the particle's, other
    readers the optics group's, so a difference is refused rather than settled silently.
    """
    if optics is None or len(optics) == 0:
        return particles
    check_values(star, optics, " of data_optics", plausible)
    if "rlnOpticsGroup" in particles.columns:
        if "rlnOpticsGroup" not in optics.columns:
            raise InputError(f"{star}: column rlnOpticsGroup is missing from data_optics")
        groups = numeric(star, particles, "rlnOpticsGroup")
        known = {g: i for i, g in enumerate(numeric(star, optics, "rlnOpticsGroup",
                                                    " of data_optics"))}
        unknown = [g for g in groups if g not in known]
        if unknown:
            raise InputError(f"{star}: column rlnOpticsGroup refers to optics group "
                             f"{unknown[0]:g}, which data_optics does not define")
        rows = np.array([known[g] for g in groups])
    elif len(optics) == 1:
        groups, rows = np.ones(len(particles)), np.zeros(len(particles), dtype=int)
    else:
        raise InputError(f"{star}: column rlnOpticsGroup is missing from data_particles "
                         f"(data_optics has {len(optics)} groups)")
    joined = optics.iloc[rows].reset_index(drop=True)
    for col in USED_COLUMNS:
        if col in particles.columns and col in optics.columns:
            mine = numeric(star, particles, col)
            theirs = numeric(star, joined, col)
            differ = ~np.isclose(mine, theirs, rtol=1e-6, atol=0.0)
            if differ.any():
                i = int(np.argmax(differ))
                raise InputError(f"{star}: column {col} is in both data_particles and data_optics "
                                 f"and they differ: row {i + 1} has {mine[i]:g}, its optics group "
                                 f"{groups[i]:g} has {theirs[i]:g} (RELION would use the "
                                 f"particle's); remove it from one table or make them agree")
    extra = [c for c in joined.columns if c not in particles.columns]
    return pd.concat([particles, joined[extra]], axis=1)


def ctf_from_table(star, table: pd.DataFrame, plausible: bool = True) -> CTFParams:
    """CTFParams from the (joined) particle table; optional columns default to 0."""
    for col in REQUIRED_CTF_COLUMNS:
        if col not in table.columns:
            raise InputError(f"{star}: column {col} is missing (needed for the CTF)")
    check_values(star, table, "", plausible)
    values = {attr: (numeric(star, table, col) if col in table.columns
                     else np.zeros(len(table)))
              for col, attr in {**PARTICLE_COLUMNS, **OPTICS_COLUMNS}.items()}
    if RELION_BFACTOR in table.columns:
        relion = numeric(star, table, RELION_BFACTOR)
        differ = ~np.isclose(relion, values["bfactor"], rtol=1e-6, atol=0.0)
        if "rlnCtfBFactor" in table.columns and differ.any():
            i = int(np.argmax(differ))
            raise InputError(f"{star}: columns {RELION_BFACTOR} and rlnCtfBFactor differ in row "
                             f"{i + 1} ({relion[i]:g} and {values['bfactor'][i]:g} Å²); keep one")
        values["bfactor"] = relion
    return CTFParams(**values)


def star_pixel_size(star, table: pd.DataFrame) -> tuple[float, str] | None:
    """(Å/px, the column it came from) from rlnImagePixelSize, rlnPixelSize or
    rlnDetectorPixelSize·1e4/rlnMagnification; None when the table has none of them."""
    names = [c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in table.columns]
    if names:
        col, vals = names[0], numeric(star, table, names[0])
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        col = "rlnDetectorPixelSize·1e4/rlnMagnification"
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = (numeric(star, table, "rlnDetectorPixelSize") * 1e4
                    / numeric(star, table, "rlnMagnification"))
    else:
        return None
    if not np.all(np.isfinite(vals) & (vals > 0)):
        raise InputError(f"{star}: pixel size {col} must be > 0, got {vals.min():g}")
    if not np.allclose(vals, vals[0], rtol=1e-6):
        raise InputError(f"{star}: pixel size {col} varies from {vals.min():g} to "
                         f"{vals.max():g} Å; one pixel size per data set is supported")
    return float(vals[0]), col


def star_origins(star, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The origins (n, 2) as (x, y) the table has, by unit: "Å" from RELION 3.1's
    rlnOriginX/YAngst, "px" from RELION 3.0's rlnOriginX/Y; empty when it has neither pair."""
    found = {}
    for unit, cols in ORIGIN_COLUMNS.items():
        present = [c for c in cols if c in table.columns]
        if len(present) == 1:
            raise InputError(f"{star}: column {present[0]} is present but "
                             f"{(set(cols) - set(present)).pop()} is missing")
        if present:
            found[unit] = np.stack([numeric(star, table, c) for c in cols], axis=1)
    return found


def origins_in_pixels(star, found: dict[str, np.ndarray], pixel_size: float) -> np.ndarray | None:
    """The origins in pixels (Å ones divided by the pixel size); when a table has both pairs,
    they must agree within :data:`ORIGIN_TOLERANCE_PX` (then the Å ones are used, as RELION
    3.1 does)."""
    if not found:
        return None
    if "Å" not in found:
        return found["px"]
    origins = found["Å"] / pixel_size
    if "px" in found:
        bad = np.abs(origins - found["px"]) > ORIGIN_TOLERANCE_PX
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            axis = "XY"[j]
            raise InputError(f"{star}: columns rlnOrigin{axis} and rlnOrigin{axis}Angst disagree "
                             f"in row {i + 1}: {found['px'][i, j]:g} px against "
                             f"{found['Å'][i, j]:g} Å / {pixel_size:g} Å/px = {origins[i, j]:.6g} "
                             f"px; remove one pair or make them agree")
    return origins


def _stack_candidates(star: Path, rel: str) -> tuple[list[Path], str]:
    """Where a stack named ``rel`` in rlnImageName may be, nearest first, and how to say it.

    Relative to the STAR file's folder; a path with folders in it (RELION's
    ``Extract/job012/Movies/x.mrcs``, relative to the project folder the STAR file lies in) also
    under each folder above the STAR file's. Never relative to the current directory.
    """
    path = Path(rel)
    if path.is_absolute():
        return [path], f"tried {path}"
    here = star.absolute().parent
    if len(path.parts) == 1:
        return [here / path], f"tried {here / path} (beside the STAR file)"
    return ([here / path] + [up / path for up in here.parents],
            f"tried {here / path} and {path} under every folder above it (a RELION project folder)")


def stack_locations(star: Path, table: pd.DataFrame) -> tuple[np.ndarray, list[Path]]:
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
            candidates, tried = _stack_candidates(star, rel)
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InputError(f"{star}: stack {rel} (column rlnImageName, row {i + 1}) not "
                                 f"found: {tried}")
            resolved[rel] = found
        index[i] = int(num) - 1
        paths.append(resolved[rel])
    return index, paths
