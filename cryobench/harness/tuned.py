"""Tuned-values files: where a task's tuned hyper-parameters live, reading them, and choosing
a run's hyper-parameters (explicit, else tuned, else default).

The file is ``results/tuned.json`` for the tasks shipped in ``tasks/`` and
``<task>.tuned.json`` beside any other task file (:func:`default_tuned_file`), unless the user
names another. ``run`` and ``grid`` take hyper-parameters from there unless given explicitly;
an entry whose ``task_recipe`` (:func:`cryobench.task.task_recipe`; entries recorded before it
was: whose ``task_hash``) is not the task's (the task file or its data changed since) is not
used: the defaults are, with a one-line note saying so. The recipe, not the content hash, is
matched because a simulated dataset's last bits differ between BLAS kernels while the task does
not. Entries with neither (those committed before hashes were recorded) are used for the
shipped tasks only.

In a wheel install the shipped file is read-only (inside the package, see
:mod:`cryobench.base.paths`): ``tune`` on a shipped task then needs ``--record FILE``, and
``run``/``grid`` use the recorded values with ``--tuned FILE``.
"""
from __future__ import annotations

import json
from pathlib import Path

from cryobench.base.paths import TUNED_FILE
from cryobench.data.spec import TASKS_DIR, load_spec
from cryobench.errors import InputError

DEFAULT_TUNED = TUNED_FILE


def is_shipped(spec) -> bool:
    """Whether a task specification is one of the repository's ``tasks/`` files."""
    return spec.path.parent == Path(TASKS_DIR).resolve()


def default_tuned_file(task) -> Path:
    """Where a task's tuned values live: ``results/tuned.json`` for a shipped task, else
    ``<task>.tuned.json`` beside its TOML file."""
    spec = load_spec(task)
    return DEFAULT_TUNED if is_shipped(spec) else spec.path.with_suffix(".tuned.json")


def tuned_entry(tuned: dict, task, scale: str, optimizer: str, task_hash=None,
                data_dir=None) -> tuple[dict, str]:
    """(tuned hyper-parameters, note) of ``optimizer`` on ``task`` (a name or any spelling of its
    path) at ``scale``: ({}, "") when none are recorded; ({}, a one-line note) when they were
    recorded for another content hash. ``task_hash`` is computed when needed and not given."""
    spec = load_spec(task)
    entry = tuned.get(spec.name, {}).get(scale, {}).get(optimizer)
    if not entry:
        return {}, ""
    recorded, recipe = entry.get("task_hash"), entry.get("task_recipe")
    if recipe is not None:                  # the same task everywhere, whatever bits it renders
        simulated = spec.section("dataset").get("kind") == "simulated"
        if task_hash is None or simulated:
            from cryobench.task import task_recipe
            task_hash = task_recipe(spec.path, scale, data_dir)
        recorded = recipe
    elif recorded is None:
        if is_shipped(spec):
            return entry.get("params", {}), ""
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"record no task content hash; using the defaults (run cryobench tune again)")
    elif task_hash is None:
        from cryobench.task import task_hash as compute
        task_hash = compute(spec.path, scale, data_dir)
    if recorded != task_hash:
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"were for task content {recorded[:12]}, this task is {task_hash[:12]} (its "
                    f"file or data changed); using the defaults (run cryobench tune again)")
    return entry.get("params", {}), ""


def load_tuned(path) -> dict:
    """The tuned values recorded in ``path`` ({} if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None


def resolve_params(method, explicit: dict, tuned: dict, task: str, scale: str,
                   task_hash: str | None = None, data_dir=None) -> tuple[dict, dict]:
    """Full hyper-parameters: explicit values, else tuned ones (see :func:`tuned_entry`; pass
    the task's content hash if known), else defaults; and each's source."""
    from cryobench.data.realdata import warn_once
    chosen, note = tuned_entry(tuned, task, scale, method.name, task_hash, data_dir) \
        if tuned else ({}, "")
    if note and set(method.hypers) - set(explicit):
        warn_once(note)
    params, source = {}, {}
    for name, hyper in method.hypers.items():
        for origin, values in (("explicit", explicit), ("tuned", chosen), ("default", None)):
            if values is None or name in values:
                params[name] = hyper.check(name, hyper.default if values is None else values[name])
                source[name] = origin
                break
    unknown = sorted(set(explicit) - set(method.hypers))
    if unknown:
        raise ValueError(f"optimizer {method.name!r} has no hyper-parameter {unknown[0]!r}; "
                         f"known: {', '.join(method.hypers) or 'none'}")
    return params, source
