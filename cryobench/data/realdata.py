"""Real particle data: origins, a reference map and the contrast check of a STAR task.

**Origins.** RELION writes, per particle, the in-plane offset that brings the particle to the
centre of its box: rlnOriginXAngst/YAngst (3.1, Å) or rlnOriginX/Y (3.0, pixels). "Origin offsets
reported for individual images translate the image to its center" (RELION's conventions,
https://relion.readthedocs.io/en/latest/Reference/Conventions.html): the particle's centre lies at
box centre − origin, and shifting the image by +origin centres it (ASPIRE found the same,
https://github.com/ComputationalCryoEM/ASPIRE-Python/issues/1146). :func:`recentre` applies that
shift to each image as a Fourier phase ramp when the task is loaded, before anything else sees
the images. It is not used as the centre of a per-image shift prior because the quadrature's
shift grid is shared by all images (one matrix product over the same shifts for every image);
re-centring the images keeps the likelihood exactly as it is for simulated data, and the shift
prior then covers only the residual error of the refinement's offsets, as it should.

**Reference map.** :func:`load_reference` reads an MRC map (cubic, with a voxel size in its
header) and resamples it onto the task's box and pixel size (:func:`resample_map`: its Fourier
transform evaluated at the task's frequencies, i.e. Fourier crop/pad together with the change of
voxel size). Handedness and orientation need not match: FSC aligns rotation, shift and hand.

**Contrast.** :func:`contrast_z` tells from the data whether the density or its negative
explains the images better; see its docstring.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import mrcfile
import numpy as np

from cryobench.data.mrc import read_volume
from cryobench.errors import InputError
from cryobench.model.ctf import CTFParams, evaluate_ctf
from cryobench.model.fourier import centered_dft2, centered_idft2, dft_matrix, volume_to_cube

CONTRAST_Z = 3.0            # |z| beyond which the contrast check is conclusive


def recentre(images: np.ndarray, origins: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Shift image i by +origins[i] = (x, y) pixels (content at p moves to p + origin), exactly,
    as the phase ramp Î(k) e^{−2πi k·origin/D}; float32 (n, D, D). RELION origins centre the
    particles this way (see the module docstring)."""
    images = np.asarray(images)
    n, d = images.shape[0], images.shape[-1]
    k = np.arange(d) - d // 2
    out = np.empty(images.shape, np.float32)
    for lo in range(0, n, chunk):
        o = np.asarray(origins[lo:lo + chunk], float)
        ramp = np.exp(-2j * np.pi * (o[:, 0, None, None] * k[None, None, :]
                                     + o[:, 1, None, None] * k[None, :, None]) / d)
        out[lo:lo + chunk] = centered_idft2(centered_dft2(images[lo:lo + chunk].astype(float)) * ramp)
    return out


def resample_map(volume: np.ndarray, voxel: float, box: int, pixel_size: float) -> np.ndarray:
    """V[z, y, x] of voxel ``voxel`` Å resampled to a ``box``³ grid of ``pixel_size`` Å, about the
    centre voxel (index D//2), keeping voxel values (a constant map stays the same constant).

    The map's transform V̂ is evaluated at the task's frequencies k/(box·pixel_size) (three
    DFT-matrix products); frequencies past the map's own Nyquist and the task's Nyquist planes are
    zero. With the same field of view this is a Fourier crop (or pad); otherwise density outside
    the task's box wraps around, so the particle must fit in the task's box (it must anyway).
    """
    n = volume.shape[0]
    k = np.arange(box) - box // 2
    xi = k * (n * voxel) / (box * pixel_size)            # the task's frequencies in map units
    cube = volume_to_cube(np.asarray(volume, np.float64), xi)
    keep = (np.abs(xi) < n / 2) & (k > -box / 2)
    cube *= keep[:, None, None] & keep[None, :, None] & keep[None, None, :]
    cube *= (voxel / pixel_size) ** 3 * n / box
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(cube))).real * box
    return out.astype(np.float32)


def load_reference(path: Path, box: int, pixel_size: float, particle_radius: float,
                   where: str) -> tuple[np.ndarray, str]:
    """(the reference map resampled to the task's grid, SHA-256 of the file's bytes).

    ``where`` names the setting in errors (e.g. "tasks/x.toml: [dataset] reference").
    """
    volume, _ = read_volume(path)
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        size = [float(mrc.voxel_size[a]) for a in "xyz"]
    if not all(np.isfinite(size)) or min(size) <= 0:
        raise InputError(f"{where} = {str(path)!r}: the MRC header has voxel size {size[0]:g} Å "
                         "(missing); set the map's voxel size (e.g. relion_image_handler --angpix, "
                         "or mrcfile's voxel_size) so it can be resampled to the task's pixel size")
    if not np.allclose(size, size[0], rtol=1e-4):
        raise InputError(f"{where} = {str(path)!r}: voxel sizes differ along x, y, z "
                         f"({size[0]:g}, {size[1]:g}, {size[2]:g} Å); a cubic voxel is needed")
    if len(volume) * size[0] < 2 * particle_radius:
        raise InputError(f"{where} = {str(path)!r}: the map spans {len(volume) * size[0]:g} Å, "
                         f"less than the particle's diameter {2 * particle_radius:g} Å")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return resample_map(volume, size[0], box, pixel_size), digest


def contrast_z(images: np.ndarray, ctf: CTFParams, sigma: np.ndarray, pixel_size: float,
               particle_radius: float, chunk: int = 1024) -> float:
    """z-score of the evidence that the images show +V (z > 0) rather than −V (z < 0).

    Model: image i is Î_i = C_i · P V̂ + noise (σ_i), with RELION's CTF sign (C(0) = +Q,
    :mod:`cryobench.model.ctf`) and V a positive mass. Take as V a round Gaussian blob at the centre
    whose spread (σ_b = R/2 per axis, R the particle radius) is that of a uniform ball of radius
    R; its projection is the same for every orientation, with transform B̂(s) = e^{−2π²σ_b²s²} > 0.
    The log-likelihood ratio of +B against −B for image i is then exactly

        2 t_i,   t_i = Σ_q w_q Re(Î_i(q)) C_i(q) B̂(q) / σ_i²

    (the quadratic terms are the same for ±B), summed here over the half plane without q = 0:
    an image's mean depends on how it was normalised, not on the particle. Every positive particle's orientation-averaged
    projection is positive at the low frequencies B̂ weights, so E[t_i] > 0 for data in the
    model's sign and < 0 for data of the opposite sign (black particles), whatever the particle;
    noise and unknown orientations only add variance. The return value is mean(t)/(sd(t)/√n)
    over all images: |z| > 3 is conclusive. The images must be centred (origins applied).
    """
    d = images.shape[-1]
    b = particle_radius / 2.0
    kmax = min(d / 2 - 1, 1.2 * d * pixel_size / particle_radius)   # B̂ < 1e-3 beyond
    r = int(np.floor(kmax))
    ky, kx = np.mgrid[-r:r + 1, -r:r + 1]
    half = (kx**2 + ky**2 <= kmax**2) & ((ky > 0) | ((ky == 0) & (kx > 0)))
    kx, ky = kx[half].astype(float), ky[half].astype(float)
    s2 = (kx**2 + ky**2) / (d * pixel_size) ** 2
    weight = 2.0 * np.exp(-2 * np.pi**2 * b**2 * s2)          # w_q = 2: q and −q
    freqs = np.arange(-r, r + 1)
    f = dft_matrix(freqs, d) / d ** 0.5                  # the images' unitary DFT, one axis
    iy, ix = (ky + r).astype(int), (kx + r).astype(int)
    t = np.empty(len(images))
    for lo in range(0, len(images), chunk):
        block = np.asarray(images[lo:lo + chunk], np.float64)
        spec = np.einsum("ay,nyx,bx->nab", f, block, f, optimize=True)[:, iy, ix]
        c = evaluate_ctf(ctf.subset(slice(lo, lo + len(block))), kx / (d * pixel_size),
                         ky / (d * pixel_size))
        t[lo:lo + len(block)] = (spec.real * c * weight).sum(1) / sigma[lo:lo + len(block)] ** 2
    if len(t) < 2 or t.std() == 0:
        return 0.0
    return float(t.mean() / (t.std(ddof=1) / np.sqrt(len(t))))


def contrast_advice(z: float, invert_sign: bool, spec_path) -> str | None:
    """The one line to print when the data prefer the negated density (z < −3), else None."""
    if z >= -CONTRAST_Z:
        return None
    return (f"cryobench: warning: the images fit the negated density better than the density "
            f"(contrast z = {z:.1f}): their contrast is the opposite of RELION's; set "
            f"invert_sign = {'false' if invert_sign else 'true'} in [dataset] of {spec_path}")
