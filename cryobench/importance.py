"""The importance-sampled oracle: the counted oracle of a task, with each image's marginal over
poses estimated from sampled terms (:mod:`cryobench.model.importance`, after Punjani, Brubaker
& Fleet, CVPR 2015).

It counts images exactly as the exact oracle does (an evaluation is an evaluation) and tallies
the likelihood terms it computed in :attr:`terms`. Its answers are estimates:

    f̂_B(V) = |B|⁻¹ Σ_{i∈B} [ −log p̂(I_i | θ_i, V) − K⁻¹ log p(V) ]

with p̂ the importance-weighted sum over the image's sampled poses, and ∇f̂_B its exact
gradient (the self-normalised responsibilities). Gradient evaluations are the images' visits:
an image's first visit is exact, later ones are sampled from the proposal built from its
posterior at the previous visit; value and Hessian-vector evaluations reuse the last draw.
Scoring (test NLL, the training objective, FSC) never goes through an oracle and stays exact.
"""
from __future__ import annotations

import numpy as np

from cryobench.model.importance import (ImportanceSettings, PoseSampler, exact_triples,
                                        run_seed, sampled_nll)
from cryobench.model.weights import FourierGridding
from cryobench.oracle import Oracle, em_statistics, exact_flops


def sampled_flops(draw, n_points: int, gradient: bool) -> int:
    """Flops of the sampled pass (:func:`cryobench.model.sampled.sampled_terms`) for one image
    whose draw has na angles, ns shifts, nd directions, counted as 2 per multiply-add the way
    :meth:`Likelihood.flops_per_image` counts the exact kernel's products: G takes
    na·ns·nd·2Np (the cross terms) + na·nd·Np (the −½ Q|S|² terms) multiply-adds, and the
    gradient's accumulation of pa, pq as many again (an upper bound: it skips zero
    responsibilities). The rows' gather, the slices and the adjoint are not counted, as for
    the exact kernel."""
    na, ns, nd = (len(part[0]) for part in draw)
    macs = na * ns * nd * 2 * n_points + na * nd * n_points
    return 2 * macs * (2 if gradient else 1)


class ImportanceOracle(Oracle):
    """:class:`~cryobench.oracle.Oracle` with importance-sampled evaluations (module doc)."""

    def __init__(self, task, budget: int, stream: int, settings: ImportanceSettings,
                 optimizer: str = ""):
        super().__init__(task, budget, stream)
        lik = task.likelihood
        self.settings = settings
        self.sampler = PoseSampler(lik.quadrature, len(task.spectra), settings,
                                   run_seed(task.name, optimizer, int(stream)),
                                   lik.box / (4.0 * lik.rmax))
        self._visit = False

    def value_and_grad(self, x, batch):
        self._visit = True
        try:
            return super().value_and_grad(x, batch)
        finally:
            self._visit = False

    def value_grad_weights(self, x, batch, hard: bool = False, exact_diagonal: bool = False):
        self._visit = True
        try:
            return super().value_grad_weights(x, batch, hard, exact_diagonal)
        finally:
            self._visit = False

    def _pass(self, x, batch, gradient: bool, hard: bool = False):
        """(nll per image, Σ gradient, pq, pa) over the batch: exact images by the exact kernel,
        the others from their sampled terms; records the posteriors on a visit."""
        task, lik = self._task, self._task.likelihood
        self._start(x, batch, exact=False)
        visit = self._visit and gradient
        draws = self.sampler.draws(batch, visit)
        exact = np.array([d is None for d in draws])
        sampled = np.flatnonzero(~exact)
        per_image = lik.terms_per_image()
        self._terms += int(exact.sum()) * per_image + sum(
            len(d[0][0]) * len(d[1][0]) * len(d[2][0]) for d in draws if d is not None)
        self._add_flops(int(exact.sum()) * exact_flops(lik, gradient) + sum(
            sampled_flops(d, len(lik.points), gradient) for d in draws if d is not None))
        nll = np.empty(len(batch))
        pq = pa = None
        triples = [None] * len(batch)
        with self._kernel():
            slices = lik.slicer.forward(x)
            if exact.any():
                data = lik.subset(task.spectra, batch[exact])
                if not gradient:
                    nll[exact] = lik._evaluate(x, data, False, slices=slices)[0]
                else:
                    nll[exact], _, pq, pa, margins = lik.nll_grad_marginals(
                        x, data, hard, slices=slices, adjoint=False)
                    for j, t in zip(np.flatnonzero(exact), exact_triples(margins)):
                        triples[j] = t
            if len(sampled):
                data = lik.subset(task.spectra, batch[sampled])
                out, extra = sampled_nll(lik, x, data, [draws[j] for j in sampled], gradient,
                                         hard, slices=slices, adjoint=False)
                nll[sampled] = out
                if gradient:
                    _, q, a, tri = extra
                    pq, pa = (q, a) if pq is None else (pq + q, pa + a)
                    for j, t in zip(sampled, tri):
                        triples[j] = t
            grad = lik.slicer.adjoint(pq * slices - pa) if gradient else None
        if visit:
            self.sampler.record(batch, triples)
        return nll, grad, pq, pa

    def _evaluate(self, x, batch, gradient: bool):
        task, k = self._task, self._task.n_train
        nll, grad, _, _ = self._pass(x, batch, gradient)
        value = float(nll.mean() + task.prior.value(x) / k)
        if not gradient:
            return value, None
        grad = grad / len(batch) + task.prior.grad(x) / k
        return value, grad.astype(x.dtype, copy=False)

    def _evaluate_weights(self, x, batch, hard: bool, exact_diagonal: bool):
        """EM's statistics from the sampled terms: W and B gridded from the estimate's pq, pa
        (:meth:`cryobench.model.likelihood.Likelihood.nll_grad_weights`, whose W is its only
        diagonal: ``exact_diagonal`` changes nothing); with ``hard`` the one-hot pose is the
        best sampled one."""
        lik = self._task.likelihood
        nll, grad, pq, pa = self._pass(x, batch, True, hard)
        with self._kernel():
            gridding = lik.__dict__.get("_gridding")
            if gridding is None:
                gridding = lik._gridding = FourierGridding(lik.box, lik.points,
                                                           lik.quadrature.rotations)
            return em_statistics(self._task, x, nll, grad, gridding.weights(pq),
                                 gridding.backprojection(pa))
