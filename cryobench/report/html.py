"""The leaderboard as one static HTML page (``LEADERBOARD.html`` beside ``LEADERBOARD.md``): the
same sections, tables and figures as the markdown, the tables sortable by a click on a column
header (about 30 lines of inline JavaScript, no library, no network), the figures inline by
relative path, and every row linked to its cells' ``meta.json`` (their provenance).

Deterministic like the markdown: the same results give byte-identical HTML (no dates, sorted
input, fixed formats). Inline markdown of the shared texts (``**bold**``, ``*em*``, ```code```)
becomes the matching tags.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pandas as pd

from cryobench.report.refinement import refinement_tables
from cryobench.report.progress import in_progress, runs_summary
from cryobench.report.tables import (TEXT_COLUMNS, comparable, failed_cells, failed_markdown, md_text,
                                     table_blocks, table_note)

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:78em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .45em}th{background:#f2f2f2;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.5em 0 1.5em}figure img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2em}"""

# Sorting: a click on a header sorts the body rows by that column, again reverses. A cell's key
# is its data-v attribute, else its text without thousands separators; '—' and empty cells go
# last either way; a column whose keys all parse as numbers ("1.2e+04", "+3.5", "Infinity")
# sorts numerically, any other as text.
SCRIPT = """(function () {
  "use strict";
  function key(td) {
    var s = (td.dataset.v !== undefined ? td.dataset.v : td.textContent).trim().replace(/,/g, "");
    if (s === "" || s === "\\u2014") return null;
    var v = Number(s);
    return Number.isNaN(v) ? s : v;
  }
  function sortBy(table, col, descending) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var keys = rows.map(function (r) { return key(r.cells[col]); });
    var numeric = keys.every(function (k) { return k === null || typeof k === "number"; });
    var order = rows.map(function (r, i) { return i; });
    order.sort(function (a, b) {
      var x = keys[a], y = keys[b];
      if (x === null || y === null) return (x === null) - (y === null) || a - b;
      var c = numeric ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
      return (descending ? -c : c) || a - b;
    });
    order.forEach(function (i) { body.appendChild(rows[i]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () {
        sortBy(table, col, th.getAttribute("aria-sort") === "ascending");
      });
    });
  });
  window.cryobenchSort = {key: key, sortBy: sortBy};
})();"""


#: a backslash escape (``\$``: a dollar sign) or a code span (fenced by one or more backticks)
LITERAL = re.compile(r"\\([!-/:-@\[-`{-~])|(?<!`)(`+)(?!`)(.+?)(?<!`)\2(?!`)")


def inline(text: str) -> str:
    """``text`` escaped for HTML, with its inline markdown (```code```, ``**bold**``, ``*em*``)
    as tags and its backslash escapes (``tables.md_text``) as the characters they stand for:
    the markdown and the page show the same text."""
    kept = []

    def keep(m) -> str:
        if m[1] is not None:
            kept.append(html.escape(m[1], quote=False))
        else:
            body = m[3]
            if body.startswith(" ") and body.endswith(" ") and body.strip():
                body = body[1:-1]                           # as markdown strips one space
            kept.append(f"<code>{html.escape(body, quote=False)}</code>")
        return f"\x00{len(kept) - 1}\x00"
    s = html.escape(LITERAL.sub(keep, str(text).replace("\x00", "")), quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])", r"<em>\1</em>", s)
    return re.sub("\x00([0-9]+)\x00", lambda m: kept[int(m[1])], s)


def _attr(value) -> str:
    """``value`` escaped for an attribute in double quotes."""
    return html.escape(str(value), quote=True)


def _link(href: str, text: str, title: str = "") -> str:
    """An ``<a>`` to ``href`` showing ``text`` (escaped), with an optional tooltip."""
    title = f' title="{_attr(title)}"' if title else ""
    return f'<a href="{_attr(href)}"{title}>{html.escape(text, quote=False)}</a>'


def _sort_value(text: str) -> str | None:
    """The data-v of a shown table cell whose text is no number: 'failed' +∞, 'best' 0."""
    return {"failed": "Infinity", "best": "0"}.get(text.strip("*"))


def table_html(shown: pd.DataFrame, numeric: set, raw: dict | None = None) -> str:
    """A sortable table of formatted strings (inline markdown allowed), the ``numeric`` columns
    right-aligned; ``raw`` {header: [HTML per row]} gives ready-made cells for a column of
    ``shown`` (replacing its text) or, for a new header, a column added at the end."""
    raw = raw or {}
    heads = [*shown.columns, *(h for h in raw if h not in shown.columns)]
    rows = []
    for i in range(len(shown)):
        tds = []
        for col in heads:
            text = str(shown[col].iloc[i]) if col in shown.columns else ""
            v = _sort_value(text) if col in numeric else None
            attrs = (' class="num"' if col in numeric else "") + (f' data-v="{v}"' if v else "")
            tds.append(f"<td{attrs}>{raw[col][i] if col in raw else inline(text)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    head = "".join(f"<th>{html.escape(str(h), quote=False)}</th>" for h in heads)
    return ('<table class="sortable">\n<thead><tr>' + head + "</tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody>\n</table>")


def _href(path: Path, base: Path) -> str:
    """``path`` relative to the folder ``base`` (the page's), with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def section_html(name: str, results, table: pd.DataFrame, figs: dict, relabelled: list[str],
                 provenance: list[str], base: Path, planned: int | None = None) -> list[str]:
    """The HTML of one results set (the markdown section's content): the 5K / 50K / final table
    per dataset with a link per run to its meta.json, the relabelling note, the figures, the
    runs (of the ``planned`` its grid file names, if known), the failed / incomplete cells
    (linked) and the provenance. ``base``: the page's folder."""
    meta = lambda cell: _href(results.folders[cell] / "meta.json", base)
    runs = runs_summary(results, planned)
    out = [f'<section id="{_attr(name)}">', f"<h2>{html.escape(name)}</h2>",
           *([f"<p>{inline(runs)}</p>"] if in_progress(results, planned) else []),
           "<h3>Test NLL at 5K / 50K / final gradient evaluations</h3>"]
    cells = comparable(results).cells
    for line, shown, t in table_blocks(table):
        runs = []
        for task, scale, label in t[["task", "scale", "label"]].itertuples(index=False):
            c = cells[(cells["task"] == task) & (cells["scale"] == scale) & (cells["label"] == label)]
            runs.append(" ".join(_link(meta(r.cell), str(r.seed), f"cell {r.cell}: meta.json")
                                 for r in c.sort_values(["seed", "cell"]).itertuples()))
        out += [f"<p>{inline(line)}</p>",
                table_html(shown, set(shown.columns) - TEXT_COLUMNS, {"runs (seed → meta.json)": runs})]
    if table.empty:
        out.append("<p>No results to compare (no run other than interrupted ones).</p>")
    out.append(f"<p>{inline(table_note(table))}</p>")
    for title, note, shown in refinement_tables(results):     # refinement tasks only
        out += [f"<h3>{inline(title)}</h3>", f"<p>{inline(note)}</p>",
                table_html(shown.astype(str).map(md_text), set(shown.columns[3:]))]
    if relabelled:
        out += ["<p>Labels extended so that no row averages different configurations or two runs "
                "of one seed:</p>", _bullets(relabelled)]
    for fig_name, (caption, paths) in figs.items():
        png, svg = (_href(p, base) for p in paths)
        out += [f"<h3>{inline(caption)}</h3>",
                f'<figure><a href="{_attr(svg)}"><img src="{_attr(png)}" alt="{_attr(fig_name)}"></a>'
                f'<figcaption>{_link(svg, "svg")}</figcaption></figure>']
    out += ["<h3>Runs</h3>", f"<p>{inline(runs)}</p>"]
    bad = failed_cells(results)
    if len(bad):
        shown = failed_markdown(bad)
        links = [_link(meta(x), x, "meta.json") if x in results.folders else html.escape(x)
                 for x in bad["cell"]]
        out += ["<h3>Failed / incomplete cells</h3>",
                "<p>Diverged, error and time-limited (<code>budget</code>) runs are results and "
                "enter the table as failures; <code>interrupted</code> runs are not results and "
                "are left out of it.</p>", table_html(shown, {"seed", "evals"}, {"cell": links})]
    return out + ["<h3>Provenance</h3>", _bullets([p.removeprefix("- ") for p in provenance]),
                  "</section>"]


def _bullets(items: list[str]) -> str:
    """A ``<ul>`` of markdown bullets (a leading '- ' dropped, inline markdown as tags)."""
    return "<ul>\n" + "\n".join(f"<li>{inline(i.removeprefix('- '))}</li>" for i in items) + "\n</ul>"


def page_html(title: str, intro: str, sets: list[str], body: list[str], markdown: str = "") -> str:
    """The whole page: head (inline style), title, intro, the markdown twin's link, a contents
    line, the sections, the sorting script."""
    contents = " · ".join(f'<a href="#{_attr(n)}">{html.escape(n)}</a>' for n in sets)
    twin = f" The same content as {_link(markdown, markdown)}." if markdown else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{inline(intro)}{twin} Click a column header to sort (again to reverse); each run "
        "links to its cell's <code>meta.json</code> (its provenance).</p>",
        f"<p>Result sets: {contents}</p>" if sets else "<p>No result sets.</p>",
        *body, f"<script>\n{SCRIPT}\n</script>", "</body>", "</html>", ""])
