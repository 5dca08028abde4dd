"""``cryobench is-check``: how good the importance-sampled gradient is, measured along a run.

An SGD run (the registered ``sgd`` with the task's tuned values, training stream 0) steps on the
importance-sampled oracle, so each image's stored posterior is the one that run would have. At
checkpoints (after given numbers of epochs) the next minibatch B of the stream is taken and,
without counting or changing the run:

* the exact gradient g of f_B's data term (the exact kernel);
* R independent importance-sampled gradients ĝ_r (the draws the next visit could make,
  :meth:`cryobench.model.importance.PoseSampler.draws` with ``replicate``);
* rel. error  mean_r ‖ĝ_r − g‖ / ‖g‖, cosine  mean_r ⟨ĝ_r, g⟩ / ‖ĝ_r‖‖g‖,
  bias  ‖mean_r ĝ_r − g‖ / ‖g‖ (its floor from R draws is about rel. error / √R; also given
  with that noise removed: √(‖ḡ − g‖² − Σ_r ‖ĝ_r − ḡ‖² / (R(R − 1))) / ‖g‖), the value's
  mean error (nats per image), the fraction of the exact terms the draws compute, and for
  scale the minibatch noise ‖g_B − g_B'‖ / ‖g_B‖ between B and the following minibatch B'
  (both exact);
* the run's own fraction of exact terms over the epoch before the checkpoint.
"""
from __future__ import annotations

import numpy as np

from cryobench.errors import InputError
from cryobench.harness.isolation import OptimizerProcess
from cryobench.harness.plan import Planner
from cryobench.harness.run import hidden_folders
from cryobench.model.importance import sampled_nll
from cryobench.task import load_task

MINIBATCH = 100


def _data_grad(task, x, batch):
    """(−log p per image, Σ gradient) of the exact kernel on ``batch``."""
    lik = task.likelihood
    return lik.nll_and_grad(x, lik.subset(task.spectra, batch))


def _estimate(task, sampler, x, batch, replicate):
    """(−log p̂ per image, Σ gradient, terms) of one replicate draw for ``batch``."""
    lik = task.likelihood
    draws = sampler.draws(batch, False, replicate=replicate)
    nll, grad = np.empty(len(batch)), np.zeros(x.shape)
    exact = np.array([d is None for d in draws])
    terms = int(exact.sum()) * lik.terms_per_image()
    if exact.any():
        n, g = _data_grad(task, x, batch[exact])
        nll[exact], grad = n, grad + g
    if (~exact).any():
        chosen = [d for d in draws if d is not None]
        n, extra = sampled_nll(lik, x, lik.subset(task.spectra, batch[~exact]), chosen, True)
        nll[~exact], grad = n, grad + extra[0]
        terms += sum(len(d[0][0]) * len(d[1][0]) * len(d[2][0]) for d in chosen)
    return nll, grad, terms


def measure(task, sampler, x, position: int, draws: int) -> dict:
    """The comparison at one checkpoint (module doc) on the minibatch at ``position``."""
    batch = task.stream(position, MINIBATCH)
    after = task.stream(position + MINIBATCH, MINIBATCH)
    nll, g = _data_grad(task, x, batch)
    g_next = _data_grad(task, x, after)[1]
    norm = np.linalg.norm(g)
    rel, cos, val, terms, ests = [], [], [], [], []
    for r in range(draws):
        n_hat, g_hat, t = _estimate(task, sampler, x, batch, r)
        ests.append(g_hat)
        rel.append(np.linalg.norm(g_hat - g) / norm)
        cos.append(float((g_hat * g).sum() / (np.linalg.norm(g_hat) * norm)))
        val.append(float(np.mean(n_hat - nll)))
        terms.append(t / (len(batch) * task.likelihood.terms_per_image()))
    mean = np.mean(ests, axis=0)
    bias = np.linalg.norm(mean - g) / norm
    spread = sum(np.linalg.norm(e - mean) ** 2 for e in ests) / max(1, draws - 1)
    debiased = np.sqrt(max(0.0, np.linalg.norm(mean - g) ** 2 - spread / draws)) / norm
    return {"rel_error": float(np.mean(rel)), "cosine": float(np.mean(cos)),
            "bias": float(bias), "bias_corrected": float(debiased), "value_error": float(np.mean(val)),
            "terms_fraction": float(np.mean(terms)),
            "minibatch_noise": float(np.linalg.norm(g_next - g) / norm)}


def is_check(task_name: str, scale: str, checkpoints=(1, 2, 4), draws: int = 8,
             oracle: str = "importance", data_dir=None, log=print,
             params: dict | None = None) -> list[dict]:
    """Run SGD on the importance-sampled oracle to each checkpoint (in epochs) and measure
    there (:func:`measure`); one line per checkpoint through ``log``; the rows returned.
    ``params``: sgd's hyper-parameters given explicitly (else tuned, else defaults)."""
    task = load_task(task_name, scale, data_dir, progress=False)
    planner = Planner(data_dir)
    plan = planner.plan(planner.task(task_name, scale), "sgd", dict(params or {}), 0, None,
                        oracle=oracle)
    k = task.n_train
    budget = int(max(checkpoints) * k + 2 * MINIBATCH)
    counted = task.oracle(budget, 0, oracle, plan.method.name)
    view = counted.view()
    rows = []
    log(f"{task.name} ({scale}): {k:,} training images, quadrature {task.likelihood._log_w.shape}"
        f" (angles, shifts, directions), sgd {plan.spec.label} {plan.spec.params}, {draws} draws")
    with OptimizerProcess(plan.method, plan.spec.params, view, task.init, plan.spec.threads,
                          hidden_folders(task), float("inf")) as proc:   # sgd in its process
        proc.init(task.init.copy(), budget=budget, rng=np.random.default_rng(0))
        x = task.init
        for epochs in sorted(checkpoints):
            terms0, evals0 = counted.terms, counted.evaluations
            while counted.evaluations + MINIBATCH <= epochs * k:
                x = proc.step()
            if not np.all(np.isfinite(x)):
                raise InputError(f"the SGD run diverged before {epochs:g} epochs with "
                                 f"{plan.spec.params}; give a smaller step (--set lr=…)")
            run_fraction = ((counted.terms - terms0) / max(1, counted.evaluations - evals0)
                            / task.likelihood.terms_per_image())
            row = {"task": task.name, "scale": scale, "epochs": epochs,
                   "evaluations": counted.evaluations, "run_terms_fraction": run_fraction,
                   **measure(task, counted.sampler, x, counted.position, draws)}
            rows.append(row)
            log(f"  after {epochs:g} epochs ({row['evaluations']:,} evals): rel. error "
                f"{row['rel_error']:.3g}, cosine {row['cosine']:.4f}, bias {row['bias']:.3g} "
                f"({row['bias_corrected']:.3g} without the draws' own noise), value "
                f"error {row['value_error']:+.3g} nats/image, terms "
                f"{row['terms_fraction']:.3g} of exact (the run's last epoch: "
                f"{row['run_terms_fraction']:.3g}); minibatch noise {row['minibatch_noise']:.3g}")
    return rows
