"""The paper's schedules (Brubaker & Punjani 2015, §4; Sutskever et al. 2013)."""
from __future__ import annotations

import math


def annealed_lr(eta0: float, t: int, decay: float = 1e-2) -> float:
    """η_t = η₀ (1 + λ t)^(−0.75), with λ = ``decay`` (paper: 10⁻²)."""
    return eta0 * (1.0 + decay * t) ** -0.75


def sutskever_momentum(t: int, mu_max: float = 0.9) -> float:
    """μ_t = min{μ_max, 1 − 2^(−1 − log₂(⌊t/100⌋ + 1))} (paper: μ_max = 0.9)."""
    return min(mu_max, 1.0 - 2.0 ** (-1.0 - math.log2(t // 100 + 1)))
