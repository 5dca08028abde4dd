"""The package that installs: a wheel built with ``python -m build``, installed (not editable) in
a fresh virtual environment, lists, describes, runs and refuses like the checkout does."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cryobench.cli import main

REPO = Path(__file__).resolve().parent.parent


def _cli(bin_dir: Path, *args, cwd: Path, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "cryobench"), *args], cwd=cwd, capture_output=True,
                          text=True, check=check, env={**os.environ, "PYTHONPATH": ""})


@pytest.mark.slow
def test_wheel_installed_elsewhere_behaves_like_the_checkout(tmp_path, data_dir, capsys,
                                                              monkeypatch):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],  # sdist, then
                   # the wheel from it: what an index gets, and no stale build/ in the wheel
                   check=True, capture_output=True)
    (wheel,) = dist.glob("cryobench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("tasks/synthetic-cylinder.toml", "tasks/thermus-style.toml",
                    "optimizers/sgd.py", "results/tuned.json"):
        assert f"cryobench/_shipped/{shipped}" in names, shipped

    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(env / "bin" / "python"), "-c", "import cryobench, sys; "
                           "sys.stdout.write(cryobench.__file__)"], cwd=tmp_path, check=True,
                          capture_output=True, text=True).stdout
    assert site.startswith(str(env)), site            # the installed copy, not the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("CRYOBENCH_DATA", str(data_dir))
    bin_dir = env / "bin"

    # list and info: the same text as the checkout's command line
    for args in (["list"], ["info", "synthetic-cylinder", "--scale", "ci"]):
        assert main(args) == 0
        assert _cli(bin_dir, *args, cwd=elsewhere).stdout == capsys.readouterr().out, args
    listed = _cli(bin_dir, "list", cwd=elsewhere).stdout
    assert "synthetic-cylinder" in listed and "thermus-style" in listed and "hessian-free" in listed

    # run: the same cell (same identity) and the same numbers
    out = _cli(bin_dir, "run", "synthetic-cylinder", "sgd", "--scale", "ci", "--budget", "200",
               "--out", "wheel-run", cwd=elsewhere).stdout
    assert "status ok" in out
    assert main(["run", "synthetic-cylinder", "sgd", "--scale", "ci", "--budget", "200",
                 "--out", str(tmp_path / "checkout-run")]) == 0
    capsys.readouterr()
    (ours,) = (elsewhere / "wheel-run" / "cells").iterdir()
    (theirs,) = (tmp_path / "checkout-run" / "cells").iterdir()
    assert ours.name == theirs.name
    trace = [pd.read_csv(c / "trace.csv").drop(columns="wall_s") for c in (ours, theirs)]
    pd.testing.assert_frame_equal(*trace)
    meta = json.loads((ours / "meta.json").read_text())
    assert meta["identity"] == json.loads((theirs / "meta.json").read_text())["identity"]

    # the shipped tuned values are read-only: tune must be told where to record
    refused = _cli(bin_dir, "tune", "synthetic-cylinder", "--scale", "ci", "--optimizers", "sgd",
                   cwd=elsewhere, check=False)
    assert refused.returncode == 2 and "--record" in refused.stderr
    assert refused.stderr.startswith("cryobench: error: ") and "read-only" in refused.stderr
    installed_tuned = Path(site).parent / "_shipped" / "results" / "tuned.json"
    assert installed_tuned.read_bytes() == (REPO / "results" / "tuned.json").read_bytes()
