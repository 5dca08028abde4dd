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
