"""Values that cannot be meant get one line and exit status 2, before any work (issue 28's
"poor" class): budgets, thread counts, repeats, tolerances, tuning points and parameters."""
import pytest

from cryobench.cli import main as cli


@pytest.mark.parametrize("argv, says", [
    (["run", "thermus-style", "sgd", "--scale", "ci", "--budget", str(10**20)], "--budget"),
    (["run", "thermus-style", "sgd", "--scale", "ci", "--threads", "100000"], "--threads 100000"),
    (["grid", "results/paper-small/grid.toml", "--threads", "0"], "--threads 0"),
    (["bench", "--threads", "0"], "--threads 0"),
    (["bench", "--epoch-batches", "0"], "--epoch-batches 0"),
    (["speed-gate", "--tolerance", "inf"], "--tolerance inf"),
    (["speed-gate", "--tolerance", "0"], "--tolerance 0"),
    (["gate", "--update", "--budget", "0"], "--budget 0"),
    (["tune", "thermus-style", "--budget", "0"], "--budget 0"),
    (["tune", "thermus-style", "--points", "0"], "--points 0"),
    (["tune", "thermus-style", "--points", "-3"], "--points -3"),
    (["tune", "thermus-style", "--points", "100000"], "--points 100000"),
    (["tune", "thermus-style", "--workers", "0"], "--workers 0"),
    (["tune", "thermus-style", "--record", "/proc"], "--record /proc"),
])
def test_values_that_cannot_be_meant_get_one_line(argv, says, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryobench: error: ") and says in err and "\n" not in err


def test_tuning_parameters_no_optimizer_has(capsys, data_dir):
    assert cli(["tune", "thermus-style", "--scale", "ci", "--optimizers", "sgd", "--params", "bogus",
                "--data-dir", str(data_dir), "--quiet"]) == 2
    assert "--params bogus: none of sgd has such a hyper-parameter" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["leaderboard", "--results", "{file}"], "{file}: Not a directory"),
    (["leaderboard", "--results", "{missing}"], "{missing}: No such file or directory"),
    (["simulate", "synthetic-cylinder", "--scale", "ci", "--data-dir", "{file}"],
     "{file}/synthetic-cylinder: Not a directory"),
])
def test_an_output_path_that_cannot_be_used_is_one_line(tmp_path, argv, says, capsys):
    """A path that is a file where a folder is needed, or that does not exist: one line naming
    it, exit 2, and nothing created."""
    names = {"file": str(tmp_path / "a-file"), "missing": str(tmp_path / "missing")}
    (tmp_path / "a-file").write_text("")
    assert cli([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cryobench: error: {says.format(**names)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_averaging_weight_of_one_or_more(capsys, data_dir):
    assert cli(["run", "synthetic-cylinder", "momentum", "--scale", "ci", "--set", "momentum=2",
                "--budget", "200", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "momentum is an averaging weight and must be < 1" in err and "\n" not in err


def test_a_run_the_grid_names_twice_is_planned_once(tmp_path, data_dir):
    """A repeated value and one optimizer under two names are one cell each."""
    from cryobench.harness.grid import expand, load_grid
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["synthetic-cylinder"]\nscales = ["ci"]\nseeds = [0, 0, 1]\n'
                    'optimizers = ["sgd", "optimizers/sgd.py:sgd"]\nbudget = 200\n'
                    '[params.sgd]\nlr = [0.5, 0.5, 1.0]\n'
                    '[params."optimizers/sgd.py:sgd"]\nlr = 0.5\n')
    cells = expand(load_grid(grid), data_dir)
    assert len(cells) == 4 == len({c.cell for c in cells})         # lr ∈ {0.5, 1} × seeds {0, 1}
