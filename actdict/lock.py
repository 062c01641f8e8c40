"""One writer per folder: an advisory lock a harvest holds on its store, and a training on its run folder.

A second ``actdict harvest`` of the same store (or ``actdict train`` of the same run folder) started while
the first runs would take the first one's unfinished shards (or resume state) for a killed run's leftovers
and remove or overwrite them. The lock is ``flock`` on an empty file in the folder: the kernel releases it
when its holder exits, however it exits (SIGKILL included), so a killed run never leaves a stale lock.
Local folders only: a store on an fsspec URL (S3, ...) is not locked (docs/harvest.md says so), nor is a
read-only folder (a shared store that is only read) or one on a file system without ``flock``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from actdict.errors import ActdictError

LOCK_FILE = ".actdict-lock"


class FolderInUse(ActdictError):
    """Another process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
    """Hold the lock of the local ``folder`` (created if missing) for the ``with`` block; raise FolderInUse
    naming ``what`` (e.g. "store runs/x/store") when another process holds it."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder (a shared store): nothing can be written there, nothing to guard
        fd = None
    try:
        if fd is not None:
            _take(fd, folder, what)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _take(fd: int, folder: str, what: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderInUse(f"{what} is in use by another actdict process (it holds {folder}/{LOCK_FILE}); "
                          "wait for it to finish, or stop it first: two writers would spoil each other's "
                          "files") from None
    except OSError:  # a file system without flock (some network mounts): the folder goes unguarded
        pass
