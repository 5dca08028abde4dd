"""One ranking per task: every method of every result set on a (task, scale), in one table."""
from pathlib import Path

import pytest

from cryobench.harness.results import combine, load_results
from cryobench.report.ranking import ranking_section, ranking_tables

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.fixture(scope="module")
def loaded():
    names = ["modern-small", "paper-small"]
    if not all((RESULTS / n / "cells").is_dir() for n in names):
        pytest.skip("the small-scale result sets are not committed")
    return {n: load_results(RESULTS / n) for n in names}


@pytest.fixture(scope="module")
def combined(loaded):
    return combine(*(loaded[n] for n in sorted(loaded)))


def test_a_method_in_two_sets_is_ranked_once_with_both_sets(loaded, combined):
    _, tables = ranking_tables(loaded, combined)
    assert len(tables) == 2                                   # synthetic-cylinder and thermus-style
    for _, ranked in tables:
        sgd = ranked[ranked["method"] == "sgd"]
        assert len(sgd) == 1 and sgd["set"].iloc[0] == "modern-small, paper-small"
        assert sgd["seeds"].iloc[0] == "5"                    # its 5 cells, not 10
        assert set(ranked["set"]) >= {"modern-small", "paper-small"}
        assert ranked["rank"].tolist() == [str(i + 1) for i in range(len(ranked))]
        finals = [float(v.strip("*").replace(",", "")) if v not in ("failed", "—") else float("inf")
                  for v in ranked["Final"]]
        assert finals == sorted(finals)                       # ranked by the median final


def test_every_method_of_every_set_is_in_the_ranking(loaded, combined):
    _, tables = ranking_tables(loaded, combined)
    methods = {m for _, r in tables for m in r["method"]}
    for results in loaded.values():
        assert set(results.cells["label"]) <= {m.split(" ")[0] for m in methods} | methods


def test_the_section_has_markdown_and_a_sortable_table(loaded, combined):
    md, body = ranking_section(loaded, combined)
    assert md[0] == "## Ranking per task" and any(line.startswith("| rank | method | set") for line in md)
    assert body[0] == '<section id="ranking">' and any('class="sortable"' in b for b in body)
    assert ranking_section({}, None) == ([], [])
