"""One run: (task, scale, optimizer, hyper-parameters, seed, budget) → a trace.

The optimizer steps on the task's counted oracle (training stream ``seed``; stream 0 is the
task's canonical order). At log-spaced checkpoints of the gradient-evaluation count — always
including 5K and 50K where the budget reaches them, and the end — the iterate is scored:

* ``test_nll``  Σ over the 100 test images of −log p(I | θ, V) (the paper's y-axis);
* ``train_obj`` the training objective (eq. 6 / K, as the oracle defines it) estimated on a fixed
  subset of training images.

A refinement task is also scored at every epoch (K evaluations of any kind): ``subopt`` and
``fsc_opt_outer``, and the FSC per shell against its optimum (or, with a local search, the ground
truth) in ``fsc_shells.csv`` (:mod:`cryobench.harness.record`).

Scoring is neither counted nor timed: ``wall_s`` is the optimizer's own time. Densities are kept
at 5K, 50K and the end; against a known ground truth each is aligned (rotation, shift,
handedness) and its FSC computed; its views are projections of the aligned density, beside
those of the ground truth low-passed to r_max.

Status — what the method did with its budget, a result: ``ok`` (the budget was spent),
``diverged`` (the iterate or the objective stopped being finite, or the objective grew past 10×
its initial size), ``budget`` (the wall-clock limit on optimizer time was reached, enforced
inside a step too: :mod:`cryobench.harness.limits`), ``error`` (the optimizer raised, returned an
iterate that is not a density of the task's shape, made no evaluation, or the oracle's
accounting disagrees with its work; the message and traceback are kept). Whatever the status,
the checkpoints reached are kept. A run that fails for any other reason (scoring, memory, a
signal, the disk) raises instead: it was interrupted, which is not a result.
"""
from __future__ import annotations

import platform
import time
import traceback

import numpy as np
import pandas as pd

from cryobench import __version__
from cryobench.base.provenance import git_commit
from cryobench.base.seeding import rng_for
from cryobench.base.threads import thread_info
from cryobench.errors import AccountingError, HarnessFault
from cryobench.data.datasets import default_data_dir, home_data_dir
from cryobench.harness.isolation import OptimizerProcess, OptimizerFailed
from cryobench.harness.limits import TimeLimitReached
from cryobench.harness.record import (SNAPSHOTS, CellRecord, RunOutput, RunSpec, TaskFacts,
                                      score_column)
from cryobench.data.refinement import checkpoint_record, conditioning
from cryobench.model.fsc import aligned_fsc, transform
from cryobench.model.views import lowpass, projections
from cryobench.oracle import BudgetExhausted

TRAIN_ESTIMATE_IMAGES = 500
DEFAULT_TIME_LIMIT = 6 * 3600.0       # seconds of optimizer time per run unless the spec says


def checkpoints(budget: int, first: int, per_decade: int = 5, always=SNAPSHOTS) -> np.ndarray:
    """Evaluation counts at which to score: log-spaced from ``first`` to ``budget``, with 0,
    ``always`` (where ≤ budget) and ``budget`` itself."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1 gradient evaluation, got {budget}")
    first = max(1, min(first, budget))
    n = max(2, int(np.ceil(per_decade * np.log10(budget / first))) + 1)
    marks = np.round(np.geomspace(first, budget, n)).astype(np.int64)
    extra = [a for a in always if a <= budget]
    return np.unique(np.concatenate([[0], marks, extra, [budget]]))


def snapshot_label(evaluations: int) -> str:
    """5000 → '5K', 50000 → '50K', 1234 → '1234'."""
    return f"{evaluations // 1000}K" if evaluations % 1000 == 0 else str(evaluations)


def provenance(task) -> dict:
    """Package version, git commit, task content hash, CPU, BLAS and thread counts."""
    commit, dirty = git_commit()
    return {"cryobench": __version__, "git_commit": commit, "git_dirty": dirty,
            "task_hash": task.content_hash, "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform(), **thread_info()}


class _Scorer:
    """Uncounted, untimed scoring of iterates on a held-out split and a fixed training subset."""

    def __init__(self, task, split: str):
        score_column(split)                     # test or validation, else an error
        held_out = {"test": task.test_nll, "validation": task.validation_nll}
        self.task, self.held_out = task, held_out[split]
        train = task.splits["train"]
        pick = rng_for(task.name, task.spec.seed, "train-estimate").choice(
            len(train), size=min(len(train), TRAIN_ESTIMATE_IMAGES), replace=False)
        self.subset = np.sort(train[pick])
        self.seconds = 0.0                      # wall time spent scoring (the cell's overhead)

    def __call__(self, x: np.ndarray) -> tuple[float, float]:
        task = self.task
        if not np.all(np.isfinite(x)):
            return float("nan"), float("nan")
        start = time.perf_counter()
        train = float(task.nll(x, self.subset).mean() + task.prior.value(x) / task.n_train)
        held_out = self.held_out(x)
        self.seconds += time.perf_counter() - start
        return held_out, train


def check_run(spec: RunSpec, method, n_train: int, task_batch: int, budget: int) -> None:
    """Refuse a run that could not do any work, with one line: a budget below one minibatch,
    a batch size above the budget or the training set, checkpoints per decade that are not a
    positive whole number. (Hyper-parameter values are checked where they are chosen,
    :func:`cryobench.harness.plan.resolve_params`, and by
    :meth:`~cryobench.optim.Method.configure`.)"""
    per_decade = spec.per_decade
    if isinstance(per_decade, bool) or not isinstance(per_decade, int) or per_decade < 1:
        raise ValueError(f"checkpoints per decade must be a positive whole number, got "
                         f"{per_decade!r}")
    batch = int(spec.params.get("batch_size", task_batch))
    where = f"{spec.task} ({spec.scale})"
    if batch > n_train:
        raise ValueError(f"batch_size {batch} of {method.name} exceeds the {n_train} training "
                         f"images of {where}")
    if budget < batch:
        raise ValueError(f"a budget of {budget} gradient evaluations is less than one minibatch "
                         f"({batch} images) of {method.name} on {where}: the run could do no work")


def execute(spec: RunSpec, task, method, progress=None, compare: bool = True,
            stop_after: int | None = None) -> RunOutput:
    """Run ``method`` configured with ``spec.params`` on ``task`` and score it (see module doc).

    What the optimizer does (its exceptions, a non-finite or wrong-shaped iterate, running out
    of time, its process ending) is the run's result. The optimizer runs in a process of its
    own (:mod:`cryobench.harness.isolation`); only what the protocol gives crosses. Anything else
    that fails — scoring, the kernel on a valid request, memory in this process — propagates:
    the run was interrupted and is not a result. ``compare=False`` skips the FSC and views
    against the ground truth (``verify`` compares traces only). ``stop_after`` ends the run
    after the step that reaches that many evaluations: the run is given its whole budget and
    checkpoints as if it went on (``verify`` recomputes a stored run's first evaluations so).
    """
    budget = int(spec.budget if spec.budget is not None else task.budget)
    check_run(spec, method, task.n_train, task.batch_size, budget)
    marks = checkpoints(budget, task.batch_size, spec.per_decade, spec.snapshots)
    refinement = getattr(task, "is_refinement", False)
    if refinement:                                  # and at every epoch (K evaluations)
        marks = np.union1d(marks, np.arange(task.n_train, budget + 1, task.n_train))
    snaps = [s for s in spec.snapshots if s <= budget]
    method.values(**spec.params)                    # checked here; configured in its process
    oracle = task.oracle(budget, stream=spec.seed, kind=spec.oracle, optimizer=method.name)
    view = oracle.view()
    rng = rng_for(task.name, method.name, "optimizer", spec.seed)
    score = _Scorer(task, spec.score)
    limit = spec.time_limit if spec.time_limit is not None else DEFAULT_TIME_LIMIT
    rows, densities, taken_at, shells = [], {}, {}, []
    status, message, tb = "ok", "", None
    proc = OptimizerProcess(method, spec.params, view, task.init, spec.threads,
                            hidden_folders(task), limit)

    def record(x):
        test, train = score(x)
        rows.append({"evals": oracle.evaluations, **{f"{k}_evals": v for k, v in oracle.counts.items()},
                     "terms": oracle.terms, "flops": np.nan if oracle.flops is None else oracle.flops, "wall_s": proc.elapsed, score_column(spec.score): test, "train_obj": train})
        if refinement:                  # also vs the CG optimum (or the truth), per shell
            start = time.perf_counter()
            columns, curve = checkpoint_record(task, x, truth=spec.score == "test")
            rows[-1].update(columns)
            if curve is not None:
                shells.append(_shell_rows(len(rows) - 1, oracle.evaluations, *curve, lik))
            score.seconds += time.perf_counter() - start
        return train

    x, lik = task.init, task.likelihood
    initial = record(x)
    next_mark, idle = 1, 0
    try:
        proc.init(task.init.copy(), budget=budget, rng=rng)
        while oracle.remaining > 0:
            before = oracle.evaluations
            try:
                x = proc.step()
            except BudgetExhausted:
                break
            _check_iterate(x, task.init)
            oracle.audit()
            idle = idle + 1 if oracle.evaluations == before else 0
            if idle >= 1000:
                raise RuntimeError("1000 steps in a row spent no evaluations")
            if not np.all(np.isfinite(x)):
                status, message = "diverged", f"iterate not finite after {oracle.evaluations:,} evaluations"
                record(x)
                break
            for s in [s for s in snaps if s <= oracle.evaluations and snapshot_label(s) not in densities]:
                densities[snapshot_label(s)] = np.array(x, np.float32)
                taken_at[snapshot_label(s)] = oracle.evaluations
            if next_mark < len(marks) and oracle.evaluations >= marks[next_mark]:
                while next_mark < len(marks) and oracle.evaluations >= marks[next_mark]:
                    next_mark += 1
                train = record(x)
                if progress:
                    progress(oracle.evaluations, budget)
                if not np.isfinite(train) or train > initial + 10 * abs(initial):
                    status = "diverged"
                    message = f"training objective {train:.6g} after {oracle.evaluations:,} evaluations"
                    break
            if proc.elapsed >= limit:
                raise TimeLimitReached
            if stop_after is not None and oracle.evaluations >= stop_after:
                break
    except TimeLimitReached:
        status, message = "budget", f"time limit of {limit:g} s of optimizer time reached"
        if proc.ended is not None:
            message += " (a step did not return: its process was ended)"
    except (MemoryError, HarnessFault):
        raise                                                   # interrupted: not a result
    except OptimizerFailed as exc:                              # the method's failure: a result
        status, message, tb = "error", exc.message, exc.tb
    except Exception as exc:
        status, message, tb = "error", f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        proc.close()
    try:
        oracle.audit()
    except AccountingError as exc:
        status, message, tb = "error", str(exc), None
    if status != "error" and oracle.evaluations == 0:
        status, message = "error", "the optimizer made no evaluation"
    if not isinstance(x, np.ndarray) or x.shape != task.init.shape or x.dtype != task.init.dtype:
        x = np.full_like(task.init, np.nan)             # a wrong-shaped iterate has no score
    if rows[-1]["evals"] != oracle.evaluations:
        record(x)
    if status != "diverged" and np.all(np.isfinite(x)):
        densities["final"] = np.array(x, np.float32)
        taken_at["final"] = oracle.evaluations
    last = rows[-1]["train_obj"]
    if status == "ok" and np.isfinite(last) and last > initial:
        status = "diverged"
        message = (f"slow blow-up: the training objective ended at {last:.6g}, above its initial "
                   f"{initial:.6g}")
    trace = pd.DataFrame(rows)
    trace.insert(0, "checkpoint", np.arange(len(trace)))
    record = CellRecord(spec, method.name, budget, status, message, oracle.evaluations,
                        proc.elapsed, task.content_hash, dict(oracle.counts), tb, limit,
                        task.recipe_hash, TaskFacts(task.n_train, task.batch_size, lik.box,
                                                    float(lik.pixel_size), float(lik.rmax)),
                        {**provenance(task), "optimizer_process": proc.sandbox})
    if refinement:
        facts = {k: v for k, v in conditioning(task).items() if k != "version"}
        record.refinement = {**facts, "fsc_reference": shells[0]["reference"].iloc[0] if shells else None}
    out = RunOutput(trace, record, densities, shells=pd.concat(shells, ignore_index=True)
                    if shells else None)
    start = time.perf_counter()
    if compare:
        _compare_to_truth(out, task, taken_at)
    record.overhead_s = {"scoring": score.seconds, "comparison": time.perf_counter() - start}
    return out


def _shell_rows(checkpoint: int, evals: int, reference: str, curve, lik) -> pd.DataFrame:
    """One checkpoint's rows of ``fsc_shells.csv`` (harness.record.SHELL_COLUMNS)."""
    shell = np.arange(len(curve))
    return pd.DataFrame({"checkpoint": checkpoint, "evals": evals, "reference": reference,
                         "shell": shell, "freq": shell / (lik.box * lik.pixel_size), "fsc": curve})


def hidden_folders(task) -> list:
    """The folders an optimizer's process must not read: the dataset cache (``$CRYOBENCH_DATA``
    and the one in the home folder, which may hold the same task's data), the task's folder in it
    (prepared spectra, initial density) and the dataset's own folder."""
    derived = task.derived_dir
    folders = [default_data_dir(), home_data_dir(), derived.parent if derived.parent.name == task.name else derived]
    if task.dataset.directory is not None:
        folders.append(task.dataset.directory)
    return [str(f) for f in folders]


def _check_iterate(x, x0: np.ndarray) -> None:
    """Refuse an iterate that is not a density of the task's shape and dtype (the method's fault)."""
    if not isinstance(x, np.ndarray) or x.shape != x0.shape or x.dtype != x0.dtype:
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"the iterate is a {got}; expected a {x0.dtype} array of shape {x0.shape}")


def _compare_to_truth(out: RunOutput, task, taken_at: dict) -> None:
    """FSC of each snapshot against the ground truth after alignment, and aligned views."""
    truth = getattr(task.dataset, "ground_truth", None)
    if out.record.run.score != "test":              # tuning runs: no comparison with the truth
        truth = None
    snaps = []
    for label, vol in out.densities.items():
        evals = int(taken_at[label])
        entry = {"label": label, "evals": evals, "file": f"density_{label}.mrc"}
        if truth is not None:
            res = aligned_fsc(vol, truth, task.dataset.pixel_size)
            a = res.alignment
            entry.update(resolution_A=res.resolution, mirrored=a.mirrored, align_score=a.score)
            out.views[label] = projections(transform(vol, a.rotation, a.shift, a.mirrored))
            frame = pd.DataFrame({"label": label, "evals": evals, "freq": res.freq, "fsc": res.curve})
            out.fsc = frame if out.fsc is None else pd.concat([out.fsc, frame], ignore_index=True)
        snaps.append(entry)
    if truth is not None:
        out.views["ground_truth"] = projections(lowpass(truth, task.likelihood.rmax))
    out.record.snapshots = snaps
