"""One writer per folder: an advisory lock a harvest holds on its store, and a training on its run folder.

A second ``actdict harvest`` of the same store (or ``actdict train`` of the same run folder) started while
the first runs would take the first one's unfinished shards (or resume state) for a killed run's leftovers
and remove or overwrite them. So the second one waits, saying so, until the first is done, and then looks
again: a harvest then finds its store complete and skips, a training finds its dictionaries finished. Jobs
sharing one store (one run folder per hook) thus line up instead of failing. The lock is ``flock`` on the
empty file ``.actdict-lock`` in the folder: the kernel releases it when its holder exits, however it exits
(SIGKILL included), so a killed run never leaves a stale lock. The file is made with the umask's
permissions (a group-writable store gets a group-writable lock file) and is locked through a read-only
descriptor when it cannot be opened for writing. Local folders only: a store on an fsspec URL (S3, ...) is
not locked (docs/harvest.md says so), nor is a folder where the file can be neither made nor opened (a
read-only shared store that is only read), nor one on a file system without ``flock``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOCK_FILE = ".actdict-lock"


@contextmanager
def folder_lock(folder: str, what: str, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of the local ``folder`` (created if missing) for the ``with`` block; while another
    process holds it, ``say`` that ``what`` (e.g. "store runs/x/store") is in use, and wait."""
    fd = _open(folder)
    try:
        if fd is not None:
            _take(fd, folder, what, say)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _open(folder: str) -> int | None:
    path = os.path.join(folder, LOCK_FILE)
    try:
        os.makedirs(folder, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the shards
    except OSError:
        try:
            return os.open(path, os.O_RDONLY)  # another user's lock file: flock needs no write access
        except OSError:  # no lock file, and none can be made: a read-only folder, nothing is written there
            return None


def _take(fd: int, folder: str, what: str, say: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"{what} is in use by another actdict process (it holds {folder}/{LOCK_FILE}); waiting for it to "
            "finish (Ctrl-C stops this one)")
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without flock (some network mounts): the folder goes unguarded
        pass
