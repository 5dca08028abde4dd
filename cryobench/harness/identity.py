"""A cell's identity: the content hash of everything that decides its numbers.

The id hashes the run's specification (without its label, naming the task and the optimizer by
what they are, not how they were typed), the task's content hash, the optimizer's name and
fingerprint and the library's numerics fingerprint (:mod:`cryobench.harness.fingerprint`). The
parts are recorded in the cell's ``meta.json`` (``identity``), where ``verify`` compares them.
"""
from __future__ import annotations

from cryobench.base.seeding import content_hash
from cryobench.base.threads import machine
from cryobench.harness.fingerprint import (numerics_code_digest, numerics_fingerprint,
                                           optimizer_fingerprint, source_digest)
from cryobench.harness.record import SCHEMA_VERSION, RunSpec


def optimizer_key(method) -> str:
    """``name:fingerprint`` of an optimizer, as its part of a cell's identity."""
    return f"{method.name}:{optimizer_fingerprint(method)}"


def cell_id(spec: RunSpec, task_name: str, task_hash: str, optimizer: str,
            numerics: str | None = None, refinement: bool = False) -> str:
    """The id of a run of ``spec`` on the task named ``task_name`` with content ``task_hash``, by
    the optimizer ``optimizer`` (:func:`optimizer_key`), under the numerics fingerprint
    ``numerics`` (computed here unless given: with the refinement kernels' probe for a
    ``refinement`` task)."""
    key = {**spec.to_dict(), "label": None, "task": task_name, "optimizer": optimizer,
           "task_hash": task_hash, "numerics": numerics or numerics_fingerprint(refinement),
           "schema": SCHEMA_VERSION}
    return content_hash(key)[:16]


def portable_id(spec: RunSpec, task_hash: str, optimizer: str, numerics_code: str) -> str:
    """The id of a run as every platform names it: :func:`cell_id`'s parts with the numerics
    fingerprint, which follows the CPU and its libraries, replaced by the digest of the
    numerical code (:func:`numerics_code_digest`), which does not. Two cells with one portable
    id are the same run by the same code, perhaps computed on two platforms."""
    key = {**spec.to_dict(), "label": None, "optimizer": optimizer, "task_hash": task_hash,
           "numerics_code": numerics_code, "schema": SCHEMA_VERSION}
    return content_hash(key)[:16]


def grid_identity() -> dict:
    """What the grid's process knows of its numerics (both fingerprints), passed to its cell
    processes so that they need not run the probes again on the same code and machine."""
    return {"numerics": numerics_fingerprint(), "numerics_refinement": numerics_fingerprint(True),
            "numerics_code": numerics_code_digest(), "source": source_digest(),
            "machine": machine()}


def identity(cell: str, task_hash: str, threads: int, method, known: dict | None = None,
             refinement: bool = False) -> dict:
    """The parts of a cell's id, recorded in its meta.json. The numerics fingerprint (with the
    refinement kernels' for a ``refinement`` task) is taken from ``known``
    (:func:`grid_identity`) when the code and the machine are those it was computed on, and
    computed here otherwise. ``numerics_code`` (:func:`numerics_code_digest`, not part of the
    id) names the numerical code the same way on every platform."""
    same = known and known.get("source") == source_digest() and known.get("machine") == machine()
    key = "numerics_refinement" if refinement else "numerics"
    parts = {"cell": cell, "task_hash": task_hash,
             "numerics": known[key] if same else numerics_fingerprint(refinement),
             "optimizer": optimizer_key(method), "threads": threads, "platform": machine(),
             "numerics_code": known["numerics_code"] if same else numerics_code_digest()}
    if getattr(method, "identity", None):      # another library's: its version, class, arguments
        parts["library"] = method.identity
    return parts
