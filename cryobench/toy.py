"""A toy finite-sum problem behind the same counted-oracle interface, for conformance tests.

f_i(x) = ½ (x − b_i)ᵀ H (x − b_i) with H diagonal and condition number ``condition``; the
minimiser of the mean is x* = mean_i b_i. Lengths are of the order of a density's voxel values
(x* entries ~ ``scale``, start at x* + ``scale``), so step sizes declared in density units make
sense here too. Examples are served in a fixed per-epoch permutation
exactly like a task's training stream.

EM's weights (:meth:`~cryobench.oracle.CountedOracle.value_grad_weights`): here the "Fourier
basis" is the identity (``to_fourier`` and ``from_fourier`` return copies) and the weights are
the exact Hessian diagonal h of every f_B, and "back-projected data" B_B = h ⊙ mean_{i∈B} b_i,
so that ∇f_B = W x − B_B exactly (there are no latent poses, so ``hard`` changes nothing). So the methods built on the weights run on the toy too, where one batch-EM iteration
is an exact Newton step on the whole sum.
"""
from __future__ import annotations

import numpy as np

from cryobench.base.seeding import rng_for
from cryobench.oracle import CountedOracle, stream_slice


class QuadraticOracle(CountedOracle):
    """Counted oracle of an ill-conditioned least-squares problem with ``n`` examples."""

    def __init__(self, budget: int, dim: int = 50, n: int = 400, condition: float = 100.0,
                 noise: float = 0.1, scale: float = 0.05, seed: int = 0, dtype=np.float32):
        super().__init__(budget)
        rng = rng_for("toy-quadratic", seed)
        self.h = np.geomspace(1.0, 1.0 / condition, dim).astype(dtype)
        self.b = (scale * (rng.normal(size=dim) + noise * rng.normal(size=(n, dim)))).astype(dtype)
        self.x_star = self.b.mean(axis=0)
        self._seed, self._n, self._scale = seed, n, scale

    @property
    def n_train(self) -> int:
        return self._n

    @property
    def train_indices(self) -> np.ndarray:
        return np.arange(self._n)

    def _is_train(self, batch: np.ndarray) -> bool:
        return bool(batch.min() >= 0 and batch.max() < self._n)

    def _stream(self, position: int, size: int) -> np.ndarray:
        return stream_slice(position, size, self._n, self._epoch_order)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return rng_for("toy-stream", self._seed, epoch).permutation(self._n)

    def _evaluate(self, x, batch, gradient: bool):
        self._work(len(batch))
        r = x[None, :] - self.b[batch]
        value = float(0.5 * np.mean(np.sum(self.h * r * r, axis=1)))
        return value, (self.h * r.mean(axis=0)).astype(x.dtype) if gradient else None

    def _evaluate_weights(self, x, batch, hard: bool, exact_diagonal: bool):
        value, grad = self._evaluate(x, batch, gradient=True)
        back = (self.h * self.b[batch].mean(axis=0)).astype(x.dtype)
        return value, grad, self.h.astype(x.dtype), back

    def to_fourier(self, x: np.ndarray) -> np.ndarray:
        """The identity (a copy): the toy's weights h are diagonal in the standard basis."""
        return np.array(x)

    def from_fourier(self, coefficients: np.ndarray) -> np.ndarray:
        """The identity (a real copy in the problem's dtype)."""
        return np.array(np.real(coefficients), dtype=self.b.dtype)

    def initial_point(self) -> np.ndarray:
        """A fixed start away from x*."""
        return (self.x_star + self._scale).astype(self.b.dtype)

    def suboptimality(self, x: np.ndarray) -> float:
        """f(x) − f(x*) over the whole sum: ½ (x − x*)ᵀ H (x − x*)."""
        d = x - self.x_star
        return float(0.5 * np.sum(self.h * d * d))
