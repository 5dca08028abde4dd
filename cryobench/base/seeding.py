"""Seeds derived from named parts, so every random choice is reproducible and independent.

``derive_seed("synthetic-cylinder", "stream", 3)`` is the same number in every process and on
every machine (a SHA-256 of the parts), unlike Python's salted ``hash``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np


def derive_seed(*parts) -> int:
    """A 63-bit seed from the JSON encoding of ``parts`` (strings, numbers, lists)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng_for(*parts) -> np.random.Generator:
    """A numpy Generator seeded by :func:`derive_seed` of ``parts``."""
    return np.random.default_rng(derive_seed(*parts))


def content_hash(obj) -> str:
    """SHA-256 hex digest of the canonical JSON encoding of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
