"""Reading large image arrays block by block without growing resident memory."""
from __future__ import annotations

import mmap

import numpy as np


def release_pages(array) -> None:
    """Drop this process's resident pages of a read-only memory-mapped array (no-op otherwise).

    The pages stay in the OS page cache and are mapped again when touched, so reading a large
    stack once, block by block, does not grow the process's resident memory by the stack's size.
    """
    mm = getattr(array, "_mmap", None)
    if mm is not None and getattr(array, "mode", None) == "r" and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def image_blocks(images: np.ndarray, size: int = 256):
    """Yield (start, images[start:start + size]) over the first axis, releasing a memory-mapped
    stack's pages after each block (see :func:`release_pages`)."""
    for lo in range(0, len(images), size):
        yield lo, images[lo:lo + size]
        release_pages(images)
