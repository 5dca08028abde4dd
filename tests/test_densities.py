"""Figure 4's filter: the 2-D disk low-pass of a projection is the projection of the 3-D ball
low-pass (Fourier slice theorem, exact for the DFT), and the band limit read from a cell's
ground-truth views is the task's r_max."""
from pathlib import Path

import numpy as np
import pytest

from cryobench.data.spec import load_spec
from cryobench.harness.results import load_results
from cryobench.model.views import lowpass, projections
from cryobench.report.densities import _k2, lowpass_view

RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_lowpass_view_refuses_non_square_views():
    with pytest.raises(ValueError, match="square"):
        lowpass_view(np.zeros((3, 8, 9)), 2.0)


@pytest.mark.parametrize("name", ["paper-small", "modern-small"])
def test_committed_cells_band_limit_is_the_tasks_rmax(name):
    """The r_max the figure reads from the cells' records equals
    ``load_spec(task).scale(scale).rmax_px(box)``, and the stored ground-truth views carry power
    exactly on the disk |k| ≤ r_max (their largest significant |k|² is the last ring inside)."""
    if not (RESULTS / name / "cells").is_dir():
        pytest.skip(f"results/{name} is not committed")
    results = load_results(RESULTS / name)
    for (task, scale), cells in results.cells.groupby(["task", "scale"]):
        truth = next(v["ground_truth"] for v in map(results.views, cells["cell"]) if "ground_truth" in v)
        box = truth.shape[-1]
        rmax = load_spec(task).scale(scale).rmax_px(box)
        assert results.task_facts(task, scale).rmax_px == rmax, (task, scale)
        spectrum = np.abs(np.fft.rfft2(np.asarray(truth, np.float64)))
        kept = (spectrum > 1e-5 * spectrum.max()).any(axis=0)
        assert np.array_equal(_k2(box) <= _k2(box)[kept].max(), _k2(box) <= rmax**2), (task, scale)
