"""Image preprocessing for loaded stacks: the noise σ outside the particle, Fourier cropping."""
from __future__ import annotations

import numpy as np

from cryobench.errors import InputError
from cryobench.model.fourier import centered_dft2, centered_idft2


def estimate_noise_sigma(images: np.ndarray, radius_px: float, chunk: int = 1024) -> np.ndarray:
    """Per-image noise σ (float64, shape (n,)): the std of the pixels outside the circle of
    radius ``radius_px`` around the centre (D//2, D//2), i.e. outside the particle."""
    images = np.asarray(images)
    d = images.shape[-1]
    y, x = np.mgrid[:images.shape[-2], :d] - d // 2
    outside = (x**2 + y**2) > radius_px**2
    if outside.sum() < 50:
        raise InputError(f"noise estimate: only {outside.sum()} pixels lie outside radius "
                         f"{radius_px:g} in a {d}-pixel box (need ≥ 50); use a smaller radius")
    flat = images.reshape(-1, *images.shape[-2:])
    sigma = np.concatenate([flat[i:i + chunk][:, outside].astype(np.float64).std(axis=1, ddof=1)
                            for i in range(0, len(flat), chunk)])
    return sigma.reshape(images.shape[:-2])


def fourier_crop(images: np.ndarray, new_box: int, chunk: int = 256) -> np.ndarray:
    """Downsample images (…, D, D) to (…, new_box, new_box) float32 by cropping the centred
    spectrum, keeping the field of view; the new pixel size is ``pixel_size · D / new_box``.

    The unitary DFT is rescaled by new_box/D, so pixel values keep their meaning (a constant
    image stays the same constant; a band-limited image keeps its values at the new sampling).
    The Nyquist row/column of the result takes the Hermitian (real) part of the cropped one.
    """
    images = np.asarray(images)
    d = images.shape[-1]
    if images.shape[-2] != d or new_box % 2 or not 2 <= new_box <= d:
        raise ValueError(f"fourier_crop: need square images and an even new_box ≤ {d}, "
                         f"got images {images.shape} and new_box {new_box}")
    if new_box == d:
        return images.astype(np.float32, copy=True)
    flat = images.reshape(-1, d, d)
    out = np.empty((len(flat), new_box, new_box), dtype=np.float32)
    lo = d // 2 - new_box // 2
    for i in range(0, len(flat), chunk):
        spec = centered_dft2(flat[i:i + chunk].astype(np.float32))
        out[i:i + chunk] = centered_idft2(spec[:, lo:lo + new_box, lo:lo + new_box]) * (new_box / d)
    return out.reshape(images.shape[:-2] + (new_box, new_box))
