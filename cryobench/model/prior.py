"""The sparsity prior of the paper (section 3), per voxel v:

    −log p(v) = λ₊ v          for v ≥ 0
    −log p(v) = λ₋ |v|^β      for v < 0       (β = 1 as printed in the paper)

The normalising constant is dropped (it does not depend on V). For β = 1 value and gradient
are single compiled passes over the voxels (a vectorised float64 sum in a fixed order:
deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from cryobench.base import threads  # noqa: F401  (thread pools' wait policy before numba starts)


@nb.njit(cache=True, fastmath={"nnan", "ninf", "nsz"})  # no 'reassoc': see kernels.py
def _value_beta1(v, lambda_pos, lambda_neg):
    pos = neg = 0.0
    for k in range(v.shape[0]):
        x = float(v[k])
        pos += max(x, 0.0)
        neg += max(-x, 0.0)
    return lambda_pos * pos + lambda_neg * neg


@nb.njit(cache=True)
def _grad_beta1(v, lambda_pos, lambda_neg, out):
    for k in range(v.shape[0]):
        out[k] = lambda_pos if v[k] >= 0 else -lambda_neg
    return out


@dataclass(frozen=True)
class Prior:
    """Exponential prior on positive voxels and a generalised normal on negative ones."""

    lambda_pos: float
    lambda_neg: float
    beta: float = 1.0

    def __post_init__(self):
        if self.lambda_pos < 0 or self.lambda_neg < 0 or self.beta < 1:
            raise ValueError(f"prior needs λ₊, λ₋ ≥ 0 and β ≥ 1, got {self}")

    @property
    def curvature(self) -> float:
        """The constant second derivative EM's weights take from the prior: 0 (for β = 1 it
        is 0 away from v = 0; for β > 1 it is not constant, and it is left out)."""
        return 0.0

    def value(self, volume: np.ndarray) -> float:
        """−log p(V) = Σ_v [λ₊ v (v ≥ 0); λ₋ |v|^β (v < 0)]."""
        if self.beta == 1.0 and np.asarray(volume).dtype in (np.float32, np.float64):
            v = np.ascontiguousarray(volume).reshape(-1)
            return float(_value_beta1(v, float(self.lambda_pos), float(self.lambda_neg)))
        v = np.asarray(volume, dtype=np.float64)
        pos = np.where(v >= 0, v, 0.0).sum()
        neg = (np.abs(np.where(v < 0, v, 0.0)) ** self.beta).sum()
        return float(self.lambda_pos * pos + self.lambda_neg * neg)

    def grad(self, volume: np.ndarray) -> np.ndarray:
        """∂(−log p)/∂V: λ₊ where v ≥ 0, −λ₋ β |v|^(β−1) where v < 0 (a subgradient at 0)."""
        v = np.asarray(volume)
        if self.beta == 1.0 and v.dtype in (np.float32, np.float64):
            flat = np.ascontiguousarray(v).reshape(-1)
            out = _grad_beta1(flat, float(self.lambda_pos), float(self.lambda_neg),
                              np.empty(flat.shape, v.dtype))
            return out.reshape(v.shape)
        neg = -self.lambda_neg * self.beta * np.abs(v) ** (self.beta - 1.0)
        return np.where(v >= 0, self.lambda_pos, neg).astype(v.dtype)


@dataclass(frozen=True)
class GaussianPrior:
    """The Gaussian (Tikhonov) prior of refinement tasks: −log p(V) = ½ α ‖V‖² over the voxels
    (Toader, Brubaker & Lederman 2025, their "alpha"; constant dropped). In the oracle's
    orthonormal Fourier basis it adds α to every diagonal entry of the Hessian."""

    alpha: float

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"the Gaussian prior needs α > 0, got {self.alpha}")

    @property
    def curvature(self) -> float:
        """α: the Hessian of ½ α ‖V‖², α I in any orthonormal basis."""
        return float(self.alpha)

    def value(self, volume: np.ndarray) -> float:
        """½ α Σ_v v² (float64)."""
        v = np.asarray(volume, np.float64).reshape(-1)
        return float(0.5 * self.alpha * (v * v).sum())

    def grad(self, volume: np.ndarray) -> np.ndarray:
        """α V."""
        v = np.asarray(volume)
        return (self.alpha * v).astype(v.dtype)
