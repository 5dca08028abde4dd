"""Hostile or careless result folders: each gets one clear line naming the file, the field and
the problem (never a traceback), or is shown as it is; and the gate runs each method in a process
of its own, so that one optimizer cannot change the others' results."""
import io
import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cryobench.schedules
from cryobench.checks.gate import gate
from cryobench.cli import main as cli
from cryobench.errors import InputError
from cryobench.harness.record import SCHEMA_VERSION, CellRecord
from cryobench.harness.registry import discover
from cryobench.harness.results import load_results
from cryobench.report import figures as report
from cryobench.report.findings import findings_table

EVALS = [0, 1000, 5000, 50000, 60000]
D = 8
RESULTS = Path(__file__).resolve().parent.parent / "results"


def _meta(cell, label, seed, status, evals, task="t", optimizer=None, code="a" * 64, **extra):
    name = label.split()[0]
    meta = {"schema_version": SCHEMA_VERSION, "cell": cell, "optimizer_name": name,
            "run": {"task": task, "scale": "ci", "optimizer": optimizer or name, "label": label,
                    "seed": seed, "params": {"lr": 1.0}, "budget": 60000},
            "status": status, "message": "", "budget": 60000, "evaluations": evals, "wall_s": 1.0,
            "task_hash": f"hash-{task}", "provenance": {"cryobench": "0.1.0", "cpu": "fake"},
            "identity": {"optimizer": f"{name}:{code}", "numerics": "f" * 64},
            "snapshots": [{"label": "final", "evals": evals, "file": "density_final.mrc",
                           "resolution_A": 40.0}],
            "task_facts": {"n_train": 1000, "batch_size": 100, "box": D, "pixel_size": 10.0,
                           "rmax_px": 3.0}}
    return {**meta, **extra}


def _cell(root, cell, label="sgd", seed=0, status="ok", nll=None, views=True, **meta) -> Path:
    """A cell folder: trace, meta.json, fsc.csv and views.npz (a final snapshot and the truth)."""
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    nll = nll if nll is not None else [900.0, 800, 700 - seed, 650 - seed, 640 - seed]
    pd.DataFrame({"task": "t", "scale": "ci", "optimizer": label, "label": label, "seed": seed,
                  "cell": cell, "checkpoint": range(len(EVALS)), "evals": EVALS,
                  "grad_evals": EVALS, "value_evals": 0, "hvp_evals": 0,
                  "wall_s": np.array(EVALS) / 1e3, "test_nll": nll,
                  "train_obj": nll}).to_csv(folder / "trace.csv", index=False)
    freq = np.linspace(0, 0.1, 6)
    pd.DataFrame({"label": "final", "evals": EVALS[-1], "freq": freq,
                  "fsc": np.exp(-30 * freq)}).to_csv(folder / "fsc.csv", index=False)
    if views:
        rng = np.random.default_rng(seed)
        np.savez_compressed(folder / "views.npz", final=rng.random((3, D, D), dtype=np.float32),
                            ground_truth=rng.random((3, D, D)))
    task = meta.pop("task", "t")
    (folder / "meta.json").write_text(json.dumps(_meta(cell, label, seed, status, EVALS[-1], task,
                                                       **meta)))
    return folder


def _one_line(capsys, root, tmp_path) -> str:
    """`cryobench report` of ``root`` fails with exit status 2 and one line; that line."""
    assert cli(["report", str(root), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryobench: error: ") and "\n" not in err and "Traceback" not in err
    return err.removeprefix("cryobench: error: ")


# 1. meta.json of wrong types or nested too deeply

@pytest.mark.parametrize("field, value, message", [
    ("evaluations", "many", "field 'evaluations' must be a whole number ≥ 0, not 'many'"),
    ("run.seed", "x", "field 'run.seed' must be a whole number ≥ 0, not 'x'"),
    ("snapshots", 5, "field 'snapshots' must be a list or null, not 5"),
    ("wall_s", [1], "field 'wall_s' must be a number or null, not a list"),
    ("budget", True, "field 'budget' must be a whole number ≥ 0 or null, not true"),
    ("run.params", [1], "field 'run.params' must be an object, not a list"),
    ("run.label", 5, "field 'run.label' must be a string, not 5"),
    ("cell", 7, "field 'cell' must be a string, not 7"),
    ("message", {"a": 1}, "field 'message' must be a string, not an object"),
    ("provenance", {"cpu": [[1]]}, "field 'provenance.cpu' must be a number, a string, true, "
                                   "false or null, not a list"),
    ("snapshots", [{"label": "final", "evals": "x"}], "field 'snapshots[0].evals' must be a "
                                                      "whole number ≥ 0, not 'x'"),
    ("snapshots", [{"evals": 5}], "field 'snapshots[0]' has no 'label'"),
    ("task_facts", {"n_train": 1, "batch_size": 1, "box": 8, "pixel_size": 1.0, "rmax_px": 0},
     "field 'task_facts.rmax_px' must be a finite number > 0, not 0"),
    ("task_facts", {"n_train": 1}, "field 'task_facts' has no 'batch_size'"),
    ("run.threads", "two", "field 'run.threads' must be a whole number ≥ 0, not 'two'"),
])
def test_wrongly_typed_meta_json_is_one_line_naming_the_field(tmp_path, capsys, field, value,
                                                              message):
    folder = _cell(tmp_path / "set", "c0")
    meta = json.loads((folder / "meta.json").read_text())
    where = meta["run"] if field.startswith("run.") else meta
    where[field.removeprefix("run.")] = value
    (folder / "meta.json").write_text(json.dumps(meta))
    assert _one_line(capsys, tmp_path / "set", tmp_path) == f"{folder / 'meta.json'}: {message}"


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000,
                                  '{"run": ' + "[" * 10_000 + "]" * 10_000 + "}"])
def test_meta_json_nested_ten_thousand_deep_is_one_line(tmp_path, capsys, text):
    folder = _cell(tmp_path / "set", "c0")
    (folder / "meta.json").write_text(text)
    line = _one_line(capsys, tmp_path / "set", tmp_path)
    assert line.startswith(f"{folder / 'meta.json'}: cannot read cell metadata: lists or objects "
                           "nested too deeply")


def test_every_committed_record_passes_the_field_types():
    metas = sorted(RESULTS.glob("*/cells/*/meta.json"))
    for meta in metas:
        CellRecord.read(meta.parent)
    assert len(metas) > 100


# 2. text where fsc.csv (or trace.csv) holds numbers

@pytest.mark.parametrize("name, column", [("fsc.csv", "freq"), ("fsc.csv", "fsc"),
                                          ("fsc.csv", "evals"), ("trace.csv", "test_nll"),
                                          ("trace.csv", "train_obj")])
def test_text_in_a_numeric_column_is_one_line_naming_file_and_column(tmp_path, capsys, name,
                                                                     column):
    folder = _cell(tmp_path / "set", "c0")
    table = pd.read_csv(folder / name)
    table[column] = table[column].astype(object)
    table.loc[1, column] = "abc"
    table.to_csv(folder / name, index=False)
    assert _one_line(capsys, tmp_path / "set", tmp_path) == (
        f"{folder / name}: column {column!r} holds text, not numbers")


def test_fsc_without_a_column_is_one_line(tmp_path, capsys):
    folder = _cell(tmp_path / "set", "c0")
    pd.read_csv(folder / "fsc.csv").drop(columns="freq").to_csv(folder / "fsc.csv", index=False)
    assert _one_line(capsys, tmp_path / "set", tmp_path) == (
        f"{folder / 'fsc.csv'}: not an FSC curve: no column 'freq'")


# 3. a broken views.npz (read where the density figure draws it: the only reader)

def _corrupt(data: bytes) -> bytes:
    """``data`` (a zip) with 16 bytes of its first member's compressed data flipped."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 20
    return data[:start] + bytes(b ^ 0x5A for b in data[start:start + 16]) + data[start + 16:]


@pytest.mark.parametrize("make, message", [
    (lambda data, f: b"PK\x03\x04 not a zip at all", "cannot read the views: BadZipFile"),
    (lambda data, f: data[: len(data) // 2], "cannot read the views: BadZipFile"),
    (lambda data, f: _corrupt(data), "cannot read the views: zlib.error: Error -3 while "
                                     "decompressing data"),
    (lambda data, f: b"garbage", "cannot read the views"),
    (lambda data, f: _npy(np.zeros((3, D, D))), "cannot read the views: ValueError: one array"),
    (lambda data, f: _npz(final=np.zeros((D, D))), "views 'final' must be 3 square projections "
                                                   "of numbers (3, n, n), not float64 of shape (8, 8)"),
    (lambda data, f: _npz(final=np.full((3, D, D), np.nan)), "views 'final' hold values that "
                                                             "are not finite"),
    (lambda data, f: _npz(final=np.array([["a"] * D] * D * 3).reshape(3, D, D)),
     "views 'final' must be 3 square projections"),
])
def test_broken_views_are_one_line(tmp_path, capsys, make, message):
    folder = _cell(tmp_path / "set", "c0")
    path = folder / "views.npz"
    path.write_bytes(make(path.read_bytes(), folder))
    line = _one_line(capsys, tmp_path / "set", tmp_path)
    assert line.startswith(f"{path}: ") and message in line


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, ground_truth=np.ones((3, D, D)), **arrays)
    return buf.getvalue()


# 4. and 5. labels as they are: no mathtext in figures, no markdown or HTML in the reports

def test_mathtext_and_html_in_labels_are_shown_literally(tmp_path):
    math, script = "sgd $\\frac{$ x", "<script>alert(1)</script> *a* `b`"
    root = tmp_path / "results"
    _cell(root / "set", "c0", label=math)
    _cell(root / "set", "c1", label=script, message="<img src=x onerror=alert(2)> $x$",
          status="diverged")
    _cell(root / "set", "c2", label="sgd_2", provenance={"cpu": "<b>cpu</b>"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no mathtext or layout warning either
        results = load_results(root / "set")
        fig = report.convergence_figure(results)
        assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted(
            [math, script, "sgd_2"])
        report.write_report(results, tmp_path / "report")
        report.write_leaderboard(root, sets=["set"])
    svg = (tmp_path / "report" / "convergence.svg").read_text()
    assert "sgd $\\frac{$ x" in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    for md in ((tmp_path / "report" / "report.md").read_text(),
               (root / "LEADERBOARD.md").read_text()):
        assert "| sgd \\$\\\\frac{\\$ x |" in md and not re.search(r"(?<!\\)<", md)   # every < escaped
        assert "\\<script\\>alert(1)\\</script\\> \\*a\\* \\`b\\`" in md
        assert "\\<img src=x onerror=alert(2)\\> \\$x\\$" in md and "\\<b\\>cpu\\</b\\>" in md
        assert "| sgd_2 |" in md                       # an underscore inside a word stays as it is
    page = (root / "LEADERBOARD.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>cpu" not in page
    assert "<td>sgd $\\frac{$ x</td>" in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; *a* `b`</td>" in page
    assert "&lt;img src=x onerror=alert(2)&gt; $x$" in page and "&lt;b&gt;cpu&lt;/b&gt;" in page


def test_inline_reads_the_escapes_and_code_spans_markdown_reads():
    from cryobench.report.html import inline
    from cryobench.report.tables import md_code, md_text
    for text in ["a*b*c", "<x> & $y$", "back\\slash `tick` _u_ [l](k) ~~s~~", "x_y"]:
        assert inline(md_text(text)) == inline(md_code(text))[6:-7] == (
            text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    assert md_code("a`b") == "``a`b``" and inline("**bold** *em* `c`") == (
        "<strong>bold</strong> <em>em</em> <code>c</code>")


# 6. a cell folder that leads outside the result set

def test_a_cell_folder_linked_from_outside_the_result_set_is_refused(tmp_path, capsys):
    outside = _cell(tmp_path / "elsewhere", "secret")
    _cell(tmp_path / "set", "c0")
    link = tmp_path / "set" / "cells" / "secret"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="leads outside the results folder"):
        load_results(tmp_path / "set")
    line = _one_line(capsys, tmp_path / "set", tmp_path)
    assert line.startswith(f"{link}: leads outside the results folder {tmp_path / 'set'} "
                           f"(a symbolic link to {outside.resolve()})")


def test_a_file_linked_from_outside_is_refused_and_links_inside_are_followed(tmp_path):
    folder = _cell(tmp_path / "set", "c0")
    (tmp_path / "trace.csv").write_bytes((folder / "trace.csv").read_bytes())
    (folder / "trace.csv").unlink()
    (folder / "trace.csv").symlink_to(tmp_path / "trace.csv")
    with pytest.raises(InputError, match=f"^{folder / 'trace.csv'}: leads outside"):
        load_results(tmp_path / "set")
    os.replace(tmp_path / "trace.csv", folder / "trace.csv")
    (tmp_path / "set" / "cells" / "alias").symlink_to(folder, target_is_directory=True)
    assert list(load_results(tmp_path / "set").cells["cell"]) == ["c0"]    # the same cell, once


# 7. an ok run whose final test NLL is not finite

@pytest.mark.parametrize("final", [np.nan, np.inf])
def test_a_non_finite_final_of_an_ok_run_is_a_failure_said_as_such(tmp_path, final):
    _cell(tmp_path / "set", "s0", "sgd", nll=[900.0, 800, 700, 650, final], task="synthetic-cylinder")
    _cell(tmp_path / "set", "o0", "olbfgs", task="synthetic-cylinder")
    results = load_results(tmp_path / "set")
    table = report.checkpoint_table(results).set_index("label")
    assert table.loc["sgd", "Final"] == np.inf and table.loc["sgd", "Final gap"] == np.inf
    assert table.loc["sgd", "Status"] == "0/1 ok; seed 0: diverged at 60,000"
    assert table.loc["sgd", "50K"] == 650 and not table.loc["sgd", "Final ≈best"]
    md = report.table_markdown(report.checkpoint_table(results))
    assert "| sgd | 1 | **700.0** | — | **650.0** | — | failed | — | failed | — | 60,000 |" in md
    bad = report.failed_cells(results)
    assert bad["message"].tolist() == [f"final test NLL {final} at 60,000 evaluations: not finite, "
                                       "so the run failed (its meta.json says ok)"]
    findings = findings_table(results).set_index("key")
    assert "vs SGD failed" in findings.loc["quasi-newton", "measured"]


# 8. two optimizers of one name

@pytest.mark.parametrize("seeds", [(0, 1, 0, 1), (0, 1, 2, 3)])
def test_two_optimizers_of_one_name_get_two_labels_and_the_figures_are_drawn(tmp_path, seeds):
    root = tmp_path / "set"
    for i, seed in enumerate(seeds):
        mine = i >= 2
        _cell(root, f"c{i}", "sgd", seed, optimizer="/home/me/mine/sgd.py:sgd" if mine else "sgd",
              code=("b" if mine else "a") * 64)
    results = load_results(root)
    labels = {"sgd code=sgd:aaaaaaaa optimizer=sgd", "sgd code=sgd:bbbbbbbb optimizer=sgd.py:sgd"}
    assert set(report.comparable(results).cells["label"]) == labels
    assert set(report.checkpoint_table(results)["label"]) == labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # "constrained_layout not applied"
        fig = report.convergence_figure(results)
        paths = report.write_report(results, tmp_path / "report")
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(texts) == 2 and all(len(line) <= 40 for t in texts for line in t.splitlines())
    assert {p.name for p in paths} >= {"convergence.png", "densities-t-ci.png", "profile.svg"}
    assert "`sgd` → `sgd code=sgd:aaaaaaaa optimizer=sgd`" in (
        tmp_path / "report" / "report.md").read_text()


# 9. the gate: an optimizer that patches shared state changes only its own runs

CHEAT = '''
import os

import cryobench.schedules
from cryobench.optim import GradientMethod, Hyper, method


def _zero(eta0, t, decay=1e-2):
    return 0.0


if WHEN == "import":
    cryobench.schedules.annealed_lr.__code__ = _zero.__code__


@method(name="aaa-cheat", lr=Hyper(1.0, 1e-3, 1e2))
def cheat(lr):
    def init(x0, *, budget, rng):
        if WHEN == "run":                   # every step of SGD (and others) becomes zero
            cryobench.schedules.annealed_lr.__code__ = _zero.__code__
        if WHEN == "exit":
            os._exit(7)
        return {"x": x0.copy()}

    def step(state, oracle):
        oracle.value_and_grad(state["x"], oracle.next_batch(100))
        return state
    return GradientMethod(init, step)
'''


@pytest.fixture
def unpatched_schedules():
    """Whatever a test's optimizer does to annealed_lr in this process is undone after it."""
    code = cryobench.schedules.annealed_lr.__code__
    yield
    cryobench.schedules.annealed_lr.__code__ = code


@pytest.mark.parametrize("when", ["run", "import", "exit"])
def test_a_patching_optimizer_cannot_make_the_gate_blame_another(tmp_path, data_dir, when,
                                                                 unpatched_schedules):
    sgd = discover()["sgd"]
    reference = tmp_path / "reference.json"
    assert gate(methods={"sgd": sgd}, reference=reference, update=True, budget=300, seeds=3,
                tasks=["synthetic-cylinder"], data_dir=data_dir, out=io.StringIO()) == 0
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "cheat.py").write_text(f"WHEN = {when!r}\n" + CHEAT)
    cheat = discover(tmp_path / "opt")["aaa-cheat"]             # sorted first: gated before sgd
    out = io.StringIO()
    code = gate(methods={"aaa-cheat": cheat, "sgd": sgd}, reference=reference, data_dir=data_dir,
                out=out)
    text = out.getvalue()
    assert code == 0, text
    line = next(l for l in text.splitlines() if " sgd " in l)
    assert line.startswith("ok") and "+0.00 noise" in line, text
    assert "new methods without a reference (not a failure): aaa-cheat" in text
    if when == "exit":
        assert "ended with exit code 7" not in text             # a new method: no statuses shown
