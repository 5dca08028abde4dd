"""One ranking per task: every method of every result set on a (task, scale), in one table.

The result sets are combined as loading all their folders would (a cell in several sets counts
once), so a method is compared with every other method run on the same task, scale, training
streams and initial density, whichever set it was committed in. The statistics and marks are
those of the checkpoint table (:func:`cryobench.report.tables.checkpoint_table`): median over
seeds, seed range, gap to the best with its paired sign-flip p-value, **bold** where a method
cannot be told apart from the best. Rows are ranked by their median final test NLL (a method
whose median seed failed ranks last); the ``set`` column names the result sets its cells are in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.html import inline, table_html
from cryobench.report.tables import (TEXT_COLUMNS, _markdown, checkpoint_table, comparable,
                                     md_text, table_blocks, table_note)

RANK_TEXT = TEXT_COLUMNS | {"set"}


def ranking_tables(loaded: dict[str, Results], combined: Results
                   ) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]]]:
    """Over the result sets ``loaded`` ({set name: its results}, not empty) and ``combined``, all
    of them together (:func:`cryobench.harness.results.combine` in sorted order): the checkpoint
    table of all of them, and per (task, scale) (the line with the seeds, the noise floor and the
    truth's test NLL, the ranked methods as formatted strings with their ``rank`` and ``set``)."""
    table = checkpoint_table(combined)
    cells = comparable(combined).cells
    sets_of = {c: [n for n in sorted(loaded) if c in loaded[n].folders] for c in cells["cell"]}
    out = []
    for line, shown, t in table_blocks(table):
        keys = list(zip(t["task"], t["scale"], t["label"]))
        sets = []
        for task, scale, label in keys:
            mine = cells[(cells["task"] == task) & (cells["scale"] == scale) & (cells["label"] == label)]
            names = sorted({n for c in mine["cell"] for n in sets_of[c]})
            sets.append(", ".join(map(md_text, names)))
        order = np.lexsort((t["label"].to_numpy(), np.nan_to_num(t["Final"].to_numpy(float),
                                                                  nan=np.inf)))
        ranked = shown.iloc[order].reset_index(drop=True)
        ranked.insert(0, "rank", [str(i + 1) for i in range(len(ranked))])
        ranked.insert(2, "set", [sets[i] for i in order])
        out.append((line, ranked))
    return table, out


INTRO = ("Every method of every result set below, per task and scale, ranked by its median final "
         "test NLL; the sections that follow give each result set's figures and runs.")


def ranking_section(loaded: dict[str, Results], combined: Results) -> tuple[list[str], list[str]]:
    """(markdown lines, HTML lines) of the ranking section over the result sets ``loaded`` and
    ``combined``, all of them together (as for :func:`ranking_tables`); empty without results."""
    if not loaded:
        return [], []
    table, tables = ranking_tables(loaded, combined)
    md = ["## Ranking per task", "", INTRO, ""]
    body = ['<section id="ranking">', "<h2>Ranking per task</h2>", f"<p>{inline(INTRO)}</p>"]
    for line, ranked in tables:
        numeric = set(ranked.columns) - RANK_TEXT
        md += [line, "", _markdown(ranked, numeric)]
        body += [f"<p>{inline(line)}</p>", table_html(ranked, numeric)]
    note = table_note(table)
    return md + [note, ""], body + [f"<p>{inline(note)}</p>", "</section>"]
