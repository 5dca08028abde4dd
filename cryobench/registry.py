"""Finding optimizers: the repository's ``optimizers/`` folder, installed packages (entry-point
group ``cryobench.optimizers``), and ``module:attr`` or ``path/file.py:attr`` references."""
from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from .optim import Method

OPTIMIZERS_DIR = Path(__file__).resolve().parent.parent / "optimizers"
ENTRY_POINT_GROUP = "cryobench.optimizers"


def _load_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"cryobench_optimizers.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _methods_in(module) -> list[Method]:
    return [v for v in vars(module).values() if isinstance(v, Method)]


def discover(optimizers_dir: Path = OPTIMIZERS_DIR) -> dict[str, Method]:
    """Every optimizer in ``optimizers/*.py`` and in installed entry points, by name."""
    found: dict[str, Method] = {}
    for path in sorted(Path(optimizers_dir).glob("*.py")):
        if not path.name.startswith("_"):
            for m in _methods_in(_load_file(path)):
                found[m.name] = m
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        for m in ([obj] if isinstance(obj, Method) else _methods_in(obj)):
            found.setdefault(m.name, m)
    return found


def resolve(reference: str, optimizers_dir: Path = OPTIMIZERS_DIR) -> Method:
    """An optimizer by registered name, ``module:attr`` or ``path/file.py:attr``."""
    if ":" in reference:
        where, attr = reference.rsplit(":", 1)
        try:
            module = _load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
        except (ImportError, FileNotFoundError) as exc:
            raise ValueError(f"cannot import optimizer {reference!r}: {exc}") from None
        obj = getattr(module, attr, None)
        if not isinstance(obj, Method):
            raise ValueError(f"{reference!r} is not an optimizer declared with @cryobench.optim.method")
        return obj
    known = discover(optimizers_dir)
    if reference not in known:
        raise ValueError(f"unknown optimizer {reference!r}; known: {', '.join(sorted(known))}")
    return known[reference]
