"""One writer per folder: an advisory lock a harvest holds on its store, and a training on its run folder.

A second ``actdict harvest`` of the same store (or ``actdict train`` of the same run folder) started while
the first runs would take the first one's unfinished shards (or resume state) for a killed run's leftovers
and remove or overwrite them. So the second one waits, saying so, until the first is done, and then looks
again: a harvest then finds its store complete and skips, a training finds its dictionaries finished. Jobs
sharing one store (one run folder per hook) thus line up instead of failing. Under torchrun (WORLD_SIZE >
1) a busy folder is an error instead (``FolderInUse``): only rank 0 takes the lock, and the other ranks
would decide what to do without waiting.

The lock is ``flock`` on an empty file in the folder (``.actdict-lock``; analysis, which may run beside a
training, has its own): the kernel releases it when its holder exits, however it exits (SIGKILL
included), so a killed run never leaves a stale lock. A store has a second one, ``.actdict-readers``:
trainings and analyses hold it shared while they read the store, and a harvest or import takes it
exclusively before its first change to the store (a growth, a re-import, a repair), so that a reader never
meets a half-changed store: each waits for the other. The file is made with the umask's permissions (a
group-writable store gets a group-writable lock file) and is locked through a read-only descriptor when
it cannot be opened for writing. A folder where the file can be neither made nor opened (a read-only
shared store that is only read) is not locked, nor one on a file system without ``flock`` (a note says so),
nor any folder on a platform without it (Windows: one note per process, ``NO_FLOCK``);
in a folder this process may write in, a lock file it cannot open (another user's, made under umask 077)
stops the run (``FolderNotLockable``): it cannot tell whether that user's run is at work there.
A folder the lock made goes again, with its lock file, when the work in it fails before writing anything
(a missing store): a process waiting for that lock then locks the path anew, not the removed file. The
lock records each folder as it makes it, so that all of them go, however the path is spelled: a run folder
spelled new/../run makes new/ too, which is no parent of the path as written.

A store on an fsspec URL (S3, ...) has no flock: its harvest makes the object ``.actdict-lock.json`` in it,
only if there is none (a conditional PUT), naming its process, and removes it when done (``remote_lock``).
A second harvest meanwhile stops with one line naming that process; a lock that a killed process of this
host and pid namespace left (its pid gone, or now another process's; macOS: its pid gone) is taken over,
saying so.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from actdict.errors import ActdictError, one_line

try:
    import fcntl
except ImportError:  # Windows: no flock; the folders go unguarded, with NO_FLOCK said once
    fcntl = None

LOCK_FILE = ".actdict-lock"
ANALYZE_LOCK = ".actdict-analyze-lock"  # analysis writes the report; a training may run beside it
READERS = ".actdict-readers"  # a store's: shared by its trainings and analyses, exclusive while it changes


class FolderInUse(ActdictError):
    """Another process holds the folder's lock (and this one may not wait: torchrun)."""


def _say(text: str) -> None:
    print(one_line(text), flush=True)  # a log file sees it while the process waits; it names folders


@contextmanager
def folder_lock(folder: str, what: str, say: Callable[[str], None] = _say, wait: bool = True,
                name: str = LOCK_FILE, shared: bool = False) -> Iterator[None]:
    """Hold the lock ``name`` of the local ``folder`` (created if missing) for the ``with`` block (``shared``:
    along with other shared holders); while another process holds it so that this one cannot, ``say`` that
    ``what`` (e.g. "store runs/x/store") is in use and wait, or raise FolderInUse when not ``wait``. A
    block that fails takes away the folders the lock made when they hold nothing but its lock file. Yields
    those folders (``make_folders``), for a caller that removes more than the lock file. A ``folder`` (or
    parent) that is a link to nothing is FolderNotWritable: nothing can be made there."""
    if why := dangling_link(folder):
        raise FolderNotWritable(f"{what}: {why}: make that folder, or name another")
    path, made = os.path.join(folder, name), []
    fd = _open(folder, name, say, made)
    while fd is not None:
        try:
            _take(fd, path, what, say, wait, shared)
        except BaseException:  # FolderInUse, Ctrl-C while waiting
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder failed and removed it with the folder it made: lock the path anew
        fd = _open(folder, name, say, made)
    try:
        yield made
    except BaseException:  # a missing store, a bad config, Ctrl-C: no new folder of a lock file is left
        with suppress(OSError):
            if made and fd is not None and set(os.listdir(folder)) <= {name}:
                os.unlink(path)
                remove_made(made)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _same_file(fd: int, path: str) -> bool:
    """The lock file ``fd`` is still the one at ``path`` (not removed by a holder that made it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def dangling_link(folder: str | os.PathLike) -> str | None:
    """'P is a symbolic link to T, which does not exist' for ``folder`` or its first parent that is one;
    None when none is (os.makedirs stops there with 'File exists')."""
    for p in (Path(folder), *Path(folder).parents):
        if p.is_symlink() and not p.exists():
            return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist"
    return None


def make_folders(folder: str | os.PathLike, made: list[str]) -> None:
    """Make ``folder`` and its missing parents as ``os.makedirs`` does, appending each folder made to
    ``made`` as the prefix of ``folder`` that names it, outermost first: removed in the reverse order
    (``remove_made``), those prefixes name exactly the folders made, whatever the spelling (new/../run
    makes new/, which no parent of ``folder`` as written names, and whose removal Path.parents would miss).
    A file in the way raises OSError, as os.makedirs does."""
    path = os.fspath(folder)
    for end in [i for i, c in enumerate(path) if c == os.sep] + [len(path)]:
        prefix = path[:end]
        if os.path.basename(prefix) in ("", os.curdir, os.pardir):  # the root, a//b, '.', '..': made already
            continue
        try:
            os.mkdir(prefix)
        except FileExistsError:
            continue
        made.append(prefix)


def remove_made(made: list[str]) -> None:
    """Remove the folders ``make_folders`` made, innermost first, while they are empty (one something was
    put in meanwhile stays, and so do its parents); one already gone (removed with its contents) is passed."""
    for p in reversed(made):
        try:
            os.rmdir(p)
        except FileNotFoundError:
            continue
        except OSError:  # not empty
            return


def _open(folder: str, name: str, say: Callable[[str], None], made: list[str]) -> int | None:
    path = os.path.join(folder, name)
    try:
        make_folders(folder, made)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the shards
    except OSError:
        try:
            return os.open(path, os.O_RDONLY)  # another user's lock file: flock needs no write access
        except OSError as e:  # none there and none can be made: a read-only folder, nothing is written there
            if e.errno == errno.EACCES and os.path.isfile(path) and os.access(folder, os.W_OK):
                raise FolderNotLockable(unreadable_lock(path, folder)) from e
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
                say(f"note: {path} cannot be made ({e.strerror}); going on without the lock")
            return None


class FolderNotLockable(ActdictError):
    """A folder this process may write in whose lock file it may not open: another user's, made private."""


def unreadable_lock(path: str, folder: str) -> str:
    """Why the lock file ``path`` of the writable ``folder`` stops this run, and what to do."""
    st = os.stat(path)
    try:
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        owner = f"uid {st.st_uid}"
    return (f"cannot open the lock file {path} (Permission denied: {owner}'s, mode {st.st_mode & 0o777:03o}, "
            f"made under a private umask), so whether {owner}'s actdict is at work in {folder} cannot be "
            f"told: ask them to make it readable (chmod a+r {path}), or remove it if no actdict process "
            "uses the folder")


NO_FLOCK = ("note: this platform ({platform}) has no flock, so actdict locks no folder: run one actdict "
            "process per store and per run folder at a time (a second one would take the first one's "
            "unfinished files for a killed run's leftovers)")
_said: set[str] = set()


def _say_once(say: Callable[[str], None], text: str) -> None:
    """``say(text)`` the first time this process would say it: one note, not one per lock."""
    if text not in _said:
        _said.add(text)
        say(text)


def _take(fd: int, path: str, what: str, say: Callable[[str], None], wait: bool, shared: bool) -> None:
    if fcntl is None:
        _say_once(say, NO_FLOCK.format(platform=sys.platform))
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        busy = f"{what} is in use by another actdict process (it holds {path})"
        if not wait:
            raise FolderInUse(f"{busy}; under torchrun the ranks cannot wait for it together: start this "
                              "run when the other one is done") from None
        say(f"{busy}; waiting for it to finish (Ctrl-C stops this one)")
        fcntl.flock(fd, mode)
    except OSError as e:  # a file system without flock (some network mounts): the folder goes unguarded
        say(f"note: {path} cannot be locked here ({e.strerror}); going on without the lock")


REMOTE_LOCK = ".actdict-lock.json"  # an object store's: no flock there


def _started(pid: int) -> str | None:
    """When process ``pid`` of this host started (clock ticks since boot, /proc), None when there is no
    such process (or no /proc): a pid used again by another process starts at another time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_space() -> str | None:
    """This process's pid namespace (a container on this host has its own pids), None without /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


ONE_PID_SPACE = sys.platform == "darwin"
"""macOS has no pid namespaces and no /proc: a pid of this host's name is this system's, and ``os.kill(pid,
0)`` tells a free one. (Windows' os.kill ends the process: never asked there.)"""


def _gone(holder: dict) -> bool:
    """The process a lock object names is known to have ended: of this host and pid namespace, and its pid
    is free or another process's. A process of another host or container may be alive, and without /proc
    (but on macOS, ``ONE_PID_SPACE``) nothing tells: never taken for gone."""
    pid, space = holder.get("pid"), _pid_space()
    if (holder.get("host"), holder.get("pids")) != (socket.gethostname(), space) or (
            space is None and not ONE_PID_SPACE) or not isinstance(pid, int):
        return False
    if (now := _started(pid)) is not None:
        return holder.get("started") is not None and now != holder["started"]
    try:
        os.kill(pid, 0)  # no /proc entry: no such process, or one /proc hides (hidepid: another user's)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


@contextmanager
def remote_lock(fs, path: str, url: str, what: str, say: Callable[[str], None] = _say) -> Iterator[None]:
    """Hold the lock object ``path`` (``url`` as the user spells it) of an fsspec file system ``fs`` for the
    ``with`` block: made only if absent, naming this process; FolderInUse (one line: which process, what to
    do) while another holds it; one of a killed process of this host is replaced, saying so. A file system
    without conditional writes goes unlocked, with a note; a store we may not write in (a harvest that will
    only find it complete), without one."""
    me = {"host": socket.gethostname(), "pids": _pid_space(), "pid": os.getpid(),
          "started": _started(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fs.pipe_file(path, json.dumps(me).encode(), mode="create")
            break
        except FileExistsError:
            try:
                holder = json.loads(fs.cat_file(path))
            except FileNotFoundError:  # its holder ended meanwhile: make it again
                if not attempt:
                    continue
                holder = {}
            except (OSError, ValueError):
                holder = {}
            if attempt or not _gone(holder):
                raise FolderInUse(f"{what} is in use by actdict process {holder.get('pid')} on host "
                                  f"{holder.get('host')} (since {holder.get('since')}; its lock {url}): "
                                  f"start this run when that one is done, or delete {url} if that process "
                                  "is gone") from None
            say(f"{what}: removing {url}, the lock of actdict process {holder['pid']}, which ended without "
                "removing it (killed?)")
            with suppress(FileNotFoundError):  # another run taking it over removed it first
                fs.rm_file(path)
        except (NotImplementedError, TypeError, ValueError, PermissionError) as e:
            if not isinstance(e, PermissionError):  # a store we may only read is read unlocked, as a folder
                say(f"note: {url} cannot be made only-if-absent here ({e}); going on without the lock")
            yield
            return
    try:
        yield
    finally:
        with suppress(OSError):
            fs.rm_file(path)


class FolderNotWritable(ActdictError):
    """A folder a stage must write in cannot be written: said before the work, not after it."""


def write_problem(folders: list[str | os.PathLike], what: str,
                  elsewhere: str = "set run_dir to another folder") -> str | None:
    """``check_writable``'s refusal, found without writing anything (a dry run): the first of ``folders``
    that this process may not write in (a missing one: its nearest existing parent), by ``os.access`` or a
    read-only file system, in the words ``check_writable`` raises; None when there is none."""
    for folder in map(Path, folders):
        near = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if near is None or not near.is_dir():  # a file in the way: the stage's own check says it
            continue
        read_only = read_only_fs(near)
        if read_only or not os.access(near, os.W_OK | os.X_OK):
            why = "Read-only file system" if read_only else "Permission denied"
            return f"cannot write in {folder} ({why}), where {what} go: make it writable, or {elsewhere}"
    return None


def read_only_fs(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only; False where ``os.statvfs`` does not say it
    (Windows: ``os.access`` then decides alone)."""
    statvfs = getattr(os, "statvfs", None)
    return statvfs is not None and bool(statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))


def check_writable(folders: list[str | os.PathLike], what: str, owner: str = "",
                   elsewhere: str = "set run_dir to another folder") -> None:
    """Create (when missing) and write a test file in each folder, or raise FolderNotWritable naming it: a
    read-only run folder would otherwise fail only when ``what`` is saved, after all the work. ``owner``
    ('train', 'analyze', 'harvest': one of each per folder at a time, their locks) names the test files, and
    the ones of that owner that a kill left (between making one and removing it) are removed first;
    ``elsewhere``: the message's other way out."""
    prefix = f".actdict-write-check-{owner}-" if owner else ".actdict-write-check-"
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
            for left in Path(folder).glob(f"{prefix}*") if owner else ():
                left.unlink(missing_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=prefix)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise FolderNotWritable(f"cannot write in {folder} ({e.strerror}), where {what} go: make it "
                                    f"writable, or {elsewhere}") from e
