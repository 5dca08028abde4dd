"""Stand-in for another platform: recompute committed cells with the kernel's gradient changed
by one ulp in one voxel (a last-bit change, as another BLAS or CPU makes) and compare each test
NLL with the spread of the committed seeds at the same checkpoint."""
import sys
import numpy as np
from cryobench.model.likelihood import Likelihood
from cryobench.harness.registry import resolve
from cryobench.harness.results import load_results
from cryobench.harness.run import execute
from cryobench.task import load_task
from cryobench.base.threads import set_threads
from cryobench.harness.verify import tolerance

original = Likelihood.nll_and_grad
def one_ulp(self, volume, data):
    nll, grad = original(self, volume, data)
    grad.flat[0] = np.nextafter(grad.flat[0], np.float32(np.inf))
    return nll, grad
Likelihood.nll_and_grad = one_ulp

res = load_results(*sys.argv[1:])
rows = res.cells[res.cells["seed"] == 0]
tasks = {}
set_threads(1)
print("task | label | evals | |Δ test NLL| | seed spread | Δ / spread")
for row in rows.itertuples():
    spec = res.records[row.cell].run
    key = (spec.task, spec.scale)
    tasks.setdefault(key, load_task(spec.task, spec.scale, progress=False))
    out = execute(spec, tasks[key], resolve(spec.optimizer), compare=False)
    stored = res.trace[res.trace["cell"] == row.cell].set_index("evals")["test_nll"]
    now = out.trace.set_index("evals")["test_nll"]
    for e in [e for e in (5000, 50000, int(stored.index.max())) if e in now.index and e in stored.index]:
        d = abs(now[e] - stored[e]); s = tolerance(res, row, np.array([e]))[0]
        print(f"{row.task} | {row.label} | {e:,} | {d:.3g} | {s:.3g} | {d / s if s else float('inf'):.2g}", flush=True)
