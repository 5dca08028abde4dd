"""The contrast transfer function, RELION parameterisation and RELION sign convention.

Parameters per image (RELION STAR names): DefocusU, DefocusV (Å, positive = underfocus),
DefocusAngle (°, azimuth of the U axis), Voltage (kV), SphericalAberration Cs (mm),
AmplitudeContrast Q, PhaseShift φ (°), and an optional B-factor (Å²).

With spatial frequency s (1/Å) at azimuth α_s, λ = 12.2643 / √(V (1 + 0.978466e-6 V)) Å (V in
volts) and Δf(α_s) = ½(ΔU + ΔV) + ½(ΔU − ΔV) cos 2(α_s − α_ast):

    χ(s)  = −π λ Δf(α_s) s² + ½ π Cs λ³ s⁴ − φ − arctan(Q / √(1 − Q²))
    C(s)  = −sin χ(s) · exp(−B s² / 4)

This is RELION's ``CTF::getCTF`` exactly: C(0) = +Q and the first lobe is positive for
underfocus, so a positive density projects to a *white* particle. cryoDRGN and ASPIRE use the
opposite sign (their C = −C_RELION); multiply by −1 when comparing.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


def electron_wavelength(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength λ in Å for an accelerating voltage in kV."""
    v = np.asarray(voltage_kv, dtype=float) * 1e3
    return 12.2643 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


@dataclass(frozen=True)
class CTFParams:
    """Per-image CTF parameters as float64 arrays of one length (RELION units)."""

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray
    bfactor: np.ndarray

    def __post_init__(self):
        n = None
        for f in fields(self):
            arr = np.atleast_1d(np.asarray(getattr(self, f.name), dtype=float))
            n = len(arr) if n is None else n
            if len(arr) not in (1, n):
                raise ValueError(f"CTF field {f.name} has length {len(arr)}, expected {n}")
            object.__setattr__(self, f.name, arr)
        for f in fields(self):  # broadcast scalars to n
            object.__setattr__(self, f.name, np.broadcast_to(getattr(self, f.name), (n,)).copy())

    def __len__(self) -> int:
        return len(self.defocus_u)

    def subset(self, index) -> "CTFParams":
        """The parameters of the images selected by ``index``."""
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def as_matrix(self) -> np.ndarray:
        """(n, 8) float64: the columns in field order, for compiled kernels."""
        return np.stack([getattr(self, f.name) for f in fields(self)], axis=1)


def evaluate_ctf(params: CTFParams, freq_x, freq_y, angle_offset_deg=0.0) -> np.ndarray:
    """C_θ(s) for every image at frequencies (freq_x, freq_y) in 1/Å.

    The image axis is prepended to the broadcast shape of (freq_x, freq_y, angle_offset_deg).
    ``angle_offset_deg`` is added to DefocusAngle: the CTF of the image rotated in-plane by ψ,
    C(R(−ψ) s), is C(s) with DefocusAngle + ψ.
    """
    shape = np.broadcast_shapes(np.shape(freq_x), np.shape(freq_y), np.shape(angle_offset_deg))
    col = lambda a: np.asarray(a, float).reshape((-1,) + (1,) * len(shape))  # noqa: E731
    fx, fy = np.asarray(freq_x, float), np.asarray(freq_y, float)
    lam = col(electron_wavelength(params.voltage))
    s2 = fx**2 + fy**2
    ast = np.deg2rad(col(params.defocus_angle) + np.asarray(angle_offset_deg, float))
    mean = 0.5 * (col(params.defocus_u) + col(params.defocus_v))
    dev = 0.5 * (col(params.defocus_u) - col(params.defocus_v))
    defocus = mean + dev * np.cos(2.0 * (np.arctan2(fy, fx) - ast))
    q = col(params.amplitude_contrast)
    chi = (-np.pi * lam * defocus * s2 + 0.5 * np.pi * col(params.cs) * 1e7 * lam**3 * s2**2
           - np.deg2rad(col(params.phase_shift)) - np.arctan(q / np.sqrt(1.0 - q**2)))
    return -np.sin(chi) * np.exp(-col(params.bfactor) * s2 / 4.0)
