"""The slicing operator P_R (Fourier slice theorem) and its adjoint.

(P_R V)(k) = V̂(R (k₁, k₂, 0)ᵀ) for 2-D frequencies k: the spectrum of the projection of V along
R's third column. V̂ is first evaluated exactly on an oversampled low-frequency cube (spacing
1/oversampling, three DFT-matrix products, see :mod:`cryobench.model.fourier`), then interpolated
tricubically at the slice points. Both steps are linear and :meth:`SliceOperator.adjoint` is
their exact transpose.
"""
from __future__ import annotations

import numpy as np

from cryobench.model.fourier import HalfCubeDFT, complex_dtype, cube_frequencies, volume_to_cube
from cryobench.model.interpolate import cubic_taps, gather_half_cube, scatter_half_cube

MARGIN = 1           # cube samples kept below ξx = 0 (the cubic stencil reaches one)
SCATTER_PARTS = 4    # fixed split of the adjoint's scatter (determinism, see scatter_half_cube)


class SliceOperator:
    """Central slices of V̂ at orientations ``rotations`` (n, 3, 3) and 2-D points (Np, 2)."""

    def __init__(self, box: int, points: np.ndarray, rotations: np.ndarray,
                 oversampling: int = 2, dtype=np.float32):
        self.box, self.dtype = int(box), np.dtype(dtype)
        self.points = np.asarray(points, float)
        kmax = float(np.sqrt((self.points**2).sum(1)).max(initial=0.0))
        self.freqs = cube_frequencies(kmax, oversampling)
        # the samples the stencils reach: |index| ≤ ⌊os·kmax⌋ + 2 per axis, ≥ −1 along x
        m = int(np.floor(oversampling * kmax)) + 2
        grid = np.arange(-m, m + 1) / oversampling
        rot = np.asarray(rotations, float)
        xi = (self.points[None, :, 0, None] * rot[:, None, :, 0]
              + self.points[None, :, 1, None] * rot[:, None, :, 1])        # (n, Np, xyz)
        self.shape = xi.shape[:2]
        flip = xi[..., 0] < 0                                               # read at −ξ, conj
        xi = np.where(flip[..., None], -xi, xi)
        coords = np.stack([xi[..., 1] * oversampling + m, xi[..., 2] * oversampling + m,
                           xi[..., 0] * oversampling + MARGIN], axis=-1)    # half cube [y, z, x]
        self._base, self._weights = cubic_taps(coords.reshape(-1, 3), self.dtype)
        self._flip = np.ascontiguousarray(flip.reshape(-1))
        self._dft = HalfCubeDFT(box, grid, MARGIN, dtype)
        if len(self._base) and (self._base.min() < 0 or np.any(
                self._base.max(0) + 4 > np.array(self._dft.shape))):
            raise AssertionError("slice stencils leave the half cube")

    def cube(self, volume: np.ndarray) -> np.ndarray:
        """V̂ on the (whole) oversampled low-frequency cube."""
        return volume_to_cube(np.asarray(volume, self.dtype), self.freqs)

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """P V: complex slices of shape (n_rotations, Np)."""
        half = self._dft.forward(volume)
        out = np.empty(len(self._base), half.dtype)
        gather_half_cube(half.view(self.dtype), self._base, self._weights, self._flip, out)
        return out.reshape(self.shape)

    def adjoint(self, slices: np.ndarray) -> np.ndarray:
        """Pᵀ G for the real variable V: pass G = ∂f/∂Re S + i ∂f/∂Im S to get ∂f/∂V."""
        n0, n1, n2 = self._dft.shape
        parts = np.zeros((SCATTER_PARTS, n0, n1, 2 * n2), self.dtype)
        values = np.ascontiguousarray(slices, complex_dtype(self.dtype)).reshape(-1)
        cube = scatter_half_cube(values, self._base, self._weights, self._flip, parts)
        return self._dft.adjoint(cube.view(complex_dtype(self.dtype)))
