"""``cryobench list``: the tasks, and the optimizers with their defaults and search ranges."""
from __future__ import annotations

from cryobench.data.spec import known_tasks, load_spec
from cryobench.harness.registry import scan

HELP = "list tasks and optimizers"
TASK = False


def add_arguments(parser) -> None:
    """No options."""


def main(args) -> None:
    print("tasks:")
    for name in known_tasks():
        print(f"  {name:22s} {load_spec(name).raw.get('description', '')}")
    print("optimizers:")
    registry = scan()
    for name, m in sorted(registry.methods.items()):
        hypers = "  ".join(f"{k}={h.default:g} [{h.low:g}, {h.high:g}{', log' if h.log else ''}]"
                           for k, h in m.hypers.items())
        print(f"  {name:16s} {hypers}")
    for error in registry.broken.values():
        print(f"  broken: {error}")
