"""The leaderboard's findings section: the paper's findings (:mod:`cryobench.report.findings`)
measured on the exact-oracle runs of every result set together, and on refinement tasks the
claims of Toader, Brubaker & Lederman (2025) (:mod:`cryobench.report.refinement_claims`)."""
from __future__ import annotations

import pandas as pd

from cryobench.harness.results import Results
from cryobench.report.findings import findings_markdown, findings_table
from cryobench.report.html import inline, table_html
from cryobench.report.oracles import split_by_oracle
from cryobench.report.refinement_claims import refinement_findings
from cryobench.report.tables import md_text


def findings_section(combined: Results) -> tuple[list[str], list[str]]:
    """(markdown, HTML) of the paper-findings section over ``combined``, all result sets together
    (combined in sorted order as loading their folders would); importance-sampled runs are left
    out (the oracle comparison says what they change); empty without cells."""
    if not len(combined.cells):
        return [], []
    exact, sampled = split_by_oracle(combined)
    table = findings_table(exact)
    intro = ("Each finding of the paper (§4, Figure 3, Figure 6) as a criterion stated here, "
             "measured over all result sets above by seed (median over seeds; the same training "
             "streams for every method); see `docs/paper-findings.md`." + (
                 " Importance-sampled runs are left out here: the oracle comparison above says "
                 "which verdicts they change." if len(sampled.cells) else ""))
    if len(refined := refinement_findings(exact)):   # docs/reading-a-report.md
        table, intro = pd.concat([table, refined], ignore_index=True), intro + (
            " Refinement tasks: the claims of Toader, Brubaker & Lederman (2025) instead.")
    md = ["## The paper's findings beside ours", "", intro, "", findings_markdown(table)]
    shown = table.drop(columns=["key"]).astype(str).assign(
        verdict=lambda t: "**" + t["verdict"] + "**", task=table["task"].map(md_text),
        scale=table["scale"].map(md_text))
    body = ['<section id="findings">', "<h2>The paper's findings beside ours</h2>",
            f"<p>{inline(intro)}</p>", table_html(shown, {"seeds"}), "</section>"]
    return md, body
