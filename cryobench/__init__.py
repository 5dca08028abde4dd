"""cryobench: cryo-EM density estimation as a standard benchmark for stochastic optimizers.

    >>> import cryobench
    >>> task = cryobench.load_task("synthetic-cylinder", scale="ci")
    >>> oracle = task.oracle()
    >>> batch = oracle.next_batch(task.batch_size)
    >>> value, grad = oracle.value_and_grad(task.init, batch)
    >>> task.test_nll(task.init)
"""
from cryobench.base import threads  # noqa: F401  (first: BLAS/OpenMP wait policy before they load)
from cryobench.errors import InputError
from cryobench.oracle import BudgetExhausted, Oracle
from cryobench.task import Task, load_task

__version__ = "0.1.0"
__all__ = ["BudgetExhausted", "InputError", "Oracle", "Task", "load_task", "__version__"]
