"""The layout shows the parts and imports point one way (docs/architecture.md).

Every module's imports (top-level and inside functions) are read with ``ast`` and checked against
the allowed edges between the package's parts; no module is much over 400 lines."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "cryobench"

PROTOCOL = {"cryobench.optim", "cryobench.schedules", "cryobench.oracle"}
FOUNDATION = {"cryobench.errors", "cryobench.base"}
# part -> the parts it may import (besides itself and the standard/third-party libraries)
ALLOWED = {
    "cryobench.errors": set(),
    "cryobench.base": {"cryobench.errors"},
    "cryobench.model": FOUNDATION,
    "cryobench.data": FOUNDATION | {"cryobench.model"},
    "cryobench.oracle": FOUNDATION,
    "cryobench.schedules": set(),
    "cryobench.optim": FOUNDATION | {"cryobench.oracle"},
    "cryobench.toy": FOUNDATION | {"cryobench.oracle"},
    "cryobench.external": FOUNDATION | {"cryobench.optim", "cryobench.oracle"},   # torch/optax adapters
    "cryobench.importance": FOUNDATION | {"cryobench.model", "cryobench.oracle"},
    "cryobench.task": FOUNDATION | {"cryobench.model", "cryobench.data", "cryobench.oracle",
                                    "cryobench.importance"},
    "cryobench.harness": FOUNDATION | PROTOCOL | {"cryobench", "cryobench.model", "cryobench.data",
                                                  "cryobench.task", "cryobench.external"},
    "cryobench.checks": FOUNDATION | PROTOCOL | {"cryobench.model", "cryobench.data",
                                                 "cryobench.task", "cryobench.harness"},
    "cryobench.report": FOUNDATION | {"cryobench.harness.results",     # reports read results only
                                      "cryobench.harness.record"},
    "cryobench.cli": None,                                                # the top: anything
    "cryobench": FOUNDATION | {"cryobench.oracle", "cryobench.task"},     # __init__: the public API
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_shipped" not in p.parts)


def imports(path: Path) -> set[str]:
    """The cryobench modules (or packages) a file imports, absolute, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}   # `from pkg import module`
    return {m for m in found if m == "cryobench" or m.startswith("cryobench.")}


def part(module: str) -> str:
    """The part a module belongs to: its folder under cryobench/, or itself at the top."""
    return ".".join(module.split(".")[:2])


def allowed(source: str, target: str) -> bool:
    rule = ALLOWED[part(source)]
    if rule is None or part(target) == part(source):
        return True
    return target in rule or any(target.startswith(a + ".") for a in rule - {"cryobench"})


def existing(module: str) -> bool:
    rel = Path(*module.split("."))
    return (REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__init__.py").is_file()


def test_every_part_has_a_rule():
    assert {part(module_name(p)) for p in package_modules()} <= set(ALLOWED)


def test_imports_point_one_way():
    wrong = [f"{module_name(p)} imports {t}" for p in package_modules() for t in sorted(imports(p))
             if existing(t) and not allowed(module_name(p), t)]
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_wrong_edge():
    assert not allowed("cryobench.model.likelihood", "cryobench.data.star")
    assert not allowed("cryobench.data.datasets", "cryobench.task")
    assert not allowed("cryobench.harness.run", "cryobench.cli")
    assert not allowed("cryobench.report.figures", "cryobench.harness.run")
    assert not allowed("cryobench.task", "cryobench.harness.grid")
    assert allowed("cryobench.report.tables", "cryobench.harness.results")
    assert imports(PACKAGE / "model" / "likelihood.py") >= {"cryobench.model.kernels"}


def test_grid_and_tuning_do_not_import_each_other():
    grid, tuning = PACKAGE / "harness" / "grid.py", PACKAGE / "harness" / "tuning.py"
    assert "cryobench.harness.tuning" not in imports(grid)
    assert "cryobench.harness.grid" in imports(tuning)


def test_parts_import_no_cycle():
    edges = {}
    for p in package_modules():
        src = part(module_name(p))
        edges.setdefault(src, set()).update(part(t) for t in imports(p) if existing(t))
    for a, targets in edges.items():
        for b in targets - {a, "cryobench"}:
            assert a == "cryobench" or a not in edges.get(b, set()), f"{a} <-> {b}"


def module_cycles() -> list[list[str]]:
    """Cycles of imports between modules (any import, anywhere in a file), as lists of modules."""
    names = {module_name(p): p for p in package_modules()}
    edges = {m: {t for t in imports(p) if t in names and t != m} for m, p in names.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):                                   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for v in sorted(names):
        if v not in index:
            visit(v)
    return cycles


def test_modules_import_no_cycle():
    """Not even inside a part: no module imports, directly or through others, one that imports it
    (a function-local import does not hide a cycle from this test)."""
    assert not module_cycles(), module_cycles()


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    a, b = PACKAGE / "harness" / "run.py", PACKAGE / "harness" / "record.py"
    real = imports
    monkeypatch.setitem(globals(), "imports",
                        lambda p: real(p) | ({"cryobench.harness.run"} if p == b else set()))
    assert any({"cryobench.harness.run", "cryobench.harness.record"} <= set(c) for c in module_cycles())
    assert "cryobench.harness.record" in real(a)


def test_one_module_for_the_error_types():
    defined = [module_name(p) for p in package_modules()
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ClassDef) and node.name in ("InputError", "HarnessFault",
                                                                   "AccountingError")]
    assert defined == ["cryobench.errors"] * 3


def test_optimizers_import_only_the_protocol():
    for path in sorted((REPO / "optimizers").glob("*.py")) + [REPO / "docs/examples/rmsprop.py"]:
        extra = {m for m in imports(path) if m not in PROTOCOL and part(m) not in PROTOCOL
                 and m != "cryobench"}
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_modules_are_small():
    long = {module_name(p): n for p in package_modules()
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
