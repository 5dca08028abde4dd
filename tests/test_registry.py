"""The registry: a broken optimizer file breaks only itself; one name from two sources is an error."""
import shutil

import pytest

import cryobench.harness.registry as registry
from cryobench import InputError
from cryobench.cli import main
from cryobench.harness.registry import OPTIMIZERS_DIR, discover, resolve, scan

BROKEN = {
    "bad_syntax.py": ("import numpy\n\ndef f(:\n    pass\n", ":3: SyntaxError: invalid syntax"),
    "bad_import.py": ("import numpy\nimport no_such_module_xyz\n",
                      ":2: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    "bad_raise.py": ("x = 1\nraise RuntimeError('boom at import')\n",
                     ":2: RuntimeError: boom at import"),
    "bad_exit.py": ("import sys\nsys.exit(3)\n", ":2: SystemExit: 3"),
}


@pytest.fixture
def folder(tmp_path):
    """An optimizers folder holding sgd and momentum and the broken files above."""
    for name in ("sgd.py", "momentum.py"):
        shutil.copy(OPTIMIZERS_DIR / name, tmp_path / name)
    for name, (code, _) in BROKEN.items():
        (tmp_path / name).write_text(code)
    return tmp_path


def test_a_broken_file_breaks_only_itself(folder):
    reg = scan(folder)
    assert set(reg.methods) == {"sgd", "momentum"} and set(discover(folder)) == {"sgd", "momentum"}
    assert resolve("sgd", folder).name == "sgd"
    for name, (_, error) in BROKEN.items():
        assert reg.broken[str(folder / name)] == f"{folder / name}{error}"


@pytest.mark.parametrize("name", BROKEN)
def test_resolving_a_broken_file_names_the_file_and_the_error(folder, name):
    error = f"{folder / name}{BROKEN[name][1]}"
    for reference in (name[:-3], name[:-3].replace("_", "-")):
        with pytest.raises(InputError) as info:
            resolve(reference, folder)
        assert str(info.value) == f"optimizer {reference!r} cannot be loaded: {error}"
    with pytest.raises(InputError) as info:
        resolve(f"{folder / name}:anything", folder)
    assert str(info.value) == error


def test_an_unknown_name_lists_the_broken_files(folder):
    with pytest.raises(InputError, match=r"unknown optimizer 'sgdd'; known: momentum, sgd; "
                                         r"broken: bad_exit.py, bad_import.py"):
        resolve("sgdd", folder)


def test_cryobench_list_shows_the_broken_files_and_still_works(folder, monkeypatch, capsys):
    monkeypatch.setattr(registry, "OPTIMIZERS_DIR", folder)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  sgd  " in out and "  momentum  " in out
    for name, (_, error) in BROKEN.items():
        assert f"  broken: {folder / name}{error}\n" in out


def test_a_missing_user_file_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"nope.py: optimizer file not found"):
        resolve(f"{tmp_path / 'nope.py'}:x")


def test_two_files_registering_one_name_is_an_error_naming_both(tmp_path):
    shutil.copy(OPTIMIZERS_DIR / "sgd.py", tmp_path / "sgd.py")
    shutil.copy(OPTIMIZERS_DIR / "sgd.py", tmp_path / "my_sgd.py")
    message = (f"optimizer name 'sgd' is registered twice: by {tmp_path / 'my_sgd.py'} and by "
               f"{tmp_path / 'sgd.py'}; rename one")
    for call in (scan, discover, lambda d: resolve("sgd", d)):
        with pytest.raises(InputError) as info:
            call(tmp_path)
        assert str(info.value) == message


def fake_entry_points(name="plugin", value="plugin_pkg:opt"):
    """Installed entry points as importlib makes them: the registry's sandboxed process loads
    them by (name, value, group), with this process's module path."""
    from importlib.metadata import EntryPoint
    return lambda group: [EntryPoint(name, value, group)]


OTHER_SGD = '''
from cryobench.optim import GradientMethod, Hyper, method


@method(name="sgd", lr=Hyper(0.5, 0.1, 1.0))
def other_sgd(lr):
    """Another sgd."""
    return GradientMethod(None, None)


opt = other_sgd
'''


def test_an_entry_point_shadowing_a_folder_optimizer_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "plugin_pkg.py").write_text(OTHER_SGD)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    shutil.copy(OPTIMIZERS_DIR / "sgd.py", tmp_path / "sgd.py")
    monkeypatch.setattr(registry, "entry_points", fake_entry_points())
    with pytest.raises(InputError, match=r"'sgd' is registered twice: by .*sgd.py and by entry "
                                         r"point plugin = plugin_pkg:opt"):
        discover(tmp_path)


def test_an_entry_point_of_the_same_file_is_not_a_duplicate(tmp_path, monkeypatch):
    shutil.copy(OPTIMIZERS_DIR / "sgd.py", tmp_path / "sgd.py")
    monkeypatch.syspath_prepend(str(tmp_path))                 # a second import of that file
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(value="sgd:sgd"))
    assert set(discover(tmp_path)) == {"sgd"}


def test_an_entry_point_resolves_and_runs_from_its_reference(tmp_path, monkeypatch):
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "plugin_pkg.py").write_text(OTHER_SGD.replace('name="sgd"',
                                                                       'name="plugin-sgd"'))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(registry, "entry_points", fake_entry_points())
    found = resolve("plugin-sgd", tmp_path)
    assert found.reference == {"kind": "entry", "where": ["plugin", "plugin_pkg:opt",
                                                          registry.ENTRY_POINT_GROUP],
                               "attr": None}
    assert found.hypers["lr"].default == 0.5 and found.doc == "Another sgd."


def test_a_broken_entry_point_breaks_only_itself(tmp_path, monkeypatch):
    shutil.copy(OPTIMIZERS_DIR / "sgd.py", tmp_path / "sgd.py")
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(value="no_such_pkg_xyz:opt"))
    assert resolve("sgd", tmp_path).name == "sgd"
    with pytest.raises(InputError, match=r"optimizer 'plugin' cannot be loaded: entry point "
                                         r"plugin = no_such_pkg_xyz:opt .*ModuleNotFoundError: "
                                         r"No module named 'no_such_pkg_xyz'"):
        resolve("plugin", tmp_path)
