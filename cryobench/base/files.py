"""Writing files so that a reader never sees half of one: atomic replacement, canonical JSON."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)                    # mkstemp's 0600 would hide results from others
    os.replace(tmp, path)


def to_json(obj) -> str:
    """Canonical JSON (sorted keys, numpy scalars as numbers, NaN as null)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    text = json.dumps(obj, indent=1, sort_keys=True, default=default, allow_nan=True)
    return text.replace("NaN", "null") + "\n"
