"""A failure found in an exception's chain, as one line naming what to do: an object store's (no
credentials, no endpoint), a path too long for the file system, a full disk or too many open files, a dead
torchrun peer. Each answers None for anything else (a bug keeps its traceback); ``cli`` prints the line."""

from __future__ import annotations

import os

from actdict.errors import ActdictError, open_files_hint
from actdict.signals import under_torchrun

_REMOTE = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "google.auth", "azure")  # fsspec backends


def _chain(e: BaseException | None):
    """``e`` and the exceptions it was raised from or during, in turn."""
    while e is not None:
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def remote_error(e: BaseException) -> ActdictError | None:
    """An object store's failure (no credentials, no endpoint, a refused request), found in ``e``'s chain,
    as one line naming what to check, or a path too long for the file system (``long_path_error``); None
    for anything else (a bug keeps its traceback)."""
    for seen in _chain(e):
        if type(seen).__module__.startswith(_REMOTE):
            return ActdictError(f"the object store failed: {type(seen).__name__}: {seen}; check its "
                                "credentials and endpoint (S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                "AWS_ENDPOINT_URL; other backends: their own settings) and the bucket's name "
                                "(docs/harvest.md)")
    return long_path_error(e)


def long_path_error(e: BaseException) -> ActdictError | None:
    """A path the file system refuses as too long (ENAMETOOLONG: a folder or file name over 255 bytes, a
    path over 4,096), found in ``e``'s chain, as one line naming the long part; None for anything else."""
    import errno

    for seen in _chain(e):
        if isinstance(seen, OSError) and seen.errno == errno.ENAMETOOLONG:
            path = os.fsdecode(seen.filename or "")
            names = [n for n in path.split("/") if len(os.fsencode(n)) > 255]
            n = len(os.fsencode(names[0] if names else path))
            what = (f"the name {names[0][:60]!r}... is {n} bytes (at most 255)" if names
                    else f"the path {path[:60]!r}... is {n} bytes (at most 4,096)")
            return ActdictError(f"a path is too long for the file system: {what}; shorten it")
    return None


def exhausted_error(e: BaseException) -> ActdictError | None:
    """A write the disk or the user's quota had no room for (ENOSPC, EDQUOT), or a file this process could
    not open for its limit of open files (EMFILE, ENFILE), found in ``e``'s chain, as one line naming the
    file where the error does (a redirected stdout: none) and what to do; None for anything else."""
    import errno

    for seen in _chain(e):
        if not isinstance(seen, OSError):
            continue
        name = os.fsdecode(seen.filename) if seen.filename else ""
        if seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {name}" if name else ""
            return ActdictError(f"{seen.strerror}{where}: free some space and run the command again")
        if seen.errno in (errno.EMFILE, errno.ENFILE):
            return ActdictError(f"{seen.strerror}{f' opening {name}' if name else ''}{open_files_hint(seen)}")
    return None


def peer_error(e: BaseException) -> ActdictError | None:
    """Under torchrun, a collective that failed because another rank died (killed, out of memory), as one
    line; None for anything else."""
    said = str(e)
    if isinstance(e, RuntimeError) and under_torchrun() and any(
            s in said for s in ("Connection closed by peer", "Connection reset by peer")):
        return ActdictError(f"another rank of this torchrun run failed ({said.splitlines()[0][:200]}): see "
                            "its own message above; the last resume state or whole shards are kept, and the "
                            "same command continues from them")
    return None
