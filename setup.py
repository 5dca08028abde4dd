"""Build hook: the wheel ships the repository's tasks, optimizers and tuned values.

The repository keeps ``tasks/``, ``optimizers/`` and ``results/tuned.json`` at its top, where
users look for them; a checkout (an editable install) reads them there. A wheel has no
repository beside it, so ``build_py`` copies the same files into ``cryobench/_shipped/`` of the
built package, where an installed cryobench reads them (``cryobench/base/paths.py``). An sdist
carries the source folders (``MANIFEST.in``), so a wheel built from it ships the same files.
Everything else is in ``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"tasks": ("*.toml", "README.md"), "optimizers": ("*.py",), "results": ("tuned.json",)}


class BuildPyShipped(build_py):
    """``build_py`` that also copies :data:`SHIPPED` into ``cryobench/_shipped/``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return                      # an editable install reads the repository's folders
        target = Path(self.build_lib) / "cryobench" / "_shipped"
        shutil.rmtree(target, ignore_errors=True)   # nothing left from an earlier build
        for folder, patterns in SHIPPED.items():
            files = [p for pattern in patterns for p in sorted((ROOT / folder).glob(pattern))]
            if not files:
                raise SystemExit(f"setup.py: no {folder}/{' or '.join(patterns)} to ship in {ROOT}")
            for src in files:
                dest = target / folder / src.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)


setup(cmdclass={"build_py": BuildPyShipped})
