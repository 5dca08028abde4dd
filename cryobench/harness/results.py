"""Results on disk: one folder per run (a grid cell), open formats, a schema version, no pickle.

``RESULTS/cells/<cell id>/`` holds

* ``trace.csv`` — tidy, one row per checkpoint: task, scale, optimizer, label, seed, cell,
  checkpoint, evals, grad_evals, value_evals, hvp_evals, wall_s, test_nll (or validation_nll
  for tuning runs), train_obj;
* ``meta.json`` — ``schema_version``, the run specification, status and message, evaluation
  counts, task content hash, optimizer code hash, provenance, snapshots (evaluations, FSC
  resolution in Å, alignment);
* ``density_<5K|50K|final>.mrc`` — the snapshots; ``fsc.csv`` (label, evals, freq in 1/Å, fsc)
  and ``views.npz`` (aligned projections along z, y, x; plain arrays) when a ground truth is
  known.

A cell folder appears only when complete: it is written under a temporary name and renamed.
Beside ``cells/``, ``RESULTS/reference.json`` holds the ground truth's test NLL of each simulated
(task, scale) (:mod:`cryobench.harness.reference`), loaded as :attr:`Results.references`.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryobench.data.mrc import write_volume
from cryobench.errors import InputError
from cryobench.harness.run import SCHEMA_VERSION, RunOutput

ID_COLUMNS = ["task", "scale", "optimizer", "label", "seed", "cell"]


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)                    # mkstemp's 0600 would hide results from others
    os.replace(tmp, path)


def to_json(obj) -> str:
    """Canonical JSON (sorted keys, numpy scalars as numbers, NaN as null)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    text = json.dumps(obj, indent=1, sort_keys=True, default=default, allow_nan=True)
    return text.replace("NaN", "null") + "\n"


def cell_files(out: RunOutput, cell: str, pixel_size: float) -> dict[str, bytes]:
    """The files of a cell folder as {name: bytes}."""
    run = out.meta["run"]
    trace = out.trace.copy()
    ids = {"task": run["task"], "scale": run["scale"], "optimizer": out.meta["optimizer_name"],
           "label": run["label"] or out.meta["optimizer_name"], "seed": run["seed"], "cell": cell}
    for i, (k, v) in enumerate(ids.items()):
        trace.insert(i, k, v)
    files = {"trace.csv": trace.to_csv(index=False, float_format="%.17g").encode(),   # exact
             "meta.json": to_json({**out.meta, "cell": cell}).encode()}
    if out.fsc is not None:
        files["fsc.csv"] = out.fsc.to_csv(index=False, float_format="%.6g").encode()
    if out.views:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in out.views.items()})
        files["views.npz"] = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        for label, vol in out.densities.items():
            path = Path(tmp) / f"density_{label}.mrc"
            write_volume(path, vol, pixel_size)
            files[path.name] = path.read_bytes()
    return files


def write_cell_folder(folder, files: dict[str, bytes]) -> Path:
    """Write a cell's files into ``folder`` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    os.chmod(tmp, 0o755)                    # mkdtemp's 0700 would hide results from others
    try:
        # meta.json last, so a folder with meta.json is complete even on filesystems without rename
        for name in sorted(files, key=lambda n: n == "meta.json"):
            (tmp / name).write_bytes(files[name])
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cell_complete(folder) -> bool:
    """Whether a cell folder holds a result (its meta.json, written last, is there)."""
    return (Path(folder) / "meta.json").is_file()


def read_cell_files(folder) -> dict[str, bytes]:
    """A cell folder's files as {name: bytes} (to send a folder back from a worker)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def remove_stale_temporaries(cells_dir) -> int:
    """Delete temporary cell folders left by processes that no longer run; returns how many."""
    removed = 0
    for tmp in Path(cells_dir).glob(".*.tmp-*"):
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


def read_meta(folder) -> dict:
    """A cell's meta.json, refusing other schema versions with a message naming the file."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read cell metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: cell metadata must be a JSON object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {version}, but this cryobench reads schema "
                         f"{SCHEMA_VERSION}; rerun the grid or use the matching cryobench version")
    missing = [k for k in META_FIELDS if k not in meta]
    if missing or not isinstance(meta.get("run"), dict) or not all(k in meta["run"] for k in RUN_FIELDS):
        raise InputError(f"{path}: not a cell's metadata: missing "
                         f"{(missing or ['run fields'])[0]!r}")
    return meta


META_FIELDS = ("run", "cell", "status", "message", "budget", "evaluations", "wall_s", "task_hash",
               "optimizer_name")
RUN_FIELDS = ("task", "scale", "label", "seed", "params")
TRACE_COLUMNS = ("evals",)


def read_trace(folder) -> pd.DataFrame:
    """A cell's trace.csv, refusing one that is not a trace with a message naming the file."""
    path = Path(folder) / "trace.csv"
    try:
        trace = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, not a trace") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read the trace: {str(exc).splitlines()[0]}") from None
    missing = [c for c in TRACE_COLUMNS if c not in trace.columns]
    if missing:
        raise InputError(f"{path}: not a trace: no column {missing[0]!r}")
    if len(trace) and not pd.api.types.is_numeric_dtype(trace["evals"]):
        raise InputError(f"{path}: column 'evals' holds non-numbers")
    if not len(trace):                       # a run with no checkpoint: typed, empty columns
        trace = trace.astype({c: float for c in trace.columns if c not in ID_COLUMNS})
    return trace


def cell_folders(root) -> list[Path]:
    """Complete cell folders under a results folder (recursively), sorted; or the cell itself."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder")
    if (root / "meta.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("cells/*/meta.json") if not p.parent.name.startswith("."))


@dataclass
class Results:
    """Loaded results: the traces (one row per checkpoint), one row per cell, FSC curves."""

    trace: pd.DataFrame
    cells: pd.DataFrame
    fsc: pd.DataFrame
    folders: dict = field(default_factory=dict)     # cell id → folder
    references: dict = field(default_factory=dict)  # (task, scale) → reference.json entry

    def views(self, cell: str) -> dict[str, np.ndarray]:
        """The aligned projections of a cell's snapshots and of the ground truth."""
        path = self.folders[cell] / "views.npz"
        if not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{path}: cannot read the views: {exc}") from None


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
    sorted order); refuses mixed schema versions or task content hashes.

    ``task_hashes`` {(task, scale): hash}, if given, is what the results must have been computed
    on (e.g. the tasks as currently defined).
    """
    traces, rows, fscs, folders, seen = [], [], [], {}, {}
    for folder in sorted({f for root in roots for f in cell_folders(root)}):
        meta = read_meta(folder)
        run, cell = meta["run"], meta["cell"]
        if cell in folders:             # the same run in two results sets (e.g. SGD as reference)
            continue
        key = (run["task"], run["scale"])
        _check_task_hash(seen, key, meta["task_hash"], folder / "meta.json",
                         (task_hashes or {}).get(key))
        folders[cell] = folder
        trace = read_trace(folder)
        traces.append(trace)
        snaps = {s["label"]: s for s in meta.get("snapshots") or []}
        last = trace.iloc[-1] if len(trace) else pd.Series(dtype=float)
        rows.append({"task": run["task"], "scale": run["scale"], "optimizer": meta["optimizer_name"],
                     "label": run["label"] or meta["optimizer_name"], "seed": run["seed"],
                     "cell": cell, "status": meta["status"], "message": meta["message"],
                     "budget": meta["budget"], "evals": meta["evaluations"],
                     "wall_s": meta["wall_s"], "final_nll": last.get("test_nll", np.nan),
                     "resolution_A": snaps.get("final", {}).get("resolution_A", np.nan),
                     "params": json.dumps(run["params"], sort_keys=True),
                     "task_hash": meta["task_hash"]})
        if (folder / "fsc.csv").is_file():
            try:
                fsc = pd.read_csv(folder / "fsc.csv")
            except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise InputError(f"{folder / 'fsc.csv'}: cannot read the FSC curve: "
                                 f"{str(exc).splitlines()[0]}") from None
            fsc.insert(0, "cell", cell)
            fscs.append(fsc)
    if not rows:
        raise InputError(f"{', '.join(map(str, roots))}: no results (no cells/*/meta.json)")
    trace = pd.concat(traces, ignore_index=True)
    cells = pd.DataFrame(rows).sort_values(["task", "scale", "label", "seed"], ignore_index=True)
    fsc = pd.concat(fscs, ignore_index=True) if fscs else pd.DataFrame(
        columns=["cell", "label", "evals", "freq", "fsc"])
    return Results(trace, cells, fsc, folders, _references(roots, seen))


def _references(roots, seen: dict) -> dict:
    """The ``reference.json`` entries (:mod:`cryobench.harness.reference`) of the result sets
    under ``roots`` for the (task, scale) pairs of their cells (``seen``: key → (task hash, its
    meta.json)); the first in sorted order of a key is kept, and one of another task hash than
    the cells' is refused."""
    from cryobench.harness.reference import REFERENCE_FILE, read_references
    files = sorted({f for root in roots for f in [Path(root) / REFERENCE_FILE,
                                                   *Path(root).glob(f"*/{REFERENCE_FILE}")]})
    out = {}
    for path in files:
        _merge_references(out, read_references(path), seen, path)
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
    return Results(pick(lambda p: p.trace), cells, pick(lambda p: p.fsc), folders, references)
