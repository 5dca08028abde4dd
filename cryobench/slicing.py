"""The slicing operator P_R (Fourier slice theorem) and its adjoint.

(P_R V)(k) = V̂(R (k₁, k₂, 0)ᵀ) for 2-D frequencies k: the spectrum of the projection of V along
R's third column. V̂ is first evaluated exactly on an oversampled low-frequency cube (spacing
1/oversampling, three DFT-matrix products, see :mod:`cryobench.fourier`), then interpolated
tricubically at the slice points. Both steps are linear and :meth:`SliceOperator.adjoint` is
their exact transpose.
"""
from __future__ import annotations

import numpy as np

from .fourier import complex_dtype, cube_frequencies, cube_to_volume_adjoint, volume_to_cube
from .interpolate import gather_cube, scatter_cube


class SliceOperator:
    """Central slices of V̂ at orientations ``rotations`` (n, 3, 3) and 2-D points (Np, 2)."""

    def __init__(self, box: int, points: np.ndarray, rotations: np.ndarray,
                 oversampling: int = 2, dtype=np.float32):
        self.box, self.dtype = int(box), np.dtype(dtype)
        self.points = np.asarray(points, float)
        kmax = float(np.sqrt((self.points**2).sum(1)).max(initial=0.0))
        self.freqs = cube_frequencies(kmax, oversampling)
        centre = (len(self.freqs) - 1) // 2
        rot = np.asarray(rotations, float)
        xi = (self.points[None, :, 0, None] * rot[:, None, :, 0]
              + self.points[None, :, 1, None] * rot[:, None, :, 1])        # (n, Np, xyz)
        self.shape = xi.shape[:2]
        self._coords = np.ascontiguousarray(
            (xi[..., ::-1] * oversampling + centre).reshape(-1, 3))        # cube index (z, y, x)

    def cube(self, volume: np.ndarray) -> np.ndarray:
        """V̂ on the oversampled low-frequency cube."""
        return volume_to_cube(np.asarray(volume, self.dtype), self.freqs)

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """P V: complex slices of shape (n_rotations, Np)."""
        cube = self.cube(volume)
        out = np.empty(len(self._coords), cube.dtype)
        return gather_cube(cube, self._coords, out).reshape(self.shape)

    def adjoint(self, slices: np.ndarray) -> np.ndarray:
        """Pᵀ G for the real variable V: pass G = ∂f/∂Re S + i ∂f/∂Im S to get ∂f/∂V."""
        n = len(self.freqs)
        cube = np.zeros((n, n, n), complex_dtype(self.dtype))
        values = np.ascontiguousarray(slices, cube.dtype).reshape(-1)
        scatter_cube(values, self._coords, cube)
        return cube_to_volume_adjoint(cube, self.freqs, self.box, self.dtype)
