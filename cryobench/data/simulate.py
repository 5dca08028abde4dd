"""Simulated particle datasets from analytic Gaussian-blob phantoms (no slicing operator).

Image formation follows :mod:`cryobench.model.fourier` and :mod:`cryobench.model.ctf` exactly. The image of
orientation R is the projection I(u) = ∫ V(R·(u, z)) dz, so a blob centred at c (pixels) projects
to u = (Rᵀc)[:2]; by the Fourier slice theorem Î(k) = V̂(R·(k, 0)). The particle is then displaced
in-plane by +t pixels (Î ← e^{−2πi k·t/D} Î) and multiplied by the CTF. Spectra come from the
closed-form transform of the blobs, separable in kx and ky (a sum of one outer product per blob),
band-limited to |kx|, |ky| < D/2 (Nyquist row/column zero), then inverse-FFT'd. White Gaussian
noise of σ = 1 per pixel is added; the signal is scaled by one factor g (also applied to
``ground_truth.mrc``) so that the SNR (see ``SNR_DEFINITION``) equals the requested value.

The files' bits are the same on every machine (format 2): every floating-point step runs in
float64 in a fixed order without BLAS, NumPy's SIMD-dispatched functions or libm — the phases,
Gaussians and CTF from :mod:`cryobench.base.portable`'s ``sincos_turns`` and ``exp``, the
inverse transform its FFT — and compiled without fastmath (no FMA contraction); see that
module. The random draws come from NumPy's generators (the rotations through SciPy's
``Rotation.random``, + − × ÷ √ on normal draws): their only floating-point functions are libm's
exp/log in the normal sampler's rare rejection tests, where an ulp could flip a comparison
about once in 10¹⁶ draws.

Files written by :func:`simulate`: ``particles.star`` (RELION 3.1, CTFs; poses too for the seeded
phantoms of refinement tasks, :mod:`cryobench.data.euler`),
``particles.mrcs``, ``ground_truth.mrc``, ``meta.json`` and ``poses.csv`` with the true poses:
``r00 … r22`` is R row-major (R maps image coordinates (x, y, z) to map coordinates, as above),
``shift_x, shift_y`` is t in pixels (RELION's rlnOriginX/YAngst would be −t·pixel_size), and
``is_outlier`` is 1 for junk particles (their rotation is the junk blob cluster's).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from cryobench.data.mrc import write_volume
from cryobench.data.euler import angles_from_rotations
from cryobench.data.phantoms import PHANTOMS, SEEDED, junk_particle, make_phantom
from cryobench.data.render import (band_limited_volume, clean_images, masked_variance,
                                   particle_mask, scaled)
from cryobench.data.star import write_particles
from cryobench.model.ctf import CTFParams

FORMAT_VERSION = 2      # 2: the bits no longer depend on the CPU, BLAS or libm (portable.py)
CALIBRATION_IMAGES = 4096
POSE_COLUMNS = [f"r{a}{b}" for a in range(3) for b in range(3)]
STREAMS = ("rotations", "ctf", "shifts", "outliers", "junk", "noise")
SNR_DEFINITION = ("SNR = mean over the non-outlier images of the variance of the clean (CTF-"
                  "modulated, noise-free) image over the pixels within the particle radius of "
                  "the box centre, divided by the noise variance σ² (σ = 1).")


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of a simulated dataset (lengths in Å, voltage kV, Cs mm, B Å²)."""

    phantom: str
    n_images: int
    box: int
    pixel_size: float
    snr: float
    voltage: float
    cs: float
    amplitude_contrast: float
    defocus_min: float
    defocus_max: float
    astigmatism: float
    shift_sigma: float
    shift_truncation: float
    outlier_fraction: float
    bfactor: float
    seed: int

    def __post_init__(self):
        for f in fields(self):
            value, cast = getattr(self, f.name), {"str": str, "int": int, "float": float}[f.type]
            if cast is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"SimulationParams: {f.name} must be an integer, got {value!r}")
            object.__setattr__(self, f.name, cast(value))
        checks = [(self.phantom in PHANTOMS, f"phantom must be one of {sorted(PHANTOMS)}"),
                  (self.n_images >= 1, "n_images must be ≥ 1"), (self.box >= 8, "box must be ≥ 8"),
                  (self.pixel_size > 0, "pixel_size must be > 0"),
                  (self.snr > 0, "snr must be > 0"),
                  (0 < self.amplitude_contrast < 1, "amplitude_contrast must be in (0, 1)"),
                  (0 <= self.defocus_min <= self.defocus_max, "need 0 ≤ defocus_min ≤ defocus_max"),
                  (self.astigmatism >= 0 and self.shift_sigma >= 0, "sds must be ≥ 0"),
                  (self.shift_sigma == 0 or 0 < self.shift_truncation < np.inf,
                   "shift_truncation must be finite and > 0 when shift_sigma > 0"),
                  (0 <= self.outlier_fraction < 1, "outlier_fraction must be in [0, 1)"),
                  (self.voltage > 0 and np.isfinite(self.bfactor), "bad voltage or bfactor")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SimulationParams: {message}")

    @classmethod
    def from_mapping(cls, d: dict) -> "SimulationParams":
        """Build from a dict; raises ValueError naming any unknown or missing key."""
        names = [f.name for f in fields(cls)]
        unknown, missing = sorted(set(d) - set(names)), [n for n in names if n not in d]
        if unknown or missing:
            raise ValueError(f"SimulationParams: unknown keys {unknown}, missing keys {missing}")
        return cls(**{n: d[n] for n in names})

    def to_dict(self) -> dict:
        """The parameters as a plain dict (JSON-serialisable, round-trips via from_mapping)."""
        return asdict(self)


def _draw(params: SimulationParams):
    """All per-image random quantities, from SeedSequence(seed).spawn(len(STREAMS))."""
    p, n = params, params.n_images
    rngs = dict(zip(STREAMS, map(np.random.default_rng, np.random.SeedSequence(p.seed).spawn(6))))
    rot = Rotation.random(n, random_state=rngs["rotations"]).as_matrix()
    g = rngs["ctf"]
    du = g.uniform(p.defocus_min, p.defocus_max, n)
    dv = du - np.abs(g.normal(0.0, 1.0, n)) * p.astigmatism
    ang = g.uniform(0.0, 180.0, n)
    dec = lambda a: np.array([float(f"{v:.2f}") for v in a])  # noqa: E731  (exact in the STAR)
    ctf = CTFParams(dec(du), dec(dv), dec(ang), p.voltage, p.cs, p.amplitude_contrast, 0.0,
                    p.bfactor)
    shifts = np.zeros((n, 2))
    if p.shift_sigma > 0:
        shifts = rngs["shifts"].normal(0.0, p.shift_sigma, (n, 2))
        limit = p.shift_truncation * p.shift_sigma
        while np.any(bad := shifts[:, 0] * shifts[:, 0] + shifts[:, 1] * shifts[:, 1] > limit * limit):
            shifts[bad] = rngs["shifts"].normal(0.0, p.shift_sigma, (int(bad.sum()), 2))
    outlier = np.zeros(n, bool)
    outlier[rngs["outliers"].permutation(n)[:int(round(p.outlier_fraction * n))]] = True
    junk = {int(i): junk_particle(rngs["junk"]) for i in np.flatnonzero(outlier)}
    return rot, ctf, shifts / p.pixel_size, outlier, junk, rngs["noise"]


def _render(phantom, junk, idx, rot, shifts, ctf, p) -> np.ndarray:
    """Clean images of the images ``idx`` (junk ones from their own phantoms), float32, with
    the phantoms' own amplitudes."""
    out = np.empty((len(idx), p.box, p.box), np.float32)
    good = np.array([i not in junk for i in idx], bool)
    if good.any():
        out[good] = clean_images(phantom, rot[idx[good]], shifts[idx[good]],
                                 ctf.subset(idx[good]), p.box, p.pixel_size)
    for j in np.flatnonzero(~good):
        i = idx[j:j + 1]
        out[j] = clean_images(junk[int(i[0])], rot[i], shifts[i], ctf.subset(i),
                              p.box, p.pixel_size)[0]
    return out


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def simulate(params: SimulationParams, out_dir, progress: bool = True,
             chunk_size: int = 256) -> dict:
    """Simulate a dataset into ``out_dir`` (see the module docstring); returns the meta dict.

    The output is byte-identical for equal params whatever ``chunk_size``.
    """
    p, out = params, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)        # meta.json is written last: "complete"
    phantom = make_phantom(p.phantom, p.seed)
    rot, ctf, shifts, outlier, junk, noise_rng = _draw(p)
    mask = particle_mask(phantom, p.box, p.pixel_size)
    variance = lambda im: masked_variance(im, mask)  # noqa: E731  per image
    chunks = lambda idx: [idx[i:i + chunk_size] for i in range(0, len(idx), chunk_size)]  # noqa

    # The clean images are rendered once with the phantom's own amplitudes; the SNR calibration
    # (the first CALIBRATION_IMAGES non-outlier images) fixes the factor g, and each image is
    # then g × its render plus noise (g scales the amplitudes, and an image is linear in them).
    images = np.empty((p.n_images, p.box, p.box), np.float32)
    var0 = np.empty(p.n_images)
    for idx in tqdm(chunks(np.arange(p.n_images)), desc="simulate", disable=not progress):
        images[idx] = _render(phantom, junk, idx, rot, shifts, ctf, p)
        var0[idx] = variance(images[idx])
    cal = np.flatnonzero(~outlier)[:CALIBRATION_IMAGES]
    scale = math.sqrt(p.snr / (math.fsum(var0[cal]) / len(cal)))
    var = np.empty(p.n_images)
    for idx in chunks(np.arange(p.n_images)):
        clean = scaled(images[idx], scale)
        var[idx] = variance(clean)
        images[idx] = clean + noise_rng.standard_normal(clean.shape, dtype=np.float32)

    # seeded (refinement) phantoms also write the true poses into the STAR file; the others keep
    # the files they always had (their content hashes name committed results)
    star_poses = ((angles_from_rotations(rot), -shifts * p.pixel_size)
                  if p.phantom in SEEDED else None)
    write_particles(out / "particles.star", out / "particles.mrcs", images, ctf, p.pixel_size,
                    star_poses)
    del images
    truth = (band_limited_volume(phantom.scaled(scale), p.box, p.pixel_size)
             if p.phantom in SEEDED else phantom.scaled(scale).to_volume(p.box, p.pixel_size))
    write_volume(out / "ground_truth.mrc", truth, p.pixel_size)
    poses = pd.DataFrame(rot.reshape(-1, 9), columns=POSE_COLUMNS)
    poses.insert(0, "index", np.arange(p.n_images))
    poses["shift_x"], poses["shift_y"] = shifts[:, 0], shifts[:, 1]
    poses["is_outlier"] = outlier.astype(int)
    _write_text(out / "poses.csv", poses.to_csv(index=False))

    # these strings are recorded in the dataset (its content hash, so every cell id): keep them
    # as they are when modules move
    meta = {
        "format_version": FORMAT_VERSION, "generator": "cryobench.simulate",
        "phantom": p.phantom, "n_blobs": len(phantom), "params": p.to_dict(),
        "amplitude_scale": scale, "noise_sigma": 1.0, "snr": p.snr,
        "snr_measured": math.fsum(var[~outlier]) / int((~outlier).sum()),
        "snr_definition": SNR_DEFINITION,
        "snr_calibration_images": len(cal), "n_outliers": int(outlier.sum()),
        "particle_radius_px": min(phantom.radius / p.pixel_size, p.box / 2 - 1),
        "seeds": {"seed": p.seed, "streams": list(STREAMS),
                  "derivation": "numpy.random.SeedSequence(seed).spawn(6), one stream per purpose"
                                " in this order; noise drawn sequentially in image order"},
        "files": {"particles": "particles.star", "stack": "particles.mrcs",
                  "ground_truth": "ground_truth.mrc", "poses": "poses.csv"},
        "conventions": {"poses": "I(u) = ∫ V(R·(u, z)) dz; rows r00..r22 = R row-major",
                        "shift": "particle displaced by +(shift_x, shift_y) pixels",
                        "ctf": "RELION sign (cryobench.ctf)", "fourier": "cryobench.fourier"},
    }
    _write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def read_poses(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``poses.csv``: rotations (n, 3, 3), shifts (n, 2) in pixels, is_outlier (n,) bool."""
    df = pd.read_csv(path)
    rot = df[POSE_COLUMNS].to_numpy(float).reshape(-1, 3, 3)
    return rot, df[["shift_x", "shift_y"]].to_numpy(float), df["is_outlier"].to_numpy(bool)
