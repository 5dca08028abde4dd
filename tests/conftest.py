import os

import pytest

import cryobench


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The dataset cache for the test session ($CRYOBENCH_DATA if set, so CI can keep it)."""
    env = os.environ.get("CRYOBENCH_DATA")
    return env if env else tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session", params=["synthetic-cylinder", "thermus-style"])
def ci_task(request, data_dir):
    """Each shipped task at the ci scale."""
    return cryobench.load_task(request.param, scale="ci", data_dir=data_dir, progress=False)


@pytest.fixture(scope="session")
def cylinder(data_dir):
    """The synthetic-cylinder task at the ci scale."""
    return cryobench.load_task("synthetic-cylinder", scale="ci", data_dir=data_dir, progress=False)


def pytest_addoption(parser):
    parser.addoption("--optimizer", action="append", default=[],
                     help="run the conformance suite on this optimizer only: a registered name, "
                          "module:attr or path/file.py:attr (repeatable)")


def pytest_generate_tests(metafunc):
    if "method" in metafunc.fixturenames:
        from cryobench.harness.registry import discover, resolve
        refs = metafunc.config.getoption("optimizer")
        methods = [resolve(r) for r in refs] if refs else list(discover().values())
        metafunc.parametrize("method", methods, ids=[m.name for m in methods])
