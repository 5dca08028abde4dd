"""Simulating and loading a ci dataset."""
import shutil
import tempfile

import cryobench
from . import common
from cryobench.base.threads import set_threads
from cryobench.data.datasets import simulation_params
from cryobench.data.simulate import simulate
from cryobench.data.spec import load_spec


class Simulate:
    """``cryobench.data.simulate.simulate`` of a task's whole ci dataset (500 images of 24 px: render,
    CTF, noise, RELION STAR + .mrcs, ground truth, poses) into a temporary folder."""

    params = common.TASKS
    param_names = ["task"]
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 300

    def setup(self, name):
        common.task(name)                                 # threads, as in the other benchmarks
        spec = load_spec(name)
        self.sim = simulation_params(spec, spec.scale(common.SCALE))
        self.out = tempfile.mkdtemp(prefix="cryobench-asv-sim-")

    def teardown(self, name):
        shutil.rmtree(self.out, ignore_errors=True)

    def time_simulate(self, name):
        simulate(self.sim, self.out, progress=False)


class LoadTask:
    """``cryobench.load_task`` at the ci scale from the cached dataset: read the STAR/.mrcs,
    build quadrature and likelihood, prepare the image spectra, read the cached initial
    density. The datasets and initial densities are made beforehand by ``setup_cache`` (in its
    own process, so the peak memory below is that of one load)."""

    params = common.TASKS
    param_names = ["task"]
    timeout = 300

    def setup_cache(self):
        for name in common.TASKS:
            cryobench.load_task(name, scale=common.SCALE, data_dir=common.data_dir(),
                                progress=False)
        return str(common.data_dir())

    def setup(self, data_dir, name):
        set_threads(common.THREADS)

    def _load(self, data_dir, name):
        return cryobench.load_task(name, scale=common.SCALE, data_dir=data_dir, progress=False)

    def time_load_task(self, data_dir, name):
        self._load(data_dir, name)

    def peakmem_load_task(self, data_dir, name):
        """Peak RSS of the process (imports included) while loading the task."""
        self._load(data_dir, name)
