"""Figure 4 as a structural biologist reads it: three orthogonal projections (along z, y and x)
of the ground truth and of each method's aligned densities at 5K / 50K / final, every one
low-passed to the task's band limit the same way, with the FSC 0.5 resolution on each estimate.

The cells store the projections (sums along z, y, x of the aligned density; ``views.npz``) and
the ground truth's projections *after* a 3-D ball low-pass to r_max (the likelihood sees nothing
beyond it). The report filters every stored projection in 2-D with the disk |k| ≤ r_max. By the
Fourier slice theorem this is the projection of the 3-D ball-low-passed density, and exactly so
for the DFT: the 2-D DFT of a sum along an axis is the central plane (k_axis = 0) of the 3-D DFT,
and the ball meets that plane in the disk (``lowpass_view``; tested against
``cryobench.model.views.lowpass``). So the estimates' high frequencies (the initial density's
spheres, which the likelihood cannot constrain) no longer look like detail.

The band limit is the r_max the runs recorded (their :class:`~cryobench.harness.record.TaskFacts`),
because a report reads results only: it is the r_max the run used, whatever the task files say
today.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cryobench.harness.results import Results
from cryobench.report.style import style
from cryobench.report.tables import comparable

SNAPS = ("5K", "50K", "final")
AXES = ("z", "y", "x")                      # views.npz order: sums along z, y and x


def _k2(n: int) -> np.ndarray:
    """|k|² (cycles per box) on the (n, n//2+1) half-plane of ``rfft2``, computed as
    ``cryobench.model.views.lowpass`` computes it, so the two masks agree to the last bit."""
    k = np.fft.fftfreq(n) * n
    return k[:, None] ** 2 + k[None, : n // 2 + 1] ** 2


def lowpass_view(image: np.ndarray, rmax: float | None = None, *, k2max: float | None = None) -> np.ndarray:
    """``image`` (…, n, n) with every 2-D Fourier coefficient outside the disk |k| ≤ ``rmax``
    (cycles per box; or |k|² ≤ ``k2max``) set to zero, in float64. For a projection along an axis
    this equals projecting the 3-D density low-passed to the ball |k| ≤ r_max (Fourier slice
    theorem, exact for the DFT)."""
    image = np.asarray(image, np.float64)
    n = image.shape[-1]
    if image.shape[-2] != n:
        raise ValueError(f"views must be square; got shape {image.shape}")
    limit = rmax**2 if k2max is None else k2max
    spectrum = np.fft.rfft2(image)
    return np.fft.irfft2(np.where(_k2(n) <= limit, spectrum, 0), s=(n, n))


def _lowest_seed_cells(results: Results, task: str, scale: str) -> pd.Series:
    """label → cell id of the run with the lowest seed on one dataset."""
    c = results.cells[(results.cells["task"] == task) & (results.cells["scale"] == scale)]
    return c.sort_values(["label", "seed"]).groupby("label")["cell"].first()


def _resolutions(results: Results, cell: str) -> dict:
    """snapshot label → FSC 0.5 resolution (Å) from the cell's record (None if not there)."""
    record = results.records.get(cell)
    return {s.get("label"): s.get("resolution_A") for s in (record.snapshots or [])} if record else {}


def _fsc_text(res) -> str:
    """'FSC 0.5: 56 Å'; 'FSC 0.5: none' if the FSC is below 0.5 from the first shell; '—' if
    unknown."""
    if res is None or (isinstance(res, float) and math.isnan(res)):
        return "FSC 0.5: —"
    return "FSC 0.5: none" if math.isinf(res) else f"FSC 0.5: {res:.0f} Å"


def _show(ax, image: np.ndarray) -> None:
    """One panel: the image, grey, min–max normalised on its own (the same rule for every panel)."""
    ax.imshow(image, cmap="gray", origin="lower", vmin=float(image.min()), vmax=float(image.max()),
              interpolation="nearest")
    ax.set(xticks=[], yticks=[])


def _blank(ax, text: str = "") -> None:
    """A panel without an image (a missing snapshot): no frame, ``text`` in the middle."""
    ax.set(xticks=[], yticks=[])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)


def density_figure(results: Results, task: str, scale: str) -> Figure:
    """Figure 4: projections along z, y and x (three columns per snapshot 5K, 50K, final) of the
    ground truth (top row, repeated over the snapshots) and of each label's lowest-seed run (one
    row per label; "—" where a snapshot is missing), all aligned to the truth and low-passed in
    2-D to the r_max the truth was low-passed to in 3-D (the runs' recorded task facts,
    ``lowpass_view``).
    Each panel is min–max normalised on its own; each estimate's FSC 0.5 resolution (meta.json)
    is written under its middle view."""
    results = comparable(results)
    cells = _lowest_seed_cells(results, task, scale)
    views = {label: results.views(cell) if cell in results.folders else {} for label, cell in cells.items()}
    truth = next((v["ground_truth"] for v in views.values() if "ground_truth" in v), None)
    facts = results.task_facts(task, scale)
    k2max = facts.rmax_px ** 2 if truth is not None and facts is not None else None
    rows = [("ground truth", None)] + list(cells.items())
    ratios = [1, 1, 1, 0.25, 1, 1, 1, 0.25, 1, 1, 1]          # three groups of three, two gaps
    with style(), sns.axes_style("white"):
        fig = Figure(figsize=(8.4, 0.86 * len(rows) + 0.9), layout="constrained")
        axes = fig.subplots(len(rows), len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios})
        for ax in axes[:, [3, 7]].ravel():
            ax.set_axis_off()
        for i, (label, cell) in enumerate(rows):
            stored = {k: truth for k in SNAPS} if cell is None and truth is not None else \
                {k: v for k, v in views.get(label, {}).items() if k in SNAPS}
            res = _resolutions(results, cell) if cell is not None else {}
            for g, snap in enumerate(SNAPS):
                group = axes[i, 4 * g: 4 * g + 3]
                if snap in stored and k2max is not None:
                    for ax, image in zip(group, lowpass_view(stored[snap], k2max=k2max)):
                        _show(ax, image)
                    if cell is not None:
                        group[1].set_xlabel(_fsc_text(res.get(snap)), fontsize=7, labelpad=2)
                else:
                    for j, ax in enumerate(group):
                        _blank(ax, "—" if j == 1 else "")
                if i == 0:
                    for ax, axis in zip(group, AXES):
                        ax.set_title(f"{snap}\nalong {axis}" if axis == "y" else f"\nalong {axis}",
                                     fontsize=8)
            name = "ground truth\n(band-limited)" if cell is None else textwrap.fill(label, 14)
            axes[i, 0].set_ylabel(name, fontsize=8, parse_math=False)       # a $ is a dollar
        limit = ("no ground truth" if k2max is None
                 else f"low-passed to |k| ≤ {math.sqrt(k2max):.3g} px (r_max)")
        fig.suptitle(f"{task} ({scale}): projections of the aligned densities, {limit}; "
                     "each panel min–max scaled", fontsize=9, parse_math=False)
    return fig
