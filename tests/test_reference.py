"""The ground truth's test NLL beside a result set (cryobench/harness/reference.py): written by
``cryobench grid`` once per task content hash, equal to the task's own scoring of the truth,
loaded with the results and shown by the report; a malformed or foreign reference is refused."""
import json
import shutil

import pytest
from helpers import write_grid
from threadpoolctl import threadpool_limits

import cryobench
from cryobench.cli import main as cli
from cryobench.errors import InputError
from cryobench.harness.reference import read_references
from cryobench.harness.results import combine, load_results
from cryobench.report.figures import convergence_figure
from cryobench.report.tables import checkpoint_table, table_markdown

KEY = ("synthetic-cylinder", "ci")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, data_dir):
    """A one-cell ci grid run through the command line, and the reference file's first mtime."""
    folder = tmp_path_factory.mktemp("graded")
    grid = write_grid(folder / "grid.toml", ["sgd"], budget=200)
    assert cli(["grid", str(grid), "--data-dir", str(data_dir), "--workers", "1", "--quiet"]) == 0
    return folder, (folder / "reference.json").stat().st_mtime_ns


def test_grid_records_the_truths_test_nll_once(graded, cylinder, data_dir):
    folder, stamp = graded
    ref = read_references(folder / "reference.json")[KEY]
    # loaded and scored with one BLAS thread, as the grid and its cells do: the prepared spectra
    # are computed with the loading process's BLAS threads, and on some CPUs their last bits
    # differ with the thread count (the session's `cylinder` was loaded with all threads)
    with threadpool_limits(limits=1):
        task = cryobench.load_task("synthetic-cylinder", scale="ci", data_dir=data_dir,
                                   progress=False)
        truth = task.test_nll(task.dataset.ground_truth.astype(task.init.dtype))
    assert ref["truth_test_nll"] == truth and ref["task_hash"] == cylinder.content_hash
    assert ref["density"] == "ground truth"
    assert truth < cylinder.test_nll(cylinder.init)          # the truth explains the images better
    # a second run of the same grid finds the reference current and leaves the file alone
    assert cli(["grid", str(folder / "grid.toml"), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert (folder / "reference.json").stat().st_mtime_ns == stamp


def test_report_shows_the_reference(graded):
    results = load_results(graded[0])
    truth = results.references[KEY]["truth_test_nll"]
    assert combine(results).references == results.references
    assert f"The ground truth's test NLL: {truth:,.1f}." in table_markdown(checkpoint_table(results))
    fig = convergence_figure(results)
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "reference"]
    assert len(lines) == 2 and all(ln.get_ydata()[0] == truth for ln in lines)
    assert fig.axes[0].get_ylim()[0] < truth                  # the top panel's range includes it


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["references"][0].pop("truth_test_nll"), "references[0] field 'truth_test_nll'"),
    (lambda r: r["references"][0].update(truth_test_nll="13866.9"), "expected a finite number"),
    (lambda r: r.update(references={}), "a list 'references'"),
    (lambda r: r["references"][0].update(task_hash="0" * 64), "has content hash 000000000000"),
])
def test_malformed_or_foreign_references_are_refused(graded, tmp_path, edit, message):
    copy = tmp_path / "set"
    shutil.copytree(graded[0], copy)
    path = copy / "reference.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError) as err:
        load_results(copy)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_verify_recomputes_the_reference_and_catches_a_forged_one(graded, tmp_path, data_dir,
                                                                  capsys, monkeypatch):
    monkeypatch.setenv("CRYOBENCH_DATA", str(data_dir))
    assert cli(["verify", str(graded[0])]) == 0
    out = capsys.readouterr().out
    assert "synthetic-cylinder ci ground truth (reference.json)" in out
    assert out.splitlines()[-1].endswith("; 1 of 1 ground-truth references agree")
    copy = tmp_path / "forged"
    shutil.copytree(graded[0], copy)
    raw = json.loads((copy / "reference.json").read_text())
    raw["references"][0]["truth_test_nll"] -= 1.0            # a better-looking truth line
    (copy / "reference.json").write_text(json.dumps(raw))
    assert cli(["verify", str(copy)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "reference.json" in ln)
    assert line.startswith("MISMATCH") and "stored" in line
