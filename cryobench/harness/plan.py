"""One plan: what to run, resolved once, for ``run``, ``grid``, ``tune``, ``gate`` and ``verify``.

A :class:`Planner` turns what a user names — a task and scale, an optimizer reference, explicit
hyper-parameter values, seeds, a budget — into typed, checked :class:`RunPlan` objects:

* the task file is parsed once and the task's identity (content hash and recipe) computed once
  per (task, scale) (:class:`TaskRef`);
* the optimizer registry is scanned once per process (:func:`cryobench.harness.registry.resolve`;
  an optimizer is known by its declaration, read in a sandboxed process, never imported here);
* hyper-parameters are chosen once — explicit, else tuned, else the method's default
  (:func:`resolve_params`) — and each value checked there;
* the label is made once (:func:`config_label`), the run's sizes are checked once
  (:func:`check_run`), and the cell id is computed once
  (:func:`cryobench.harness.identity.cell_id`).

A plan is what crosses to a cell process (:meth:`RunPlan.to_dict`): the specification, the cell
id and the task content hash the planner saw, which the cell checks against what it loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryobench.base.messages import warn_once
from cryobench.data.datasets import checked_sizes
from cryobench.data.refinement import is_refinement
from cryobench.data.spec import Scale, TaskSpec, load_spec
from cryobench.errors import InputError
from cryobench.harness.declared import Declared
from cryobench.harness.identity import cell_id, optimizer_key
from cryobench.harness.record import SNAPSHOTS, RunSpec
from cryobench.harness.registry import resolve
from cryobench.harness.run import check_run
from cryobench.harness.tuned import default_tuned_file, load_tuned, tuned_entry
from cryobench.model.importance import oracle_label, oracle_settings
from cryobench.optim import Method
from cryobench.task import task_identity, task_recipe


class HyperParameterError(InputError):
    """A hyper-parameter that the method does not have, or a value it cannot mean."""


#: ``Planner(tuned=EACH_TASKS_OWN)``: each task's own tuned-values file (:func:`default_tuned_file`)
EACH_TASKS_OWN = "each task's own"


@dataclass(frozen=True)
class TaskRef:
    """A task at one scale as the plan resolves it, without loading its images: its parsed file,
    sizes and identity (computed once, when first asked for: a simulated task's recipe is known
    without simulating, its content hash is not)."""

    given: str                  # how the user named it (a name, or a path as typed)
    spec: TaskSpec
    scale: Scale
    sizes: dict                 # {"train": K, "validation": …, "test": …}
    batch_size: int
    default_budget: int         # the protocol's budget_epochs × K
    data_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def content_hash(self) -> str:
        """The content hash (:func:`cryobench.task.task_identity`; simulates if needed)."""
        content, recipe = task_identity(self.spec, self.scale, self.data_dir)
        self.__dict__.setdefault("recipe", recipe)
        return content

    @cached_property
    def recipe(self) -> str:
        """The recipe hash (:func:`cryobench.task.task_identity`): a simulated task's without
        simulating; a STAR task's is its content hash."""
        if self.spec.section("dataset").get("kind") != "simulated":
            return self.content_hash
        return task_recipe(self.spec, self.scale.name, self.data_dir)


@dataclass(frozen=True)
class RunPlan:
    """A run resolved: its specification, cell id and the task content hash it expects; in the
    planning process also the method and where each hyper-parameter came from."""

    spec: RunSpec
    cell: str
    task_hash: str
    method: Method | Declared | None = field(default=None, compare=False)
    sources: dict = field(default_factory=dict, compare=False)   # name → explicit/tuned/default

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "cell": self.cell, "task_hash": self.task_hash}

    @staticmethod
    def from_dict(d: dict) -> "RunPlan":
        return RunPlan(RunSpec.from_dict(d["spec"]), d["cell"], d["task_hash"])

    def describe(self) -> str:
        """``label seed n on task (scale)``, for messages."""
        s = self.spec
        return f"{s.label or s.optimizer} seed {s.seed} on {s.task} ({s.scale})"


def config_label(method, params: dict) -> str:
    """The method's name and every hyper-parameter that differs from its default
    (``sgd lr=0.5``): one label per configuration, so no report averages two."""
    return " ".join([method.name] + [f"{k}={v:g}" for k, v in params.items()
                                     if v != method.hypers[k].default])


def resolve_params(method, explicit: dict, tuned: dict, task: TaskRef,
                   oracle=None) -> tuple[dict, dict]:
    """Full hyper-parameters, each checked once: explicit values, else the tuned ones recorded for
    ``task`` in the table ``tuned`` under ``oracle`` (None: exact, else the importance oracle's
    settings; :func:`cryobench.harness.tuned.tuned_entry`), else what the
    task sets (``batch_size``: :func:`task_minibatch`), else the defaults; and where each came
    from."""
    unknown = sorted(set(explicit) - set(method.hypers))
    if unknown:
        raise ValueError(f"optimizer {method.name!r} has no hyper-parameter {unknown[0]!r}; "
                         f"known: {', '.join(method.hypers) or 'none'}")
    chosen, note = tuned_entry(tuned, task, method.name, oracle) if tuned else ({}, "")
    if note and set(method.hypers) - set(explicit):
        warn_once(note)
    by_task = task_minibatch(method, task.batch_size)
    params, source = {}, {}
    for name, hyper in method.hypers.items():
        for origin, values in (("explicit", explicit), ("tuned", chosen), ("task", by_task),
                               ("default", None)):
            if values is None or name in values:
                params[name] = hyper.check(name, hyper.default if values is None else values[name])
                source[name] = origin
                break
    return params, source


#: the minibatch that the optimizers' default ``batch_size`` values are written for (the paper's)
PAPER_MINIBATCH = 100


def task_minibatch(method, task_batch: int) -> dict:
    """{"batch_size": n} when a task whose ``[protocol] batch_size`` is ``task_batch`` changes the
    method's default minibatch, else {}: the default scaled by task_batch / 100, so that the
    paper's 100 becomes the task's minibatch and a method that takes more (Hessian-free's
    300-image curvature batches) keeps its ratio."""
    hyper = method.hypers.get("batch_size")
    if hyper is None:
        return {}
    value = max(1, round(hyper.default * task_batch / PAPER_MINIBATCH))
    return {} if value == hyper.default else {"batch_size": value}


class Planner:
    """Resolves tasks, optimizers and hyper-parameters into :class:`RunPlan` objects, each thing
    once: a task file per (task, scale), the registry, each tuned-values file.

    ``tuned``: :data:`EACH_TASKS_OWN` (each task's own file), a path, or None (defaults only).
    ``threads``: the BLAS threads of the runs (part of their identity).
    """

    def __init__(self, data_dir=None, threads: int = 1, tuned=EACH_TASKS_OWN):
        self.data_dir, self.threads, self.tuned = data_dir, threads, tuned
        self._tasks: dict = {}
        self._tables: dict = {}

    def optimizer(self, reference: str) -> Declared:
        """The optimizer ``reference`` names, declared by a process that cannot read the dataset
        caches nor this planner's ``data_dir`` (:func:`cryobench.harness.registry.resolve`)."""
        return resolve(reference, data_dir=self.data_dir)

    def task(self, task, scale: str | None = None) -> TaskRef:
        """The task ``task`` (a name or a TOML path) at ``scale`` (None: its default scale)."""
        key = (str(task), scale)
        if key not in self._tasks:
            spec = load_spec(task)
            sc = spec.scale(scale)
            sizes = checked_sizes(spec, sc)
            protocol = spec.section("protocol")
            self._tasks[key] = TaskRef(str(task), spec, sc, sizes,
                                       int(protocol.get("batch_size", 100)),
                                       int(protocol.get("budget_epochs", 10) * sizes["train"]),
                                       self.data_dir)
        return self._tasks[key]

    def tuned_table(self, task: TaskRef) -> dict:
        """The tuned values that apply to ``task`` (read once per file)."""
        if self.tuned is None:
            return {}
        path = Path(default_tuned_file(task.spec) if self.tuned == EACH_TASKS_OWN else self.tuned)
        if path not in self._tables:
            self._tables[path] = load_tuned(path)
        return self._tables[path]

    def plan(self, task: TaskRef, optimizer: str, explicit: dict | None = None, seed: int = 0,
             budget: int | None = None, *, per_decade: int = 5, time_limit: float | None = None,
             score: str = "test", tuned: bool = True, snapshots=SNAPSHOTS,
             method: Method | Declared | None = None, oracle=None) -> RunPlan:
        """One run of the optimizer ``optimizer`` (a reference; ``method`` if already resolved)
        on ``task``, checked; hyper-parameters from ``explicit``, else (``tuned``) the tuned
        values, else the defaults. ``oracle``: None or "exact" (the default), else the
        importance-sampled oracle (:func:`cryobench.model.importance.oracle_settings`), resolved
        here to its full settings, which join the run's identity and its label."""
        settings = oracle_settings(oracle)
        method = method or self.optimizer(optimizer)
        table = self.tuned_table(task) if tuned else {}
        try:
            params, sources = resolve_params(method, dict(explicit or {}), table, task,
                                             settings)
        except ValueError as exc:
            raise HyperParameterError(str(exc)) from None
        label = config_label(method, params)
        if settings is not None:
            label += f" [{oracle_label(settings)}]"
        spec = RunSpec(task.given, task.scale.name, optimizer, params, seed, budget, per_decade,
                       tuple(snapshots), time_limit, label, score, self.threads,
                       None if settings is None else settings.to_dict())
        check_run(spec, method, task.sizes["train"], task.batch_size,
                  budget if budget is not None else task.default_budget)
        cell = cell_id(spec, task.name, task.content_hash, optimizer_key(method),
                       refinement=is_refinement(task.spec))
        return RunPlan(spec, cell, task.content_hash, method, sources)


def plan_for_cell(spec: RunSpec, task_name: str, task_hash: str, method,
                  refinement: bool = False) -> RunPlan:
    """The plan of a run already specified (a stored cell's, or a test's): its id from the
    spec as it is, without resolving anything again."""
    return RunPlan(spec, cell_id(spec, task_name, task_hash, optimizer_key(method),
                                 refinement=refinement), task_hash, method)
