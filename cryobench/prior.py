"""The sparsity prior of the paper (section 3), per voxel v:

    −log p(v) = λ₊ v          for v ≥ 0
    −log p(v) = λ₋ |v|^β      for v < 0       (β = 1 as printed in the paper)

The normalising constant is dropped (it does not depend on V).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prior:
    """Exponential prior on positive voxels and a generalised normal on negative ones."""

    lambda_pos: float
    lambda_neg: float
    beta: float = 1.0

    def __post_init__(self):
        if self.lambda_pos < 0 or self.lambda_neg < 0 or self.beta < 1:
            raise ValueError(f"prior needs λ₊, λ₋ ≥ 0 and β ≥ 1, got {self}")

    def value(self, volume: np.ndarray) -> float:
        """−log p(V) = Σ_v [λ₊ v (v ≥ 0); λ₋ |v|^β (v < 0)]."""
        v = np.asarray(volume, dtype=np.float64)
        pos = np.where(v >= 0, v, 0.0).sum()
        neg = (np.abs(np.where(v < 0, v, 0.0)) ** self.beta).sum()
        return float(self.lambda_pos * pos + self.lambda_neg * neg)

    def grad(self, volume: np.ndarray) -> np.ndarray:
        """∂(−log p)/∂V: λ₊ where v ≥ 0, −λ₋ β |v|^(β−1) where v < 0 (a subgradient at 0)."""
        v = np.asarray(volume)
        neg = -self.lambda_neg * self.beta * np.abs(v) ** (self.beta - 1.0)
        return np.where(v >= 0, self.lambda_pos, neg).astype(v.dtype)
