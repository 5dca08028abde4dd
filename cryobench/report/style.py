"""The plotting style every report figure is built and saved under: seaborn 'whitegrid' plus the
settings that make the files deterministic (a fixed SVG hash salt, text kept as text, never
through LaTeX), and :func:`log_scale`, a logarithmic axis whose coordinates are the same on
every CPU."""
from __future__ import annotations

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.scale import InvertedLogTransform, LogScale, LogTransform

from cryobench.base.portable import log_array, power_array

RC = {"svg.hashsalt": "cryobench", "svg.fonttype": "none", "text.usetex": False, "font.size": 9,
      "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
      "ytick.labelsize": 8}


def style():
    """A local ``rc_context``: seaborn 'whitegrid' plus ``RC`` (no global state touched)."""
    return matplotlib.rc_context({**sns.axes_style("whitegrid"), **RC})


def portable_log(values):
    """The natural logarithm of a number or array (float64) by
    :func:`cryobench.base.portable.log_array`: the same bits on every CPU, unlike NumPy's."""
    a = np.asarray(values, float)
    return log_array(np.atleast_1d(a), np.e).reshape(a.shape)


def _portable(function, values):
    """``function`` of an array-like, keeping a masked array's mask."""
    if isinstance(values, np.ma.MaskedArray):
        return np.ma.MaskedArray(function(np.ma.getdata(values).astype(float)),
                                 np.ma.getmaskarray(values))
    return function(np.asarray(values, float))


class _LogTransform(LogTransform):
    """matplotlib's log transform with :func:`cryobench.base.portable.log_array` for NumPy's
    ``log10``/``log2``, whose last bits follow the CPU's SIMD (AVX-512 or AVX2) and libm: they
    move the axes' limits and tick positions by an ulp, which changes the layout's last bits,
    so the SVG clip-path ids (hashes of the clip rectangles) and a few anti-aliased pixels."""

    def transform_non_affine(self, values):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = _portable(lambda a: log_array(a, float(self.base)), values)
            if self._clip:
                out[np.asarray(values) <= 0] = -1000      # as LogTransform
        return out

    def inverted(self):
        return _InvertedLogTransform(self.base)


class _InvertedLogTransform(InvertedLogTransform):
    """base**x by :func:`cryobench.base.portable.power_array` (NumPy's ``power`` follows the
    CPU too)."""

    def transform_non_affine(self, values):
        return _portable(lambda a: power_array(float(self.base), a), values)

    def inverted(self):
        return _LogTransform(self.base)


class _LogScale(LogScale):
    """matplotlib's ``"log"`` scale (ticks, labels, limits) with :class:`_LogTransform`."""

    def __init__(self, axis, *, base: float = 10):
        super().__init__(axis, base=base)
        self._portable = _LogTransform(base)

    def get_transform(self):
        return self._portable


def log_scale(axis, base: float = 10) -> LogScale:
    """A log scale for ``axis`` (pass it to its axes' ``set_xscale``/``set_yscale``) whose
    transforms give the same bits on every CPU; ticks and labels as matplotlib's ``"log"``."""
    return _LogScale(axis, base=base)


LINESTYLES = ("-", "--", "-.")       # ":" is the ground truth's


def line_styles(labels) -> dict[str, dict]:
    """A fixed ``color`` and ``ls`` per label, in sorted label order: seaborn's ten colour-blind
    colours, solid for the first ten labels, then dashed, then dash-dotted (so fifteen methods
    stay distinguishable where a palette of fifteen hues would not be)."""
    colours = sns.color_palette("colorblind", 10)
    return {label: {"color": colours[i % 10], "ls": LINESTYLES[i // 10 % len(LINESTYLES)]}
            for i, label in enumerate(sorted(set(labels)))}
