"""Result sets: the cell folders under a results folder, read into tables for reports.

A result set is a folder with ``cells/<cell id>/`` folders (their files: :mod:`cryobench.harness.record`;
a refinement cell's FSC per shell per checkpoint is loaded as :attr:`Results.shells`)
and, beside ``cells/``, ``reference.json``: the ground truth's test NLL of each simulated
(task, scale) (:mod:`cryobench.harness.reference`), loaded as :attr:`Results.references`.
:func:`load_results` reads every cell's record once; reports read :attr:`Results.records`
rather than opening ``meta.json`` again.

What the files say is checked where they are read, each problem one line naming the file (and
the field or column): a cell folder or file leading outside its result set (a symbolic link) is
refused; the record is the truth about a cell's identity (its trace's identity columns are set
from it); an ``ok`` run whose final test NLL is not finite is counted as ``diverged``, with a
message saying so (the runner stops on a non-finite iterate or training objective, not score).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryobench.errors import InputError
from cryobench.harness.record import (SHELL_COLUMNS, TEMPORARY, CellRecord, read_shells, read_table,
                                      read_trace)
from cryobench.harness.reference import REFERENCE_FILE, read_references


def remove_stale_temporaries(cells_dir) -> int:
    """Delete temporary cell folders left by processes that no longer run; returns how many."""
    removed = 0
    for tmp in Path(cells_dir).glob(f"{TEMPORARY}*.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
            continue                                    # its writer is alive
        except PermissionError:
            continue                                    # alive, and another user's
        except (ValueError, IndexError, ProcessLookupError):
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        removed += 1
    return removed


def cell_folders(root) -> list[Path]:
    """Complete cell folders under a results folder (recursively), sorted; or the cell itself.
    A cell folder, or a file in it, that leads outside ``root`` (a symbolic link) is refused:
    a result set holds its own cells."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder")
    if (root / "meta.json").is_file():
        folders = [root]
    else:
        folders = sorted(p.parent for p in root.rglob("cells/*/meta.json")
                         if not p.parent.name.startswith("."))
    base = root.resolve()
    for folder in folders:
        for path in (folder, *folder.iterdir()):
            check_inside(path, base, root)
    return folders


def check_inside(path: Path, base: Path, root) -> None:
    """Refuse ``path`` if it resolves outside the folder ``base`` (``root`` resolved), with one
    line naming it and where it leads."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:              # a loop of symbolic links
        raise InputError(f"{path}: cannot follow its symbolic links: {exc}") from None
    if target != base and base not in target.parents:
        raise InputError(f"{path}: leads outside the results folder {root} (a symbolic link "
                         f"to {target}); a result set must hold its cells itself")


VIEW_BYTES = 2**28                  # a stored projection larger than this is no cell's


@dataclass
class Results:
    """Loaded results: the traces (one row per checkpoint), one row per cell, FSC curves."""

    trace: pd.DataFrame
    cells: pd.DataFrame
    fsc: pd.DataFrame
    folders: dict = field(default_factory=dict)     # cell id → folder
    references: dict = field(default_factory=dict)  # (task, scale) → reference.json entry
    records: dict = field(default_factory=dict)     # cell id → CellRecord
    shells: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["cell", *SHELL_COLUMNS]))          # refinement: FSC per shell per checkpoint

    def task_facts(self, task: str, scale: str):
        """The :class:`~cryobench.harness.record.TaskFacts` the runs of (task, scale) recorded
        (the first cell's that has them), or None."""
        cells = self.cells[(self.cells["task"] == task) & (self.cells["scale"] == scale)]["cell"]
        return next((self.records[c].task_facts for c in sorted(cells)
                     if c in self.records and self.records[c].task_facts), None)

    def views(self, cell: str) -> dict[str, np.ndarray]:
        """The aligned projections of a cell's snapshots and of the ground truth: each a
        (3, n, n) array of finite numbers; one line naming the file otherwise."""
        path = self.folders[cell] / "views.npz"
        if not path.is_file():
            return {}
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("one array, not an .npz archive of named arrays")
            with data:
                big = [i for i in data.zip.infolist() if i.file_size > VIEW_BYTES]
                if big:
                    raise ValueError(f"{big[0].filename} holds {big[0].file_size:,} bytes")
                views = {k: data[k] for k in data.files}
        except Exception as exc:          # a broken archive fails in many ways (zip, zlib, npy)
            first, kind = (str(exc).splitlines() or [""])[0], type(exc).__name__
            kind = f"{type(exc).__module__}.{kind}" if kind.islower() else kind   # zlib.error
            raise InputError(f"{path}: cannot read the views: {kind}: {first}") from None
        for name, v in views.items():
            if (v.dtype.kind not in "iuf" or v.ndim != 3 or v.shape[0] != 3
                    or v.shape[1] != v.shape[2] or not v.size):
                raise InputError(f"{path}: views {name!r} must be 3 square projections of numbers "
                                 f"(3, n, n), not {v.dtype} of shape {v.shape}")
            if not np.all(np.isfinite(v)):
                raise InputError(f"{path}: views {name!r} hold values that are not finite")
        return views


def _check_task_hash(seen: dict, key: tuple, task_hash: str, meta: Path,
                     required: str | None = None) -> None:
    """Refuse a cell of ``key`` = (task, scale) computed on another task definition than the
    first one seen of that key (``seen``: key → (hash, its meta.json), updated) or than
    ``required``, with one line naming both."""
    expected = required or seen.get(key, (task_hash, meta))[0]
    if task_hash != expected:
        other = seen.get(key, (None, "the current task definition"))[1]
        raise InputError(f"{meta}: task {key[0]} ({key[1]}) has content hash {task_hash[:12]}, "
                         f"but {other} has {expected[:12]}; results of different task "
                         "definitions cannot be compared")
    seen.setdefault(key, (task_hash, meta))


def load_results(*roots, task_hashes: dict | None = None) -> Results:
    """Every cell under ``roots`` (a cell id found in several folders once, from the first in
    sorted order, after checking every copy holds the same status and trace but for wall time);
    refuses mixed schema versions or task content hashes.

    ``task_hashes`` {(task, scale): hash}, if given, is what the results must have been computed
    on (e.g. the tasks as currently defined).
    """
    traces, rows, fscs, folders, records, seen, first, shells = [], [], [], {}, {}, {}, {}, []
    for folder in sorted({f for root in roots for f in cell_folders(root)}):
        rec = CellRecord.read(folder)
        run, cell = rec.run, rec.cell
        if cell in folders:             # the same run in two results sets (e.g. SGD as reference)
            _same_copy(folders[cell], first[cell], folder, rec)
            continue
        key = (run.task, run.scale)
        _check_task_hash(seen, key, rec.task_hash, folder / "meta.json",
                         (task_hashes or {}).get(key))
        folders[cell], records[cell] = folder, rec
        trace = _trace(folder, rec)
        traces.append(trace)
        first[cell] = (rec.status, _numbers(trace))
        snaps = {s["label"]: s for s in rec.snapshots or []}
        last = trace.iloc[-1] if len(trace) else pd.Series(dtype=float)
        status, message = rec.status, rec.message
        final = last.get("test_nll", np.nan)
        if status == "ok" and len(trace) and "test_nll" in trace and not np.isfinite(final):
            status, message = "diverged", (     # the runner checks the iterate, not the score
                f"final test NLL {final} at {last['evals']:,.0f} evaluations: not "
                "finite, so the run failed (its meta.json says ok)")
        rows.append({"task": run.task, "scale": run.scale, "optimizer": rec.optimizer_name,
                     "label": rec.label, "seed": run.seed, "cell": cell, "status": status,
                     "message": message, "budget": rec.budget, "evals": rec.evaluations,
                     "wall_s": rec.wall_s, "final_nll": last.get("test_nll", np.nan),
                     "resolution_A": snaps.get("final", {}).get("resolution_A", np.nan),
                     "params": json.dumps(run.params, sort_keys=True),
                     "task_hash": rec.task_hash})
        if (cell_shells := read_shells(folder)) is not None:
            shells.append(cell_shells.assign(cell=cell)[["cell", *SHELL_COLUMNS]])
        if (folder / "fsc.csv").is_file():
            fsc = _read_fsc(folder / "fsc.csv")
            fsc.insert(0, "cell", cell)
            fscs.append(fsc)
    if not rows:
        raise InputError(f"{', '.join(map(str, roots))}: no results (no cells/*/meta.json)")
    trace = pd.concat(traces, ignore_index=True)
    cells = pd.DataFrame(rows).sort_values(["task", "scale", "label", "seed"], ignore_index=True)
    fsc = pd.concat(fscs, ignore_index=True) if fscs else pd.DataFrame(
        columns=["cell", "label", "evals", "freq", "fsc"])
    return Results(trace, cells, fsc, folders, _references(roots, seen), records,
                   *([pd.concat(shells, ignore_index=True)] if shells else []))


def _trace(folder: Path, record: CellRecord) -> pd.DataFrame:
    """A cell's trace (:func:`read_trace`) with its identity columns as its record says."""
    trace = read_trace(folder)
    ids = {"task": record.run.task, "scale": record.run.scale, "optimizer": record.optimizer_name,
           "label": record.label, "seed": record.run.seed, "cell": record.cell}
    for i, (k, v) in enumerate(ids.items()):
        if k in trace:
            trace[k] = v
        else:
            trace.insert(min(i, len(trace.columns)), k, v)
    return trace


FSC_COLUMNS = ("label", "evals", "freq", "fsc")


def _read_fsc(path: Path) -> pd.DataFrame:
    """A cell's ``fsc.csv`` (label, evals, freq in 1/Å, fsc), checked; one line naming the file
    and the column otherwise."""
    return read_table(path, "an FSC curve", FSC_COLUMNS, "label")


def _numbers(trace: pd.DataFrame) -> pd.DataFrame:
    """A trace's numbers that a cell's identity decides (all but the wall time)."""
    return trace.drop(columns=["wall_s"], errors="ignore").reset_index(drop=True)


def _same_copy(kept: Path, seen: tuple, folder: Path, record: CellRecord) -> None:
    """Refuse a second copy of a cell whose status or trace differs from the first's: one cell
    id, one result."""
    status, numbers = seen
    if record.status != status or not _numbers(_trace(folder, record)).equals(numbers):
        raise InputError(f"{folder}: cell {record.cell} is also in {kept} with another "
                         "status or trace; one cell id has one result")


def _references(roots, seen: dict) -> dict:
    """The ``reference.json`` entries (:mod:`cryobench.harness.reference`) of the result sets
    under ``roots`` for the (task, scale) pairs of their cells (``seen``: key → (task hash, its
    meta.json)); the first in sorted order of a key is kept, and one of another task hash than
    the cells' is refused."""
    files = sorted({f for root in roots for f in [Path(root) / REFERENCE_FILE,
                                                   *Path(root).glob(f"*/{REFERENCE_FILE}")]})
    out = {}
    for path in files:
        try:
            entries = read_references(path)
        except RecursionError:
            raise InputError(f"{path}: cannot read the references: lists or objects nested too "
                             "deeply") from None
        _merge_references(out, entries, seen, path)
    return out


def _merge_references(out: dict, entries: dict, seen: dict, where) -> None:
    """Add to ``out`` the reference ``entries`` {(task, scale): entry} of keys that have cells
    (``seen``) and are not in ``out`` yet, refusing one of another task hash than the cells'
    (``where`` names it in the error)."""
    for key, entry in entries.items():
        if key in seen and key not in out:
            _check_task_hash(seen, key, entry["task_hash"], where)
            out[key] = entry


def combine(*parts: Results) -> Results:
    """Loaded result sets as one — what :func:`load_results` over all their folders gives, without
    reading them again: a cell in several sets once (from the first given; pass the sets in
    sorted folder order), one task content hash per (task, scale)."""
    if not parts:
        raise InputError("no results to combine")
    folders, firsts, seen = {}, [], {}
    for part in parts:
        new = [c for c in part.folders if c not in folders]
        folders.update({c: part.folders[c] for c in new})
        firsts.append(set(new))
        for row in part.cells[part.cells["cell"].isin(new)].itertuples():
            _check_task_hash(seen, (row.task, row.scale), row.task_hash,
                             folders[row.cell] / "meta.json")

    def pick(frame_of):
        return pd.concat([frame_of(p)[frame_of(p)["cell"].isin(f)] for p, f in zip(parts, firsts)],
                         ignore_index=True)
    cells = pick(lambda p: p.cells).sort_values(["task", "scale", "label", "seed"],
                                                ignore_index=True)
    references = {}
    for part in parts:
        _merge_references(references, part.references, seen, "a result set's reference.json")
    records = {c: r for part, new in zip(parts, firsts) for c, r in part.records.items() if c in new}
    return Results(pick(lambda p: p.trace), cells, pick(lambda p: p.fsc), folders, references,
                   records, pick(lambda p: p.shells))
