"""``cryobench speed-gate``: a speed check for CI that does not cry wolf on a shared runner.

A raw timing compared with a saved one fails whenever the runner is busier or slower than the
machine that saved it (the pytest-benchmark compare at 25 % failed 3 runs in 4 on an unchanged
tree). This check compares a machine-normalised figure instead: per task, the time of the
likelihood kernel (value and gradient of the first minibatch of 100 training images at the
initial density, as ``cryobench bench`` times it) over the time of SGEMM on the kernel's own
matrix products (same shapes and layouts, random float32 operands), both measured in this
process, one thread.

* **Interleaved pairs.** A sample is a block of ``calls`` kernel evaluations and a block of
  ``calls`` rounds of the GEMMs, back to back (in alternating order, so a drift in clock speed
  favours neither); ``calls`` makes a kernel block last about ``BLOCK_S`` seconds, so the
  kernel's fixed overheads are measured as they are in use but timer resolution is not. Load from
  other processes that lasts longer than a pair slows both halves alike and cancels in their ratio.
* **Robust statistic.** The figure is the median over ``PAIRS`` pairs of the per-pair ratio
  kernel time / GEMM time: a burst of load that hits one half of a few pairs moves the median
  little. (Minimums are not used: the kernel's and the GEMM's best cases need not fall in the
  same quiet moment.)
* **Tolerance.** The check fails when a task's ratio exceeds ``TOLERANCE`` = 1.4 × the
  reference's, close to the geometric midpoint of "unchanged" (1×) and "twice as slow" (2×):
  the run-to-run spread of the median measured here on the shared 2-core machine was within
  ±15 %, so an unchanged tree passes and a 2× slowdown fails, each with a wide margin.

The reference (``results/gate/speed.json``) holds the ratio per task, the configuration and the
machine; ``--update`` remakes it (on three times as many pairs, for a steadier reference). The
ratio depends somewhat on the CPU (SIMD width, caches), so remake it when CI moves to a
different kind of runner.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from cryobench.base.paths import RESULTS_DIR
from cryobench.checks.bench import DEFAULT_TASKS, gemm_products
from cryobench.base.threads import using_threads
from cryobench.checks.gate import made, read_reference, write_document
from cryobench.errors import InputError
from cryobench.task import load_task

DEFAULT_REFERENCE = RESULTS_DIR / "gate" / "speed.json"
SCALE = "small"
PAIRS = 60
BLOCK_S = 0.04
TOLERANCE = 1.4
THREADS = 1
MINIBATCH = 100
UPDATE_PAIRS_FACTOR = 3
SCHEMA = 1


def measure_task(task, pairs: int = PAIRS, block_s: float = BLOCK_S, clock=time.perf_counter) -> dict:
    """Interleaved kernel/GEMM pairs on one loaded task (see the module docstring): the median
    per-pair time ratio, its quartiles, and the per-call times."""
    lik = task.likelihood
    data = lik.subset(task.spectra, task.stream(0, MINIBATCH))
    x = task.init
    products = [fn for _, fn in gemm_products(lik.gemm_shapes(MINIBATCH))]

    def kernel():
        lik.nll_and_grad(x, data)

    def gemm():
        for fn in products:
            fn()

    single = []
    for _ in range(3):                                   # compile, warm caches and work arrays
        t0 = clock()
        kernel()
        single.append(clock() - t0)
        gemm()
    calls = max(1, math.ceil(block_s / max(min(single), 1e-9)))

    def block(fn) -> float:
        t0 = clock()
        for _ in range(calls):
            fn()
        return clock() - t0

    k_times, g_times = np.empty(pairs), np.empty(pairs)
    for i in range(pairs):
        if i % 2 == 0:
            k_times[i] = block(kernel)
            g_times[i] = block(gemm)
        else:
            g_times[i] = block(gemm)
            k_times[i] = block(kernel)
    ratios = k_times / g_times
    q25, median, q75 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {"task": task.name, "time_ratio": float(median), "q25": float(q25), "q75": float(q75),
            "pairs": pairs, "calls": calls, "kernel_ms": float(np.median(k_times) / calls * 1e3),
            "gemm_ms": float(np.median(g_times) / calls * 1e3)}


def measure(tasks=DEFAULT_TASKS, scale: str = SCALE, pairs: int = PAIRS, block_s: float = BLOCK_S,
            threads: int = THREADS, data_dir=None) -> dict:
    """{task: measure_task(...)} for each task at ``scale``, on ``threads`` threads."""
    out = {}
    with using_threads(threads):
        for name in tasks:
            task = load_task(name, scale, data_dir, progress=False)
            out[task.name] = measure_task(task, pairs, block_s)
            del task
    return out


def load_reference(path) -> dict:
    """The speed reference, checked; one InputError line naming the file and problem otherwise."""
    path = Path(path)
    ref = read_reference(path, "speed reference", SCHEMA, "cryobench speed-gate")
    for key in ("tasks", "scale", "pairs", "block_s", "threads", "tolerance"):
        if key not in ref.get("config", {}):
            raise InputError(f"{path}: speed reference config has no {key!r}")
    for name, entry in ref.get("results", {}).items():
        if not isinstance(entry, dict) or not entry.get("time_ratio", 0) > 0:
            raise InputError(f"{path}: results.{name}.time_ratio must be a positive number")
    if set(ref.get("results", {})) != set(ref["config"]["tasks"]):
        raise InputError(f"{path}: results do not cover the config's tasks {ref['config']['tasks']}")
    return ref


def compare(now: dict, ref: dict, tolerance: float) -> list[dict]:
    """Per task: {"task", "slowdown" (ratio now / reference), "verdict" ok|slower|faster, "text"}."""
    findings = []
    for name, m in now.items():
        r = ref["results"][name]["time_ratio"]
        slowdown = m["time_ratio"] / r
        verdict = "slower" if slowdown > tolerance else "faster" if slowdown < 1 / tolerance else "ok"
        findings.append({"task": name, "slowdown": slowdown, "verdict": verdict, "text":
                         f"kernel/GEMM time {m['time_ratio']:.3f} (reference {r:.3f}): "
                         f"{slowdown:.2f}× (limit {tolerance:.2f}×); kernel {m['kernel_ms']:.2f} ms, "
                         f"GEMM {m['gemm_ms']:.2f} ms per call; quartiles {m['q25']:.3f}–"
                         f"{m['q75']:.3f} over {m['pairs']} pairs of {m['calls']} calls"})
    return findings


def write_reference(path, results: dict, config: dict) -> None:
    """Write the speed reference (atomically) with its configuration and machine."""
    write_document(path, {"schema": SCHEMA, "config": config, "made": made(), "results": results})


def speed_gate(reference=DEFAULT_REFERENCE, update: bool = False, *, tolerance: float | None = None,
               tasks=None, scale: str | None = None, data_dir=None, out=None) -> int:
    """Run the speed check against ``reference`` (or rewrite it with ``update``); returns the exit
    status: 0 passed or updated, 1 a task's kernel is slower, normalised by GEMM, than allowed."""
    out = out or sys.stdout
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    if update:
        config = {"tasks": list(tasks or DEFAULT_TASKS), "scale": scale or SCALE, "pairs": PAIRS,
                  "block_s": BLOCK_S, "threads": THREADS, "minibatch": MINIBATCH,
                  "tolerance": float(tolerance or TOLERANCE)}
        results = measure(config["tasks"], config["scale"], PAIRS * UPDATE_PAIRS_FACTOR, BLOCK_S,
                          THREADS, data_dir)
        write_reference(reference, results, config)
        for name, m in results.items():
            say(f"speed-gate: {name} kernel/GEMM time {m['time_ratio']:.3f} (quartiles "
                f"{m['q25']:.3f}–{m['q75']:.3f}, {m['pairs']} pairs)")
        say(f"speed-gate: wrote {reference}")
        return 0
    if tasks is not None or scale is not None:
        raise InputError("speed-gate: --task and --scale go with --update; the check runs the "
                         "reference's configuration")
    ref = load_reference(reference)
    c = ref["config"]
    tolerance = float(tolerance or c["tolerance"])
    if not tolerance > 1:
        raise InputError(f"speed-gate: --tolerance {tolerance:g} must be above 1")
    say(f"speed-gate: {', '.join(c['tasks'])} at {c['scale']} scale, {c['pairs']} interleaved "
        f"kernel/GEMM pairs, {c['threads']} thread(s); reference {reference}")
    now = measure(c["tasks"], c["scale"], c["pairs"], c["block_s"], c["threads"], data_dir)
    findings = compare(now, ref, tolerance)
    for f in findings:
        say(f"{ {'ok': 'ok', 'slower': 'SLOWER', 'faster': 'FASTER'}[f['verdict']]:7s} "
            f"{f['task']:20s} {f['text']}")
    slower = [f for f in findings if f["verdict"] == "slower"]
    faster = [f["task"] for f in findings if f["verdict"] == "faster"]
    if faster:
        say(f"speed-gate: faster than the reference beyond the tolerance: {', '.join(faster)} "
            "(not a failure; --update records it)")
    if slower:
        say("speed-gate: FAILED: " + "; ".join(
            f"{f['task']} kernel {f['slowdown']:.2f}× the reference, relative to GEMM "
            f"(limit {tolerance:.2f}×)" for f in slower))
        return 1
    say("speed-gate: passed")
    return 0
