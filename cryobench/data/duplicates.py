"""Duplicate particles: a STAR file naming one image twice, or a stack holding identical images.

Either would let one particle fall into two splits (test and train), so both are refused by
:func:`cryobench.data.star.read_particles` with one :class:`~cryobench.errors.InputError` naming the STAR
file and the two rows. Identical images are found by an exact integer fingerprint of each image's
bytes (the sums of its 32-bit words, mod 2⁶⁴), computed on the blocks the reader reads anyway;
images whose fingerprints collide are compared byte by byte before they are called identical.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def repeated_names(star: Path, index: np.ndarray, paths: list[Path]) -> tuple[int, int] | None:
    """The first pair of rows (0-based, earlier first) naming the same image of the same stack."""
    seen: dict[tuple[Path, int], int] = {}
    resolved: dict[Path, Path] = {}
    for row, (i, path) in enumerate(zip(index.tolist(), paths)):
        where = resolved.get(path)
        if where is None:                       # resolve each stack once, not once per row
            where = resolved[path] = Path(path).resolve()
        key = (where, i)
        if key in seen:
            return seen[key], row
        seen[key] = row
    return None


class IdenticalImages:
    """Collects fingerprints of image blocks (``add``) and finds identical images (``first``)."""

    def __init__(self):
        self._first_row: dict[tuple[int, int], int] = {}
        self._candidates: list[tuple[int, int]] = []

    def add(self, block: np.ndarray, rows) -> None:
        """Fingerprint ``block`` (images of the STAR rows ``rows``, 0-based)."""
        words = np.ascontiguousarray(block).reshape(len(block), -1).view(np.uint32)
        total = words.sum(axis=1, dtype=np.uint64)
        strided = words[:, ::7].sum(axis=1, dtype=np.uint64)
        for row, key in zip(np.asarray(rows).tolist(), zip(total.tolist(), strided.tolist())):
            other = self._first_row.setdefault(key, row)
            if other != row:
                self._candidates.append((other, row))

    def first(self, images: np.ndarray) -> tuple[int, int] | None:
        """The first pair of rows (earlier first) whose images in ``images`` are byte-identical."""
        for a, b in sorted(self._candidates, key=lambda p: (max(p), min(p))):
            if np.array_equal(np.asarray(images[a]).view(np.uint32),
                              np.asarray(images[b]).view(np.uint32)):
                return min(a, b), max(a, b)
        return None
