"""``cryobench gate``: the quality gate for CI .

Every registered optimizer, with its default hyper-parameters (no tuned values), runs on both
``ci`` tasks for a fixed budget of gradient evaluations on a few seeds (seed n = training stream
n + the optimizer's generator ``rng_for(task, optimizer, "optimizer", n)``, as in ``cryobench
run``), on one BLAS/numba thread, each method in a fresh process of its own (see below). Its
final test NLLs are compared with the committed reference (``results/gate/reference.json``),
which holds per (task, optimizer) the per-seed finals and statuses, their median and a noise
scale. A method fails when

    z = (median_now − median_ref) / max(noise_ref, FLOOR · |median_ref|)  >  K,

or when a seed errors or diverges that was ``ok`` in the reference. New methods (no reference)
and methods that got better beyond their noise are reported, not failed.

The choices, and why:

* **Noise** = the range (max − min) of the reference's per-seed finals: the seed-to-seed spread
  of that method on that task, in NLL units. Measured at the committed settings it runs from
  0.02 (SVRG) to 9 (Prodigy), so one global tolerance would be either blind or trigger-happy.
* **K = 2.** Runs of unchanged code on the same platform and thread count are bit-identical, so
  z = 0 exactly. Elsewhere float32 last bits differ; at 2,000 evaluations of the ci tasks that
  moved no final by more than 0.0012 (1 versus 2 threads here), far below every noise. The worst
  case is a platform whose rounding scrambles every trajectory into a fresh draw from the same
  seed distribution; for normal draws, P(median of 5 new − median of 5 reference > 2 ranges)
  ≈ 0.1 % per (task, method), about 3 % for all 24 at once (simulated), while a step-size bug of
  10× moves SGD by 58 and 117 ranges.
* **FLOOR = 1e-5** (relative): a method whose seeds agree to the last bits must not fail on
  rounding. 1e-5 · |median| ≈ 0.03 NLL at these values: 25 times the thread-count effect above,
  and below every measured range but SVRG's.
* **Divergence**: as ``cryobench run`` does, an iterate that stops being finite; and a final
  test NLL that is not finite or above 10× its initial size (the run's rule, applied to the
  score the gate compares).

* **One process per method** (``multiprocessing``'s ``spawn``: a new interpreter, nothing
  inherited): an optimizer that patches shared state (``cryobench.schedules.annealed_lr``, NumPy,
  the oracle's class) changes only its own runs, never the methods gated after it. A registered
  method is sent as its declaration (:class:`~cryobench.harness.declared.Declared`): neither
  the gate nor its method's process imports the optimizer's module, only each run's sandboxed
  optimizer process does; a method given as an object (cryobench's own, a test's) is sent by
  value (``cloudpickle``). The process imports cryobench afresh. A method whose process dies has every seed
  ``error``. Restoring patched state in one process instead cannot be complete (a patch may
  reach any module, C state or a function's code object).

The gate runs with the reference's configuration (tasks, scale, budget, seeds, threads), so the
two always match; ``--update`` remakes the reference with the module's defaults (or the given
budget and seeds).
"""
from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import sys
from pathlib import Path

import cloudpickle
import numpy as np

from cryobench.base.files import atomic_write
from cryobench.base.paths import RESULTS_DIR
from cryobench.base.provenance import git_commit
from cryobench.base.threads import thread_info, using_threads
from cryobench.errors import InputError
from cryobench.harness.fingerprint import optimizer_fingerprint
from cryobench.harness.plan import Planner
from cryobench.harness.registry import discover
from cryobench.harness.run import execute
from cryobench.task import load_task

DEFAULT_REFERENCE = RESULTS_DIR / "gate" / "reference.json"
TASKS = ("synthetic-cylinder", "thermus-style")
SCALE = "ci"
BUDGET = 2000
SEEDS = 5
THREADS = 1
K = 2.0
FLOOR = 1e-5
SCHEMA = 1


def run_seed(task, plan) -> dict:
    """The run ``plan`` (:class:`~cryobench.harness.plan.RunPlan`) on the loaded ``task`` through
    :func:`cryobench.harness.run.execute` (no comparison with the ground truth): {"status",
    "final", "message"}; the final is the test NLL of the last iterate (None unless the status
    is ok)."""
    out = execute(plan.spec, task, plan.method, compare=False)
    status, message = out.record.status, out.record.message
    final = float(out.trace["test_nll"].iloc[-1])
    if status == "ok" and not math.isfinite(final):
        status, message = "diverged", f"final test NLL {final}"
    return {"status": status, "final": final if status == "ok" else None, "message": message}


def summarise(finals) -> tuple[float | None, float | None]:
    """(median, range) of the finite finals, or (None, None) if there are none."""
    values = [f for f in finals if f is not None]
    if not values:
        return None, None
    return float(np.median(values)), float(np.ptp(values))


def measure(methods: dict, tasks=TASKS, scale: str = SCALE, budget: int = BUDGET,
            seeds: int = SEEDS, threads: int = THREADS, data_dir=None, log=None) -> dict:
    """Run every method on every task and seed, each method in a fresh process of its own
    (:func:`isolated_runs`); {task: {method: entry}} with per-seed finals, statuses and messages,
    their median and noise, the parameters and the optimizer's code hash. Each method runs with
    its defaults (no tuned values), planned like any run."""
    out = {}
    for mname, method in sorted(methods.items()):
        code = optimizer_fingerprint(method)
        runs_of = isolated_runs(method, tasks, scale, budget, seeds, threads, data_dir)
        for task, runs in runs_of.items():
            finals = [r["final"] for r in runs]
            median, noise = summarise(finals)
            entry = out.setdefault(task, {})[mname] = {
                "params": method.defaults(), "code": code, "finals": finals,
                "status": [r["status"] for r in runs], "messages": [r["message"] for r in runs],
                "median": median, "noise": noise}
            if log:
                log(f"  ran {task} {mname}: " + ", ".join(
                    f"{f:.3f}" if f is not None else st for f, st in zip(finals, entry["status"])))
    return out


def method_runs(method, tasks, scale: str, budget: int, seeds: int, threads: int,
                data_dir) -> dict:
    """{task name: [:func:`run_seed` of each seed]} of one method, in this process."""
    out = {}
    planner = Planner(data_dir, threads, tuned=None)
    with using_threads(threads):
        for name in tasks:
            task = load_task(name, scale, data_dir, progress=False)
            ref = planner.task(name, scale)
            out[task.name] = [run_seed(task, planner.plan(ref, method.name, {}, s, budget,
                                                          method=method)) for s in range(seeds)]
    return out


def _child(payload: bytes, conn) -> None:
    """A gate process: :func:`method_runs` of the pickled arguments, sent back as ("ok",
    result) or ("raise", exception)."""
    try:
        result = ("ok", method_runs(*cloudpickle.loads(payload)))
    except Exception as exc:                                # the harness's: raised in the gate
        result = ("raise", exc)
    try:
        conn.send(result)
    except Exception as exc:                                # an exception that does not pickle
        conn.send(("raise", RuntimeError(f"{type(result[1]).__name__}: {result[1]}; ({exc})")))
    conn.close()


def isolated_runs(method, tasks, scale: str, budget: int, seeds: int, threads: int,
                  data_dir) -> dict:
    """:func:`method_runs` in a fresh process (``spawn``), so that nothing the method changes in
    its process reaches the other methods' runs or the gate; a process that ends without an
    answer gives every seed status ``error``."""
    try:
        payload = cloudpickle.dumps((method, list(tasks), scale, budget, seeds, threads,
                                     None if data_dir is None else str(data_dir)))
    except Exception as exc:
        raise InputError(f"gate: optimizer {method.name!r} cannot be sent to a process of its "
                         f"own: {type(exc).__name__}: {exc}") from None
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(payload, send), name=f"cryobench-gate-{method.name}")
    proc.start()
    send.close()
    try:
        kind, value = receive.recv()
    except EOFError:                                        # the process died without answering
        proc.join()
        message = f"the method's process ended with exit code {proc.exitcode} before its results"
        return {name: [{"status": "error", "final": None, "message": message}] * seeds
                for name in tasks}
    finally:
        receive.close()
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if kind == "raise":
        raise value
    return value


def read_reference(path, what: str, schema: int, command: str) -> dict:
    """A committed JSON reference of ``schema``; one InputError line naming the file otherwise
    (``what`` names the reference, ``command`` the one that remakes it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found; make it with `{command} --update "
                         f"--reference {path}`")
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON {what} ({exc})") from None
    if not isinstance(ref, dict) or ref.get("schema") != schema:
        raise InputError(f"{path}: {what} schema {ref.get('schema') if isinstance(ref, dict) else None!r}"
                         f", expected {schema}; remake it with `{command} --update`")
    return ref


def load_reference(path) -> dict:
    """The reference file, checked; one InputError line naming the file and problem otherwise."""
    path = Path(path)
    ref = read_reference(path, "gate reference", SCHEMA, "cryobench gate")
    for key in ("config", "entries"):
        if not isinstance(ref.get(key), dict):
            raise InputError(f"{path}: gate reference has no {key!r} table")
    for key in ("tasks", "scale", "budget", "seeds", "threads"):
        if key not in ref["config"]:
            raise InputError(f"{path}: gate reference config has no {key!r}")
    for task, entries in ref["entries"].items():
        for mname, e in entries.items():
            for key in ("finals", "status", "median", "noise"):
                if key not in e:
                    raise InputError(f"{path}: entry {task}/{mname} has no {key!r}")
    return ref


def made() -> dict:
    """When, from which commit and on which machine a reference is made."""
    commit, dirty = git_commit()
    return {"date": datetime.date.today().isoformat(), "git_commit": commit, "git_dirty": dirty,
            "numpy": np.__version__,
            **{k: v for k, v in thread_info().items() if k in ("cpu", "cores", "blas")}}


def write_document(path, doc: dict) -> None:
    """Write a reference document atomically, as sorted, indented JSON."""
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def write_reference(path, results: dict, config: dict) -> None:
    """Write the reference (atomically) with its configuration, rule and provenance."""
    write_document(path, {
        "schema": SCHEMA, "config": config,
        "rule": {"noise": "range of the per-seed final test NLLs", "k": K, "floor_relative": FLOOR,
                 "fails": "(median_now - median_ref) / max(noise_ref, floor * |median_ref|) > k"},
        "made": made(), "entries": results})


def compare(now: dict, ref: dict, k: float = K, floor: float = FLOOR) -> list[dict]:
    """One finding per (task, method): {"task", "method", "verdict", "z", "text"}; verdict is
    ok, better, worse, status (errors/diverges where the reference was ok), new or gone."""
    findings = []
    for task, entries in now.items():
        refs = ref["entries"].get(task, {})
        for mname, e in entries.items():
            f = {"task": task, "method": mname, "z": None}
            r = refs.get(mname)
            if r is None:
                findings.append({**f, "verdict": "new", "text": "no reference (new method): "
                                 f"median {_num(e['median'])}; record it with --update"})
                continue
            changed = " (its code changed since the reference)" if e.get("code") != r.get("code") else ""
            broke = [(s, st, msg) for s, (st, was, msg) in
                     enumerate(zip(e["status"], r["status"], e["messages"])) if st != "ok" and was == "ok"]
            if broke:
                text = "; ".join(f"seed {s} {st}: {msg}" for s, st, msg in broke)
                findings.append({**f, "verdict": "status", "text": text + changed})
                continue
            if r["median"] is None or e["median"] is None:
                findings.append({**f, "verdict": "ok", "text": "no ok seed here or in the "
                                 "reference: statuses " + ",".join(e["status"])})
                continue
            scale = max(r["noise"], floor * abs(r["median"]))
            z = (e["median"] - r["median"]) / scale
            detail = (f"median {e['median']:.3f} vs {r['median']:.3f}: {z:+.2f} noise "
                      f"(noise {scale:.3g} = {'seed range' if r['noise'] >= floor * abs(r['median']) else 'floor'})")
            verdict = "worse" if z > k else "better" if z < -k else "ok"
            findings.append({**f, "z": z, "verdict": verdict, "text": detail
                             + (changed if verdict == "worse" else "")})
        for mname in sorted(set(refs) - set(entries)):
            findings.append({"task": task, "method": mname, "z": None, "verdict": "gone",
                             "text": "in the reference but not run (no longer registered)"})
    return findings


def _num(x) -> str:
    return "none" if x is None else f"{x:.3f}"


def gate(methods: dict | None = None, reference=DEFAULT_REFERENCE, update: bool = False, *,
         budget: int | None = None, seeds: int | None = None, tasks=None, data_dir=None,
         out=None) -> int:
    """Run the gate (or, with ``update``, rewrite the reference); returns the exit status: 0
    passed or updated, 1 a method got worse beyond its noise, errored or diverged.

    ``methods``: {name: Method} to gate (default: every registered optimizer). ``budget``,
    ``seeds`` and ``tasks`` apply to ``update`` only (the gate runs the reference's settings).
    """
    out = out or sys.stdout
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    methods = discover(data_dir=data_dir) if methods is None else methods
    if update:
        config = {"tasks": list(tasks or TASKS), "scale": SCALE, "budget": int(budget or BUDGET),
                  "seeds": int(seeds or SEEDS), "threads": THREADS}
        if config["budget"] < 1 or config["seeds"] < 2:
            raise InputError("gate --update: the budget must be ≥ 1 and the seeds ≥ 2 (the noise "
                             "is their spread)")
        results = measure(methods, config["tasks"], config["scale"], config["budget"],
                          config["seeds"], config["threads"], data_dir, log=say)
        write_reference(reference, results, config)
        say(f"gate: wrote the reference for {len(methods)} methods × {len(config['tasks'])} tasks "
            f"({config['seeds']} seeds, {config['budget']:,} evaluations) to {reference}")
        return 0
    if budget is not None or seeds is not None or tasks is not None:
        raise InputError("gate: --budget and --seeds go with --update; the gate runs the "
                         "reference's configuration")
    ref = load_reference(reference)
    c = ref["config"]
    say(f"gate: {len(methods)} methods × {len(c['tasks'])} {c['scale']} tasks, {c['seeds']} seeds, "
        f"{c['budget']:,} evaluations, {c['threads']} thread(s); reference {reference}")
    now = measure(methods, c["tasks"], c["scale"], c["budget"], c["seeds"], c["threads"], data_dir)
    k = float(ref.get("rule", {}).get("k", K))
    findings = compare(now, ref, k, float(ref.get("rule", {}).get("floor_relative", FLOOR)))
    marks = {"ok": "ok", "better": "BETTER", "worse": "WORSE", "status": "BROKEN", "new": "NEW",
             "gone": "GONE"}
    for f in findings:
        say(f"{marks[f['verdict']]:7s} {f['task']:20s} {f['method']:15s} {f['text']}")
    failed = [f for f in findings if f["verdict"] in ("worse", "status")]
    for verdict, what in (("new", "new methods without a reference (not a failure)"),
                          ("better", "better beyond their noise (not a failure; --update records it)"),
                          ("gone", "in the reference but not registered")):
        names = [f"{f['method']} on {f['task']}" for f in findings if f["verdict"] == verdict]
        if names:
            say(f"gate: {what}: {', '.join(names)}")
    if failed:
        say("gate: FAILED: " + "; ".join(
            f"{f['method']} on {f['task']} " + (f"worse by {f['z']:.1f} noise (limit {k:g})"
                                                if f["verdict"] == "worse" else "errored or diverged")
            for f in failed))
        return 1
    say(f"gate: passed ({len(findings)} comparisons)")
    return 0
