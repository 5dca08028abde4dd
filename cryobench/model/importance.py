"""Importance sampling over poses, after Punjani, Brubaker & Fleet, "Building Proteins in a Day:
Efficient 3D Molecular Structure Estimation with Electron Cryomicroscopy" (CVPR 2015; TPAMI
2017) and their code (github.com/mbrubake/cryoem-cvpr2015, ``importancesampler/``).

Per image i the sampler keeps the posterior marginals of its last evaluation over the three
factors of the quadrature — directions d, in-plane angles a, shifts s — and at the next visit
draws, factor by factor x ∈ {d, a, s}:

* the proposal q_x = (1 − u) K_x π_x / Σ + u / N_x: the stored marginal π_x smoothed by a
  kernel K_x and mixed with the uniform distribution (the code's ``FixedImportanceSampler.sample``,
  ``is_prior_prob`` = u; its floor 0.05 is our default). K_x is the code's
  ``evaluate_kernel``: a von Mises–Fisher kernel exp(κ (cos θ − 1)) over directions (on the
  sphere, dim 2) and in-plane angles (on the circle, dim 1), κ = log(2^dim) / (1 − cos r) with
  r the grid's spacing (``fisher.py``, ``is_fisher_pscale`` = 1), and a Gaussian over shifts of
  σ = 0.67 × the lattice spacing (``gaussian.py``, ``is_gaussian_sigmascale_S`` = 0.67);
* the sample size N = min(⌈ν · ESS(q_x)⌉, N_x) with ESS = 1 / Σ q² (``is_ess_scale`` = ν = 10);
  the factor is evaluated in full unless min(ESS, N) / N_x < 0.95 (the code samples only when
  that saves at least 5 %);
* counts c ~ Multinomial(N, q_x), the distinct drawn points and their importance weights
  ω = c / (q N) (the code's ``samplecount[samples] / (probs[samples] * num_samples)``).

The terms computed are the product set of the three draws (the code's evaluation over the
sampled directions × in-plane angles × shifts, ``objectives/likelihood.py``), see
:mod:`cryobench.model.sampled`. The stored marginal of a sampled factor is the posterior mass
of each drawn point divided by its ω, normalised (the code's ``record_update``), optionally
tempered (``is_temperature``: T₀ = 1, or the schedule's). An image never seen before is
evaluated exactly (the code's ``get_image_priorprob`` = 1 for an unseen image: a uniform
proposal, which it then evaluates in full).

Annealing (``anneal`` = A > 0; :func:`schedule`): the code's schedule
(``exp/shared/importance_sampler.params``): ``is_prior_prob`` = max(0.05, 2^(−0.005 k)) and
``is_temperature`` = max(1, 2^(750 / k)), k = the optimizer's ``iteration`` − 50 (the first
50 iterations are uniform, un-sampled). Ours (guesses): the clock is the image's own visits
(k = earlier visits of the image), rescaled so that u reaches its floor at k = A instead of
k ≈ 864; the code reads u from the parameters stored with the image's previous update
(``get_image_priorprob``), we from the visit count at the draw. Ours, not the code's: no
global direction distribution mixed into the prior part (``is_global_prob_R`` = 0.9; we have no
global distribution). An image whose draw would compute more than ``exact_above`` of the exact
terms is evaluated exactly instead (the exact kernel's matrix products compute all terms
faster than the sampled pass computes a large fraction of them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from cryobench.base.seeding import derive_seed
from cryobench.errors import InputError
from cryobench.model.kernels import ctf_terms
from cryobench.model.sampled import PARTS, sampled_terms

KINDS = ("exact", "importance")
FULL_IF_SAVING_BELOW = 0.05          # the code: sample only if it saves at least 5 %
STORE_BELOW = 1e-4                   # ours: posterior mass below this / N is not kept (it moves
                                     # the proposal by < 1e-4 / u of the uniform floor u / N)


@dataclass(frozen=True)
class ImportanceSettings:
    """The importance sampler's parameters (see the module doc for their sources)."""

    uniform: float = 0.05            # u: the uniform share of each proposal (is_prior_prob)
    ess_scale: float = 10.0          # ν: samples = ν × ESS (is_ess_scale)
    temperature: float = 1.0         # stored log-posterior divided by this (is_temperature)
    exact_above: float = 0.25        # a draw computing more of the terms is evaluated exactly
    anneal: float = 2.0              # A: visits over which u anneals from 1 to ``uniform`` and
                                     # the temperature from 2^(0.868 A) to ``temperature``; 0 off
                                     # (ours: 2 had the best cost/accuracy measured at small
                                     # scale, docs/importance-sampling.md)

    RULES = {"uniform": (0.0, 1.0, "in (0, 1]"), "ess_scale": (0.0, None, "> 0"),
             "temperature": (0.0, None, "> 0"), "exact_above": (0.0, 1.0, "in (0, 1]"),
             "anneal": (-np.finfo(float).tiny, None, ">= 0")}

    def to_dict(self) -> dict:
        return {"kind": "importance", **asdict(self)}


def oracle_settings(value, where: str = "--oracle") -> ImportanceSettings | None:
    """The oracle a run asks for: None for the exact oracle, else :class:`ImportanceSettings`.

    ``value``: None, ``"exact"``, ``"importance"``, ``"importance:ess_scale=5,uniform=0.1"``, or
    the dict of :meth:`ImportanceSettings.to_dict`. Anything else is one :class:`InputError`
    line naming ``where``, the part and what it must be.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        params = dict(value)
        kind = params.pop("kind", None)
    elif isinstance(value, str):
        kind, _, rest = value.partition(":")
        params = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, text = item.partition("=")
            try:
                params[key.strip()] = float(text) if eq else None
            except ValueError:
                raise InputError(f"{where}: {key.strip()} = {text!r} is not a number") from None
    else:
        raise InputError(f"{where}: an oracle is a name (exact, importance), not {value!r}")
    if kind not in KINDS:
        raise InputError(f"{where}: unknown oracle {kind!r}; known: {', '.join(KINDS)} "
                         f"(e.g. importance:ess_scale=10,uniform=0.05)")
    if kind == "exact":
        if params:
            raise InputError(f"{where}: the exact oracle has no parameters, got "
                             f"{', '.join(sorted(params))}")
        return None
    for key, v in params.items():
        if key not in ImportanceSettings.RULES:
            raise InputError(f"{where}: the importance oracle has no parameter {key!r}; known: "
                             f"{', '.join(ImportanceSettings.RULES)}")
        low, high, must = ImportanceSettings.RULES[key]
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)
                or v <= low or (high is not None and v > high)):
            raise InputError(f"{where}: importance {key} = {v!r}: must be a number {must}")
    return ImportanceSettings(**{k: float(v) for k, v in params.items()})


def oracle_label(settings: ImportanceSettings) -> str:
    """``IS`` and the settings that differ from the defaults (``IS ess_scale=5``): the part of
    a run's label that keeps reports from averaging it with exact-oracle runs."""
    default = ImportanceSettings()
    return " ".join(["IS"] + [f"{k}={v:g}" for k, v in asdict(settings).items()
                              if v != getattr(default, k)])


# The code's schedule (exp/shared/importance_sampler.params), k = iteration − 50:
#   is_prior_prob  = max(0.05, 2^(−0.005 k))   reaches 0.05 at k = log2(20) / 0.005 ≈ 864
#   is_temperature = max(1, 2^(750 / k))        reaches 1 at k = 750 = 0.868 × 864
CODE_U_HORIZON = np.log2(20.0) / 0.005
CODE_T_RATIO = 750.0 / CODE_U_HORIZON


def schedule(settings: ImportanceSettings, k) -> tuple[np.ndarray, np.ndarray]:
    """(u, T) after k ≥ 0 earlier visits of an image, the code's schedule with its clock
    (iterations − 50, horizon 864) rescaled so that u reaches ``uniform`` at k = A = ``anneal``:

        u(k) = max(u₀, u₀^(k / A)),   T(k) = max(T₀, 2^(0.868 A / k))   (T(0) = ∞)

    with u₀ = ``uniform``, T₀ = ``temperature`` (the code: u₀ = 0.05, T₀ = 1, 20^(−k/864) =
    2^(−0.005 k)). Without annealing (A = 0), (u₀, T₀) at every k. Our clock is the image's
    visits, not the optimizer's iterations (a guess: the stored posterior of an image changes only
    when it is visited, and visits per image do not depend on the batch size or the data size)."""
    k = np.asarray(k, float)
    u0, t0, a = settings.uniform, settings.temperature, settings.anneal
    if a <= 0:
        return np.full(k.shape, u0), np.full(k.shape, t0)
    u = np.maximum(u0, u0 ** (k / a))
    with np.errstate(divide="ignore", over="ignore"):
        t = np.maximum(t0, np.exp2(CODE_T_RATIO * a / k))
    return u, t


def fisher_kernel(points: np.ndarray, dim: int, cutoff: float = 1e-12) -> sparse.csr_matrix:
    """exp(κ (x·y − 1)) between unit vectors (n, k), κ = log 2^dim / (1 − cos r), r the median
    angle to the nearest neighbour; entries below ``cutoff`` dropped (the code's sparse Fisher)."""
    tree = cKDTree(points)
    near = tree.query(points, k=2)[0][:, 1]
    spacing = float(np.median(2 * np.arcsin(np.clip(near / 2, 0, 1))))
    kappa = np.log(2.0**dim) / (1 - np.cos(spacing))
    chord = np.sqrt(2 * min(2.0, -np.log(cutoff) / kappa))
    pairs = tree.query_pairs(chord, output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(points))])
    j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(points))])
    v = np.exp(kappa * ((points[i] * points[j]).sum(1) - 1))
    return sparse.csr_matrix((v, (i, j)), shape=(len(points),) * 2)


def draw_factor(rng: np.random.Generator, q: np.ndarray, ess_scale: float,
                num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(drawn points, log ω) of one factor with proposal q: N = min(⌈ν ESS⌉, n) draws (or
    ``num``), counts c ~ Multinomial(N, q), ω = c / (q N); every point with ω = 1 when sampling
    would save less than 5 % (the code's ``FixedImportanceSampler.sample``)."""
    n = len(q)
    ess = 1.0 / float(q @ q)
    if num is None:
        num = int(min(np.ceil(ess_scale * ess), n))
        if min(ess, num) / n >= 1 - FULL_IF_SAVING_BELOW:
            return np.arange(n), np.zeros(n)
    counts = rng.multinomial(num, q)
    idx = np.flatnonzero(counts)
    return idx, np.log(counts[idx] / (q[idx] * num))


class PoseSampler:
    """Per-image proposals over the factored quadrature, their draws and the stored posteriors.

    ``seed``: the run's named seed (task, optimizer, seed index); the draw of image i at its
    v-th visit uses the stream (seed, i, v). Only gradient evaluations are visits: they draw
    anew and record the posterior; value and Hessian-vector evaluations reuse the image's last
    draw (exact if it has none), so a line search or a finite difference sees one estimate.
    """

    def __init__(self, quadrature, n_images: int, settings: ImportanceSettings, seed: int,
                 shift_spacing: float):
        self.settings, self.seed = settings, int(seed)
        q = quadrature
        psi = q.inplane_angles
        self.sizes = (len(psi), len(q.shifts), len(q.directions))      # (Na, Ns, Nd)
        self.log_w = (np.full(len(psi), -np.log(len(psi))), np.log(q.shift_weights),
                      np.log(q.direction_weights))
        circle = np.stack([np.cos(psi), np.sin(psi)], axis=1)
        d2 = ((q.shifts[:, None] - q.shifts[None]) ** 2).sum(-1)
        kernels = (fisher_kernel(circle, 1).toarray() if len(psi) > 1 else np.ones((1, 1)),
                   np.exp(-0.5 * d2 / (0.67 * shift_spacing) ** 2),
                   fisher_kernel(q.directions, 2).toarray())
        self.kernels = tuple(k.astype(np.float32) for k in kernels)
        self.posterior = [np.zeros((n_images, n), np.float32) for n in self.sizes]
        self.seen = np.zeros(n_images, bool)
        self.visits = np.zeros(n_images, np.int64)
        self.last: dict = {}

    def draws(self, images: np.ndarray, visit: bool, replicate: int | None = None) -> list:
        """Per image: None (evaluate exactly) or ((idx, log w ω, log ω) for angles, shifts,
        directions). ``replicate`` r (measurements only): the draws the next visit could make,
        from the stream (seed, i, next visit, r + 1), without changing any state."""
        images = np.asarray(images, np.int64)
        if not visit and replicate is None:
            return [self.last.get(int(i)) for i in images]
        seen = np.flatnonzero(self.seen[images])
        proposals = [self.proposals(f, images[seen]) for f in range(3)]
        out = [None] * len(images)
        for k, j in enumerate(seen):
            i = int(images[j])
            visit_no = int(self.visits[i]) + 1
            out[j] = self._draw(i, visit_no, [q[k] for q in proposals],
                                0 if replicate is None else replicate + 1)
        if replicate is None:
            self.visits[images] += 1
            self.last.update(zip(images.tolist(), out))
        return out

    def _draw(self, i: int, visit: int, proposals, replicate: int = 0):
        key = [self.seed, i, visit] + ([replicate] if replicate else [])
        rng = np.random.default_rng(key)
        parts, total, full = [], 1, 0
        for n, q, log_w in zip(self.sizes, proposals, self.log_w):
            idx, log_omega = draw_factor(rng, q, self.settings.ess_scale)
            full += len(idx) == n and not log_omega.any()
            parts.append((idx, log_w[idx] + log_omega, log_omega))
            total *= len(idx)
        if full == 3 or total > self.settings.exact_above * np.prod(self.sizes):
            return None
        return tuple(parts)

    def proposals(self, factor: int, images: np.ndarray) -> np.ndarray:
        """q = (1 − u) K π / Σ + u / N of factor 0 (angles), 1 (shifts) or 2 (directions) for
        each of ``images`` (rows): one matrix product with the (symmetric) kernel."""
        n = self.sizes[factor]
        u = schedule(self.settings, self.visits[images])[0][:, None]
        kernel = self.kernels[factor]
        smooth = np.maximum(self.posterior[factor][images] @ kernel, 0.0)
        smooth = smooth.astype(float)
        total = smooth.sum(axis=1, keepdims=True)
        q = u / n + (1 - u) * np.divide(smooth, total, out=np.full_like(smooth, 1.0 / n),
                                        where=total > 0)
        return q / q.sum(axis=1, keepdims=True)

    def record(self, images, marginals: list) -> None:
        """Store each image's posterior marginals: per image a triple of (idx, mass / ω) over
        angles, shifts, directions (the code's ``record_update``), tempered by T(visits) of
        :func:`schedule` (the code's ``is_temperature`` at the update) and normalised."""
        for i, triple in zip(images, marginals):
            i = int(i)
            t = float(schedule(self.settings, self.visits[i])[1])
            self.seen[i] = True
            for f, (idx, values) in enumerate(triple):
                row = self.posterior[f][i]
                row[:] = 0.0
                v = np.maximum(np.asarray(values, float), 0.0)
                if not np.isfinite(t):
                    v = (v > 0).astype(float)
                elif t != 1.0:
                    v = v ** (1.0 / t)
                if v.sum() > 0:
                    v = v / v.sum()
                    keep = v >= STORE_BELOW / len(row)
                    row[idx[keep]] = v[keep]


def _csr(parts):
    """(ptr, idx, log weights) of per-image index sets."""
    ptr = np.zeros(len(parts) + 1, np.int64)
    ptr[1:] = np.cumsum([len(p[0]) for p in parts])
    idx = np.concatenate([p[0] for p in parts]).astype(np.int64)
    lw = np.concatenate([p[1] for p in parts]).astype(float)
    return ptr, idx, lw


def sampled_nll(lik, volume: np.ndarray, data, draws: list, gradient: bool, hard: bool = False,
                slices: np.ndarray | None = None, adjoint: bool = True):
    """The importance-sampled −log p̂_i of each image of ``data`` under its draw, and with
    ``gradient`` (∂/∂V of their sum, pq, pa, per-image posterior triples for
    :meth:`PoseSampler.record`); pq, pa as :meth:`Likelihood.nll_grad_marginals` gives them.
    ``slices``: P V if already computed; without ``adjoint`` the gradient is None."""
    if slices is None:
        slices = lik.slicer.forward(volume)
    s_mat = np.ascontiguousarray(slices.view(lik.dtype))
    spow = np.ascontiguousarray(-0.5 * (slices.real**2 + slices.imag**2), lik.dtype)
    re = np.ascontiguousarray(data.patches.real, lik.dtype)
    im = np.ascontiguousarray(data.patches.imag, lik.dtype)
    csr = [_csr([d[f] for d in draws]) for f in range(3)]
    na, ns, nd = lik._log_w.shape
    np2 = s_mat.shape[1]
    pa = np.zeros((PARTS, nd, np2) if gradient else (PARTS, 1, 1), lik.dtype)
    pq = np.zeros((PARTS, nd, np2 // 2) if gradient else (PARTS, 1, 1), lik.dtype)
    margs = [np.zeros(len(c[1])) for c in csr]
    log_total = np.empty(len(draws))
    phase = lik._shift_phase
    sampled_terms(re, im, lik._tap_index, lik._tap_weight, lik._cos2, lik._sin2,
                  *ctf_terms(data.ctf, data.inv_sigma, lik._s2), lik.point_weights,
                  np.ascontiguousarray(phase.real), np.ascontiguousarray(phase.imag),
                  s_mat, spow, *csr[0], *csr[1], *csr[2], gradient, hard, log_total,
                  pa, pq, *margs)
    nll = data.half_norms + lik.constant - log_total
    if not gradient:
        return nll, None
    pa_sum, pq_sum = pa[0].copy(), pq[0].copy()
    for k in range(1, PARTS):
        pa_sum += pa[k]
        pq_sum += pq[k]
    pa_c = pa_sum.view(slices.dtype)
    grad = lik.slicer.adjoint(pq_sum * slices - pa_c) if adjoint else None
    triples = []
    for j, d in enumerate(draws):
        triples.append(tuple((d[f][0], margs[f][csr[f][0][j]:csr[f][0][j + 1]]
                              / np.exp(d[f][2])) for f in range(3)))
    return nll, (grad, pq_sum, pa_c, triples)


def exact_triples(margins) -> list:
    """Per-image (idx, mass) triples of an exact evaluation's marginals (angles, shifts, dirs)."""
    ang, sh, dirs = margins
    return [((np.arange(ang.shape[1]), ang[j]), (np.arange(sh.shape[1]), sh[j]),
             (np.arange(dirs.shape[1]), dirs[j])) for j in range(len(ang))]


def run_seed(task_name: str, optimizer: str, seed: int) -> int:
    """The importance sampler's seed of a run: named parts (task, optimizer, seed index)."""
    return derive_seed(task_name, optimizer, "importance", seed)
