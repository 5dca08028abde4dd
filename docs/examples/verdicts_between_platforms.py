"""Count the verdicts that differ between two computations of the same grid (issue 24 item 3),
e.g. the committed ``results/paper-small`` and the same grid run on another CPU or under another
OpenBLAS kernel setting::

    cryobench grid results/paper-small/grid.toml --out /tmp/paper-small-here
    python docs/examples/verdicts_between_platforms.py results/paper-small /tmp/paper-small-here

Compared per (task, scale, method): the bold marks of the 5K / 50K / Final table (``≈best``:
cannot be told apart from the best at that column), the best method of each column, the status
(how many seeds ran ok) and, per (finding, task, scale), the verdict of the paper's findings
table. Prints each difference and the counts."""
import sys

from cryobench.harness.results import load_results
from cryobench.report.findings import findings_table
from cryobench.report.tables import COLUMNS, checkpoint_table


def verdicts(folder):
    """(bold marks, best per column, ok seeds, finding verdicts) of one results folder."""
    results = load_results(folder)
    table = checkpoint_table(results).set_index(["task", "scale", "label"])
    bold = {(*key, k): bool(row[f"{k} ≈best"]) for key, row in table.iterrows() for k in COLUMNS}
    best = {(*key, k): key[2] for key, row in table.iterrows() for k in COLUMNS if row[f"{k} best"]}
    ok = {key: str(row["Status"]).split(";")[0] for key, row in table.iterrows()}
    findings = findings_table(results)
    found = {(r.key, r.task, r.scale): r.verdict for r in findings.itertuples()}
    return bold, best, ok, found


def main(a: str, b: str) -> None:
    """Print the verdicts of ``a`` and ``b`` that differ, then the counts."""
    names = ("bold marks", "best methods", "statuses", "finding verdicts")
    for name, x, y in zip(names, verdicts(a), verdicts(b)):
        keys = sorted(set(x) | set(y), key=str)
        differ = [k for k in keys if x.get(k) != y.get(k)]
        for k in differ:
            print(f"{name}: {' / '.join(map(str, k))}: {x.get(k)} → {y.get(k)}")
        print(f"{name}: {len(differ)} of {len(keys)} differ")


if __name__ == "__main__":
    main(*sys.argv[1:3])
