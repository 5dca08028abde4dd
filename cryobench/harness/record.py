"""The cell record: the one place a cell folder's ``meta.json`` and ``trace.csv`` are defined,
written and read.

``RESULTS/cells/<cell id>/`` holds

* ``trace.csv`` — tidy, one row per checkpoint (:func:`trace_columns`): the cell's identity
  (task, scale, optimizer, label, seed, cell), the checkpoint, the evaluation counts (``evals``
  and per kind), the likelihood ``terms`` computed and the ``flops`` spent on them (both absent in
  older traces; ``flops`` empty for a likelihood that does not count them), the optimizer's ``wall_s``, the score on the held-out split (``test_nll``, or
  ``validation_nll`` for tuning runs) and the training objective ``train_obj``, then for
  refinement tasks only ``subopt`` and ``fsc_opt_outer`` (:data:`REFINEMENT_COLUMNS`, see
  :func:`cryobench.data.refinement.checkpoint_scores`); numbers with 17 significant digits, so
  they read back exactly;
* ``meta.json`` — a :class:`CellRecord`: the run's specification (:class:`RunSpec`), status and
  message, evaluation counts, the task's content hash and recipe, the facts about the task the
  run knew (:class:`TaskFacts`: K, box, voxel size, r_max), provenance, identity, snapshots
  (evaluations, FSC resolution in Å, alignment) and where the cell's own time went;
* ``density_<5K|50K|final>.mrc`` — the snapshots; ``fsc.csv`` (label, evals, freq in 1/Å, fsc)
  and ``views.npz`` (aligned projections along z, y, x; plain arrays) when a ground truth is
  known;
* ``fsc_shells.csv`` — refinement tasks only (:func:`read_shells`): FSC per 1-voxel shell
  0 … ⌊r_max⌋ (freq in 1/Å) at each checkpoint of the trace against ``reference``: ``optimum``
  (the CG optimum) or, with a local search, ``truth``; ``meta.json``'s ``refinement`` holds the
  task's κ at r_max/2 and r_max (:mod:`cryobench.data.refinement`).

A cell folder appears only when complete: it is written under a temporary name, ``meta.json``
last, and renamed. Records of schema :data:`SCHEMA_VERSION` are read as they are, the type of
every field checked (:data:`FIELD_TYPES`: a wrong one is one line naming the file and the
field); a record written before :class:`TaskFacts` were recorded reads with ``task_facts`` None.
"""
from __future__ import annotations

import io
import json
import os
import sys
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from cryobench.base.files import to_json
from cryobench.data.mrc import volume_bytes
from cryobench.errors import InputError

SCHEMA_VERSION = 1
SNAPSHOTS = (5_000, 50_000)

ID_COLUMNS = ("task", "scale", "optimizer", "label", "seed", "cell")
COUNT_COLUMNS = ("grad_evals", "value_evals", "hvp_evals")
SCORED_SPLITS = ("test", "validation")
REFINEMENT_COLUMNS = ("subopt", "fsc_opt_outer")   # refinement tasks only, after train_obj
SHELL_FILE = "fsc_shells.csv"                       # refinement tasks only: FSC per shell
SHELL_COLUMNS = ("checkpoint", "evals", "reference", "shell", "freq", "fsc")
SHELL_REFERENCES = ("optimum", "truth")
NUMBER_COLUMNS = ("checkpoint", "evals", *COUNT_COLUMNS, "terms", "flops", "wall_s", "test_nll", "validation_nll",
                  "train_obj", *REFINEMENT_COLUMNS)


def score_column(split: str) -> str:
    """The trace column of the held-out score: ``test_nll`` or ``validation_nll``."""
    if split not in SCORED_SPLITS:
        raise ValueError(f"runs are scored on the test or validation split, not {split!r}")
    return f"{split}_nll"


def trace_columns(split: str = "test") -> tuple[str, ...]:
    """The columns of ``trace.csv``, in order, for runs scored on ``split``. ``terms`` (the
    likelihood terms the oracle computed) and ``flops`` (the flops of its products, empty where
    the likelihood does not count them) are absent from traces written before they existed:
    readers treat it as missing there."""
    return (*ID_COLUMNS, "checkpoint", "evals", *COUNT_COLUMNS, "terms", "flops", "wall_s",
            score_column(split), "train_obj")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run (with the task's content hash and the optimizer code)."""

    task: str
    scale: str
    optimizer: str                       # registered name, module:attr or path.py:attr
    params: dict = field(default_factory=dict)   # the full hyper-parameter values used
    seed: int = 0                        # training stream and optimizer RNG index
    budget: int | None = None            # gradient evaluations; None = the task's (10 epochs)
    per_decade: int = 5                  # checkpoints per decade of evaluations
    snapshots: tuple = SNAPSHOTS
    time_limit: float | None = None      # seconds of optimizer time; None = the default limit
    label: str = ""                      # how the configuration is shown in reports
    score: str = "test"                  # split scored at checkpoints: test, or validation (tune)
    threads: int = 1                     # BLAS threads: they change the last bits of the numbers
    oracle: dict | None = None           # None: the exact oracle; else its settings
                                         # (cryobench.model.importance.ImportanceSettings.to_dict)

    def to_dict(self) -> dict:
        """The specification as JSON; ``oracle`` only when it is not the exact oracle (so the
        ids of exact runs are those they had before the option existed)."""
        d = asdict(self)
        d["snapshots"] = list(self.snapshots)
        if d["oracle"] is None:
            del d["oracle"]
        return d

    @staticmethod
    def from_dict(d: dict, where="a run specification") -> "RunSpec":
        """The specification written by :meth:`to_dict`; one line naming ``where`` otherwise."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: 'run' must be an object")
        unknown = sorted(set(d) - {f.name for f in fields(RunSpec)})
        if unknown:
            raise InputError(f"{where}: 'run' has unknown field {unknown[0]!r}")
        try:
            return RunSpec(**{**d, "snapshots": tuple(d.get("snapshots", SNAPSHOTS))})
        except TypeError as exc:
            raise InputError(f"{where}: 'run' is not a run specification: {exc}") from None


@dataclass(frozen=True)
class TaskFacts:
    """What a run knew about its task and reports need: K, the minibatch, box, voxel size (Å)
    and r_max (Fourier pixels)."""

    n_train: int
    batch_size: int
    box: int
    pixel_size: float
    rmax_px: float

    @property
    def band_limit_A(self) -> float:
        """The finest resolution the likelihood sees, 1/r_max in Å."""
        return self.box * self.pixel_size / self.rmax_px

    @property
    def box_A(self) -> float:
        """The box side in Å."""
        return self.box * self.pixel_size


@dataclass
class CellRecord:
    """A cell's ``meta.json``: what ran, what it did, on what, and where."""

    run: RunSpec
    optimizer_name: str
    budget: int | None
    status: str                          # ok, diverged, budget, error
    message: str
    evaluations: int
    wall_s: float | None
    task_hash: str
    counts: dict = field(default_factory=dict)
    traceback: str | None = None
    time_limit_s: float | None = None
    task_recipe: str | None = None
    task_facts: TaskFacts | None = None
    provenance: dict = field(default_factory=dict)
    snapshots: list | None = None        # [{label, evals, file, resolution_A, …}]; None: not compared
    overhead_s: dict = field(default_factory=dict)
    identity: dict | None = None         # the parts of the cell id (harness.identity)
    refinement: dict | None = None       # refinement tasks: conditioning, FSC reference
    cell: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def label(self) -> str:
        """The configuration's label (the optimizer's name when the run has none)."""
        return self.run.label or self.optimizer_name

    def to_dict(self) -> dict:
        """The JSON object of ``meta.json`` (absent optional parts left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["run"] = self.run.to_dict()
        d["task_facts"] = asdict(self.task_facts) if self.task_facts else None
        return {k: v for k, v in d.items()
                if v is not None or k in ("traceback", "wall_s", "budget")}

    @staticmethod
    def from_dict(meta, where) -> "CellRecord":
        """A record from a ``meta.json`` object, checked (every field's type: :data:`FIELD_TYPES`);
        one line naming ``where``, the field and the problem otherwise."""
        if not isinstance(meta, dict):
            raise InputError(f"{where}: cell metadata must be a JSON object")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"{where}: schema_version {version}, but this cryobench reads schema "
                             f"{SCHEMA_VERSION}; rerun the grid or use the matching cryobench version")
        missing = [k for k in REQUIRED if k not in meta]
        run = meta.get("run")
        if missing or not isinstance(run, dict) or not all(k in run for k in RUN_REQUIRED):
            raise InputError(f"{where}: not a cell's metadata: missing {(missing or ['run fields'])[0]!r}")
        known = {f.name for f in fields(CellRecord)}
        values = {k: v for k, v in meta.items() if k in known}
        check_fields(values, FIELD_TYPES, where)
        if meta.get("status") not in STATUSES:
            raise InputError(f"{where}: status {meta.get('status')!r} is not one of "
                             f"{', '.join(STATUSES)}")
        values["run"] = RunSpec.from_dict({"optimizer": meta["optimizer_name"], **run}, where)
        facts = meta.get("task_facts")
        values["task_facts"] = TaskFacts(**facts) if facts else None
        return CellRecord(**values)

    @staticmethod
    def read(folder) -> "CellRecord":
        """The record of a cell folder (its ``meta.json``), checked."""
        path = Path(folder) / "meta.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read cell metadata: {exc}") from None
        except RecursionError:
            raise InputError(f"{path}: cannot read cell metadata: lists or objects nested "
                             f"too deeply (beyond the recursion limit, {sys.getrecursionlimit()})"
                             ) from None
        return CellRecord.from_dict(meta, path)


#: how a cell folder being written starts its name: nothing else is ever removed as a leftover
TEMPORARY = ".cryobench-"
STATUSES = ("ok", "diverged", "budget", "error", "interrupted")   # interrupted: not a result
REQUIRED = ("run", "cell", "status", "message", "budget", "evaluations", "wall_s", "task_hash",
            "optimizer_name")
RUN_REQUIRED = ("task", "scale", "label", "seed", "params")

#: what a value of ``meta.json`` may be: kind → (test, how the error line says it); JSON's
#: true and false are numbers to Python, not here
KINDS = {
    "count": (lambda v: type(v) is int and 0 <= v < 2**63, "a whole number ≥ 0"),
    "number": (lambda v: type(v) in (int, float), "a number"),
    "positive": (lambda v: type(v) in (int, float) and 0 < v < float("inf"), "a finite number > 0"),
    "str": (lambda v: type(v) is str, "a string"),
    "bool": (lambda v: type(v) is bool, "true or false"),
    "scalar": (lambda v: v is None or type(v) in (str, int, float, bool),
               "a number, a string, true, false or null"),
}
SCALARS = {"*": "scalar"}
#: the type of each field of ``meta.json`` (:func:`check_fields`); fields not named are not
#: read. A kind ending in ``?`` may be null, ``(schema,)`` is ``schema`` or null; in an object,
#: ``"*"`` is the kind of keys not named, and ``"...": None`` makes named keys optional.
FIELD_TYPES = {
    "run": {"task": "str", "scale": "str", "optimizer": "str", "params": SCALARS,
            "seed": "count", "budget": "count?", "per_decade": "count", "snapshots": ["count"],
            "time_limit": "number?", "label": "str", "score": "str", "threads": "count",
            "oracle": (SCALARS,), "...": None},
    "optimizer_name": "str", "budget": "count?", "status": "str", "message": "str",
    "evaluations": "count", "wall_s": "number?", "task_hash": "str", "counts": {"*": "count"},
    "traceback": "str?", "time_limit_s": "number?", "task_recipe": "str?",
    "task_facts": ({"n_train": "count", "batch_size": "count", "box": "count",
                    "pixel_size": "positive", "rmax_px": "positive"},),
    "provenance": SCALARS, "overhead_s": {"*": "number?"}, "identity": (SCALARS,),
    "snapshots": ([{"label": "str", "evals": "count", "file": "str?", "resolution_A": "number?",
                    "mirrored": "bool?", "align_score": "number?", "*": "scalar"}],),
    "cell": "str", "schema_version": "count", "refinement": (SCALARS,), "...": None,
}


def _shown(value) -> str:
    """A JSON value as an error line shows it: short, one line."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    return json.dumps(value)


def _check(value, kind, name: str, where) -> None:
    """Refuse ``value`` of the field ``name`` unless it is of ``kind`` (:data:`FIELD_TYPES`)."""
    null = isinstance(kind, tuple) or isinstance(kind, str) and kind.endswith("?")
    if null and value is None:
        return
    kind = kind[0] if isinstance(kind, tuple) else kind
    if isinstance(kind, str):
        test, what = KINDS[kind.rstrip("?")]
    else:
        test, what = {list: (lambda v: isinstance(v, list), "a list"),
                      dict: (lambda v: isinstance(v, dict), "an object")}[type(kind)]
    if not test(value):
        raise InputError(f"{where}: field {name!r} must be {what}{' or null' if null else ''}, "
                         f"not {_shown(value)}")
    if isinstance(kind, list):
        for i, item in enumerate(value):
            _check(item, kind[0], f"{name}[{i}]", where)
    elif isinstance(kind, dict):
        check_fields(value, kind, where, f"{name}.")


def check_fields(values: dict, schema: dict, where, prefix: str = "") -> None:
    """Check the object ``values`` against ``schema`` {key: kind} (:data:`FIELD_TYPES`); one
    InputError line naming ``where``, the field and the problem otherwise."""
    for key, value in values.items():
        if key not in schema and "*" not in schema:
            raise InputError(f"{where}: field {prefix[:-1]!r} has unknown key {key!r}")
        _check(value, schema.get(key, schema.get("*")), f"{prefix}{key}", where)
    required = [k for k, kind in schema.items() if "..." not in schema and k != "*"
                and not (isinstance(kind, tuple) or isinstance(kind, str) and kind.endswith("?"))]
    missing = [k for k in required if k not in values]
    if missing:
        raise InputError(f"{where}: field {prefix[:-1]!r} has no {missing[0]!r}")


@dataclass
class RunOutput:
    """A finished run: the trace, its record, density snapshots and their FSC curves."""

    trace: pd.DataFrame
    record: CellRecord
    densities: dict = field(default_factory=dict)    # label → V
    fsc: pd.DataFrame | None = None                  # label, evals, freq (1/Å), fsc
    views: dict = field(default_factory=dict)        # label → (3, D, D) aligned projections
    shells: pd.DataFrame | None = None               # refinement: SHELL_COLUMNS (fsc_shells.csv)


def empty_trace(split: str = "test") -> str:
    """The header of a trace without checkpoints (a run whose first step never returned)."""
    return ",".join(trace_columns(split)) + "\n"


def cell_files(out: RunOutput, cell: str, pixel_size: float) -> dict[str, bytes]:
    """The files of a cell folder as {name: bytes}."""
    rec, run = out.record, out.record.run
    rec.cell = cell
    trace = out.trace.copy()
    ids = {"task": run.task, "scale": run.scale, "optimizer": rec.optimizer_name,
           "label": rec.label, "seed": run.seed, "cell": cell}
    for i, (k, v) in enumerate(ids.items()):
        trace.insert(i, k, v)
    files = {"trace.csv": trace.to_csv(index=False, float_format="%.17g").encode(),   # exact
             "meta.json": to_json(rec.to_dict()).encode()}
    if out.fsc is not None:
        files["fsc.csv"] = out.fsc.to_csv(index=False, float_format="%.6g").encode()
    if out.shells is not None:
        files[SHELL_FILE] = out.shells[list(SHELL_COLUMNS)].to_csv(
            index=False, float_format="%.6g").encode()
    if out.views:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in out.views.items()})
        files["views.npz"] = buf.getvalue()
    for label, vol in out.densities.items():       # in memory: a killed cell leaves no file
        files[f"density_{label}.mrc"] = volume_bytes(vol, pixel_size)
    return files


def write_cell_folder(folder, files: dict[str, bytes]) -> Path:
    """Write a cell's files into ``folder`` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY}{folder.name}.tmp-{os.getpid()}-",
                                dir=folder.parent))
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


def read_trace(folder) -> pd.DataFrame:
    """A cell's trace.csv, refusing one that is not a trace with a message naming the file."""
    path = Path(folder) / "trace.csv"
    try:
        trace = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, not a trace") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read the trace: {str(exc).splitlines()[0]}") from None
    if "evals" not in trace.columns:
        raise InputError(f"{path}: not a trace: no column 'evals'")
    for column in [c for c in NUMBER_COLUMNS if c in trace.columns] if len(trace) else []:
        if not pd.api.types.is_numeric_dtype(trace[column]):
            raise InputError(f"{path}: column {column!r} holds text, not numbers")
    if not len(trace):                       # a run with no checkpoint: typed, empty columns
        trace = trace.astype({c: float for c in trace.columns if c not in ID_COLUMNS})
    return trace


def read_table(path: Path, what: str, columns, text: str) -> pd.DataFrame:
    """The CSV file ``path`` holding ``what`` (e.g. "an FSC curve") with ``columns``, all numbers
    but the column ``text``; one line naming the file and the column if it is not such a table."""
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot read {what}: {str(exc).splitlines()[0]}") from None
    for column in columns:
        if column not in table:
            raise InputError(f"{path}: not {what}: no column {column!r}")
        if column != text and len(table) and not pd.api.types.is_numeric_dtype(table[column]):
            raise InputError(f"{path}: column {column!r} holds text, not numbers")
    return table


def read_shells(folder) -> pd.DataFrame | None:
    """A refinement cell's ``fsc_shells.csv`` (:data:`SHELL_COLUMNS`), or None if the cell has
    none; one line naming the file and the column if it is not such a table."""
    path = Path(folder) / SHELL_FILE
    if not path.is_file():
        return None
    shells = read_table(path, "an FSC per shell", SHELL_COLUMNS, "reference")
    bad = sorted(set(shells["reference"].astype(str)) - set(SHELL_REFERENCES))
    if bad:
        raise InputError(f"{path}: column 'reference' holds {bad[0]!r}, not one of "
                         f"{', '.join(SHELL_REFERENCES)}")
    return shells[list(SHELL_COLUMNS)]
