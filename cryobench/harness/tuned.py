"""Tuned-values files: where a task's tuned hyper-parameters live, reading them, and the entry
that applies to a task.

The file is ``results/tuned.json`` for the tasks shipped in ``tasks/`` and
``<task>.tuned.json`` beside any other task file (:func:`default_tuned_file`), unless the user
names another. ``run`` and ``grid`` take hyper-parameters from there unless given explicitly
(:func:`cryobench.harness.plan.resolve_params`);
an entry whose ``task_recipe`` (:func:`cryobench.task.task_identity`; entries recorded before
it was: whose ``task_hash``) is not the task's (the task file or its data changed since) is not
used: the defaults are, with a one-line note saying so. The recipe, not the content hash, is
matched because it is known without simulating (since simulator format 2 both name the same
bytes on every machine). Entries with neither (those committed before hashes were recorded) are used for the
shipped tasks only.

Values are kept per oracle: ``tune --oracle importance`` records under ``sgd [IS]`` (the
optimizer's name and the oracle's label, :func:`oracle_key`) beside the exact oracle's ``sgd``
(every entry without an oracle is the exact oracle's). A run under the importance oracle uses
the values tuned under the same oracle settings, and when there are none the exact oracle's,
with a one-line note; an exact run never uses values tuned under another oracle.

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
from cryobench.model.importance import oracle_label

DEFAULT_TUNED = TUNED_FILE


def is_shipped(spec) -> bool:
    """Whether a task specification is one of the repository's ``tasks/`` files."""
    return spec.path.parent == Path(TASKS_DIR).resolve()


def default_tuned_file(task) -> Path:
    """Where a task's tuned values live: ``results/tuned.json`` for a shipped task, else
    ``<task>.tuned.json`` beside its TOML file."""
    spec = load_spec(task)
    return DEFAULT_TUNED if is_shipped(spec) else spec.path.with_suffix(".tuned.json")


def oracle_key(optimizer: str, oracle=None) -> str:
    """The key of ``optimizer``'s tuned entry under ``oracle`` (None: the exact oracle, else
    :class:`~cryobench.model.importance.ImportanceSettings`): the optimizer's name for the
    exact oracle (every entry recorded before oracles were told apart), else the name and the
    oracle's label, as in a run's label (``sgd [IS]``, ``sgd [IS ess_scale=5]``)."""
    return optimizer if oracle is None else f"{optimizer} [{oracle_label(oracle)}]"


def tuned_entry(tuned: dict, task, optimizer: str, oracle=None) -> tuple[dict, str]:
    """(tuned hyper-parameters, note) of ``optimizer`` on ``task`` (a
    :class:`~cryobench.harness.plan.TaskRef`) under ``oracle`` (None: exact, else the
    importance oracle's settings): ({}, "") when none are recorded; ({}, a one-line note) when
    they were recorded for another task. An entry with a recipe is matched on the task's recipe
    (known without simulating), an older one on its content hash. Under the importance oracle,
    the values tuned with the same oracle settings (:func:`oracle_key`); when there are none,
    the exact oracle's, with a one-line note naming them."""
    spec, scale = task.spec, task.scale.name
    recorded = tuned.get(spec.name, {}).get(scale, {})
    if oracle is not None and not recorded.get(oracle_key(optimizer, oracle)):
        params, note = tuned_entry(tuned, task, optimizer)
        if params:
            note = (f"cryobench: note: no tuned values of {optimizer} under the "
                    f"{oracle_label(oracle)} oracle for {spec.name} ({scale}); using those tuned "
                    f"with the exact oracle (run cryobench tune --oracle to tune under it)")
        return params, note
    entry = recorded.get(oracle_key(optimizer, oracle))
    if not entry:
        return {}, ""
    recorded = entry.get("task_hash")
    if entry.get("task_recipe") is not None:     # the same task everywhere, whatever bits it renders
        recorded, mine = entry["task_recipe"], task.recipe
    elif recorded is not None:
        mine = task.content_hash
    else:
        if is_shipped(spec):
            return entry.get("params", {}), ""
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"record no task content hash; using the defaults (run cryobench tune again)")
    if recorded != mine:
        return {}, (f"cryobench: note: the tuned values of {optimizer} for {spec.name} ({scale}) "
                    f"were for task content {recorded[:12]}, this task is {mine[:12]} (its "
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
