"""``cryobench bench`` over several tasks: each benched in this process by the bench of its kind
(:mod:`cryobench.checks.bench` for ab-initio tasks, :mod:`cryobench.checks.bench_refinement` for
refinement ones), its report printed as it completes, then a summary."""
from __future__ import annotations

import sys

from cryobench.checks.bench import DEFAULT_TASKS, format_report, run_bench
from cryobench.checks.bench_refinement import format_refinement_report, run_refinement_bench
from cryobench.data.refinement import is_refinement
from cryobench.data.spec import load_spec


def run_benches(tasks=DEFAULT_TASKS, scale: str = "ci", data_dir=None, *,
                threads: int | None = None, epoch_batches: int | None = None, repeats: int = 5,
                out=None) -> list[dict]:
    """Bench several tasks, printing each report as it completes. The summary gives the peak
    memory, the kernel/GEMM ratio of each ab-initio task and the kernel/floor ratio of each
    refinement task; its last line is the minimum kernel/GEMM ratio as a plain number (the
    maximum kernel/floor ratio when only refinement tasks were benched)."""
    out = out or sys.stdout
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    reports = []
    for name in tasks:
        refinement = is_refinement(load_spec(name))
        bench = run_refinement_bench if refinement else run_bench
        r = bench(name, scale, data_dir, threads=threads, epoch_batches=epoch_batches,
                  repeats=repeats, log=say)
        reports.append(r)
        for line in (format_refinement_report if refinement else format_report)(r):
            say(line)
    say(f"peak memory: {max(r['peak_rss_gb'] for r in reports):.2f} GB (largest of the tasks)")
    gemm = [r for r in reports if "ratio" in r]
    floor = [r for r in reports if "floor_ratio" in r]
    if floor:
        say("kernel/floor ratio: " + ", ".join(f"{r['task']} {r['floor_ratio']:.2f}" for r in floor))
    if gemm:
        worst = min(gemm, key=lambda r: r["ratio"])
        say("kernel/GEMM ratio: " + ", ".join(f"{r['task']} {r['ratio']:.2f}" for r in gemm)
            + (f" (minimum: {worst['task']})" if len(gemm) > 1 else ""))
        say(f"{worst['ratio']:.2f}")
    else:
        say(f"{max(r['floor_ratio'] for r in floor):.2f}")
    return reports
