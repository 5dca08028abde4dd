"""The likelihood kernel, the slicing operator and the test NLL, on both ci tasks."""
from . import common


class Kernel:
    """Data term −log p(I | θ, V) of a minibatch of 100 training images (the first minibatch of
    the training stream, already prepared) at the task's random-sphere initial density."""

    params = common.TASKS
    param_names = ["task"]

    def setup(self, name):
        self.task = common.task(name)
        self.batch = common.minibatch(self.task)
        self.volume = self.task.init

    def time_nll_and_grad(self, name):
        """Value and gradient (what one oracle.value_and_grad spends on the data term)."""
        self.task.likelihood.nll_and_grad(self.volume, self.batch)

    def time_nll(self, name):
        """Value only."""
        self.task.likelihood.nll(self.volume, self.batch)

    def peakmem_nll_and_grad(self, name):
        """Peak RSS of the process (imports and loaded task included) over one value+gradient."""
        self.task.likelihood.nll_and_grad(self.volume, self.batch)


class Slicing:
    """The slicing operator P (Fourier slice theorem, tricubic from the ×2 oversampled cube)
    at every quadrature direction, and its exact adjoint."""

    params = common.TASKS
    param_names = ["task"]

    def setup(self, name):
        self.task = common.task(name)
        self.slicer = self.task.likelihood.slicer
        self.volume = self.task.init
        self.g = common.slice_gradient(self.task)

    def time_forward(self, name):
        """V → central slices (n_directions, n_points), complex."""
        self.slicer.forward(self.volume)

    def time_adjoint(self, name):
        """Slices → volume (Pᵀ), the last step of every gradient."""
        self.slicer.adjoint(self.g)


class TestNLL:
    """The score: Σ over the 100 test images of −log p(I_i | θ_i, V), at the initial density."""

    params = common.TASKS
    param_names = ["task"]

    def setup(self, name):
        self.task = common.task(name)

    def time_test_nll(self, name):
        self.task.test_nll(self.task.init)
