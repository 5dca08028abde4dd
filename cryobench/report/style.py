"""The plotting style every report figure is built and saved under: seaborn 'whitegrid' plus the
settings that make the files deterministic (a fixed SVG hash salt, text kept as text)."""
from __future__ import annotations

import matplotlib
import seaborn as sns

RC = {"svg.hashsalt": "cryobench", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
      "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8}


def style():
    """A local ``rc_context``: seaborn 'whitegrid' plus ``RC`` (no global state touched)."""
    return matplotlib.rc_context({**sns.axes_style("whitegrid"), **RC})
