"""Freed memory kept in the process during the analysis pass (glibc), so that each batch reuses the last's.

Every batch of the pass allocates the same large temporaries: the forward's dense codes and their activity
(a TopK SAE's, built from its sparse pattern: 268 MB each at B 4,096, k 16,384), the active mask, cofire's
pairs. glibc serves a request above its mmap threshold (at most 32 MB) with fresh pages from the OS and
unmaps them on free, so the first touch of each page faults again every batch: ModelEval.update with labels,
class features and cofire took 3.70 s a batch at k 16,384 (1.18 at 4,096) against 2.05 (0.73) without them,
on a loaded 2-core VM, one thread. :func:`reuse_freed_memory` turns that off for the pass (``mallopt``:
no mmap, no trimming of the heap's top) and gives the memory back after it (``malloc_trim``). The results
do not change; the process holds its peak memory until the pass ends. Elsewhere than glibc: nothing. Blocks
may nest (a benchmark around a pass): only the outermost sets glibc and sets it back. Any mallopt call also
ends glibc's dynamic mmap threshold for the rest of the process (``no_dyn_threshold``, which no call undoes):
after the pass the threshold stays where it was, no longer raised as large blocks are freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults, set back after the pass
_OPEN: list[bool] = []  # the open blocks' answers, outermost first: a nested block leaves glibc as it is


def glibc():
    """The C library, if it is glibc (``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory(libc=None) -> Iterator[bool]:
    """Within it, allocations come from the heap and freed memory stays there for the next (yields whether
    that is so: glibc took both settings); after it, glibc's defaults and the memory given back. ``libc``:
    the C library to set (default: ``glibc()``). Within an open block it changes nothing and yields that
    block's answer (a nested block's end set the defaults back in the middle of the outer one's pass)."""
    if _OPEN:
        _OPEN.append(_OPEN[-1])
        try:
            yield _OPEN[-1]
        finally:
            _OPEN.pop()
        return
    libc = glibc() if libc is None else libc
    on = libc is not None and libc.mallopt(M_MMAP_MAX, 0) == 1
    on = on and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _OPEN.append(on)
    try:
        yield on
    finally:
        _OPEN.pop()
        if libc is not None:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
