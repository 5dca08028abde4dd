"""The counted oracle: the only way an optimizer sees the objective.

The objective is the paper's eq. 6 divided by K (so step sizes do not depend on the data set
size); on a minibatch B of training images the oracle answers the unbiased estimate

    f_B(V) = |B|⁻¹ Σ_{i∈B} [ −log p(I_i | θ_i, V) − K⁻¹ log p(V) ]

and its gradient. Every per-image evaluation is counted here, not by the optimizer: a gradient
of one image's term is 1 ``grad``, a value-only evaluation is 1 ``value``, a Hessian-vector
product by directional finite difference is 1 ``hvp`` more. All three count against the budget
(in gradient evaluations); work that would pass it raises :class:`BudgetExhausted` before it
is done. The optimizer never sees test or validation images: it is handed :meth:`CountedOracle.view`.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import MappingProxyType

import numpy as np
from scipy import fft as sfft

from cryobench.errors import AccountingError, HarnessFault


class BudgetExhausted(RuntimeError):
    """The requested evaluations would exceed the oracle's budget."""


def stream_slice(start: int, size: int, n: int, epoch_order) -> np.ndarray:
    """Positions [start, start + size) of the stream epoch_order(0) ‖ epoch_order(1) ‖ …,
    where ``epoch_order(e)`` is the order of the n examples in epoch e."""
    pos = np.arange(start, start + size)
    out = np.empty(size, dtype=np.int64)
    for epoch in np.unique(pos // n):
        sel = pos // n == epoch
        out[sel] = epoch_order(int(epoch))[pos[sel] % n]
    return out


class CountedOracle:
    """Counting, budget and minibatch serving shared by every oracle; subclasses evaluate.

    A subclass provides ``n_train``, ``train_indices``, ``_stream(position, size)`` and
    ``_evaluate(x, batch, gradient) -> (mean value, mean gradient or None)``, which calls
    ``self._work(len(batch))`` for every minibatch it evaluates.

    The budget and the counts are read-only (``counts`` is a read-only mapping). Besides the
    counts the oracle keeps a second tally, of the images its ``_evaluate`` actually processed;
    :meth:`audit` checks the two agree, so evaluations obtained around the charging (or counts
    edited behind it) are detected. Optimizers get :meth:`view`, which has no path to the data.
    """

    def __init__(self, budget: int):
        if int(budget) <= 0:
            raise ValueError(f"budget must be a positive number of gradient evaluations, got {budget}")
        self.__budget = int(budget)
        self.__counts = {"grad": 0, "value": 0, "hvp": 0}
        self.__work = 0
        self.__position = 0

    @property
    def budget(self) -> int:
        """The budget in gradient evaluations (read-only)."""
        return self.__budget

    @property
    def counts(self) -> MappingProxyType:
        """Per-image evaluations so far by kind: ``grad``, ``value``, ``hvp`` (read-only)."""
        return MappingProxyType(dict(self.__counts))

    @property
    def position(self) -> int:
        """Position in the training stream of the next minibatch served."""
        return self.__position

    @property
    def evaluations(self) -> int:
        """Per-image evaluations so far, of every kind (the x-axis of the results)."""
        return sum(self.__counts.values())

    @property
    def remaining(self) -> int:
        return self.__budget - self.evaluations

    def next_batch(self, size: int) -> np.ndarray:
        """The next ``size`` examples of the shared training stream (serving is not counted)."""
        if int(size) != size or size < 1:
            raise ValueError(f"a minibatch size is a positive integer, got {size!r}")
        batch = self._stream(self.__position, int(size))
        self.__position += int(size)
        return batch

    def _work(self, n_images: int) -> None:
        """Tally ``n_images`` images evaluated (called by ``_evaluate``)."""
        self.__work += int(n_images)

    def audit(self) -> None:
        """Raise :class:`AccountingError` unless the counts equal the work done and fit the budget."""
        counted = self.evaluations
        if counted != self.__work or counted > self.__budget or min(self.__counts.values()) < 0:
            raise AccountingError(f"the oracle evaluated {self.__work:,} images but counts "
                                  f"{dict(self.__counts)} (budget {self.__budget:,}): the accounting "
                                  "was tampered with")

    def _charge(self, kind: str, batch) -> np.ndarray:
        batch = np.asarray(batch).reshape(-1)
        if len(batch) == 0:
            raise ValueError("empty minibatch")
        if not np.issubdtype(batch.dtype, np.integer):
            raise ValueError(f"a minibatch is an array of training image indices, got {batch.dtype}")
        batch = batch.astype(np.int64)
        if not self._is_train(batch):
            raise ValueError("the minibatch contains images that are not training images")
        if self.evaluations + len(batch) > self.__budget:
            raise BudgetExhausted(f"{kind} on {len(batch)} images would exceed the budget of "
                                  f"{self.__budget} evaluations ({self.evaluations} used)")
        self.__counts[kind] += len(batch)
        return batch

    def value_and_grad(self, x: np.ndarray, batch) -> tuple[float, np.ndarray]:
        """f_B(x) and ∇f_B(x); costs |B| gradient evaluations."""
        batch = self._charge("grad", batch)
        return self._evaluate(x, batch, gradient=True)

    def value_grad_weights(self, x: np.ndarray, batch, hard: bool = False,
                           exact_diagonal: bool = False):
        """(f_B(x), ∇f_B(x), W_B, B_B): EM's statistics with the gradient; costs |B| gradient
        evaluations (they come from the same kernel pass as the gradient).

        In the oracle's orthonormal Fourier basis (:meth:`to_fourier`): W_B (real, the iterate's
        dtype) is EM's "weights", the diagonal of the Gauss–Newton Hessian of f_B's data term
        (CTF²-weighted back-projection of the pose posterior, gridded: an approximation, see
        :mod:`cryobench.model.weights`); B_B (complex) the back-projected data (CTF × images)
        minus F(∇ of f_B's prior term), so that F(∇f_B) ≈ W_B F(x) − B_B and B_B / W_B is EM's
        M-step with the prior to first order; a prior of constant curvature (the Gaussian
        prior of refinement tasks) adds it to W_B and is then exact in B_B / W_B
        (:func:`em_statistics`). With ``hard`` the pose posterior is replaced by its most
        probable pose for ∇f_B, W_B and B_B (projection matching); the value stays f_B, the benchmark's
        objective. Oracles without latent poses ignore ``hard``. With ``exact_diagonal`` W_B
        is the exact diagonal of the data term's Hessian where the likelihood computes it (a
        refinement task: :mod:`cryobench.model.refinement`), which differs from EM's gridded
        weights there; an ab-initio task's W_B is its only diagonal and stays as it is.
        """
        if self._evaluate_weights is None:
            raise NotImplementedError(f"{type(self).__name__} does not provide EM weights")
        batch = self._charge("grad", batch)
        return self._evaluate_weights(x, batch, bool(hard), bool(exact_diagonal))

    _evaluate_weights = None  # subclasses: (x, batch, hard, exact_diagonal) -> (value, grad, W, B)

    def to_fourier(self, x: np.ndarray) -> np.ndarray:
        """x in the orthonormal basis the weights live in (not counted: no data involved)."""
        raise NotImplementedError(f"{type(self).__name__} has no Fourier basis")

    def from_fourier(self, coefficients: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_fourier`: an iterate (the oracle's dtype and shape)."""
        raise NotImplementedError(f"{type(self).__name__} has no Fourier basis")

    def value(self, x: np.ndarray, batch) -> float:
        """f_B(x); costs |B| value evaluations."""
        batch = self._charge("value", batch)
        return self._evaluate(x, batch, gradient=False)[0]

    def hvp(self, x: np.ndarray, v: np.ndarray, batch, grad: np.ndarray | None = None,
            eps: float | None = None) -> np.ndarray:
        """H_B(x) v ≈ (∇f_B(x + εv) − ∇f_B(x)) / ε; costs |B| hvp evaluations.

        Pass ``grad`` = ∇f_B(x) if it is already known; otherwise it is computed and charged as
        |B| more gradient evaluations. ε defaults to √(machine ε)·max(1, ‖x‖) / ‖v‖.
        """
        if grad is None:
            grad = self.value_and_grad(x, batch)[1]
        batch = self._charge("hvp", batch)
        vnorm = float(np.linalg.norm(v))
        if vnorm == 0:
            self._work(len(batch))                 # charged, and nothing needed evaluating
            return np.zeros_like(x)
        if eps is None:
            eps = np.sqrt(np.finfo(x.dtype).eps) * max(1.0, float(np.linalg.norm(x))) / vnorm
        g_eps = self._evaluate((x + eps * v).astype(x.dtype), batch, gradient=True)[1]
        return ((g_eps - grad) / eps).astype(x.dtype)

    def view(self) -> "OracleView":
        """What an optimizer is given: the public methods and read-only figures, nothing else."""
        return _view_of(self)


def em_statistics(task, x: np.ndarray, nll: np.ndarray, grad: np.ndarray, weights: np.ndarray,
                  back: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(f_B, ∇f_B, W_B, B_B) of :meth:`Oracle.value_grad_weights` from the likelihood's sums
    over a minibatch of n = len(nll) images (per-image −log p, Σ gradient, Σ W, Σ B): the
    means, with the prior p(V)^(1/K) folded in. Its gradient goes into ∇f_B and, to first order,
    into B_B; its constant curvature c (``task.prior.curvature``: α for the Gaussian prior of
    refinement tasks, 0 for the paper's) into W_B, with c F(x) added to B_B, so that
    F(∇f_B) = W_B F(x) − B_B still holds where the data term's Hessian is W_B, and B_B / W_B
    is the prior's MAP M-step (for the Gaussian prior B_B is the data's back-projection alone).
    Without the curvature, dividing by weights smaller than α/K makes EM's iteration
    V ← (B_data − (α/K) V) / W grow where the data are sparse."""
    k, n = task.n_train, len(nll)
    prior_grad = task.prior.grad(x) / k
    grad = grad / n + prior_grad
    back = back / n - sfft.rfftn(prior_grad.astype(np.float64), norm="ortho")
    weights = weights / n
    if c := task.prior.curvature / k:
        weights = weights + c
        back = back + c * sfft.rfftn(x.astype(np.float64), norm="ortho")
    cdtype = np.result_type(x.dtype, np.complex64)
    return (float(nll.mean() + task.prior.value(x) / k), grad.astype(x.dtype, copy=False),
            weights.astype(x.dtype), back.astype(cdtype))


class OracleView:
    """An optimizer's handle on a counted oracle: ``next_batch``, ``value_and_grad``, ``value``,
    ``hvp``, ``value_grad_weights`` with ``to_fourier`` / ``from_fourier``, and read-only ``budget``, ``counts``, ``evaluations``, ``remaining``, ``position``,
    ``n_train``, ``train_indices``. It has no attributes of its own (no path to the task's data,
    the test images or writable counters); see :meth:`CountedOracle.view`."""

    __slots__ = ()


def _view_of(oracle: CountedOracle) -> OracleView:
    """A fresh :class:`OracleView` class bound to ``oracle`` through closures."""
    def forward(name):
        def call(self, *args, **kwargs):
            return getattr(oracle, name)(*args, **kwargs)
        call.__name__, call.__doc__ = name, getattr(CountedOracle, name).__doc__
        return call

    def figure(name, copy=lambda v: v):
        return property(lambda self: copy(getattr(oracle, name)),
                        doc=getattr(type(oracle), name).__doc__)

    def readonly_indices(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    members = {n: forward(n) for n in ("next_batch", "value_and_grad", "value", "hvp",
                                       "value_grad_weights", "to_fourier", "from_fourier")}
    members.update({n: figure(n) for n in ("budget", "counts", "evaluations", "remaining",
                                           "position", "n_train")})
    members["train_indices"] = figure("train_indices", readonly_indices)
    members["__slots__"] = ()
    members["__repr__"] = lambda self: (f"<oracle view: {oracle.evaluations:,} of "
                                        f"{oracle.budget:,} evaluations used>")
    return type("OracleView", (OracleView,), members)()


def exact_flops(lik, gradient: bool) -> int:
    """Flops per image of the exact kernel's matrix products: value and gradient
    (:meth:`Likelihood.flops_per_image`), or the value's products alone (half of them: G's,
    :meth:`Likelihood.gemm_shapes`)."""
    full = int(lik.flops_per_image())
    return full if gradient else full // 2


class Oracle(CountedOracle):
    """Minibatches of a task's shared training stream and counted evaluations on them."""

    def __init__(self, task, budget: int, stream: int = 0):
        super().__init__(budget)
        self._task, self.stream = task, int(stream)
        self._terms = 0
        lik = task.likelihood
        self._flops = 0 if callable(getattr(lik, "flops_per_image", None)) else None
        self._train_mask = np.zeros(len(task.spectra), bool)
        self._train_mask[task.splits["train"]] = True

    @property
    def n_train(self) -> int:
        """K, the number of training images (the size of one epoch)."""
        return self._task.n_train

    @property
    def train_indices(self) -> np.ndarray:
        """All training image indices (for finite-sum methods that sweep the data)."""
        return self._task.splits["train"]

    def _stream(self, position: int, size: int) -> np.ndarray:
        return self._task.stream(position, size, self.stream)

    def _is_train(self, batch: np.ndarray) -> bool:
        return bool(batch.min() >= 0 and batch.max() < len(self._train_mask)
                    and self._train_mask[batch].all())

    @property
    def terms(self) -> int:
        """Likelihood terms G_iasd computed so far (an exact evaluation: the quadrature's size
        per image), over every kind of evaluation."""
        return self._terms

    @property
    def flops(self) -> int | None:
        """Flops of the likelihood's matrix products (or the sampled pass's multiply-adds) so
        far: an exact value and gradient costs :meth:`Likelihood.flops_per_image` per image, a
        value alone half of it (G without the gradient's products). Only those products are
        counted, not the slicing, the rows' gather or the adjoint. None for a likelihood that
        does not count its flops (the known-pose refinement task)."""
        return self._flops

    def _add_flops(self, n: int) -> None:
        """Tally ``n`` flops (nothing when this oracle's likelihood does not count them)."""
        if self._flops is not None:
            self._flops += int(n)

    def _start(self, x, batch, exact: bool = True, gradient: bool = True):
        """Refuse an iterate that is not a density of the task's shape; tally the batch's work
        (and, for an exact evaluation, its terms and flops)."""
        shape = self._task.init.shape
        if not isinstance(x, np.ndarray) or x.shape != shape:
            raise ValueError(f"the oracle evaluates densities of shape {shape}, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        self._work(len(batch))
        if exact:
            self._terms += len(batch) * self._task.likelihood.terms_per_image()
            if self._flops is not None:
                self._add_flops(len(batch) * exact_flops(self._task.likelihood, gradient))

    @contextmanager
    def _kernel(self):
        """A valid request the kernel could not answer is our fault (:class:`HarnessFault`);
        memory runs out as itself."""
        try:
            yield
        except MemoryError:
            raise
        except Exception as exc:
            raise HarnessFault(f"the likelihood failed on a valid request: {type(exc).__name__}: "
                               f"{exc}") from exc

    def _evaluate(self, x, batch, gradient: bool):
        task = self._task
        self._start(x, batch, gradient=gradient)
        with self._kernel():
            data = task.likelihood.subset(task.spectra, batch)
            k = task.n_train
            if not gradient:
                return float(task.likelihood.nll(x, data).mean() + task.prior.value(x) / k), None
            nll, grad = task.likelihood.nll_and_grad(x, data)
            grad = grad / len(batch) + task.prior.grad(x) / k
        return float(nll.mean() + task.prior.value(x) / k), grad.astype(x.dtype, copy=False)

    def _evaluate_weights(self, x, batch, hard: bool, exact_diagonal: bool):
        task = self._task
        self._start(x, batch)
        with self._kernel():
            data = task.likelihood.subset(task.spectra, batch)
            return em_statistics(task, x, *task.likelihood.nll_grad_weights(
                x, data, hard=hard, exact_diagonal=exact_diagonal))

    def to_fourier(self, x: np.ndarray) -> np.ndarray:
        """``scipy.fft.rfftn(x, norm="ortho")``: the basis of :mod:`cryobench.model.weights`
        (the volume's integer DFT grid, rfft half grid [kz, ky, kx], FFT order)."""
        return sfft.rfftn(x, norm="ortho")

    def from_fourier(self, coefficients: np.ndarray) -> np.ndarray:
        """``scipy.fft.irfftn(·, norm="ortho")`` back to a density of the task's shape and dtype."""
        shape, dtype = self._task.init.shape, self._task.init.dtype
        return sfft.irfftn(coefficients, s=shape, norm="ortho").astype(dtype, copy=False)
