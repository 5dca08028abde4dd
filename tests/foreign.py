"""A small particle data set written in another package's conventions, for the real-data tests.

Particles of the V-ATPase-like phantom are simulated off-centre by the project's simulator
(analytic blob transforms, no slicing operator), with the opposite CTF sign to RELION's
(cryoDRGN/ASPIRE: black particles for a positive density), and written as a STAR file with no
``# version`` line, origins in Å (rlnOriginXAngst/YAngst = −shift · pixel size, RELION's
convention) and columns cryobench does not use (rlnClassNumber, rlnAutopickFigureOfMerit,
rlnCoordinateX/Y, rlnMicrographName). A reference map at another box and voxel size is written
beside it.
"""
from pathlib import Path

import mrcfile
import numpy as np
import starfile
from scipy.spatial.transform import Rotation

from cryobench.data.phantoms import PHANTOMS
from cryobench.data.render import clean_images
from cryobench.model.ctf import CTFParams

PIXEL = 12.0        # Å
BOX = 32
PHANTOM = "v-atpase"


def simulate(n, seed=0, shift_sd=2.0, snr_scale=0.35, box=BOX, pixel=PIXEL):
    """(clean centred images, clean shifted images, shifts in px, CTFs, the phantom scaled)."""
    rng = np.random.default_rng(seed)
    phantom = PHANTOMS[PHANTOM]()
    rot = Rotation.random(n, random_state=seed).as_matrix()
    shifts = np.clip(rng.normal(0.0, shift_sd, (n, 2)), -3 * shift_sd, 3 * shift_sd)
    du = rng.uniform(1.0e4, 3.0e4, n)
    ctf = CTFParams(du, du - rng.uniform(0, 500, n), rng.uniform(0, 180, n), 300.0, 2.7, 0.1,
                    0.0, 0.0)
    centred = clean_images(phantom, rot, None, ctf, box, pixel)
    gain = snr_scale / centred.std()
    phantom = phantom.scaled(gain)
    return (centred * gain, clean_images(phantom, rot, shifts, ctf, box, pixel), shifts, ctf,
            phantom)


STAR_HEAD = """
data_optics

loop_
_rlnOpticsGroup
_rlnOpticsGroupName
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
_rlnImagePixelSize
_rlnImageSize
_rlnImageDimensionality
1 opticsGroup1 300.0 2.7 0.1 {pixel} {box} 2


data_particles

loop_
_rlnCoordinateX
_rlnCoordinateY
_rlnImageName
_rlnMicrographName
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
_rlnPhaseShift
_rlnOpticsGroup
_rlnClassNumber
_rlnAutopickFigureOfMerit
{origin_labels}"""


def write_star(path, stack_name, ctf, origins=None, unit="Å", pixel=PIXEL, box=BOX):
    """A STAR file (no version line) for ``len(ctf)`` images of ``stack_name``; origins (n, 2)
    written in Å (RELION 3.1 columns) or px (RELION 3.0 columns), or not at all."""
    labels = {"Å": "_rlnOriginXAngst\n_rlnOriginYAngst\n", "px": "_rlnOriginX\n_rlnOriginY\n"}
    text = STAR_HEAD.format(pixel=pixel, box=box,
                            origin_labels=labels[unit] if origins is not None else "")
    rows = []
    for i in range(len(ctf)):
        row = (f"{1000 + 7 * i:.1f}\t{2000 - 3 * i:.1f}\t{i + 1:06d}@{stack_name}\tmic_{i // 50}.mrc  "
               f"{ctf.defocus_u[i]:.2f} {ctf.defocus_v[i]:.2f} {ctf.defocus_angle[i]:.2f} 0.0 1 "
               f"{1 + i % 3} {0.5 + (i % 10) / 20:.3f}")
        if origins is not None:
            row += "".join(f" {v:.6f}" for v in origins[i])
        rows.append(row)
    Path(path).write_text(text + "\n".join(rows) + "\n\n")


def write_stack(path, images, pixel=PIXEL):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.voxel_size = pixel


def write_map(path, volume, voxel):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = voxel


def foreign_dataset(folder, n=400, seed=0, black=True, reference=(40, 10.0)):
    """Write particles.mrcs, particles.star (origins in Å) and, unless None, reference.mrc at
    (box, voxel); returns (the scaled phantom, the CTFs, the shifts in pixels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, shifted, shifts, ctf, phantom = simulate(n, seed)
    noise = np.random.default_rng(seed + 1).standard_normal(shifted.shape)
    write_stack(folder / "particles.mrcs", (-shifted if black else shifted) + noise)
    write_star(folder / "particles.star", "particles.mrcs", ctf, origins=-shifts * PIXEL)
    if reference is not None:
        write_map(folder / "reference.mrc", phantom.to_volume(*reference), reference[1])
    return phantom, ctf, shifts


TASK = """name = "my-particles"
seed = 7
[dataset]
kind = "star"
star = "particles.star"
particle_radius = 150.0
invert_sign = {invert}
{reference}
[objective]
prior_lambda_pos = 3e-2
prior_lambda_neg = 1e-4
shift_sigma = 12.0
[protocol]
n_test = 100
[scales.tiny]
{box}rmax = 3.0
n_validation = 30
"""


def write_task(folder, invert=False, reference=True, extra="", box=24):
    """my-particles.toml in ``folder``; its one scale, tiny, Fourier-crops to ``box`` (None: no
    box, the images' own size)."""
    path = Path(folder) / "my-particles.toml"
    path.write_text(TASK.format(invert="true" if invert else "false",
                                reference='reference = "reference.mrc"' if reference else "",
                                box="" if box is None else f"box = {box}\n")
                    + extra)
    return path


def edit_star(path, change):
    """Rewrite the STAR file at ``path`` after ``change(blocks)`` has edited its tables in place
    (a dict of DataFrames by block name: "optics" and "particles" for :func:`write_star`'s)."""
    blocks = starfile.read(path, always_dict=True)
    change(blocks)
    starfile.write(blocks, path, overwrite=True, float_format="%.12g")
    return path
