"""The ground truth's test NLL beside a result set: the line its curves are read against.

A simulated task knows the density its images were made from. Its test NLL, Σ_{test} −log
p(I_i | θ_i, V_true) — the paper's y-axis evaluated at the truth — tells how far from the
generating density a method ends (a method can end below it: the truth is not the maximum of
the posterior of a finite noisy data set). ``cryobench grid`` writes it into
``RESULTS/reference.json`` for every simulated (task, scale) of the grid, once per task content
hash, computed as the cells score their iterates (``Task.test_nll``, one BLAS thread); the
report and the leaderboard draw it on the convergence figure and print it above the table.
Real data get the reference map's value when the task names one, else no entry.

``reference.json``::

    {"references": [{"task": "synthetic-cylinder", "scale": "paper", "task_hash": "…",
                     "density": "ground truth", "truth_test_nll": 13866.9}, …]}

A reference whose task hash is not that of the result set's cells is refused when results load,
like a cell of another task definition. ``task_recipe`` (:func:`cryobench.task.task_recipe`,
absent from entries written before it was recorded) lets ``verify`` recompute the value on a
platform whose simulation renders the same task with other last bits.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from threadpoolctl import threadpool_limits

from cryobench.base.files import atomic_write, to_json
from cryobench.data.spec import load_spec
from cryobench.errors import InputError
from cryobench.task import load_task

REFERENCE_FILE = "reference.json"
FIELDS = {"task": str, "scale": str, "task_hash": str, "density": str, "truth_test_nll": float}


def read_references(path) -> dict:
    """{(task, scale): entry} of a ``reference.json`` (empty if there is none); one line naming
    the file, the entry and the field for anything malformed."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the references: {exc}") from None
    entries = raw.get("references") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected an object with a list 'references'")
    out = {}
    for i, entry in enumerate(entries):
        for key, kind in FIELDS.items():
            value = entry.get(key) if isinstance(entry, dict) else None
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value)) if kind is float else isinstance(value, kind)
            if not ok:
                raise InputError(f"{path}: references[{i}] field {key!r}: expected "
                                 f"{'a finite number' if kind is float else 'a string'}, "
                                 f"got {value!r}")
        out[entry["task"], entry["scale"]] = entry
    return out


def has_truth(task: str) -> bool:
    """Whether a task has a density to compare with (simulated, or real with a reference map),
    from its specification alone."""
    recipe = load_spec(task).section("dataset")
    return recipe.get("kind") != "star" or "reference" in recipe


def truth_reference(task, name: str, scale: str) -> dict | None:
    """The reference entry of a loaded task (as ``name`` and ``scale`` in the cells): its ground
    truth's (or reference map's) test NLL, at the iterates' dtype; None without one."""
    truth = getattr(task.dataset, "ground_truth", None)
    if truth is None:
        return None
    density = "reference map" if task.spec.section("dataset").get("kind") == "star" else "ground truth"
    return {"task": name, "scale": scale, "task_hash": task.content_hash,
            "task_recipe": task.recipe_hash, "density": density,
            "truth_test_nll": task.test_nll(truth.astype(task.init.dtype))}


def record_references(out, task_hashes: dict, data_dir=None) -> Path | None:
    """Add to ``out/reference.json`` the entries it lacks, or holds for another task hash, of the
    (task, scale) pairs in ``task_hashes`` {(task, scale): hash of the grid's cells} that have a
    truth; returns the file if it was written."""
    path = Path(out) / REFERENCE_FILE
    have = read_references(path)
    todo = [(t, s) for t, s in sorted(task_hashes)
            if have.get((t, s), {}).get("task_hash") != task_hashes[t, s] and has_truth(t)]
    if not todo:
        return None
    with threadpool_limits(limits=1):                 # as the cells score (one BLAS thread)
        for task, scale in todo:
            entry = truth_reference(load_task(task, scale, data_dir, progress=False), task, scale)
            if entry is not None:
                have[task, scale] = entry
    atomic_write(path, to_json({"references": [have[k] for k in sorted(have)]}))
    return path
