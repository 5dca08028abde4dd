"""Test NLL of every registered optimizer after the same short budget on the ci tasks.

    python docs/examples/ci_table.py [BUDGET]      (default 2000 evaluations, defaults only)

A small use of the Python API ahead of ``cryobench run``/``grid``: same init, same stream,
same budget for every method, seed derived from (task, optimizer, 0).
"""
import sys

import cryobench
from cryobench.base.seeding import rng_for
from cryobench.harness.registry import discover
from cryobench.optim import minimize

budget = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
tasks = [cryobench.load_task(t, "ci", progress=False) for t in ("synthetic-cylinder", "thermus-style")]
print("| optimizer | " + " | ".join(t.name for t in tasks) + " |")
print("|---|" + "---|" * len(tasks))
print("| (initial density) | " + " | ".join(f"{t.test_nll(t.init):.1f}" for t in tasks) + " |")
for name, m in sorted(discover().items()):
    cells = []
    for task in tasks:
        opt, oracle = m.configure(), task.oracle(budget=budget)
        state = minimize(opt, task.init, oracle, rng_for(task.name, name, 0))
        cells.append(f"{task.test_nll(opt.iterate(state)):.1f} ({oracle.evaluations})")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
