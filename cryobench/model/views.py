"""Views of a density: its band-limited version and its projections along the axes."""
from __future__ import annotations

import numpy as np


def lowpass(volume: np.ndarray, rmax: float) -> np.ndarray:
    """V with every Fourier coefficient beyond |k| = r_max (cycles per box) set to zero: the
    ground truth as the likelihood can see it, for views beside the estimates."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n) * n
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, : n // 2 + 1] ** 2
    spectrum = np.fft.rfftn(np.asarray(volume, np.float64))
    return np.fft.irfftn(np.where(k2 <= rmax**2, spectrum, 0), s=volume.shape, axes=(0, 1, 2))


def projections(volume: np.ndarray) -> np.ndarray:
    """Sums of V[z, y, x] along z, y and x: a (3, D, D) float32 array of views."""
    v = np.asarray(volume, np.float64)
    return np.stack([v.sum(axis=0), v.sum(axis=1), v.sum(axis=2)]).astype(np.float32)
